//! `/api/v1/audit/{firm_id}`: reading and verifying the firm's audit log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::api::{ApiQuery, Count, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::audit::{AuditPage, AuditVerifyView, ConsistencyView, InclusionView, MAX_PAGE};
use crate::auth::policy::perm;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The first sequence number to return.
    #[serde(default)]
    #[param(value_type = i64, minimum = 0)]
    from: Count,
    /// Page size, 1 to 500 (larger values are lowered to 500).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<Count>,
    /// Entries at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Entries before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
}

/// An RFC 3339 time as stored (UTC, whole seconds, rounded up), or a 400
/// naming the parameter.
pub(super) fn utc(name: &str, v: Option<String>) -> Result<Option<String>, Problem> {
    v.map(|s| {
        crate::clock::parse_rfc3339(&s)
            // Entries are stamped to the second: a fractional bound rounds
            // up, so `since` never admits an earlier entry.
            .and_then(|t| {
                let up = if t.nanosecond() > 0 {
                    t.checked_add(time::Duration::SECOND)?
                } else {
                    t
                };
                Some(crate::clock::rfc3339(up))
            })
            .ok_or_else(|| {
                Problem::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("{name} must be an RFC 3339 time like 2026-11-23T10:00:00Z"),
                )
            })
    })
    .transpose()
}

/// `GET /api/v1/audit/{firm_id}?from=SEQ&limit=N&since=T&until=T&actor=..&action=..&resource=..`:
/// matching entries in sequence order, details decrypted; `next` is the
/// cursor (pass it as `from`, with the same filters) for the following page.
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<AuditPage>, Problem> {
    let svc = shared.audit.clone();
    let limit = q.limit.map_or(100, |c| c.0).min(MAX_PAGE);
    if limit == 0 {
        return Err(Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE} (larger values are lowered to it)"),
        ));
    }
    let filter = crate::audit::Filter {
        since: utc("since", q.since)?,
        until: utc("until", q.until)?,
        actor: q.actor,
        action: q.action,
        resource: q.resource,
    };
    Ok(Json(
        blocking(move || svc.audit_page(&auth, q.from.0, limit, &filter)).await?,
    ))
}

/// `GET /api/v1/audit/{firm_id}/verify`: re-derives every leaf, the chain
/// and the tree; names the first sequence number that fails.
pub async fn verify(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
) -> Result<Json<AuditVerifyView>, Problem> {
    let svc = shared.audit.clone();
    Ok(Json(blocking(move || svc.audit_verify(&auth)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    #[param(value_type = i64, minimum = 0)]
    seq: Count,
    #[param(value_type = Option<i64>, minimum = 1)]
    size: Option<Count>,
}

/// `GET /api/v1/audit/{firm_id}/proof/inclusion?seq=N&size=M`
pub async fn inclusion(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionView>, Problem> {
    let svc = shared.audit.clone();
    Ok(Json(
        blocking(move || svc.audit_inclusion(&auth, q.seq.0, q.size.map(|c| c.0))).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    #[param(value_type = i64, minimum = 1)]
    from: Count,
    #[param(value_type = Option<i64>, minimum = 1)]
    to: Option<Count>,
}

/// `GET /api/v1/audit/{firm_id}/proof/consistency?from=A&to=B`
pub async fn consistency(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyView>, Problem> {
    let svc = shared.audit.clone();
    Ok(Json(
        blocking(move || svc.audit_consistency(&auth, q.from.0, q.to.map(|c| c.0))).await?,
    ))
}

fn text_plain(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /api/v1/audit/{firm_id}/checkpoint`: the latest C2SP checkpoint,
/// signed now if the log grew since the last one.
pub async fn checkpoint(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
) -> Result<axum::response::Response, Problem> {
    let svc = shared.audit.clone();
    let firm = auth.firm().clone();
    let note = blocking(move || svc.checkpoint(&firm)).await?;
    Ok(text_plain(note))
}

/// `GET /api/v1/audit/{firm_id}/verifier-key`: the appliance's checkpoint
/// verifier key (`name+hash+base64`).
pub async fn verifier_key(
    State(shared): State<Arc<AppState>>,
    Authz(_auth): Authz<perm::AuditRead>,
) -> axum::response::Response {
    text_plain(format!("{}\n", shared.trail.verifier_key()))
}

/// `GET /api/v1/audit/{firm_id}/export`: CloudEvents 1.0, as NDJSON, or as
/// a JSON array with `Accept: application/cloudevents-batch+json`.
pub async fn export(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::AuditRead>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let svc = shared.audit.clone();
    let events = blocking(move || svc.audit_export(&auth)).await?;
    let batch = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/cloudevents-batch+json"));
    let (ct, body) = if batch {
        (
            "application/cloudevents-batch+json",
            serde_json::to_string(&events).map_err(|e| Problem::internal(&e))?,
        )
    } else {
        let mut out = String::new();
        for e in &events {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        ("application/x-ndjson", out)
    };
    Ok(([(axum::http::header::CONTENT_TYPE, ct)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn time_bounds_past_year_9999_are_refused_not_panicked_on() {
        // Found by the `api_query` fuzz target (the offset case).
        for t in ["9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.5Z"] {
            assert!(utc("since", Some(t.to_owned())).is_err(), "{t}");
        }
        assert_eq!(
            utc("since", Some("2026-11-23T10:00:00.5Z".to_owned())).unwrap(),
            Some("2026-11-23T10:00:01Z".to_owned())
        );
    }
}
