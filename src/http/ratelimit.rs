//! Rate-limit answers and headers: 429 `rate_limited` with `Retry-After`,
//! and on every limited route the `RateLimit-Policy` and `RateLimit`
//! headers of the IETF httpapi draft (`"<class>";q=<quota>;w=<window>` and
//! `"<class>";r=<remaining>;t=<seconds to full>`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::middleware::PeerAddr;
use super::problem::Problem;
use crate::limits::{Allowance, Refusal};

static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static STATE: HeaderName = HeaderName::from_static("ratelimit");

fn set(resp: &mut Response, name: &HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name.clone(), v);
    }
}

/// Adds the headers of a request that was let through.
pub(super) fn annotate(resp: &mut Response, a: Allowance) {
    set(
        resp,
        &POLICY,
        format!("\"{}\";q={};w={}", a.class, a.quota, a.window),
    );
    set(
        resp,
        &STATE,
        format!("\"{}\";r={};t={}", a.class, a.remaining, a.reset),
    );
}

/// The 429 for a refused request.
pub(super) fn refused(r: Refusal) -> Response {
    let detail = match r.class {
        "failed_auth" => {
            "too many failed authentications from this address; retry later".to_owned()
        }
        "unauthenticated" => "too many requests from this address; retry later".to_owned(),
        class => format!("this firm's {class} rate limit is reached; retry later"),
    };
    let mut resp = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&r.retry_after.to_string())
                .unwrap_or(HeaderValue::from_static("1")),
        )
        .into_response();
    set(
        &mut resp,
        &POLICY,
        format!("\"{}\";q={};w={}", r.class, r.quota, r.window),
    );
    set(
        &mut resp,
        &STATE,
        format!("\"{}\";r=0;t={}", r.class, r.retry_after),
    );
    resp
}

/// The client's address (loopback if unknown).
pub(super) fn peer_ip(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<PeerAddr>()
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |p| {
            p.0.ip()
        })
}

/// The route layer of routes anyone may call: a bucket per source address.
pub async fn per_source(State(shared): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match shared.limits.check_source(peer_ip(&req)) {
        Err(r) => refused(r),
        Ok(allowance) => {
            let mut resp = next.run(req).await;
            if let Some(a) = allowance {
                annotate(&mut resp, a);
            }
            resp
        }
    }
}
