//! `/api/v1/...`: authenticated, tenant-scoped resources.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::firms::{FirmError, FirmView};

/// A JSON body, parsed strictly; errors are problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> ApiJson<T> {
    pub(super) fn parse(headers: &axum::http::HeaderMap, body: &Bytes) -> Result<Self, Problem> {
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
        super::numbers::check(body)?;
        serde_json::from_slice(body).map(ApiJson).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("invalid JSON body: {e}"),
            )
        })
    }
}

/// A count or sequence number in a query string: 0 to 2^63 - 1, the range
/// of the `int64` the API document declares (a larger value is refused, not
/// wrapped or lowered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count(pub u64);

impl Count {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .map(Count)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        i64::try_from(n)
            .map(|_| Count(n))
            .map_err(|_| serde::de::Error::custom("a count is at most 9223372036854775807"))
    }
}

fn bad_query(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// The query string, parsed strictly: a parameter given twice is refused
/// (which value was meant?), and so is one the route does not know.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| bad_query(format!("malformed query string: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for (k, _) in &pairs {
            if !seen.insert(k.as_str()) {
                return Err(bad_query(format!("{k} is given more than once")));
            }
        }
        serde_urlencoded::from_str(q)
            .map(ApiQuery)
            .map_err(|e| bad_query(e.to_string()))
    }
}

/// Runs blocking request work on one of the service layer's bounded lanes.
pub(super) async fn lane<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, Problem> {
    crate::firms::lane(f).await.map_err(Problem::from)
}

pub(super) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, FirmError> + Send + 'static,
) -> Result<R, Problem> {
    crate::firms::blocking(f).await.map_err(Problem::from)
}

/// `GET /api/v1/firms/{firm_id}`
pub async fn get_firm(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::FirmRead>,
) -> Result<Json<FirmView>, Problem> {
    let svc = shared.lifecycle.clone();
    Ok(Json(blocking(move || svc.view(&auth)).await?))
}

/// Body of `PATCH /api/v1/firms/{firm_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    display_name: Option<String>,
    contact_email: Option<String>,
    /// `required`, `required_for_admins` (the default) or `optional`.
    #[schema(value_type = Option<crate::people::MfaPolicy>)]
    mfa_policy: Option<String>,
}

pub(super) const MAX_PROFILE_CHARS: usize = 500;

/// `PATCH /api/v1/firms/{firm_id}`: the firm's own profile fields.
pub async fn patch_firm(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::FirmUpdate>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<FirmView>, Problem> {
    let ApiJson(patch) = ApiJson::<ProfilePatch>::parse(&headers, &body)?;
    let mut changes = Vec::new();
    if let Some(p) = patch.mfa_policy {
        if crate::people::MfaPolicy::parse(&p).is_none() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "mfa_policy must be one of required, required_for_admins, optional",
            ));
        }
        changes.push((crate::people::MfaPolicy::PROFILE_KEY, p));
    }
    for (k, v) in [
        ("display_name", patch.display_name),
        ("contact_email", patch.contact_email),
    ] {
        if let Some(v) = v {
            if v.chars().count() > MAX_PROFILE_CHARS
                || v.chars()
                    .any(|c| c.is_control() || crate::ids::is_invisible_format(c))
            {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!(
                        "{k} must be at most {MAX_PROFILE_CHARS} characters without control, bidirectional or invisible formatting characters"
                    ),
                ));
            }
            changes.push((k, v));
        }
    }
    let svc = shared.lifecycle.clone();
    Ok(Json(
        blocking(move || svc.set_profile(&auth, changes)).await?,
    ))
}
