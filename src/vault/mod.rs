//! The write-only secret vault. A secret's value goes in (PUT) and is
//! checked (verify), and never comes out: [`SecretValue`] has no accessor,
//! no `Debug` content and is zeroized on drop; only this module compares it.
//! Values are sealed under the firm's data key (AES-256-GCM envelope, AAD
//! `strongroom/secret/v1|<firm>|<name>|<version>`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use std::sync::Arc;

use crate::audit::trail::{AuditTrail, Outcome};
use crate::auth::policy::{Authorized, perm};
use crate::crypto::{hex, keyring};
use crate::firms::pool::{FirmHandle, Pool};
use crate::firms::{FirmError, lock};
use crate::store::StoreError;
use crate::store::firm::SecretRow;

/// Longest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Verification attempts allowed per (key, secret) in [`VERIFY_WINDOW`].
pub const VERIFY_LIMIT: usize = 10;
pub const VERIFY_WINDOW: Duration = Duration::from_secs(60);

/// A secret's value in memory. Deliberately no accessor, no `Clone`, no
/// content in `Debug`; the bytes are wiped when it is dropped.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes the value over (the caller's buffer is wiped).
    pub fn new(value: Zeroizing<String>) -> Self {
        Self(Zeroizing::new(value.as_bytes().to_vec()))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// What the API shows of a secret: metadata, never the value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    pub name: String,
    pub version: u32,
    pub created_at: String,
    /// When the value was last replaced (None for version 1).
    pub rotated_at: Option<String>,
    /// `hmac-sha256:<hex>` under a firm key: tells whether the value changed,
    /// cannot be used to guess it.
    pub fingerprint: String,
}

impl From<&SecretRow> for SecretView {
    fn from(r: &SecretRow) -> Self {
        Self {
            name: r.name.clone(),
            version: r.version,
            created_at: r.created_at.clone(),
            rotated_at: r.rotated_at.clone(),
            fingerprint: r.fingerprint.clone(),
        }
    }
}

/// Recent verification attempts per (firm, key id, secret name).
#[derive(Debug, Default)]
pub struct Attempts(std::sync::Mutex<HashMap<(String, String, String), VecDeque<Instant>>>);

/// Names: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
fn validate_name(name: &str) -> Result<(), FirmError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FirmError::Invalid(
            "a secret name is 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)".into(),
        ))
    }
}

