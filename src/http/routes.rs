//! Route handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use super::problem::Problem;

/// `GET /status`: public, so it says only what a client may know.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_seconds: u64,
    pub fips: bool,
    pub crypto_module: String,
    /// Hash of the role matrix and rule order: equal versions decide alike.
    pub policy_version: &'static str,
}

pub async fn status(State(shared): State<Arc<AppState>>) -> Json<StatusBody> {
    Json(StatusBody {
        version: crate::VERSION,
        commit: crate::BUILD_COMMIT,
        uptime_seconds: shared.runtime.uptime_seconds(),
        fips: shared.runtime.module.fips,
        crypto_module: shared.runtime.module.module.clone(),
        policy_version: crate::auth::policy::policy_version(),
    })
}

/// `GET /healthz`: the process answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
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
