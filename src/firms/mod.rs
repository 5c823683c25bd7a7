//! Firms: the pool every capability reaches a firm's database through
//! ([`pool`]), the firm lifecycle and key custody ([`Lifecycle`]), and the
//! error type the capability services share.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::auth::Role;
use crate::crypto::CryptoError;
use crate::crypto::keyring::{KeyError, Keyring, Purpose};
use crate::crypto::secret::SecretKey;
use crate::ids::ApiKeyId;
use crate::store::StoreError;
use crate::store::registry::{FirmRow, Registry, WrappedKey};

mod cache;
mod custody;
mod datakeys;
mod lane;
mod lifecycle;
pub mod pool;

pub use datakeys::{DataKeyStatus, DataKeys, Reencryption};
pub use lane::{blocking, lane};
pub use lifecycle::{FirmView, Lifecycle};
pub use pool::{FirmHandle, Pool};

/// Longest firm name accepted.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum FirmError {
    #[error("no collection by that name in this firm")]
    CollectionNotFound,
    #[error("no record with that id in this collection")]
    RecordNotFound,
    #[error("the record changed since the version in If-Match")]
    StaleVersion,
    #[error("this write needs an If-Match header with the record's ETag")]
    PreconditionRequired,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("field {field:?} contains a {kind}, which this collection rejects")]
    PiiDetected { field: String, kind: &'static str },
    #[error("schema change refused: {0}")]
    SchemaConflict(String),
    #[error("no secret by that name in this firm")]
    SecretNotFound,
    #[error("too many attempts; retry in {0} s")]
    RateLimited(u64),
    #[error("no such firm")]
    NotFound,
    #[error("the firm is frozen; writes are refused")]
    Frozen,
    #[error("the firm is under maintenance (rekey); try again shortly")]
    Maintenance,
    #[error("invalid firm name: {0}")]
    InvalidName(String),
    #[error("confirmation {0:?} does not match the firm id")]
    ConfirmMismatch(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("no such API key")]
    KeyNotFound,
    #[error("the API key is revoked")]
    KeyRevoked,
    #[error("the firm's last owner key cannot be revoked; rotate it instead")]
    LastOwnerKey,
    #[error("a key cannot create or take over a key with more power than its own")]
    Escalation,
    /// Sealing or opening an envelope failed (a crypto failure: 500, no detail).
    #[error("no such user in this firm")]
    UserNotFound,
    #[error("another user of this firm has that login name")]
    LoginTaken,
    #[error("password refused: {0}")]
    WeakPassword(String),
    #[error("wrong login name, password or code, or the account cannot sign in now")]
    InvalidCredentials,
    #[error("the enrolment token is wrong, used or expired")]
    InvalidEnrolment,
    #[error("that code is not valid now (wrong, expired or already used)")]
    InvalidCode,
    #[error("{0}")]
    UserState(String),
    #[error("no such session of this user")]
    SessionNotFound,
    #[error("no such webhook endpoint in this firm")]
    WebhookNotFound,
    #[error("no such message of this webhook endpoint, or it is still pending")]
    WebhookMessageNotFound,
    #[error("destination not allowed: {0}")]
    DestinationNotAllowed(String),
    #[error("sealing failed")]
    Seal,
    /// The erasure ledger could not be written where it must be; nothing
    /// was erased.
    #[error("the erasure ledger could not be written: {0}")]
    LedgerUnavailable(String),
    /// A failure with no cause worth telling the caller (500).
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl FirmError {
    /// Stable code for API bodies and admin replies.
    pub fn code(&self) -> &'static str {
        match self {
            FirmError::NotFound => "firm_not_found",
            FirmError::SecretNotFound => "secret_not_found",
            FirmError::CollectionNotFound => "collection_not_found",
            FirmError::RecordNotFound => "record_not_found",
            FirmError::StaleVersion => "precondition_failed",
            FirmError::PreconditionRequired => "precondition_required",
            FirmError::IdempotencyConflict => "idempotency_conflict",
            FirmError::InvalidRecord(_) => "invalid_record",
            FirmError::PiiDetected { .. } => "pii_detected",
            FirmError::SchemaConflict(_) => "schema_conflict",
            FirmError::RateLimited(_) => "rate_limited",
            FirmError::Frozen => "firm_frozen",
            FirmError::Maintenance => "firm_maintenance",
            FirmError::InvalidName(_) => "invalid_name",
            FirmError::ConfirmMismatch(_) => "confirm_mismatch",
            FirmError::Invalid(_) => "invalid_field",
            FirmError::InvalidQuery(_) => "invalid_query",
            FirmError::KeyNotFound => "key_not_found",
            FirmError::KeyRevoked => "key_revoked",
            FirmError::LastOwnerKey => "last_owner_key",
            FirmError::Escalation => "forbidden_escalation",
            FirmError::UserNotFound => "user_not_found",
            FirmError::LoginTaken => "login_taken",
            FirmError::WeakPassword(_) => "weak_password",
            FirmError::InvalidCredentials => "invalid_credentials",
            FirmError::InvalidEnrolment => "invalid_enrolment_token",
            FirmError::InvalidCode => "invalid_code",
            FirmError::UserState(_) => "invalid_user_state",
            FirmError::SessionNotFound => "session_not_found",
            FirmError::WebhookNotFound => "webhook_not_found",
            FirmError::WebhookMessageNotFound => "webhook_message_not_found",
            FirmError::DestinationNotAllowed(_) => "destination_not_allowed",
            FirmError::Seal => "crypto_error",
            FirmError::LedgerUnavailable(_) => "erasure_ledger_unavailable",
            FirmError::Internal(_) => "internal",
            FirmError::Store(e) => e.code(),
            FirmError::Key(_) => "key_error",
            FirmError::Crypto(_) => "crypto_error",
        }
    }
}

