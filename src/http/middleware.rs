//! Per-request middleware: request id, security headers, the request log line.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::authz::RequestActor;
use super::problem::{PROBLEM_JSON, Problem, REQUEST_ID};

/// The TCP peer of the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers on every response. The API serves JSON only, so the content
/// security policy forbids everything a browser could load or run.
const SECURITY_HEADERS: &[(HeaderName, &str)] = &[
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=63072000; includeSubDomains",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// A fresh request id: 128 bits from the FIPS DRBG, hex. Client-supplied ids
/// are not trusted (they would let a caller forge log correlation).
fn new_request_id() -> String {
    match crate::crypto::random_array::<16>() {
        Ok(b) => crate::crypto::hex(&b),
        Err(_) => String::from("00000000000000000000000000000000"),
    }
}

fn needs_problem_body(resp: &Response) -> bool {
    let status = resp.status();
    (status.is_client_error() || status.is_server_error())
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|ct| ct.as_bytes() != PROBLEM_JSON.as_bytes())
}

fn framework_problem(status: StatusCode) -> Problem {
    let (code, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be parsed"),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", "the request body is invalid"),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("error", "the request failed"),
    };
    Problem::new(status, code, detail)
}

pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = new_request_id();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();

    let mut resp = REQUEST_ID.scope(request_id.clone(), next.run(req)).await;
    if needs_problem_body(&resp) {
        // An error produced by the framework (e.g. a body over the size limit):
        // give it the house format too.
        let status = resp.status();
        let problem = framework_problem(status);
        let mut replaced = REQUEST_ID.sync_scope(request_id.clone(), || problem.into_response());
        for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
            if let Some(v) = resp.headers().get(&name) {
                replaced.headers_mut().insert(name, v.clone());
            }
        }
        resp = replaced;
    }

    let headers = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    let status = resp.status().as_u16();
    let latency_us = started.elapsed().as_micros() as u64;
    match resp.extensions().get::<RequestActor>() {
        Some(a) => tracing::info!(
            target: "strongroom::request",
            request_id = %request_id,
            method = %method,
            route = %route,
            status,
            latency_us,
            peer = %peer,
            firm = %a.firm,
            actor = %a.key,
            permission = %a.permission,
            decision = %a.rule,
            "request"
        ),
        None => tracing::info!(
            target: "strongroom::request",
            request_id = %request_id,
            method = %method,
            route = %route,
            status,
            latency_us,
            peer = %peer,
            "request"
        ),
    }
    resp
}
