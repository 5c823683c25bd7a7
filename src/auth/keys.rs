//! API key lifecycle: mint, list, show, rotate, revoke. Every method takes
//! the policy's proof of authorization for exactly what it does, and works
//! on the firm that proof names.

use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use std::sync::Arc;

use super::policy::{self, Authorized, Overrides, perm};
use super::{ApiKeySecret, Principal, Role};
use crate::audit::trail::AuditTrail;
use crate::clock::{parse_rfc3339, rfc3339};
use crate::crypto::keyring;
use crate::firms::pool::Pool;
use crate::firms::{ApiKeySecretToken, FirmError, validate_name};
use crate::ids::ApiKeyId;
use crate::store::firm::ApiKeyRow;
use crate::webhooks::events::emit;

/// How stale `last_used_at` may get before a request refreshes it.
const LAST_USED_GRANULARITY_SECS: i64 = 60;

/// A key's metadata, as the API shows it. Never the secret or its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub allow: Vec<&'static str>,
    pub deny: Vec<&'static str>,
    /// `active`, `revoked` or `expired`.
    pub state: &'static str,
    pub created_at: String,
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub replaced_by: Option<String>,
}

/// What a new key should be.
#[derive(Debug)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub overrides: Overrides,
    pub expires_at: Option<OffsetDateTime>,
}

/// A freshly minted key: its metadata and the token, shown once.
#[derive(Debug)]
pub struct Minted {
    pub view: KeyView,
    pub token: ApiKeySecretToken,
}

/// The role and overrides stored on a row.
pub(crate) fn grants_of(row: &ApiKeyRow) -> Result<(Role, Overrides), FirmError> {
    parse_grants(&row.id, &row.role, &row.allow, &row.deny)
}

/// A stored role and allow/deny lists (a key's or a user's).
pub(crate) fn parse_grants(
    id: &str,
    role: &str,
    allow: &str,
    deny: &str,
) -> Result<(Role, Overrides), FirmError> {
    let corrupt = |what: &str| {
        FirmError::Store(crate::store::StoreError::Corrupt(format!(
            "grants of {id}: {what}"
        )))
    };
    let role = Role::parse(role).ok_or_else(|| corrupt("bad role"))?;
    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).map_err(|_| corrupt("bad list"));
    let (allow, deny) = (list(allow)?, list(deny)?);
    let overrides = Overrides::parse(
        allow.iter().map(String::as_str),
        deny.iter().map(String::as_str),
    )
    .map_err(|p| corrupt(&format!("unknown permission {p}")))?;
    Ok((role, overrides))
}

pub(crate) fn list_json(names: &[&str]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".to_owned())
}

/// A new key row and its token (shown once), the secret stored only as
/// its HMAC under the firm's auth key.
pub(crate) fn new_key_row(
    pool: &Pool,
    auth_key: &crate::crypto::secret::SecretKey,
    firm: &crate::ids::FirmId,
    new: &NewKey,
    created_by: Option<String>,
) -> Result<(ApiKeyRow, ApiKeySecretToken), FirmError> {
    let key_id = ApiKeyId::generate()?;
    let secret = ApiKeySecret::generate()?;
    let mac = keyring::api_key_mac(auth_key, key_id.as_str(), secret.as_bytes());
    let row = ApiKeyRow {
        id: key_id.to_string(),
        name: new.name.clone(),
        role: new.role.as_str().to_owned(),
        mac: mac.to_vec(),
        allow: list_json(&new.overrides.allow_names()),
        deny: list_json(&new.overrides.deny_names()),
        created_at: pool.now(),
        created_by,
        expires_at: new.expires_at.map(rfc3339),
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
    };
    Ok((row, ApiKeySecretToken(secret.token(firm, &key_id))))
}

/// API keys and authentication: the key lifecycle here, authentication and
/// the accounting of failed attempts in `authn.rs`.
#[derive(Debug)]
pub struct Keys {
    pub(crate) pool: Arc<Pool>,
    pub(crate) trail: Arc<AuditTrail>,
    /// Failed authentications being counted, per firm and source.
    pub(crate) failures: std::sync::Mutex<super::failures::FailureCounter>,
}

