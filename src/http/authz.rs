//! Authentication and authorization for `/api/v1/<resource>/{firm_id}/...`.
//!
//! The route table gives every API route its permission; [`enforce`] runs on
//! each of them before the handler: it checks the bearer token, then asks the
//! policy (tenant scope first, then overrides, then the role). Handlers take
//! [`Authz<P>`], which yields the policy's `Authorized<P>` proof that the
//! services require, and refuses to run if the table gave the route a
//! different permission than the handler's type names.
//!
//! A request may instead carry a person's session in the console's
//! `__Host-` cookie; then every method but GET and HEAD must also carry
//! the session's CSRF token (`X-CSRF-Token`), else 403 `csrf_failed`. The
//! policy is the same either way: the console has no power of its own.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::middleware::PeerAddr;
use super::problem::Problem;
use crate::audit::Outcome;
use crate::auth::AuthError;
use crate::auth::policy::{self, Authorized, Decision, Permission, perm};
use crate::auth::{self, Origin, Principal};
use crate::firms::FirmError;
use crate::ids::FirmId;

/// Who asked and what the policy said: put on the response for the request
/// log line (and, later, the audit log).
#[derive(Debug, Clone)]
pub struct RequestActor {
    pub firm: String,
    /// A key id, or `user:<id>`.
    pub actor: String,
    /// A person's session id.
    pub session: Option<String>,
    pub permission: Permission,
    pub rule: String,
}

/// The policy's grant for this request, left for the handler.
#[derive(Debug, Clone)]
struct Granted {
    principal: Principal,
    permission: Permission,
    firm: FirmId,
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"strongroom\""),
    )
}

fn denied(decision: Decision) -> Problem {
    let detail = match decision.rule.denial_code() {
        "forbidden_firm" => "this credential does not grant access to that firm",
        "forbidden_override" => "this credential's deny list forbids this action",
        "forbidden_credential" => {
            "this route is a person's own: sign in (an API key has no account)"
        }
        "csrf_failed" => {
            "a state-changing request with the console's session cookie needs the session's X-CSRF-Token header"
        }
        "mfa_enrolment_required" => {
            "this session must enrol a second factor first (POST /api/v1/me/{firm_id}/totp)"
        }
        _ => "this credential's role does not allow this action",
    };
    Problem::new(StatusCode::FORBIDDEN, decision.rule.denial_code(), detail)
}

/// How a request presented its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// `Authorization: Bearer`: a browser never adds it by itself.
    Bearer,
    /// The console's session cookie: a browser attaches it by itself, so a
    /// state-changing request must also carry the session's CSRF token.
    Cookie,
}

/// The request's credential: the `Authorization` header, else the
/// console's session cookie (a session token only, never an API key).
fn credential(parts: &Parts) -> Result<(String, Carrier), Problem> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(auth::bearer)
            .ok_or_else(|| unauthenticated("malformed Authorization header"))?;
        return Ok((token.to_owned(), Carrier::Bearer));
    }
    match super::console::session_cookie(&parts.headers) {
        Some(token) if token.starts_with(crate::people::SESSION_PREFIX) => {
            Ok((token.to_owned(), Carrier::Cookie))
        }
        Some(_) => Err(unauthenticated("malformed session cookie")),
        None => Err(unauthenticated(
            "a credential is required (Authorization: Bearer sr_... for an API key, srs_... for a session)",
        )),
    }
}

/// Whether a state-changing request that came with the console's cookie
/// carries its session's CSRF token (a safe method changes nothing, so
/// needs none).
async fn csrf_holds(
    shared: &Arc<AppState>,
    parts: &Parts,
    principal: &Principal,
) -> Result<bool, Problem> {
    if matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return Ok(true);
    }
    let presented = parts
        .headers
        .get(&super::console::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    let (Some(session), Some(presented)) = (principal.actor.session().cloned(), presented) else {
        return Ok(false);
    };
    let (people, firm, presented) = (
        shared.people.clone(),
        principal.firm.clone(),
        presented.to_owned(),
    );
    super::api::blocking(move || people.csrf_matches(&firm, &session, &presented)).await
}

async fn authenticate(
    shared: &Arc<AppState>,
    parts: &Parts,
) -> Result<(Principal, Carrier), Problem> {
    let (token, carrier) = credential(parts)?;
    // A firm that is open and a key or session seen before: no database
    // read, so no trip to a blocking thread.
    let result = if token.starts_with(crate::people::SESSION_PREFIX) {
        let people = shared.people.clone();
        match people.authenticate_cached(&token) {
            Some(r) => r,
            None => super::api::lane(move || people.authenticate(&token)).await?,
        }
    } else {
        let keys = shared.keys.clone();
        match keys.authenticate_cached(&token) {
            Some(r) => r,
            None => super::api::lane(move || keys.authenticate(&token)).await?,
        }
    };
    match result {
        Ok(p) => Ok((p, carrier)),
        Err(AuthError::Firm(
            e @ (FirmError::Store(_)
            | FirmError::Key(_)
            | FirmError::Crypto(_)
            | FirmError::Maintenance),
        )) => Err(Problem::from(e)),
        Err(e) => {
            tracing::info!(reason = %e, "authentication failed");
            // A key of an existing firm that failed: that firm's log records it.
            if matches!(
                e,
                AuthError::UnknownKey
                    | AuthError::UnknownSession
                    | AuthError::SessionEnded
                    | AuthError::BadSecret
                    | AuthError::Revoked
                    | AuthError::Expired
            ) {
                if let Some(t) = token_ids(parts) {
                    let keys = shared.keys.clone();
                    let origin = origin(parts);
                    let reason = e.to_string();
                    let logged = tokio::task::spawn_blocking(move || {
                        keys.audit_auth_failure(&t.0, &t.1, &origin, &reason)
                    })
                    .await;
                    if let Ok(Err(err)) = logged {
                        tracing::error!(error = %err, "could not audit a failed authentication");
                    }
                }
            }
            Err(unauthenticated(
                "invalid, revoked or expired credential (a session also ends when idle, at its lifetime, or when its user is disabled)",
            ))
        }
    }
}

