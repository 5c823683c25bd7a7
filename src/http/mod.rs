//! The HTTPS API. The only module that imports axum and hyper: handlers here
//! are thin (extract, call a service, map the error) and never touch SQL or
//! key bytes.

mod api;
mod middleware;
pub mod problem;
mod routes;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use middleware::PeerAddr;

use crate::daemon::Shared;

/// Builds the API router over the daemon's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config.server.max_body_bytes;
    Router::new()
        .route("/status", get(routes::status))
        .route("/healthz", get(routes::healthz))
        .route(
            "/api/v1/firms/{firm_id}",
            get(api::get_firm).patch(api::patch_firm),
        )
        // Must come after every route: it installs the 405 handler on each.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(shared)
}