impl Keys {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>) -> Self {
        Self {
            pool,
            trail,
            failures: Default::default(),
        }
    }

    fn view(&self, row: &ApiKeyRow) -> Result<KeyView, FirmError> {
        let (role, overrides) = grants_of(row)?;
        let expired = row
            .expires_at
            .as_deref()
            .and_then(parse_rfc3339)
            .is_some_and(|t| t <= self.pool.clock.now());
        Ok(KeyView {
            id: row.id.clone(),
            name: row.name.clone(),
            role,
            allow: overrides.allow_names(),
            deny: overrides.deny_names(),
            state: if row.revoked_at.is_some() {
                "revoked"
            } else if expired {
                "expired"
            } else {
                "active"
            },
            created_at: row.created_at.clone(),
            created_by: row.created_by.clone(),
            expires_at: row.expires_at.clone(),
            revoked_at: row.revoked_at.clone(),
            last_used_at: row.last_used_at.clone(),
            replaced_by: row.replaced_by.clone(),
        })
    }

    /// Builds the stored row and the token for a new key.
    pub fn mint_key(
        &self,
        auth: &Authorized<perm::KeysCreate>,
        mut new: NewKey,
    ) -> Result<Minted, FirmError> {
        new.name = validate_name(&new.name)?.to_owned();
        if let Some(t) = new.expires_at {
            if t <= self.pool.clock.now() {
                return Err(FirmError::Invalid(
                    "expires_at must be in the future".into(),
                ));
            }
        }
        let details = json!({
            "name": new.name,
            "role": new.role,
            "allow": new.overrides.allow_names(),
            "deny": new.overrides.deny_names(),
        });
        self.trail
            .change(auth, "keys.create", "", details.clone(), |c| {
                escalation_check(auth.principal(), new.role, &new.overrides)?;
                lifetime_check(auth.principal(), new.expires_at)?;
                let (row, token) = new_key_row(
                    &self.pool,
                    &c.h.auth_key,
                    auth.firm(),
                    &new,
                    Some(auth.principal().actor.label()),
                )?;
                let view = self.view(&row)?;
                c.commit(&row.id.clone(), details.clone(), move |tx| {
                    tx.insert_api_key(&row)?;
                    let data = json!({ "key_id": row.id, "name": row.name, "role": row.role });
                    Ok(emit(tx, "key.created", &row.created_at, data)?)
                })?;
                Ok(Minted { view, token })
            })
    }

    pub fn list_keys(&self, auth: &Authorized<perm::KeysRead>) -> Result<Vec<KeyView>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let mut rows = h.db.read_blocking(|r| r.api_keys())?;
        rows.iter_mut().for_each(|r| latest_use(&h, r));
        rows.iter().map(|r| self.view(r)).collect()
    }

    fn key_row(&self, firm: &crate::ids::FirmId, key: &str) -> Result<ApiKeyRow, FirmError> {
        let id = ApiKeyId::parse(key).ok_or(FirmError::KeyNotFound)?;
        let h = self.pool.handle(firm)?;
        let mut row =
            h.db.read_blocking(|r| r.api_key(id.as_str()))?
                .ok_or(FirmError::KeyNotFound)?;
        latest_use(&h, &mut row);
        Ok(row)
    }

    /// The key a rotate or revoke acts on, with its grants, once the caller
    /// is shown to hold at least as much power as it.
    fn target(
        &self,
        firm: &crate::ids::FirmId,
        caller: &Principal,
        key: &str,
    ) -> Result<(ApiKeyRow, Role, Overrides), FirmError> {
        let row = self.key_row(firm, key)?;
        let (role, overrides) = grants_of(&row)?;
        escalation_check(caller, role, &overrides)?;
        Ok((row, role, overrides))
    }

    pub fn show_key(
        &self,
        auth: &Authorized<perm::KeysRead>,
        key: &str,
    ) -> Result<KeyView, FirmError> {
        self.view(&self.key_row(auth.firm(), key)?)
    }

    /// Replaces a key by a new one with the same name, role, overrides and
    /// expiry; the old key is revoked in the same transaction, so it fails
    /// on the very next request.
    pub fn rotate_key(
        &self,
        auth: &Authorized<perm::KeysRotate>,
        key: &str,
    ) -> Result<Minted, FirmError> {
        let resource = audit_resource(key);
        self.trail
            .change(auth, "keys.rotate", &resource, json!({}), |c| {
                // Rotating hands the caller the key's power: same rule as minting.
                let (old, role, overrides) = self.target(auth.firm(), auth.principal(), key)?;
                lifetime_check(
                    auth.principal(),
                    old.expires_at.as_deref().and_then(parse_rfc3339),
                )?;
                if old.revoked_at.is_some() {
                    return Err(FirmError::KeyRevoked);
                }
                if old
                    .expires_at
                    .as_deref()
                    .is_some_and(|e| parse_rfc3339(e).is_none_or(|t| t <= self.pool.clock.now()))
                {
                    return Err(FirmError::Invalid(
                        "the key has expired: mint a new one instead of rotating it".into(),
                    ));
                }
                let new = NewKey {
                    name: old.name.clone(),
                    role,
                    overrides,
                    expires_at: old.expires_at.as_deref().and_then(parse_rfc3339),
                };
                let (row, token) = new_key_row(
                    &self.pool,
                    &c.h.auth_key,
                    auth.firm(),
                    &new,
                    Some(auth.principal().actor.label()),
                )?;
                let view = self.view(&row)?;
                let now = self.pool.now();
                let old_id = old.id.clone();
                let replaced = c.commit(&old.id, json!({ "replaced_by": row.id }), move |tx| {
                    if !tx.revoke_api_key(&old_id, &now, Some(&row.id))? {
                        return Err(FirmError::KeyRevoked);
                    }
                    tx.insert_api_key(&row)?;
                    let data = json!({ "key_id": old_id, "replaced_by": row.id });
                    emit(tx, "key.revoked", &now, data)?;
                    let data = json!({ "key_id": row.id, "name": row.name, "role": row.role });
                    Ok(emit(tx, "key.created", &now, data)?)
                });
                // After the commit: the old key fails on the very next request.
                c.h.key_cache.invalidate();
                replaced?;
                Ok(Minted { view, token })
            })
    }

    /// Revokes a key; it fails on the very next request. Revoking a revoked
    /// key changes nothing and answers the same. The firm's last live owner
    /// key cannot be revoked (rotate it instead).
    pub fn revoke_key(
        &self,
        auth: &Authorized<perm::KeysRevoke>,
        key: &str,
    ) -> Result<KeyView, FirmError> {
        let resource = audit_resource(key);
        self.trail
            .change(auth, "keys.revoke", &resource, json!({}), |c| {
                let (row, _, _) = self.target(auth.firm(), auth.principal(), key)?;
                let now = self.pool.now();
                let now_t = self.pool.clock.now();
                let id = row.id.clone();
                let details = json!({ "already_revoked": row.revoked_at.is_some() });
                let outcome = c.commit(&row.id, details, move |tx| {
                    // Security invariant: the firm keeps at least one live owner key
                    // that can still manage keys; revoking the last one is refused.
                    let keys = tx.read().api_keys()?;
                    let managing: Vec<&str> = keys
                        .iter()
                        .filter(|k| manages_as_owner(k, now_t))
                        .map(|k| k.id.as_str())
                        .collect();
                    if managing == [id.as_str()] {
                        return Err(FirmError::LastOwnerKey);
                    }
                    let revoked = tx.revoke_api_key(&id, &now, None)?;
                    if revoked {
                        emit(tx, "key.revoked", &now, json!({ "key_id": id }))?;
                    }
                    Ok(revoked)
                });
                // After the commit: the key fails on the very next request.
                c.h.key_cache.invalidate();
                outcome?;
                self.view(&self.key_row(auth.firm(), &row.id)?)
            })
    }

    /// Records (to the minute, best effort, never blocking the request, and
    /// written with the firm's next write, park or close) that a key was
    /// used. Skipped on frozen firms: they take no writes.
    pub(crate) fn note_key_use(&self, h: &crate::firms::pool::FirmHandle, row: &ApiKeyRow) {
        let now = self.pool.clock.now();
        let fresh = row
            .last_used_at
            .as_deref()
            .and_then(parse_rfc3339)
            .is_some_and(|t| (now - t).whole_seconds() < LAST_USED_GRANULARITY_SECS);
        if fresh || self.pool.require_writable(&h.id).is_err() {
            return;
        }
        let (id, at) = (row.id.clone(), rfc3339(now));
        h.key_cache
            .update(&id, |r| r.last_used_at = Some(at.clone()));
        // Informational only (listings show the cache's fresher value), so
        // it waits for the firm's next write instead of costing a commit.
        h.db.write_deferred(move |tx| tx.touch_api_key(&id, &at));
    }
}

