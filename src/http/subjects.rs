//! `GET /api/v1/subjects/{firm_id}?value=V`: everything the firm holds
//! about one data subject (GDPR Art. 15/20), audited as a sensitive read.
//! The request log names the route, never the query, so the identifier
//! is not logged.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::api::ApiQuery;
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::firms::blocking;
use crate::records::subjects::SubjectDocument;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubjectQuery {
    /// The subject's identifier: a value of a collection's `subject` field.
    #[param(min_length = 1, max_length = 1024)]
    value: String,
}

pub async fn access(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsReadSensitive>,
    ApiQuery(q): ApiQuery<SubjectQuery>,
) -> Result<Json<SubjectDocument>, Problem> {
    let svc = shared.records.clone();
    Ok(Json(
        blocking(move || svc.subject_access(&auth, &q.value)).await?,
    ))
}
