//! Key custody, for the appliance operator: a new SQLCipher key for a
//! firm (rekey), master-key rotation, crypto-shredding a firm's audit
//! payloads, and the break-glass export of a firm's raw database key.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::lifecycle::Lifecycle;
use super::{FirmError, FirmState, lock};
use crate::audit::trail::{AdminActor, Outcome};
use crate::crypto::keyring::{MasterKey, Purpose, SqlcipherKey};
use crate::crypto::secret::SecretKey;
use crate::ids::FirmId;
use crate::store::firm::FirmDb;
use crate::store::registry::WrappedKey;
use crate::store::{PageFormat, StoreError};

impl Lifecycle {
    /// Crypto-shreds the firm's audit payloads: a new audit key version
    /// replaces every old one, which is destroyed. Old entries keep their
    /// hashes (the chain, tree and checkpoints still verify) but their
    /// details can never be read again. Returns the new key version.
    pub fn shred_audit_payloads(
        &self,
        id: &FirmId,
        confirm: &str,
        by: &AdminActor,
    ) -> Result<u32, FirmError> {
        if confirm != id.as_str() {
            return Err(FirmError::ConfirmMismatch(confirm.to_owned()));
        }
        let _ops = self.pool.admin_ops();
        match self.pool.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let keys = self.pool.registry.keys(id.as_str())?;
        let version = keys
            .iter()
            .filter(|k| k.purpose == Purpose::Audit.as_str())
            .map(|k| k.version)
            .max()
            .unwrap_or(0)
            + 1;
        let key = SecretKey::random()?;
        self.pool.registry.add_key(&WrappedKey {
            firm_id: id.to_string(),
            purpose: Purpose::Audit.as_str().to_owned(),
            version,
            state: "pending".to_owned(),
            wrapped: self
                .pool
                .ring()
                .wrap(id.as_str(), Purpose::Audit, version, &key)?,
            created_at: self.pool.now(),
        })?;
        let e = self.trail.system_entry(
            by,
            "audit.shred_payloads",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "new_audit_key_version": version }),
        )?;
        // One transaction: the new version becomes active, every older one is deleted.
        self.pool
            .registry
            .activate_key(id.as_str(), Purpose::Audit.as_str(), version, Some(e))?;
        // The open handle still holds the old key in memory: drop it, and
        // make a handle being opened from the old rows reload.
        self.pool.key_epoch.fetch_add(1, Ordering::SeqCst);
        self.pool.evict(id);
        Ok(version)
    }

    /// Break-glass: the firm's raw SQLCipher key for disaster recovery.
    pub fn export_key(&self, id: &FirmId) -> Result<(SqlcipherKey, PageFormat), FirmError> {
        match self.pool.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let keys = self.pool.registry.keys(id.as_str())?;
        let key = self.pool.resolve_db_key(id, &keys)?;
        let format = FirmDb::format_of(&self.pool.path(id), &key)?;
        Ok((key, format))
    }

    /// New SQLCipher key for a firm's database (`PRAGMA rekey`). Crash-safe:
    /// the new key is recorded as pending before the rekey and activated after,
    /// and opening a firm resolves a leftover pending key either way.
    pub fn rekey(&self, id: &FirmId, by: &AdminActor) -> Result<u32, FirmError> {
        match self.pool.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let _ops = self.pool.admin_ops();
        if !lock(&self.pool.maintenance).insert(id.clone()) {
            return Err(FirmError::Maintenance);
        }
        let result = (|| {
            self.pool.evict(id);
            let keys = self.pool.registry.keys(id.as_str())?;
            let old = self
                .pool
                .resolve_db_key(id, &self.pool.registry.keys(id.as_str())?)?;
            let version = keys
                .iter()
                .filter(|k| k.purpose == "db")
                .map(|k| k.version)
                .max()
                .unwrap_or(0)
                + 1;
            let new_secret = SecretKey::random()?;
            self.pool.registry.add_key(&WrappedKey {
                firm_id: id.to_string(),
                purpose: "db".to_owned(),
                version,
                state: "pending".to_owned(),
                wrapped: self
                    .pool
                    .ring()
                    .wrap(id.as_str(), Purpose::Db, version, &new_secret)?,
                created_at: self.pool.now(),
            })?;
            FirmDb::rekey(
                &self.pool.path(id),
                &old,
                &SqlcipherKey::from_secret(&new_secret),
                self.page_format,
            )?;
            let e = self.trail.system_entry(
                by,
                "firm.rekey",
                id.as_str(),
                Outcome::Success,
                "admin_socket",
                serde_json::json!({ "db_key_version": version }),
            )?;
            self.pool
                .registry
                .activate_key(id.as_str(), "db", version, Some(e))?;
            Ok(version)
        })();
        lock(&self.pool.maintenance).remove(id);
        result
    }

    /// Re-wraps every firm key under a new master key and re-keys the
    /// registry, atomically (see `Registry::rotate`). Returns the new generation.
    pub fn rotate_master(&self, new_master: &MasterKey, by: &AdminActor) -> Result<u64, FirmError> {
        let _ops = self.pool.admin_ops();
        let new_ring = new_master.derive()?;
        let old_ring = self.pool.ring();
        let mut rewrapped = Vec::new();
        for mut k in self.pool.registry.all_keys()? {
            let purpose = Purpose::parse(&k.purpose)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown purpose {}", k.purpose)))?;
            let plain = old_ring.unwrap(&k.firm_id, purpose, k.version, &k.wrapped)?;
            k.wrapped = new_ring.wrap(&k.firm_id, purpose, k.version, &plain)?;
            rewrapped.push(k);
        }
        let generation = self.pool.generation.load(Ordering::SeqCst) + 1;
        let e = self.trail.system_entry(
            by,
            "keys.rotate_master",
            "master-key",
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "generation": generation }),
        )?;
        self.pool
            .registry
            .rotate(&new_ring.registry_db_key(), &rewrapped, generation, Some(e))?;
        match self.pool.keyring.write() {
            Ok(mut g) => *g = Arc::new(new_ring),
            Err(p) => *p.into_inner() = Arc::new(new_ring),
        }
        self.pool.generation.store(generation, Ordering::SeqCst);
        Ok(generation)
    }
}