/// A firm's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmState {
    Active,
    Frozen,
    Deleted,
}

impl FirmState {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "active" => FirmState::Active,
            "frozen" => FirmState::Frozen,
            _ => FirmState::Deleted,
        }
    }
}

/// An API key as returned once at minting.
#[derive(Debug)]
pub struct MintedKey {
    pub id: ApiKeyId,
    pub role: Role,
    pub token: ApiKeySecretToken,
}

/// The full bearer token, redacted in `Debug`.
pub struct ApiKeySecretToken(pub(crate) String);

impl ApiKeySecretToken {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKeySecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeySecretToken(<redacted>)")
    }
}

impl Drop for ApiKeySecretToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// What `firm show` reports.
#[derive(Debug, Serialize)]
pub struct FirmInfo {
    #[serde(flatten)]
    pub row: FirmRow,
    pub key_versions: HashMap<String, u32>,
    pub data_key: DataKeyStatus,
    pub db_bytes: Option<u64>,
    pub open: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The appliance's Ed25519 checkpoint key: unwrapped from the registry, or
/// made on first start (random seed from the FIPS DRBG, wrapped under the
/// master key like every firm key).
/// The appliance's key for `purpose` (the checkpoint signing seed, the
/// system log's audit key), created and wrapped under the master key on
/// first start.
pub(crate) fn load_or_create_appliance_key(
    registry: &Registry,
    ring: &Keyring,
    purpose: Purpose,
    now: &str,
) -> Result<SecretKey, FirmError> {
    use crate::store::registry::APPLIANCE;
    Ok(match registry.appliance_key(purpose.as_str())? {
        Some(w) => ring.unwrap(APPLIANCE, purpose, w.version, &w.wrapped)?,
        None => {
            let key = SecretKey::random()?;
            registry.insert_appliance_key(&WrappedKey {
                firm_id: APPLIANCE.to_owned(),
                purpose: purpose.as_str().to_owned(),
                version: 1,
                state: "active".to_owned(),
                wrapped: ring.wrap(APPLIANCE, purpose, 1, &key)?,
                created_at: now.to_owned(),
            })?;
            key
        }
    })
}

/// [`validate_name`] as a JSON Schema pattern (for the API document).
pub fn name_pattern() -> String {
    let x = crate::ids::NOT_SHOWN_CLASS;
    format!("^[^\\s{x}](?:[^{x}]*[^\\s{x}])?$")
}

pub(crate) fn validate_name(name: &str) -> Result<&str, FirmError> {
    if name.trim().is_empty() {
        return Err(FirmError::InvalidName("empty".to_owned()));
    }
    // Refused rather than trimmed: a name is stored exactly as sent, or not at all.
    if name.trim() != name {
        return Err(FirmError::InvalidName(
            "begins or ends with white space".to_owned(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(FirmError::InvalidName(format!(
            "longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(FirmError::InvalidName(
            "contains control characters".to_owned(),
        ));
    }
    if name.chars().any(crate::ids::is_invisible_format) {
        return Err(FirmError::InvalidName(
            "contains bidirectional or invisible formatting characters".to_owned(),
        ));
    }
    Ok(name)
}

pub(crate) fn remove_db_files(path: &Path) -> std::io::Result<()> {
    let _ = fs::remove_file(path.with_extension("peppers"));
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every service error's code is in the one code table.
    #[test]
    fn every_error_code_is_in_the_table() {
        let all = [
            FirmError::CollectionNotFound,
            FirmError::RecordNotFound,
            FirmError::StaleVersion,
            FirmError::PreconditionRequired,
            FirmError::IdempotencyConflict,
            FirmError::InvalidRecord(String::new()),
            FirmError::PiiDetected {
                field: String::new(),
                kind: "ssn",
            },
            FirmError::SchemaConflict(String::new()),
            FirmError::SecretNotFound,
            FirmError::RateLimited(1),
            FirmError::NotFound,
            FirmError::Frozen,
            FirmError::Maintenance,
            FirmError::InvalidName(String::new()),
            FirmError::ConfirmMismatch(String::new()),
            FirmError::Invalid(String::new()),
            FirmError::InvalidQuery(String::new()),
            FirmError::KeyNotFound,
            FirmError::KeyRevoked,
            FirmError::LastOwnerKey,
            FirmError::Escalation,
            FirmError::Seal,
            FirmError::Internal(""),
            FirmError::Store(StoreError::Busy),
            FirmError::Store(StoreError::Full),
            FirmError::Store(StoreError::Corrupt(String::new())),
            FirmError::Store(StoreError::NotFound),
            FirmError::Store(StoreError::Stale),
            FirmError::Store(StoreError::Exists),
            FirmError::Store(StoreError::SealFailed),
            FirmError::Store(StoreError::CommandPanicked),
            FirmError::Store(StoreError::CommitFailed(String::new())),
            FirmError::Store(StoreError::WriterGone),
            FirmError::Store(StoreError::WrongKey {
                path: String::new(),
            }),
            FirmError::Store(StoreError::NotFips {
                path: String::new(),
                reason: String::new(),
            }),
        ];
        for e in all {
            assert!(
                crate::errors::lookup(e.code()).is_some(),
                "{} is not in the code table",
                e.code()
            );
        }
    }
}