/// A key's last use as the cache knows it, when its best-effort write
/// (`note_key_use`) has not committed yet: a listing right after a use shows it.
fn latest_use(h: &crate::firms::pool::FirmHandle, row: &mut ApiKeyRow) {
    if let Some(cached) = h.key_cache.get(&row.id).and_then(|c| c.last_used_at) {
        // Same RFC 3339 form on both sides: text order is time order.
        if row.last_used_at.as_ref().is_none_or(|db| *db < cached) {
            row.last_used_at = Some(cached);
        }
    }
}

/// What the audit log records for a key id from a URL: the id if it is one,
/// never raw client input (which could be anything, a secret included).
fn audit_resource(key: &str) -> String {
    ApiKeyId::parse(key).map_or_else(|| "<invalid key id>".to_owned(), |k| k.to_string())
}

/// A live (not revoked, not expired) owner key that can still mint, rotate
/// and revoke keys.
fn manages_as_owner(k: &ApiKeyRow, now: OffsetDateTime) -> bool {
    use crate::auth::policy::Permission as P;
    let live = k.revoked_at.is_none()
        && k.expires_at
            .as_deref()
            .is_none_or(|e| parse_rfc3339(e).is_some_and(|t| t > now));
    live && grants_of(k).is_ok_and(|(role, o)| {
        let eff = policy::effective(role, &o);
        role == Role::Owner
            && [P::KeysCreate, P::KeysRotate, P::KeysRevoke]
                .iter()
                .all(|p| eff.contains(p))
    })
}

/// Security invariant: a credential that expires cannot hand out one that
/// outlives it (never-expiring included); a lifetime is power too.
fn lifetime_check(p: &Principal, expires_at: Option<OffsetDateTime>) -> Result<(), FirmError> {
    match (p.expires_at, expires_at) {
        (None, _) => Ok(()),
        (Some(mine), Some(theirs)) if theirs <= mine => Ok(()),
        _ => Err(FirmError::Escalation),
    }
}

pub(crate) fn escalation_check(
    p: &Principal,
    role: Role,
    overrides: &Overrides,
) -> Result<(), FirmError> {
    if policy::may_manage(p, role, overrides).allowed {
        Ok(())
    } else {
        Err(FirmError::Escalation)
    }
}
