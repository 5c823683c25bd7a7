//! The HTTPS API. The only module that imports axum and hyper: handlers here
//! are thin (extract, call a service, map the error) and never touch SQL or
//! key bytes.

mod api;
mod audit;
mod authz;
mod body;
pub mod conn;
mod console;
mod erasure;
mod evidence;
mod keys;
pub mod metrics;
mod middleware;
mod numbers;
mod openapi;
pub mod outbound;
pub mod problem;
mod ratelimit;
mod records;
mod routes;
mod secrets;
pub mod server;
mod sessions;
mod subjects;
mod users;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, patch, post, put};

pub use middleware::PeerAddr;

use crate::audit::{AuditLog, AuditTrail};
use crate::auth::Keys;
use crate::auth::policy::Permission;
use crate::firms::Lifecycle;
use crate::people::People;
use crate::records::Records;
use crate::runtime::Runtime;
use crate::vault::Vault;

/// What the HTTP layer serves from: the capability services and the
/// runtime facts, built by the daemon and handed down.
#[derive(Debug)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub lifecycle: Arc<Lifecycle>,
    pub keys: Arc<Keys>,
    pub people: Arc<People>,
    pub limits: Arc<crate::limits::Limits>,
    pub records: Arc<Records>,
    pub evidence: Arc<crate::evidence::Evidence>,
    pub erasures: Arc<crate::erasure::Erasures>,
    pub vault: Arc<Vault>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    pub audit: Arc<AuditLog>,
    pub trail: Arc<AuditTrail>,
    /// Largest request body accepted (`server.max_body_bytes`).
    pub max_body_bytes: usize,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (status and health only).
    Public,
    /// Anyone, with a credential in the body (sign-in, enrolment): under
    /// the firm in the URL, throttled per source address.
    SignIn,
    /// A key of the firm in the URL whose policy grants this permission.
    Firm(Permission),
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

type Handler = MethodRouter<Arc<AppState>>;

