//! `GET /api/v1/evidence/{firm_id}?since=N`: the firm's evidence bundle
//! (a tar file; see the README's Evidence bundles), for its auditors.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::api::{ApiQuery, Count};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::firms::blocking;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    /// The previous bundle's log size: the consistency proof starts there.
    #[param(value_type = Option<i64>, minimum = 0)]
    since: Option<Count>,
}

pub async fn bundle(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
    ApiQuery(q): ApiQuery<EvidenceQuery>,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let svc = shared.evidence.clone();
    let since = q.since.map_or(0, |c| c.0);
    let firm = auth.firm().to_string();
    let tar = blocking(move || svc.bundle_for(&auth, since)).await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"evidence-{firm}.tar\""),
            ),
        ],
        tar,
    )
        .into_response())
}
