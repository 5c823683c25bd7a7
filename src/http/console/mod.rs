//! The console: a small web UI for a firm's staff, served under `/console/`.
//!
//! Its pages are plain JavaScript modules and CSS embedded in the binary
//! (no build step, no CDN: it works air-gapped). It calls the same
//! `/api/v1` routes as any client, under the same policy; what it adds is
//! a way to hold a person's session in the browser:
//!
//! - `POST /console/session/{firm_id}` signs in like `POST
//!   /api/v1/sessions/{firm_id}` but puts the token in a `__Host-` cookie
//!   (`Secure; HttpOnly; SameSite=Strict; Path=/`) that page scripts cannot
//!   read, and answers with the session's CSRF token instead;
//! - `GET /console/session/{firm_id}` gives a signed-in page its user and
//!   CSRF token again (after a reload);
//! - `DELETE /console/session/{firm_id}` revokes the session server-side and
//!   clears the cookie.
//!
//! The authz layer accepts the cookie in place of `Authorization`, and
//! refuses any method but GET and HEAD without the CSRF token.

mod assets;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use super::sessions::{ClientOrigin, SignInBody};
use crate::auth::policy::{Permission, perm};
use crate::firms::FirmError;
use crate::ids::{FirmId, SessionId};
use crate::people::{SessionView, UserView};

/// The cookie holding a console session's token. `__Host-`: the browser
/// keeps it only if it is `Secure`, has `Path=/` and no `Domain`, so no
/// other host (not even a subdomain) can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-strongroom-session";

/// The header carrying the session's CSRF token.
pub static CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");

/// The console's content security policy: its own scripts, styles and
/// connections only; no inline script or style, no `eval`, no framing.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'; object-src 'none'";

/// The console's route templates (for the request metrics' route label).
pub(super) const ROUTES: [&str; 4] = [
    "/console",
    "/console/",
    "/console/{*path}",
    "/console/session/{firm_id}",
];

/// Whether a request path is the console's (its responses get [`CONSOLE_CSP`]).
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// The console's session token from the request's cookies, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

fn set_cookie(token: &str) -> Result<HeaderValue, Problem> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Secure; HttpOnly; SameSite=Strict; Path=/"
    ))
    .map_err(|_| Problem::internal(&"session token is not a header value"))
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-strongroom-session=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// What a signed-in page holds: never the session token.
#[derive(Serialize)]
pub struct ConsoleSession {
    firm: String,
    session: Option<SessionView>,
    user: UserView,
    mfa_enrolment_required: bool,
    /// Send as `X-CSRF-Token` with every state-changing request.
    csrf_token: String,
    /// What the policy grants this session now (the page shows only what
    /// it may use; the API decides again on every request).
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<Vec<&'static str>>,
}

fn session_id(view: &SessionView) -> Result<SessionId, Problem> {
    SessionId::parse(&view.id).ok_or_else(|| Problem::internal(&"session id does not parse"))
}

/// `POST /console/session/{firm_id}`: sign in; the token goes in the cookie.
async fn sign_in(
    State(shared): State<Arc<AppState>>,
    Path(firm): Path<String>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let ApiJson(b) = ApiJson::<SignInBody>::parse(&headers, &body)?;
    let firm = FirmId::parse(&firm).ok_or_else(|| Problem::from(FirmError::InvalidCredentials))?;
    let signed = shared
        .people
        .clone()
        .sign_in(firm.clone(), b.into_sign_in(), origin)
        .await?;
    let cookie = set_cookie(signed.token.reveal())?;
    let session = session_id(&signed.session)?;
    let people = shared.people.clone();
    let f = firm.clone();
    let csrf_token = blocking(move || people.csrf_token(&f, &session)).await?;
    let body = ConsoleSession {
        firm: firm.to_string(),
        mfa_enrolment_required: signed.mfa_enrolment_required,
        session: Some(signed.session),
        user: signed.user,
        csrf_token,
        permissions: None,
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /console/session/{firm_id}`: the signed-in user and the CSRF token.
async fn current(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<Json<ConsoleSession>, Problem> {
    let p = auth.principal();
    let firm = p.firm.clone();
    let firm_name = firm.to_string();
    let permissions = Permission::ALL
        .iter()
        .filter(|q| crate::auth::policy::decide(p, **q, &firm).allowed)
        .map(|q| q.as_str())
        .collect();
    let enrolment_only = p.enrolment_only;
    let session = p
        .actor
        .session()
        .cloned()
        .ok_or_else(|| Problem::internal(&"account route without a session"))?;
    let people = shared.people.clone();
    let (user, csrf_token) = blocking(move || {
        let user = people.me(&auth)?;
        Ok((user, people.csrf_token(&firm, &session)?))
    })
    .await?;
    Ok(Json(ConsoleSession {
        firm: firm_name,
        session: None,
        user,
        mfa_enrolment_required: enrolment_only,
        csrf_token,
        permissions: Some(permissions),
    }))
}

/// `DELETE /console/session/{firm_id}`: sign out: the session is revoked
/// and the cookie cleared.
async fn sign_out(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<Response, Problem> {
    let people = shared.people.clone();
    blocking(move || people.revoke_my_session(&auth, "current")).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie());
    Ok(resp)
}

/// `GET /console`: the console lives under `/console/`.
async fn to_index() -> Redirect {
    Redirect::permanent("/console/")
}

async fn index() -> Response {
    assets::serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    assets::serve(&path)
}

/// The console's routes (not part of the API document: they serve the
/// page and its cookie). Sign-in is throttled per source like the API's.
pub(super) fn routes(shared: &Arc<AppState>) -> Router<Arc<AppState>> {
    let per_source =
        || axum::middleware::from_fn_with_state(shared.clone(), super::ratelimit::per_source);
    let account = || {
        axum::middleware::from_fn_with_state(
            (shared.clone(), Permission::Account),
            super::authz::enforce,
        )
    };
    Router::new()
        .route(ROUTES[0], get(to_index).route_layer(per_source()))
        .route(ROUTES[1], get(index).route_layer(per_source()))
        .route(ROUTES[2], get(asset).route_layer(per_source()))
        .route(
            ROUTES[3],
            axum::routing::post(sign_in)
                .route_layer(per_source())
                .merge(get(current).delete(sign_out).route_layer(account())),
        )
}
