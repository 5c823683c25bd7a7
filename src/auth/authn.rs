//! Authentication: a bearer token checked against its firm's key rows
//! (cached while the firm is open), and failed attempts recorded without
//! letting anyone flood a firm's log (see `failures`).

use super::keys::Keys;
use super::{Origin, Principal};
use crate::audit::trail::Outcome;
use crate::crypto::keyring;
use crate::firms::pool::FirmHandle;
use crate::firms::{FirmError, lock};
use crate::ids::FirmId;

/// Why an API key was not accepted (all are 401 to the client).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed credential")]
    Malformed,
    #[error("unknown or deleted firm")]
    UnknownFirm,
    #[error("unknown key")]
    UnknownKey,
    #[error("wrong secret")]
    BadSecret,
    #[error("revoked key")]
    Revoked,
    #[error("expired key")]
    Expired,
    #[error("unknown session")]
    UnknownSession,
    #[error("session ended (idle too long, past its lifetime, or its user disabled)")]
    SessionEnded,
    #[error(transparent)]
    Firm(#[from] FirmError),
}

impl Keys {
    /// Checks a bearer token; the result names the key's own firm.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let parsed = super::parse_token(token).ok_or(AuthError::Malformed)?;
        let handle = match self.pool.handle(&parsed.firm) {
            Ok(h) => h,
            Err(FirmError::NotFound) => return Err(AuthError::UnknownFirm),
            Err(e) => return Err(e.into()),
        };
        let key_id = parsed.key.as_str().to_owned();
        let row = match handle.key_cache.get(&key_id) {
            Some(row) => row,
            None => {
                let generation = handle.key_cache.generation();
                let row = handle
                    .db
                    .read_short(|r| r.api_key(&key_id))
                    .map_err(FirmError::from)?
                    .ok_or(AuthError::UnknownKey)?;
                handle.key_cache.fill(generation, &key_id, row.clone());
                row
            }
        };
        self.check_key(&handle, parsed, &row)
    }

    /// `authenticate` without blocking, for the async request path: None
    /// when it would need the disk (firm not open, key not cached).
    pub fn authenticate_cached(&self, token: &str) -> Option<Result<Principal, AuthError>> {
        let Some(parsed) = super::parse_token(token) else {
            return Some(Err(AuthError::Malformed));
        };
        let handle = self.pool.cached_handle(&parsed.firm)?;
        let row = handle.key_cache.get(parsed.key.as_str())?;
        Some(self.check_key(&handle, parsed, &row))
    }

    /// Checks a presented secret and the key's state.
    pub(crate) fn check_key(
        &self,
        handle: &FirmHandle,
        parsed: super::ParsedToken,
        row: &crate::store::firm::ApiKeyRow,
    ) -> Result<Principal, AuthError> {
        let mac = keyring::api_key_mac(&handle.auth_key, &row.id, parsed.secret.as_bytes());
        // Security invariant: secrets are compared as HMACs, in constant time.
        if !keyring::ct_eq(&mac, &row.mac) {
            return Err(AuthError::BadSecret);
        }
        if row.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let mut expires_at = None;
        if let Some(exp) = row.expires_at.as_deref() {
            // An expiry that does not parse fails closed.
            match crate::clock::parse_rfc3339(exp) {
                Some(t) if t > self.pool.clock.now() => expires_at = Some(t),
                _ => return Err(AuthError::Expired),
            }
        }
        let (role, overrides) = super::keys::grants_of(row)?;
        self.note_key_use(handle, row);
        Ok(Principal {
            firm: parsed.firm,
            actor: super::Actor::Key(parsed.key),
            role,
            overrides,
            expires_at,
            enrolment_only: false,
            origin: Default::default(),
        })
    }

    /// Records a failed authentication with a key of an existing firm: the
    /// first from its source in a window now, the rest in one summary entry
    /// when the window closes (see `auth::failures`).
    pub fn audit_auth_failure(
        &self,
        firm: &FirmId,
        key_id: &str,
        origin: &crate::auth::Origin,
        reason: &str,
    ) -> Result<(), FirmError> {
        let h = self.pool.handle(firm)?;
        let ip: std::net::IpAddr = origin
            .source_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let verdict = lock(&self.failures).note(
            firm.as_str(),
            ip,
            key_id,
            reason,
            self.pool.clock.monotonic(),
            &self.pool.now(),
        );
        let crate::auth::failures::Verdict::Record { source } = verdict else {
            return Ok(());
        };
        let e = self.trail.sealed_entry(
            &h,
            key_id,
            origin,
            "deny",
            "authentication".to_owned(),
            "auth.authenticate",
            key_id,
            Outcome::Denied,
            serde_json::json!({
                "reason": reason,
                "source": source,
                "note": "the first failure from this source in this window; later ones are counted in one auth.failures entry",
            }),
        )?;
        let data = serde_json::json!({ "key_id": key_id, "source": source, "reason": reason });
        h.db.write_blocking(move |tx| {
            crate::webhooks::events::emit(tx, "auth.failed", &e.at, data.clone())?;
            tx.append_audit(e.clone())
        })?;
        Ok(())
    }

    /// Writes the summary entry (`auth.failures`) of every failure group
    /// whose window has closed, or of every group with `all` (at shutdown).
    pub fn flush_auth_failures(&self, all: bool) {
        let due = lock(&self.failures).close(self.pool.clock.monotonic(), all);
        write_summaries(&self.trail, due, "auth.failures", "distinct_key_ids");
    }
}

/// Writes one summary entry (`action`) per closed failure group, in the
/// group's firm's log; `ids` names what the distinct ids counted were.
pub(crate) fn write_summaries(
    trail: &crate::audit::AuditTrail,
    due: Vec<crate::auth::failures::Summary>,
    action: &str,
    ids: &str,
) {
    for s in due {
        let Some(firm) = FirmId::parse(&s.firm) else {
            continue;
        };
        let written = trail.pool.handle(&firm).and_then(|h| {
            let e = trail.sealed_entry(
                &h,
                "unauthenticated",
                &Origin {
                    request_id: String::new(),
                    source_ip: if s.source == "*" {
                        String::new()
                    } else {
                        s.source.clone()
                    },
                },
                "deny",
                "authentication".to_owned(),
                action,
                &s.source,
                Outcome::Denied,
                serde_json::json!({
                    "further_failures": s.more,
                    "first_at": s.first_at,
                    "last_at": s.last_at,
                    ids: s.distinct_key_ids,
                    "reasons": s.reasons,
                }),
            )?;
            h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::error!(firm = %s.firm, error = %e, action, "could not write a failure summary");
        }
    }
}
