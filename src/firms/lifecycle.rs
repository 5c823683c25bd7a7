//! Firm lifecycle: create, list, show, freeze, delete (crypto-shred) and
//! the firm's own profile. Key custody (rekey, master rotation, audit
//! payload shredding, break-glass export) is in `custody.rs`, data-key
//! rotation in `datakeys.rs`.

use std::collections::HashMap;
use std::fs;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::json;

use super::datakeys::{DataKeys, Jobs};
use super::pool::{FirmHandle, Pool};
use super::{FirmError, FirmInfo, FirmState, MintedKey, lock, remove_db_files, validate_name};
use crate::audit::trail::{AdminActor, AuditTrail, Outcome};
use crate::auth::Role;
use crate::auth::policy::{Authorized, perm};
use crate::crypto::keyring::{Purpose, SqlcipherKey};
use crate::crypto::secret::SecretKey;
use crate::ids::{ApiKeyId, FirmId};
use crate::store::firm::FirmDb;
use crate::store::registry::{FirmRow, WrappedKey};
use crate::store::{PageFormat, StoreError};

/// The public view of a firm (`GET /api/v1/firms/{firm_id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FirmView {
    id: String,
    name: String,
    state: String,
    created_at: String,
    profile: serde_json::Map<String, serde_json::Value>,
}

/// The firm lifecycle and key custody service.
#[derive(Debug)]
pub struct Lifecycle {
    pub(crate) pool: Arc<Pool>,
    pub(crate) trail: Arc<AuditTrail>,
    /// Data-key re-encryption jobs.
    pub(crate) data_jobs: Jobs,
    /// The page format new firm databases get, and a rekey migrates to.
    pub(crate) page_format: PageFormat,
}