/// The route table: every route the daemon serves, with who may call it.
/// The router is built from this table and nothing else, so the permission
/// map cannot drift from what is served (a test walks it).
fn table() -> Vec<(RouteSpec, Handler)> {
    use Access::{Firm, Public, SignIn};
    use Permission as P;
    let r = |method, path, access, h: Handler| {
        (
            RouteSpec {
                method,
                path,
                access,
            },
            h,
        )
    };
    vec![
        r(Method::GET, "/status", Public, get(routes::status)),
        r(Method::GET, "/healthz", Public, get(routes::healthz)),
        r(
            Method::GET,
            "/api/v1/openapi.json",
            Public,
            get(openapi::serve),
        ),
        r(
            Method::GET,
            "/api/v1/firms/{firm_id}",
            Firm(P::FirmRead),
            get(api::get_firm),
        ),
        r(
            Method::PATCH,
            "/api/v1/firms/{firm_id}",
            Firm(P::FirmUpdate),
            patch(api::patch_firm),
        ),
        r(
            Method::POST,
            "/api/v1/keys/{firm_id}",
            Firm(P::KeysCreate),
            post(keys::mint),
        ),
        r(
            Method::GET,
            "/api/v1/keys/{firm_id}",
            Firm(P::KeysRead),
            get(keys::list),
        ),
        r(
            Method::GET,
            "/api/v1/keys/{firm_id}/{key_id}",
            Firm(P::KeysRead),
            get(keys::show),
        ),
        r(
            Method::DELETE,
            "/api/v1/keys/{firm_id}/{key_id}",
            Firm(P::KeysRevoke),
            delete(keys::revoke),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}",
            Firm(P::AuditRead),
            get(audit::list),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/verify",
            Firm(P::AuditRead),
            get(audit::verify),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/checkpoint",
            Firm(P::AuditRead),
            get(audit::checkpoint),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/export",
            Firm(P::AuditRead),
            get(audit::export),
        ),
        r(
            Method::GET,
            "/api/v1/subjects/{firm_id}",
            Firm(P::RecordsReadSensitive),
            get(subjects::access),
        ),
        r(
            Method::POST,
            "/api/v1/erasure/{firm_id}",
            Firm(P::SubjectsErase),
            post(erasure::erase),
        ),
        r(
            Method::GET,
            "/api/v1/evidence/{firm_id}",
            Firm(P::AuditRead),
            get(evidence::bundle),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/verifier-key",
            Firm(P::AuditRead),
            get(audit::verifier_key),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/proof/inclusion",
            Firm(P::AuditRead),
            get(audit::inclusion),
        ),
        r(
            Method::GET,
            "/api/v1/audit/{firm_id}/proof/consistency",
            Firm(P::AuditRead),
            get(audit::consistency),
        ),
        r(
            Method::POST,
            "/api/v1/keys/{firm_id}/{key_id}/rotate",
            Firm(P::KeysRotate),
            post(keys::rotate),
        ),
        r(
            Method::PUT,
            "/api/v1/collections/{firm_id}/{collection}",
            Firm(P::CollectionsWrite),
            put(records::put_collection),
        ),
        r(
            Method::GET,
            "/api/v1/collections/{firm_id}/{collection}",
            Firm(P::RecordsRead),
            get(records::get_collection),
        ),
        r(
            Method::POST,
            "/api/v1/records/{firm_id}/{collection}",
            Firm(P::RecordsWrite),
            post(records::create),
        ),
        r(
            Method::GET,
            "/api/v1/records/{firm_id}/{collection}",
            Firm(P::RecordsRead),
            get(records::list),
        ),
        r(
            Method::GET,
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            Firm(P::RecordsRead),
            get(records::get),
        ),
        r(
            Method::PUT,
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            Firm(P::RecordsWrite),
            put(records::replace),
        ),
        r(
            Method::PATCH,
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            Firm(P::RecordsWrite),
            patch(records::patch),
        ),
        r(
            Method::DELETE,
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            Firm(P::RecordsDelete),
            delete(records::delete),
        ),
        r(
            Method::GET,
            "/api/v1/secrets/{firm_id}",
            Firm(P::SecretsRead),
            get(secrets::list),
        ),
        r(
            Method::PUT,
            "/api/v1/secrets/{firm_id}/{name}",
            Firm(P::SecretsWrite),
            put(secrets::put),
        ),
        r(
            Method::GET,
            "/api/v1/secrets/{firm_id}/{name}",
            Firm(P::SecretsRead),
            get(secrets::show),
        ),
        r(
            Method::DELETE,
            "/api/v1/secrets/{firm_id}/{name}",
            Firm(P::SecretsDelete),
            delete(secrets::delete),
        ),
        r(
            Method::POST,
            "/api/v1/secrets/{firm_id}/{name}/verify",
            Firm(P::SecretsVerify),
            post(secrets::verify),
        ),
        r(
            Method::POST,
            "/api/v1/webhooks/{firm_id}",
            Firm(P::WebhooksWrite),
            post(webhooks::create),
        ),
        r(
            Method::GET,
            "/api/v1/webhooks/{firm_id}",
            Firm(P::WebhooksRead),
            get(webhooks::list),
        ),
        r(
            Method::GET,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            Firm(P::WebhooksRead),
            get(webhooks::show),
        ),
        r(
            Method::PATCH,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            Firm(P::WebhooksWrite),
            patch(webhooks::update),
        ),
        r(
            Method::DELETE,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            Firm(P::WebhooksWrite),
            delete(webhooks::delete),
        ),
        r(
            Method::POST,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/rotate",
            Firm(P::WebhooksWrite),
            post(webhooks::rotate),
        ),
        r(
            Method::GET,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/attempts",
            Firm(P::WebhooksRead),
            get(webhooks::attempts),
        ),
        r(
            Method::POST,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/messages/{message_id}/redeliver",
            Firm(P::WebhooksWrite),
            post(webhooks::redeliver),
        ),
        r(
            Method::POST,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/redeliver",
            Firm(P::WebhooksWrite),
            post(webhooks::redeliver_failed),
        ),
        r(
            Method::POST,
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/test",
            Firm(P::WebhooksWrite),
            post(webhooks::test_event),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}",
            Firm(P::UsersInvite),
            post(users::invite),
        ),
        r(
            Method::GET,
            "/api/v1/users/{firm_id}",
            Firm(P::UsersRead),
            get(users::list),
        ),
        r(
            Method::GET,
            "/api/v1/users/{firm_id}/{user_id}",
            Firm(P::UsersRead),
            get(users::show),
        ),
        r(
            Method::PATCH,
            "/api/v1/users/{firm_id}/{user_id}",
            Firm(P::UsersUpdate),
            patch(users::update),
        ),
        r(
            Method::DELETE,
            "/api/v1/users/{firm_id}/{user_id}",
            Firm(P::UsersDelete),
            delete(users::delete),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}/{user_id}/invitation",
            Firm(P::UsersUpdate),
            post(users::reinvite),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}/{user_id}/disable",
            Firm(P::UsersUpdate),
            post(users::disable),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}/{user_id}/enable",
            Firm(P::UsersUpdate),
            post(users::enable),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}/{user_id}/unlock",
            Firm(P::UsersUpdate),
            post(users::unlock),
        ),
        r(
            Method::POST,
            "/api/v1/users/{firm_id}/{user_id}/reset-mfa",
            Firm(P::UsersUpdate),
            post(users::reset_mfa),
        ),
        r(
            Method::GET,
            "/api/v1/users/{firm_id}/{user_id}/sessions",
            Firm(P::UsersRead),
            get(users::sessions),
        ),
        r(
            Method::DELETE,
            "/api/v1/users/{firm_id}/{user_id}/sessions",
            Firm(P::UsersUpdate),
            delete(users::revoke_sessions),
        ),
        r(
            Method::POST,
            "/api/v1/sessions/{firm_id}",
            SignIn,
            post(sessions::sign_in),
        ),
        r(
            Method::GET,
            "/api/v1/sessions/{firm_id}",
            Firm(P::Account),
            get(sessions::list),
        ),
        r(
            Method::DELETE,
            "/api/v1/sessions/{firm_id}",
            Firm(P::Account),
            delete(sessions::revoke_all),
        ),
        r(
            Method::DELETE,
            "/api/v1/sessions/{firm_id}/{session_id}",
            Firm(P::Account),
            delete(sessions::revoke),
        ),
        r(
            Method::POST,
            "/api/v1/sessions/{firm_id}/refresh",
            Firm(P::Account),
            post(sessions::refresh),
        ),
        r(
            Method::GET,
            "/api/v1/me/{firm_id}",
            Firm(P::Account),
            get(sessions::me),
        ),
        r(
            Method::POST,
            "/api/v1/me/{firm_id}/password",
            Firm(P::Account),
            post(sessions::password),
        ),
        r(
            Method::POST,
            "/api/v1/me/{firm_id}/totp",
            Firm(P::Account),
            post(sessions::totp_begin),
        ),
        r(
            Method::POST,
            "/api/v1/me/{firm_id}/totp/confirm",
            Firm(P::Account),
            post(sessions::totp_confirm),
        ),
        r(
            Method::POST,
            "/api/v1/me/{firm_id}/recovery-codes",
            Firm(P::Account),
            post(sessions::recovery_codes),
        ),
        r(
            Method::POST,
            "/api/v1/enrolment/{firm_id}",
            SignIn,
            post(sessions::enrol_start),
        ),
        r(
            Method::POST,
            "/api/v1/enrolment/{firm_id}/confirm",
            SignIn,
            post(sessions::enrol_confirm),
        ),
    ]
}

