//! Per-request middleware: request id, security headers, the request log line.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::authz::RequestActor;
use super::body::BodyTimedOut;
use super::problem::{PROBLEM_JSON, Problem, REQUEST_ID};
use crate::telemetry::access::Route;

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
pub(super) fn new_request_id() -> String {
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

/// Headers that must appear at most once: a second copy would make the
/// request mean two things (which credential, which body, which host).
const SINGLE_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::IF_MATCH,
    header::EXPECT,
];

fn ambiguous(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_header", detail)
}

/// Refuses, before routing and before any of the body is read, a request
/// that is ambiguous or that announces a body over the limit.
// Security invariant: a request the daemon would have to guess about
// (two credentials, an unknown transfer coding, no Host) is refused, never
// interpreted.
fn screen(req: &Request, max_body: u64) -> Result<(), Problem> {
    let headers = req.headers();
    for name in SINGLE_HEADERS {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(ambiguous(format!("{name} may appear only once")));
        }
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(ambiguous(
                "transfer-encoding: only `chunked` is supported".to_owned(),
            ));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(ambiguous(
                "content-length and transfer-encoding may not both be sent".to_owned(),
            ));
        }
    }
    if req.version() == axum::http::Version::HTTP_11 && !headers.contains_key(header::HOST) {
        return Err(ambiguous("host is required in HTTP/1.1".to_owned()));
    }
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let len = cl
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| ambiguous("content-length is not a number".to_owned()))?;
        if len > max_body {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body may be at most {max_body} bytes"),
            ));
        }
    }
    Ok(())
}

pub async fn observe(State(max_body): State<u64>, req: Request, next: Next) -> Response {
    // clock: request latency is real elapsed time.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now(); // clock: I/O deadline, real time
    let request_id = new_request_id();
    let method = req.method().clone();
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) => match super::route_label(m.as_str()) {
            "<unmatched>" => Route::Owned(m.as_str().to_owned()),
            table => Route::Static(table),
        },
        None => Route::Static("<unmatched>"),
    };
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);

    let console = super::console::is_console_path(req.uri().path());
    let timed_out = req.extensions().get::<BodyTimedOut>().cloned();
    let m = crate::telemetry::metrics::metrics();
    m.in_flight.inc();
    let mut resp = match screen(&req, max_body) {
        // Refused before the body is read: hyper then closes the connection
        // instead of reading (or inviting, with 100 Continue) the body.
        Err(problem) => {
            let mut r = REQUEST_ID.sync_scope(request_id.clone(), || problem.into_response());
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Ok(()) => {
            let (parts, body) = req.into_parts();
            // The whole body is read before any of our code answers. An answer
            // sent while the client is still sending (a 401 before the body is
            // needed) is followed by a close with unread bytes, which resets
            // the connection and can destroy the answer before the client has
            // read it. Bodies are bounded by `max_body` and by the minimum rate.
            match axum::body::to_bytes(body, usize::try_from(max_body).unwrap_or(usize::MAX)).await
            {
                Ok(bytes) => {
                    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
                    REQUEST_ID.scope(request_id.clone(), next.run(req)).await
                }
                Err(e) => {
                    let problem = if e
                        .into_inner()
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        Problem::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            format!("the request body may be at most {max_body} bytes"),
                        )
                    } else {
                        Problem::new(
                            StatusCode::BAD_REQUEST,
                            "body_unreadable",
                            "the request body could not be read",
                        )
                    };
                    let mut r =
                        REQUEST_ID.sync_scope(request_id.clone(), || problem.into_response());
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    r
                }
            }
        }
    };
    if timed_out.is_some_and(|f| f.is_set()) {
        let problem = Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body arrived too slowly",
        );
        resp = REQUEST_ID.sync_scope(request_id.clone(), || problem.into_response());
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if needs_problem_body(&resp) {
        // An error produced by the framework (e.g. a body over the size limit):
        // give it the house format too.
        let status = resp.status();
        let problem = framework_problem(status);
        let mut replaced = REQUEST_ID.sync_scope(request_id.clone(), || problem.into_response());
        for name in [
            header::ALLOW,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
            header::CONNECTION,
        ] {
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
    if console {
        // The console's pages load their own scripts and styles.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(super::console::CONSOLE_CSP),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    m.in_flight.dec();
    m.request_duration
        .get_or_create(&crate::telemetry::metrics::RequestLabels {
            route: match route {
                Route::Static(r) => r,
                Route::Owned(_) => "<unmatched>",
            },
            method: crate::telemetry::metrics::method_label(method.as_str()),
            status_class: crate::telemetry::metrics::status_class(status),
        })
        .observe(elapsed.as_secs_f64());
    // The line is written by the access-log thread, after the response.
    crate::telemetry::access::log(crate::telemetry::access::Record {
        request_id,
        method,
        route,
        status,
        latency_us,
        peer,
        // Taken, not copied: nothing after this layer reads it.
        actor: resp.extensions_mut().remove::<RequestActor>().map(|a| {
            crate::telemetry::access::Actor {
                firm: a.firm,
                actor: a.actor,
                session: a.session,
                permission: a.permission.as_str(),
                decision: a.rule,
            }
        }),
    });
    resp
}
