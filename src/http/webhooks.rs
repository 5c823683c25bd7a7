//! `/api/v1/webhooks/{firm_id}`: webhook endpoints, their delivery
//! attempts, redelivery and test events. A signing secret is in a response
//! only when an endpoint is created or its secret rotated.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiJson, ApiQuery, Count, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::webhooks::{
    AttemptView, DEFAULT_OVERLAP_SECS, EndpointInput, EndpointView, MAX_OVERLAP_SECS, WithSecret,
};

/// Body of `POST /api/v1/webhooks/{firm_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `https://host[:port]/path`; the operator's `webhooks.allow` must admit it.
    url: String,
    /// Event types (`record.created`) or prefixes (`record.*`, `*`).
    events: Vec<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

/// Body of `PATCH /api/v1/webhooks/{firm_id}/{endpoint_id}`: what changes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
    description: Option<String>,
}

/// Body of `POST …/rotate` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret keeps signing too, 0 to 604800 s (default
    /// 86400). A whole number (`3600.0` is one too, as JSON Schema says).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 604800)]
    overlap_secs: Option<serde_json::Number>,
}

/// Body of `POST …/redeliver`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverBody {
    /// Failed messages created at or after this time (RFC 3339) go again.
    #[schema(format = DateTime)]
    since: String,
}

/// An endpoint with its signing secret, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    endpoint: EndpointView,
    /// `whsec_` + base64: configure the receiver with it. Not shown again.
    secret: String,
}

impl From<WithSecret> for EndpointWithSecret {
    fn from(w: WithSecret) -> Self {
        Self {
            secret: w.reveal().to_owned(),
            endpoint: w.endpoint,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    attempts: Vec<AttemptView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// The message queued (its `webhook-id`).
    message_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Requeued {
    /// How many failed messages were queued again.
    requeued: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    /// Most attempts returned, 1 to 500 (larger values are lowered to 500; default 100).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<Count>,
}

/// `POST /api/v1/webhooks/{firm_id}`: register an endpoint → 201 with its secret.
pub async fn create(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EndpointWithSecret>), Problem> {
    let ApiJson(b) = ApiJson::<CreateBody>::parse(&headers, &body)?;
    let input = EndpointInput {
        url: Some(b.url),
        events: Some(b.events),
        enabled: b.enabled,
        description: b.description,
    };
    let svc = shared.webhooks.clone();
    let made = blocking(move || svc.create(&auth, input)).await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// `GET /api/v1/webhooks/{firm_id}`
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksRead>,
) -> Result<Json<EndpointList>, Problem> {
    let svc = shared.webhooks.clone();
    let endpoints = blocking(move || svc.list(&auth)).await?;
    Ok(Json(EndpointList { endpoints }))
}

/// `GET /api/v1/webhooks/{firm_id}/{endpoint_id}`
pub async fn show(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<EndpointView>, Problem> {
    let svc = shared.webhooks.clone();
    Ok(Json(blocking(move || svc.get(&auth, &id)).await?))
}

/// `PATCH /api/v1/webhooks/{firm_id}/{endpoint_id}`
pub async fn update(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EndpointView>, Problem> {
    let ApiJson(b) = ApiJson::<UpdateEndpointBody>::parse(&headers, &body)?;
    let input = EndpointInput {
        url: b.url,
        events: b.events,
        enabled: b.enabled,
        description: b.description,
    };
    let svc = shared.webhooks.clone();
    Ok(Json(blocking(move || svc.update(&auth, &id, input)).await?))
}

/// `DELETE /api/v1/webhooks/{firm_id}/{endpoint_id}` → 204
pub async fn delete(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let svc = shared.webhooks.clone();
    blocking(move || svc.delete(&auth, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/webhooks/{firm_id}/{endpoint_id}/rotate` → 201 with the new secret.
pub async fn rotate(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EndpointWithSecret>), Problem> {
    let b: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        ApiJson::<RotateBody>::parse(&headers, &body)?.0
    };
    let secs = match b.overlap_secs {
        None => DEFAULT_OVERLAP_SECS,
        Some(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=MAX_OVERLAP_SECS as f64).contains(f))
                    .map(|f| f as u64)
            })
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("overlap_secs is a whole number of seconds, 0 to {MAX_OVERLAP_SECS}"),
                )
            })?,
    };
    let overlap = Duration::from_secs(secs);
    let svc = shared.webhooks.clone();
    let made = blocking(move || svc.rotate(&auth, &id, overlap)).await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// `GET /api/v1/webhooks/{firm_id}/{endpoint_id}/attempts?limit=N`
pub async fn attempts(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksRead>,
    Path((_, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AttemptsQuery>,
) -> Result<Json<AttemptList>, Problem> {
    let limit = q.limit.map_or(100, |c| c.0).min(500) as u32;
    if limit == 0 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 500",
        ));
    }
    let svc = shared.webhooks.clone();
    let attempts = blocking(move || svc.attempts(&auth, &id, limit)).await?;
    Ok(Json(AttemptList { attempts }))
}

/// `POST /api/v1/webhooks/{firm_id}/{endpoint_id}/messages/{message_id}/redeliver` → 202
pub async fn redeliver(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id, message)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let svc = shared.webhooks.clone();
    let m = message.clone();
    blocking(move || svc.redeliver(&auth, &id, &m)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            message_id: message,
        }),
    ))
}

/// `POST /api/v1/webhooks/{firm_id}/{endpoint_id}/redeliver`: every failed
/// message since a time.
pub async fn redeliver_failed(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Requeued>, Problem> {
    let ApiJson(b) = ApiJson::<RedeliverBody>::parse(&headers, &body)?;
    let since = crate::clock::parse_rfc3339(&b.since).ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "since must be an RFC 3339 time like 2026-11-23T10:00:00Z",
        )
    })?;
    let svc = shared.webhooks.clone();
    let requeued = blocking(move || svc.redeliver_failed(&auth, &id, since)).await?;
    Ok(Json(Requeued { requeued }))
}

/// `POST /api/v1/webhooks/{firm_id}/{endpoint_id}/test` → 202: a
/// `webhook.test` event for this endpoint.
pub async fn test_event(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::WebhooksWrite>,
    Path((_, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let svc = shared.webhooks.clone();
    let message_id = blocking(move || svc.send_test(&auth, &id)).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { message_id })))
}
