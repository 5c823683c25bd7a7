//! `POST /api/v1/erasure/{firm_id}`: erase one data subject (GDPR Art. 17)
//! and return the deletion certificate. The identifiers come in the body,
//! never the URL, so no request log line holds them.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::erasure::{ErasureCertificate, ErasureRequest};

pub async fn erase(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SubjectsErase>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ErasureCertificate>, Problem> {
    let ApiJson(req) = ApiJson::<ErasureRequest>::parse(&headers, &body)?;
    let svc = shared.erasures.clone();
    Ok(Json(blocking(move || svc.erase(&auth, &req)).await?))
}
