//! Route handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use super::problem::Problem;
use crate::daemon::Shared;

/// `GET /status`: public, so it says only what a client may know.
#[derive(Serialize)]
pub struct StatusBody {
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_seconds: u64,
    pub fips: bool,
    pub crypto_module: String,
    /// Hash of the role matrix and rule order: equal versions decide alike.
    pub policy_version: &'static str,
}

pub async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusBody> {
    Json(StatusBody {
        version: crate::VERSION,
        commit: crate::BUILD_COMMIT,
        uptime_seconds: shared.started.elapsed().as_secs(),
        fips: shared.module.fips,
        crypto_module: shared.module.module.clone(),
        policy_version: crate::auth::policy::policy_version(),
    })
}

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
}

pub async fn not_found() -> Problem {
    Problem::not_found()
}

/// axum adds the `Allow` header to this response.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path; see the Allow header",
    )
}
