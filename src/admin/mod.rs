//! The admin socket: a small, versioned, newline-delimited JSON protocol over
//! a Unix socket, spoken by `strongroomctl`.
//!
//! Request:  `{"v":1,"cmd":"status","args":{}}`
//! Response: `{"v":1,"ok":true,"result":{...}}` or
//!           `{"v":1,"ok":false,"error":{"code":"...","message":"..."}}`
//! One request per line; a connection may carry several.

mod backup;
pub mod client;
mod commands;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, AuditTrail};
use crate::firms::Lifecycle;
use crate::runtime::Runtime;

/// What the admin socket serves from, built by the daemon and handed down.
#[derive(Debug)]
pub struct AdminState {
    pub runtime: Arc<Runtime>,
    pub lifecycle: Arc<Lifecycle>,
    pub people: Arc<crate::people::People>,
    pub limits: Arc<crate::limits::Limits>,
    pub audit: Arc<AuditLog>,
    pub trail: Arc<AuditTrail>,
    pub backups: Arc<crate::backup::Backups>,
    pub records: Arc<crate::records::Records>,
    pub evidence: Arc<crate::evidence::Evidence>,
    /// `admin.idle_timeout_secs`.
    pub idle_timeout: Duration,
    /// The daemon's clock (a test build lets a dev-mode daemon move it).
    pub clock: Arc<crate::clock::SystemClock>,
}

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub cmd: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(code: &str, message: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            }),
        }
    }
}
