//! RFC 9457 problem details: the one place errors become HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The current request's id, set by the request middleware for the whole
    /// handling of one request, so every problem body can carry it.
    pub static REQUEST_ID: String;
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem response. `code` is stable and documented; `detail` is for humans.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra headers (e.g. `WWW-Authenticate`, `Allow`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no resource at this path",
        )
    }

    /// 5xx: the body carries only the code and the request id; the cause is
    /// logged with the same request id.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the request_id to the administrator",
        )
    }
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: format!("urn:strongroom:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            request_id: current_request_id(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, bytes).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<crate::firms::FirmError> for Problem {
    /// The one mapping from service errors to HTTP: the code is the
    /// error's, the status the code table's (`crate::errors`).
    fn from(e: crate::firms::FirmError) -> Self {
        use crate::firms::FirmError as E;
        let code = e.code();
        let status = StatusCode::from_u16(crate::errors::status(code))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = |secs: &str| {
            (
                header::RETRY_AFTER,
                HeaderValue::from_str(secs).unwrap_or(HeaderValue::from_static("60")),
            )
        };
        let (detail, extra) = match &e {
            _ if code == "busy" => (
                "the write queue is full; retry shortly".to_owned(),
                Some(retry("1")),
            ),
            E::Maintenance => (
                "the firm is under maintenance; retry shortly".to_owned(),
                Some(retry("2")),
            ),
            _ if code == "storage_full" => (
                "the appliance's storage is full: writes, and reads that must be audited, are refused until an operator frees space".to_owned(),
                Some(retry("30")),
            ),
            E::RateLimited(wait) => (e.to_string(), Some(retry(&wait.to_string()))),
            E::LedgerUnavailable(_) => {
                tracing::error!(error = %e, "erasure refused");
                (
                    "the erasure ledger could not be written; nothing was erased; retry".to_owned(),
                    Some(retry("60")),
                )
            }
            E::Frozen => (
                "the firm is frozen: writes are refused, reads still work".to_owned(),
                None,
            ),
            // Security invariant: a 5xx carries only its code and the
            // request id; the cause goes to the log under that id.
            _ if status.is_server_error() => {
                tracing::error!(error = %e, code, "internal error");
                (
                    "internal error; quote the request_id to the administrator".to_owned(),
                    None,
                )
            }
            _ => (e.to_string(), None),
        };
        let mut p = Problem::new(status, code, detail);
        if let Some((k, v)) = extra {
            p = p.with_header(k, v);
        }
        p
    }
}