/// A route template as a static metrics label (the table's own string);
/// anything else is `<unmatched>`, so the label set stays bounded.
pub(crate) fn route_label(route: &str) -> &'static str {
    static PATHS: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    PATHS
        .get_or_init(|| route_table().into_iter().map(|r| r.path).collect())
        .get(route)
        .copied()
        .or_else(|| console::ROUTES.iter().find(|r| **r == route).copied())
        .unwrap_or("<unmatched>")
}

/// The route table without its handlers (for tests and documentation).
pub fn route_table() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

/// Builds the API router over the daemon's shared state.
pub fn router(shared: Arc<AppState>) -> Router {
    let body_limit = shared.max_body_bytes;
    let mut router = Router::new();
    for (spec, handler) in table() {
        let handler = match spec.access {
            // Routes anyone may call: limited per source address.
            Access::Public | Access::SignIn => handler.route_layer(
                axum::middleware::from_fn_with_state(shared.clone(), ratelimit::per_source),
            ),
            // Security invariant: every firm route runs authentication and the policy first.
            Access::Firm(permission) => handler.route_layer(axum::middleware::from_fn_with_state(
                (shared.clone(), permission),
                authz::enforce,
            )),
        };
        router = router.route(spec.path, handler);
    }
    router = router.merge(console::routes(&shared));
    router
        // Must come after every route: it installs the 405 handler on each.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            body_limit as u64,
            middleware::observe,
        ))
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::auth::policy::role_grants;

    /// The drift guard: every route is in the permission map, every API
    /// route is tenant-scoped, and nothing that changes state is public.
    #[test]
    fn every_route_has_a_policy_entry() {
        let table = route_table();
        let mut seen = std::collections::HashSet::new();
        for r in &table {
            assert!(
                seen.insert((r.method.clone(), r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            match r.access {
                Access::Public => {
                    assert_eq!(r.method, Method::GET, "{} {} is public", r.method, r.path);
                    // The API's description is public: it holds no data.
                    assert!(
                        !r.path.starts_with("/api/") || r.path == "/api/v1/openapi.json",
                        "{} is public",
                        r.path
                    );
                }
                Access::SignIn => {
                    // Only the routes that take a credential in their body.
                    assert!(
                        [
                            "/api/v1/sessions/{firm_id}",
                            "/api/v1/enrolment/{firm_id}",
                            "/api/v1/enrolment/{firm_id}/confirm",
                        ]
                        .contains(&r.path)
                            && r.method == Method::POST,
                        "{} {} is open to anyone",
                        r.method,
                        r.path
                    );
                }
                Access::Firm(p) => {
                    let rest = r.path.strip_prefix("/api/v1/").unwrap_or("");
                    let mut segs = rest.split('/');
                    let resource = segs.next().unwrap_or("");
                    assert!(!resource.is_empty(), "{} is not under /api/v1/", r.path);
                    assert_eq!(
                        segs.next(),
                        Some("{firm_id}"),
                        "{} is not tenant-scoped",
                        r.path
                    );
                    if r.method != Method::GET {
                        assert!(
                            !p.as_str().ends_with(":read"),
                            "{} {} writes with {p}",
                            r.method,
                            r.path
                        );
                    }
                }
            }
        }
        // Every permission guards some route: no dead entries in the matrix.
        // (records:read_sensitive guards no route: it decides, inside the
        // record reads, whether sensitive fields come back in clear.)
        for p in Permission::ALL {
            assert!(
                *p == Permission::RecordsReadSensitive
                    || table.iter().any(|r| r.access == Access::Firm(*p)),
                "{p} guards no route"
            );
        }
    }

    /// README's permission matrix is the code's.
    #[test]
    fn readme_documents_the_matrix_and_routes() {
        let readme = include_str!("../../README.md");
        for p in Permission::ALL {
            let marks: Vec<&str> = [Role::Owner, Role::Admin, Role::Operator, Role::Viewer]
                .iter()
                .map(|r| {
                    if role_grants(*r).contains(p) {
                        "✓"
                    } else {
                        "–"
                    }
                })
                .collect();
            let row = format!("| `{}` | {} |", p.as_str(), marks.join(" | "));
            assert!(readme.contains(&row), "README lacks the row: {row}");
        }
        for r in route_table() {
            let needle = format!("`{} {}`", r.method, r.path);
            assert!(readme.contains(&needle), "README lacks the route {needle}");
        }
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