/// The firm and key (or session) ids named by the request's token (never
/// its secret).
fn token_ids(parts: &Parts) -> Option<(FirmId, String)> {
    let (token, _) = credential(parts).ok()?;
    let token = token.as_str();
    if let Some((firm, session)) = crate::people::session_token_ids(token) {
        return Some((firm, session));
    }
    let t = auth::parse_token(token)?;
    Some((t.firm, t.key.to_string()))
}

pub(super) fn origin(parts: &Parts) -> Origin {
    Origin {
        request_id: super::problem::current_request_id(),
        source_ip: parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| p.0.ip().to_string())
            .unwrap_or_default(),
    }
}

/// The route layer for an API route needing `permission`.
pub async fn enforce(
    State((shared, permission)): State<(Arc<AppState>, Permission)>,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Response {
    let ip = super::ratelimit::peer_ip(&req);
    // A source that keeps failing to authenticate is refused before its
    // credential is checked (and before the audit log hears of it again).
    if let Some(r) = shared.limits.auth_blocked(ip) {
        return super::ratelimit::refused(r);
    }
    let (mut parts, body) = req.into_parts();
    let (mut principal, csrf_ok) = match authenticate(&shared, &parts).await {
        // Security invariant: a cookie-borne session changes nothing
        // without its CSRF token.
        Ok((p, Carrier::Cookie)) => match csrf_holds(&shared, &parts, &p).await {
            Ok(ok) => (p, ok),
            Err(problem) => return problem.into_response(),
        },
        Ok((p, Carrier::Bearer)) => (p, true),
        Err(problem) => {
            if problem.status == StatusCode::UNAUTHORIZED {
                shared.limits.note_auth_failure(ip);
            }
            return problem.into_response();
        }
    };
    principal.origin = origin(&parts);
    // Unknown and foreign firm ids decide alike (tenant scope), so the API is
    // no existence oracle.
    let url_firm = params
        .iter()
        .find(|(k, _)| *k == "firm_id")
        .and_then(|(_, v)| FirmId::parse(v));
    let decision = match &url_firm {
        _ if !csrf_ok => Decision {
            allowed: false,
            rule: policy::Rule::Csrf,
        },
        Some(f) => policy::decide(&principal, permission, f),
        None => Decision {
            allowed: false,
            rule: policy::Rule::TenantScope,
        },
    };
    let actor = RequestActor {
        firm: principal.firm.to_string(),
        actor: principal.actor.label(),
        session: principal.actor.session().map(ToString::to_string),
        permission,
        rule: decision.rule.name(),
    };
    let mut resp = match url_firm {
        Some(firm) if decision.allowed => {
            // Security invariant: a firm's requests are limited per class, so one firm cannot starve the rest.
            match shared
                .limits
                .check_firm(&firm, crate::limits::Class::of(permission))
            {
                Err(r) => super::ratelimit::refused(r),
                Ok(allowance) => {
                    parts.extensions.insert(Granted {
                        principal,
                        permission,
                        firm,
                    });
                    let mut resp = next.run(Request::from_parts(parts, body)).await;
                    if let Some(a) = allowance {
                        super::ratelimit::annotate(&mut resp, a);
                    }
                    resp
                }
            }
        }
        _ => {
            // Every denial is audited, in the caller's own firm's log.
            let trail = shared.trail.clone();
            // The route template, never the raw path (client input, could hold anything).
            let resource = parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map_or_else(|| "<unmatched>".to_owned(), |m| m.as_str().to_owned());
            let details = serde_json::json!({ "method": parts.method.as_str(), "route": resource });
            let logged = tokio::task::spawn_blocking(move || {
                trail.audit_refusal(
                    &principal,
                    decision,
                    permission.as_str(),
                    &resource,
                    Outcome::Denied,
                    details,
                )
            })
            .await;
            if let Ok(Err(err)) = logged {
                tracing::error!(error = %err, "could not audit a denied request");
            }
            denied(decision).into_response()
        }
    };
    resp.extensions_mut().insert(actor);
    resp
}

/// A handler's proof of authorization for `P`.
pub struct Authz<P: perm::Marker>(pub Authorized<P>);

impl<P: perm::Marker> FromRequestParts<Arc<AppState>> for Authz<P> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        _shared: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(g) = parts.extensions.remove::<Granted>() else {
            return Err(Problem::internal(&"route has no policy layer"));
        };
        if g.permission != P::PERMISSION {
            return Err(Problem::internal(&format!(
                "route table grants {} but the handler needs {}",
                g.permission,
                P::PERMISSION
            )));
        }
        policy::authorize::<P>(g.principal, &g.firm)
            .map(Authz)
            .map_err(denied)
    }
}