impl Lifecycle {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>, page_format: PageFormat) -> Self {
        Self {
            pool,
            trail,
            data_jobs: Jobs::default(),
            page_format,
        }
    }

    pub fn list(&self) -> Result<Vec<FirmRow>, FirmError> {
        self.pool.list()
    }

    pub fn row(&self, id: &FirmId) -> Result<FirmRow, FirmError> {
        self.pool.row(id)
    }

    pub fn appliance_id(&self) -> &str {
        self.pool.appliance_id()
    }

    pub fn generation(&self) -> u64 {
        self.pool.generation()
    }

    /// Data-key re-encryption jobs running now.
    pub fn reencryptions_running(&self) -> usize {
        self.data_jobs.running()
    }

    pub fn open_count(&self) -> usize {
        self.pool.open_count()
    }

    /// Closes firms unused for longer than the idle period.
    pub fn reap_idle(&self) -> usize {
        self.pool.reap_idle()
    }

    /// Closes every open firm (shutdown): queued writes finish first.
    pub fn close_all(&self) {
        self.pool.close_all()
    }

    /// Creates a firm: random keys wrapped in the registry, its database, and
    /// a first owner API key (returned once).
    pub fn create(&self, name: &str, by: &AdminActor) -> Result<(FirmRow, MintedKey), FirmError> {
        let name = validate_name(name)?;
        let _ops = self.pool.admin_ops();
        let id = FirmId::generate()?;
        let now = self.pool.now();
        let ring = self.pool.ring();
        let mut wrapped = Vec::new();
        let mut plain = HashMap::new();
        for purpose in Purpose::ALL {
            let k = SecretKey::random()?;
            wrapped.push(WrappedKey {
                firm_id: id.to_string(),
                purpose: purpose.as_str().to_owned(),
                version: 1,
                state: "active".to_owned(),
                wrapped: ring.wrap(id.as_str(), purpose, 1, &k)?,
                created_at: now.clone(),
            });
            plain.insert(purpose, k);
        }
        let db_key = plain
            .remove(&Purpose::Db)
            .ok_or_else(|| StoreError::Corrupt("no db key".into()))?;
        let auth_key = plain
            .remove(&Purpose::Auth)
            .ok_or_else(|| StoreError::Corrupt("no auth key".into()))?;
        let audit_key = plain
            .remove(&Purpose::Audit)
            .ok_or_else(|| StoreError::Corrupt("no audit key".into()))?;
        let data_key = plain
            .remove(&Purpose::Data)
            .ok_or_else(|| StoreError::Corrupt("no data key".into()))?;
        let path = self.pool.path(&id);
        let db = FirmDb::open_with(
            id.as_str(),
            &path,
            SqlcipherKey::from_secret(&db_key),
            Some(self.page_format),
        )?;
        let handle = FirmHandle {
            id: id.clone(),
            db,
            peppers: crate::store::peppers::Peppers::beside(&path),
            auth_key,
            audit_key,
            audit_key_version: 1,
            data: RwLock::new(Arc::new(DataKeys::new(
                1,
                [(1, Arc::new(data_key))].into_iter().collect(),
            ))),
            key_cache: Default::default(),
            sessions: Default::default(),
            schemas: Default::default(),
            last_used_ms: std::sync::atomic::AtomicU64::new(self.pool.ms()),
            seen: Default::default(),
            taken: Default::default(),
        };
        let minted = match self.mint_key_blocking(&handle, "initial owner key", Role::Owner) {
            Ok(m) => m,
            Err(e) => {
                handle.db.close();
                let _ = remove_db_files(&path);
                return Err(e);
            }
        };
        let row = FirmRow {
            id: id.to_string(),
            name: name.to_owned(),
            state: "active".to_owned(),
            created_at: now.clone(),
            updated_at: now,
            deleted_at: None,
            audit_retention: None,
            rate_limits: None,
        };
        let entry = self.trail.system_entry(
            by,
            "firm.create",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "name": name, "initial_key": minted.id.as_str() }),
        )?;
        // The registry commit is the point where the firm exists.
        if let Err(e) = self.pool.registry.insert_firm(&row, &wrapped, Some(entry)) {
            handle.db.close();
            let _ = remove_db_files(&path);
            return Err(e.into());
        }
        self.pool.set_state_cache(&id, FirmState::Active);
        lock(&self.pool.open).insert(id, Arc::new(handle));
        Ok((row, minted))
    }

    /// Mints the first owner key in a new firm's database (through its writer).
    pub(crate) fn mint_key_blocking(
        &self,
        handle: &FirmHandle,
        name: &str,
        role: Role,
    ) -> Result<MintedKey, FirmError> {
        let new = crate::auth::keys::NewKey {
            name: name.to_owned(),
            role,
            overrides: Default::default(),
            expires_at: None,
        };
        let (row, token) =
            crate::auth::keys::new_key_row(&self.pool, &handle.auth_key, &handle.id, &new, None)?;
        let id = ApiKeyId::parse(&row.id)
            .ok_or_else(|| StoreError::Corrupt("generated key id".into()))?;
        handle
            .db
            .write_blocking(move |tx| tx.insert_api_key(&row))?;
        Ok(MintedKey { id, role, token })
    }

    pub fn show(&self, id: &FirmId) -> Result<FirmInfo, FirmError> {
        let row = self.pool.row(id)?;
        let key_versions = self
            .pool
            .registry
            .keys(id.as_str())?
            .into_iter()
            .filter(|k| k.state == "active")
            .map(|k| (k.purpose, k.version))
            .collect();
        Ok(FirmInfo {
            row,
            key_versions,
            data_key: self.data_key_status(id)?,
            db_bytes: fs::metadata(self.pool.path(id)).ok().map(|m| m.len()),
            open: lock(&self.pool.open).contains_key(id),
        })
    }

    pub fn set_frozen(
        &self,
        id: &FirmId,
        frozen: bool,
        by: &AdminActor,
    ) -> Result<FirmRow, FirmError> {
        if frozen {
            // A freeze stops every change: best-effort metadata still waiting
            // for the firm's next write (a key's last use) is written now.
            if let Some(h) = self.pool.cached_handle(id) {
                h.db.write_blocking(|_| Ok(()))?;
            }
        }
        let state = if frozen { "frozen" } else { "active" };
        let action = if frozen {
            "firm.freeze"
        } else {
            "firm.unfreeze"
        };
        let e = self.trail.system_entry(
            by,
            action,
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::Value::Null,
        )?;
        match self
            .pool
            .registry
            .set_state(id.as_str(), state, &self.pool.now(), Some(e))
        {
            Err(StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.pool.set_state_cache(
            id,
            if frozen {
                FirmState::Frozen
            } else {
                FirmState::Active
            },
        );
        self.pool.row(id)
    }

    /// Crypto-shred: destroys the firm's wrapped keys (the point of no return),
    /// then closes and removes its database. The id is never reused.
    pub fn delete(
        &self,
        id: &FirmId,
        confirm: &str,
        by: &AdminActor,
    ) -> Result<FirmRow, FirmError> {
        if confirm != id.as_str() {
            return Err(FirmError::ConfirmMismatch(confirm.to_owned()));
        }
        let _ops = self.pool.admin_ops();
        let e = self.trail.system_entry(
            by,
            "firm.delete",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "crypto_shred": true }),
        )?;
        match self
            .pool
            .registry
            .shred_firm(id.as_str(), &self.pool.now(), Some(e))
        {
            Err(StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.pool.set_state_cache(id, FirmState::Deleted);
        self.forget_jobs(id);
        self.pool.evict(id);
        if let Err(e) = remove_db_files(&self.pool.path(id)) {
            tracing::warn!(firm = %id, error = %e, "database file not removed; it is unreadable without its key and is swept at next start");
        }
        self.pool.row(id)
    }

    /// The firm's profile (public info kept in its own database).
    /// The firm as its own keys see it: registry row and profile.
    pub fn view(&self, auth: &Authorized<perm::FirmRead>) -> Result<FirmView, FirmError> {
        self.view_of(auth.firm())
    }

    fn view_of(&self, id: &FirmId) -> Result<FirmView, FirmError> {
        let row = self.pool.row(id)?;
        let h = self.pool.handle(id)?;
        let profile =
            h.db.read_short(|r| r.profile())?
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
        Ok(FirmView {
            id: row.id,
            name: row.name,
            state: row.state,
            created_at: row.created_at,
            profile,
        })
    }

    /// Sets the firm's own profile fields.
    pub fn set_profile(
        &self,
        auth: &Authorized<perm::FirmUpdate>,
        changes: Vec<(&'static str, String)>,
    ) -> Result<FirmView, FirmError> {
        let details: serde_json::Map<String, serde_json::Value> = changes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        if changes.is_empty() {
            // Nothing to change, so nothing to record.
            return self.view_of(auth.firm());
        }
        let firm = auth.firm().to_string();
        self.trail
            .change(auth, "firm.update", &firm, json!(details), |c| {
                let now = self.pool.now();
                let done = c.commit(&firm, json!(details), move |tx| {
                    for (k, v) in &changes {
                        tx.set_profile(k, v, &now)?;
                    }
                    Ok(())
                });
                // Sessions are cached with what the profile's MFA policy
                // made of them: a change reaches them on the next request.
                c.h.sessions.invalidate();
                done
            })?;
        self.view_of(auth.firm())
    }
}
