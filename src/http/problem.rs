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
    fn from(e: crate::firms::FirmError) -> Self {
        use crate::firms::FirmError as E;
        use crate::store::StoreError;
        match e {
            // Inside one's own firm (the scope check already passed).
            E::NotFound => Problem::not_found(),
            E::Frozen => Problem::new(
                StatusCode::LOCKED,
                "firm_frozen",
                "the firm is frozen: writes are refused, reads still work",
            ),
            E::Maintenance => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "firm_maintenance",
                "the firm is under maintenance; retry shortly",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("2")),
            E::Store(StoreError::Busy) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the write queue is full; retry shortly",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            E::Store(StoreError::Full) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the appliance's storage is full: writes, and reads that must be audited, are refused until an operator frees space",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("30")),
            E::KeyNotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "key_not_found",
                "no API key with that id in this firm",
            ),
            E::CollectionNotFound | E::RecordNotFound => {
                Problem::new(StatusCode::NOT_FOUND, e.code(), e.to_string())
            }
            E::StaleVersion => {
                Problem::new(StatusCode::PRECONDITION_FAILED, e.code(), e.to_string())
            }
            E::PreconditionRequired => {
                Problem::new(StatusCode::PRECONDITION_REQUIRED, e.code(), e.to_string())
            }
            E::IdempotencyConflict | E::SchemaConflict(_) => {
                Problem::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            E::InvalidRecord(_) | E::PiiDetected { .. } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
            }
            E::SecretNotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "secret_not_found",
                "no secret by that name in this firm",
            ),
            E::RateLimited(wait) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many attempts; retry in {wait} s"),
            )
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from_str(&wait.to_string()).unwrap_or(HeaderValue::from_static("60")),
            ),
            E::KeyRevoked | E::LastOwnerKey => {
                Problem::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            E::Escalation => Problem::new(StatusCode::FORBIDDEN, e.code(), e.to_string()),
            E::InvalidQuery(_) => Problem::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
            E::InvalidName(_) | E::Invalid(_) | E::ConfirmMismatch(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
            }
            other => Problem::internal(&other),
        }
    }
}
