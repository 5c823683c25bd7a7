//! `/api/v1/...`: authenticated, tenant-scoped resources.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use crate::auth::{self, Principal, Role};
use crate::daemon::Shared;
use crate::firms::{AuthError, FirmError};
use crate::ids::FirmId;

/// An authenticated request. Extracting it checks the bearer token.
pub struct Authenticated(pub Principal);

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"strongroom\""),
    )
}

impl FromRequestParts<Arc<Shared>> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthenticated(
                "an API key is required (Authorization: Bearer sr_...)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(auth::bearer)
            .ok_or_else(|| unauthenticated("malformed Authorization header"))?
            .to_owned();
        let firms = shared.firms.clone();
        let result = tokio::task::spawn_blocking(move || firms.authenticate(&token))
            .await
            .map_err(|e| Problem::internal(&e))?;
        match result {
            Ok(p) => Ok(Authenticated(p)),
            Err(AuthError::Firm(
                e @ (FirmError::Store(_) | FirmError::Key(_) | FirmError::Crypto(_)),
            )) => Err(Problem::from(e)),
            Err(AuthError::Firm(FirmError::Maintenance)) => {
                Err(Problem::from(FirmError::Maintenance))
            }
            Err(e) => {
                tracing::info!(reason = %e, "authentication failed");
                Err(unauthenticated("invalid, revoked or expired API key"))
            }
        }
    }
}

/// Tenant scope: the credential's firm must be the URL's firm. Unknown and
/// foreign firm ids get the same answer, so the API is no existence oracle.
// Security invariant: cross-tenant access is 403 before anything else runs.
fn scope(principal: &Principal, firm_in_url: &str) -> Result<FirmId, Problem> {
    match FirmId::parse(firm_in_url) {
        Some(id) if id == principal.firm => Ok(id),
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden_firm",
            "this credential does not grant access to that firm",
        )),
    }
}

fn require_role(principal: &Principal, at_least: Role) -> Result<(), Problem> {
    if principal.role <= at_least {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!("this action needs the {} role or higher", at_least.as_str()),
        ))
    }
}

/// A JSON body, parsed strictly; errors are problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> ApiJson<T> {
    fn parse(headers: &axum::http::HeaderMap, body: &Bytes) -> Result<Self, Problem> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        serde_json::from_slice(body).map(ApiJson).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("invalid JSON body: {e}"),
            )
        })
    }
}

/// The public view of a firm.
#[derive(Serialize)]
pub struct FirmView {
    id: String,
    name: String,
    state: String,
    created_at: String,
    profile: serde_json::Map<String, serde_json::Value>,
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, FirmError> + Send + 'static,
) -> Result<R, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(Problem::from)
}

fn firm_view(shared: &Shared, id: &FirmId) -> Result<FirmView, FirmError> {
    let row = shared.firms.row(id)?;
    let profile = shared
        .firms
        .profile(id)?
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    Ok(FirmView {
        id: row.id,
        name: row.name,
        state: row.state,
        created_at: row.created_at,
        profile,
    })
}

/// `GET /api/v1/firms/{firm_id}`
pub async fn get_firm(
    State(shared): State<Arc<Shared>>,
    Authenticated(p): Authenticated,
    Path(firm): Path<String>,
) -> Result<Json<FirmView>, Problem> {
    let id = scope(&p, &firm)?;
    Ok(Json(blocking(move || firm_view(&shared, &id)).await?))
}

/// Body of `PATCH /api/v1/firms/{firm_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    display_name: Option<String>,
    contact_email: Option<String>,
}

const MAX_PROFILE_CHARS: usize = 500;

/// `PATCH /api/v1/firms/{firm_id}`: the firm's own profile fields.
pub async fn patch_firm(
    State(shared): State<Arc<Shared>>,
    Authenticated(p): Authenticated,
    Path(firm): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<FirmView>, Problem> {
    let id = scope(&p, &firm)?;
    require_role(&p, Role::Admin)?;
    let ApiJson(patch) = ApiJson::<ProfilePatch>::parse(&headers, &body)?;
    let mut changes = Vec::new();
    for (k, v) in [
        ("display_name", patch.display_name),
        ("contact_email", patch.contact_email),
    ] {
        if let Some(v) = v {
            if v.chars().count() > MAX_PROFILE_CHARS || v.chars().any(char::is_control) {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!(
                        "{k} must be at most {MAX_PROFILE_CHARS} characters without control characters"
                    ),
                ));
            }
            changes.push((k, v));
        }
    }
    shared.firms.require_writable(&id).map_err(Problem::from)?;
    let handle = {
        let (f, id) = (shared.firms.clone(), id.clone());
        blocking(move || f.handle(&id)).await?
    };
    let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
    handle
        .db
        .write(move |tx| {
            for (k, v) in &changes {
                tx.set_profile(k, v, &now)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Problem::from(FirmError::from(e)))?;
    Ok(Json(blocking(move || firm_view(&shared, &id)).await?))
}