fn validate_value(v: &SecretValue) -> Result<(), FirmError> {
    if v.len() == 0 || v.len() > MAX_VALUE_BYTES {
        return Err(FirmError::Invalid(format!(
            "a secret value is 1 to {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn secret_aad(firm: &str, name: &str, version: u32) -> Vec<u8> {
    format!("strongroom/secret/v1|{firm}|{name}|{version}").into_bytes()
}

fn fingerprint(h: &FirmHandle, name: &str, value: &SecretValue) -> String {
    format!(
        "hmac-sha256:{}",
        hex(&keyring::secret_fingerprint(&h.auth_key, name, &value.0))
    )
}

/// The write-only vault: secrets stored sealed, never read back.
#[derive(Debug)]
pub struct Vault {
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
    /// Recent verification attempts, for rate limiting.
    attempts: Attempts,
}

impl Vault {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>) -> Self {
        Self {
            pool,
            trail,
            attempts: Attempts::default(),
        }
    }

    /// Writes a secret, or replaces its value with a new version. Returns its
    /// metadata and whether it was created.
    pub fn put_secret(
        &self,
        auth: &Authorized<perm::SecretsWrite>,
        name: &str,
        value: SecretValue,
    ) -> Result<(SecretView, bool), FirmError> {
        self.trail
            .change(auth, "secrets.write", name, json!({}), |c| {
                validate_name(name)?;
                validate_value(&value)?;
                let fp = fingerprint(&c.h, name, &value);
                let now = self.pool.now();
                let (keys, name_owned) = (c.h.clone(), name.to_owned());
                // Called inside the write transaction: the data key active at
                // commit seals it, so a data-key rotation never misses it.
                let seal = move |version: u32| -> Result<Vec<u8>, StoreError> {
                    keys.data_keys()
                        .seal(
                            &secret_aad(keys.id.as_str(), &name_owned, version),
                            &value.0,
                        )
                        .map_err(|_| StoreError::SealFailed)
                };
                // The entry's details never hold the value: version and fingerprint only.
                let (name, fp2) = (name.to_owned(), fp.clone());
                let row = c.commit(&name.clone(), json!({ "fingerprint": fp }), move |tx| {
                    Ok(tx.put_secret(&name, &fp2, &now, &seal)?)
                })?;
                Ok((SecretView::from(&row), row.version == 1))
            })
    }

    /// A secret's metadata. Audited, once per key, secret and minute.
    pub fn secret_meta(
        &self,
        auth: &Authorized<perm::SecretsRead>,
        name: &str,
    ) -> Result<SecretView, FirmError> {
        // Names starting with `.` are reserved (webhook signing secrets).
        if name.starts_with('.') {
            return Err(FirmError::SecretNotFound);
        }
        let h = self.pool.handle(auth.firm())?;
        let row =
            h.db.read_short(|r| r.secret(name))?
                .ok_or(FirmError::SecretNotFound)?;
        self.trail
            .audit_read(&h, auth.principal(), auth.decision(), "secrets.read", name)?;
        Ok(SecretView::from(&row))
    }

    /// Every secret's metadata, by name. Audited like a single read.
    pub fn list_secrets(
        &self,
        auth: &Authorized<perm::SecretsRead>,
    ) -> Result<Vec<SecretView>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let rows = h.db.read_blocking(|r| r.secrets())?;
        self.trail
            .audit_read(&h, auth.principal(), auth.decision(), "secrets.list", "*")?;
        // Reserved names (webhook signing secrets) are not the vault API's.
        Ok(rows
            .iter()
            .filter(|r| !r.name.starts_with('.'))
            .map(SecretView::from)
            .collect())
    }

    /// Destroys a secret; its entry is written in the same transaction.
    pub fn delete_secret(
        &self,
        auth: &Authorized<perm::SecretsDelete>,
        name: &str,
    ) -> Result<(), FirmError> {
        self.trail
            .change(auth, "secrets.delete", name, json!({}), |c| {
                if name.starts_with('.') {
                    return Err(FirmError::SecretNotFound);
                }
                let name = name.to_owned();
                c.commit(&name.clone(), json!({}), move |tx| {
                    // Nothing destroyed: roll back (no entry for a non-event).
                    tx.delete_secret(&name)?
                        .map(|_| ())
                        .ok_or(FirmError::SecretNotFound)
                })
            })
    }

    /// Checks `presented` against the secret in constant time; answers
    /// only yes or no. Every attempt is audited; at most [`VERIFY_LIMIT`]
    /// per key and secret a minute.
    pub fn verify_secret(
        &self,
        auth: &Authorized<perm::SecretsVerify>,
        name: &str,
        presented: SecretValue,
    ) -> Result<bool, FirmError> {
        if name.starts_with('.') {
            return Err(FirmError::SecretNotFound);
        }
        let h = self.pool.handle(auth.firm())?;
        let actor = auth.principal().actor.label();
        if let Err(wait) = self.take_attempt(&h, &actor, name) {
            if self.trail.first_in_window(
                &actor,
                "secrets.verify.limited",
                &format!("{}/{name}", h.id),
            ) {
                self.trail.audit_refusal(
                    auth.principal(),
                    auth.decision(),
                    "secrets.verify",
                    name,
                    Outcome::Denied,
                    json!({ "error": "rate_limited" }),
                )?;
            }
            return Err(FirmError::RateLimited(wait));
        }
        let keys = h.data_keys();
        let row = h.db.read_short(|r| r.secret(name))?;
        // Missing at use time is a hard error, never a fallback.
        let Some(row) = row else {
            self.trail.audit_refusal(
                auth.principal(),
                auth.decision(),
                "secrets.verify",
                name,
                Outcome::Failure,
                json!({ "error": "secret_not_found" }),
            )?;
            return Err(FirmError::SecretNotFound);
        };
        let stored = Zeroizing::new(
            keys.open(
                &secret_aad(h.id.as_str(), name, row.version),
                &row.ciphertext,
            )
            .map_err(|e| {
                tracing::error!(secret = %name, error = %e, "a stored secret does not decrypt");
                FirmError::Seal
            })?,
        );
        // Security invariant: a presented secret is compared in constant time.
        let matched = keyring::ct_eq(&stored, &presented.0);
        let e = self.trail.audit_entry(
            &h,
            auth.principal(),
            auth.decision(),
            "secrets.verify",
            name,
            Outcome::Success,
            json!({ "match": matched, "version": row.version }),
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(matched)
    }

    /// Counts one verification attempt, or says how many seconds to wait.
    fn take_attempt(&self, h: &FirmHandle, key: &str, name: &str) -> Result<(), u64> {
        let now = self.pool.clock.monotonic();
        let mut all = lock(&self.attempts.0);
        all.retain(|_, q| {
            q.back()
                .is_some_and(|t| now.duration_since(*t) < VERIFY_WINDOW)
        });
        let q = all
            .entry((h.id.to_string(), key.to_owned(), name.to_owned()))
            .or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= VERIFY_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= VERIFY_LIMIT {
            let oldest = q.front().copied().unwrap_or(now);
            let wait = VERIFY_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(wait.as_secs().max(1));
        }
        q.push_back(now);
        Ok(())
    }
}
