//! The write transaction a firm's writer hands each command.

use rusqlite::{Connection, OptionalExtension, params};

use super::super::StoreError;
use super::super::audit_log;
use super::ReadTx;
use super::rows::*;
use crate::audit::Entry;
use crate::audit::merkle::Hash;

/// A uniqueness violation is `Exists`; anything else as it is.
pub(super) fn exists_on_conflict(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Exists
        }
        other => other.into(),
    }
}

/// The write side handed to commands, inside the writer's transaction.
pub struct WriteTx<'c> {
    pub(super) conn: &'c Connection,
    /// Audit entries appended in this transaction (for the metrics).
    pub(crate) appended: std::cell::Cell<u64>,
}

impl<'c> WriteTx<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            appended: std::cell::Cell::new(0),
        }
    }

    pub fn set_profile(&self, k: &str, v: &str, now: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO profile (k, v, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v, updated_at = excluded.updated_at",
            )?
            .execute(params![k, v, now])?;
        Ok(())
    }

    pub fn insert_api_key(&self, k: &ApiKeyRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO api_keys (id, name, role, mac, allow, deny, created_at, created_by, expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                    k.id, k.name, k.role, k.mac, k.allow, k.deny, k.created_at, k.created_by,
                    k.expires_at, k.revoked_at
                ],
            )
            .map_err(exists_on_conflict)?;
        Ok(())
    }

    /// Revokes a key that is not yet revoked; false if it was already (or is unknown).
    pub fn revoke_api_key(
        &self,
        id: &str,
        now: &str,
        replaced_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2, replaced_by = ?3
                 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, now, replaced_by])?;
        Ok(n == 1)
    }

    pub fn touch_api_key(&self, id: &str, now: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")?
            .execute(params![id, now])?;
        Ok(())
    }

    /// Appends an audit entry (its `seq` is assigned here) with its chain
    /// value and Merkle nodes, inside the caller's transaction: the entry
    /// commits or rolls back with the change it records.
    pub fn append_audit(&self, e: Entry) -> Result<u64, StoreError> {
        let seq = audit_log::append(self.conn, e)?;
        self.appended.set(self.appended.get() + 1);
        Ok(seq)
    }

    /// See [`audit_log::checkpoint`].
    pub fn checkpoint_audit(
        &self,
        at: &str,
        sign: &dyn Fn(u64, &Hash) -> String,
    ) -> Result<String, StoreError> {
        audit_log::checkpoint(self.conn, at, sign)
    }

    /// See [`audit_log::purge`].
    pub fn purge_audit(
        &self,
        cutoff: &str,
        at: &str,
        receipt: &dyn Fn(&audit_log::PurgePlan) -> (String, Entry),
    ) -> Result<Option<(audit_log::PurgePlan, u64)>, StoreError> {
        audit_log::purge(self.conn, cutoff, at, receipt)
    }

    /// Writes a secret (version 1) or replaces its value (next version).
    /// `seal(version)` makes the ciphertext for that version.
    pub fn put_secret(
        &self,
        name: &str,
        fingerprint: &str,
        now: &str,
        seal: &dyn Fn(u32) -> Result<Vec<u8>, StoreError>,
    ) -> Result<SecretRow, StoreError> {
        let current: Option<u32> = self
            .conn
            .prepare_cached("SELECT version FROM secrets WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let version = current.map_or(1, |v| v + 1);
        let ciphertext = seal(version)?;
        self.conn
            .prepare_cached(
                "INSERT INTO secrets (name, version, ciphertext, fingerprint, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version,
                   ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint,
                   rotated_at = excluded.created_at",
            )?
            .execute(params![name, version, ciphertext, fingerprint, now])?;
        self.read()
            .secret(name)?
            .ok_or_else(|| StoreError::Corrupt("secret vanished".into()))
    }

    /// Destroys a secret (`secure_delete` overwrites its pages); returns
    /// the version destroyed, or None if there was none.
    pub fn delete_secret(&self, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM secrets WHERE name = ?1 RETURNING version")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    /// Declares or replaces a collection's schema; returns its new version.
    pub fn put_collection(&self, name: &str, schema: &str, now: &str) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO collections (name, schema, version, created_at, updated_at)
                 VALUES (?1, ?2, 1, ?3, ?3)
                 ON CONFLICT (name) DO UPDATE SET schema = excluded.schema,
                   version = version + 1, updated_at = excluded.updated_at
                 RETURNING version",
            )?
            .query_row(params![name, schema, now], |r| r.get(0))?)
    }

    /// Writes a record (insert when `expected` is None, else replace the
    /// version `expected`) and its index rows. A stale `expected` is
    /// `Conflict`.
    pub fn write_record(
        &self,
        row: &RecordRow,
        expected: Option<u32>,
        index: &[(String, String)],
    ) -> Result<(), StoreError> {
        match expected {
            None => {
                self.conn
                    .prepare_cached(&format!(
                        "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                    ))?
                    .execute(params![
                        row.collection,
                        row.id,
                        row.version,
                        row.clear,
                        row.sealed,
                        row.created_at,
                        row.updated_at,
                        row.subjects
                    ])?;
            }
            Some(v) => {
                let n = self
                    .conn
                    .prepare_cached(
                        "UPDATE records SET version = ?3, clear = ?4, sealed = ?5, updated_at = ?6,
                                            subjects = ?8
                         WHERE collection = ?1 AND id = ?2 AND version = ?7",
                    )?
                    .execute(params![
                        row.collection,
                        row.id,
                        row.version,
                        row.clear,
                        row.sealed,
                        row.updated_at,
                        v,
                        row.subjects
                    ])?;
                if n != 1 {
                    return Err(StoreError::Stale);
                }
                self.conn
                    .prepare_cached("DELETE FROM record_index WHERE collection = ?1 AND id = ?2")?
                    .execute(params![row.collection, row.id])?;
            }
        }
        let mut st = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO record_index (collection, field, value, id) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (field, value) in index {
            st.execute(params![row.collection, field, value, row.id])?;
        }
        Ok(())
    }

    /// Deletes a record (only at version `expected`, if given); returns the
    /// version deleted, None if there was no such record, or `Conflict`.
    pub fn delete_record(
        &self,
        collection: &str,
        id: &str,
        expected: Option<u32>,
    ) -> Result<Option<u32>, StoreError> {
        let Some(current) = self.read().record(collection, id)?.map(|r| r.version) else {
            return Ok(None);
        };
        if expected.is_some_and(|e| e != current) {
            return Err(StoreError::Stale);
        }
        self.conn
            .prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
            .execute(params![collection, id])?;
        self.conn
            .prepare_cached("DELETE FROM record_index WHERE collection = ?1 AND id = ?2")?
            .execute(params![collection, id])?;
        Ok(Some(current))
    }

    /// Deletes up to `limit` records of `collection` whose retention date is
    /// before `cutoff` (RFC 3339): their creation time, or with `by_field`
    /// the ISO 8601 date in that clear field (records without one are
    /// kept). Their index rows and idempotency entries go with them. With
    /// `secure_delete` on, the freed cells are zeroed. How many went.
    pub fn purge_expired_records(
        &self,
        collection: &str,
        by_field: Option<&str>,
        cutoff: &str,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = match by_field {
            None => self
                .conn
                .prepare_cached(
                    "SELECT id FROM records WHERE collection = ?1 AND created_at < ?2 LIMIT ?3",
                )?
                .query_map(params![collection, cutoff, limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?,
            Some(field) => {
                let path = format!("$.\"{}\"", field.replace('"', ""));
                self.conn
                    .prepare_cached(
                        "SELECT id FROM records WHERE collection = ?1
                           AND json_extract(clear, ?4) GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                           AND json_extract(clear, ?4) < ?2 LIMIT ?3",
                    )?
                    .query_map(params![collection, cutoff, limit, path], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            }
        };
        for id in &ids {
            for sql in [
                "DELETE FROM records WHERE collection = ?1 AND id = ?2",
                "DELETE FROM record_index WHERE collection = ?1 AND id = ?2",
                "DELETE FROM idempotency WHERE collection = ?1 AND record_id = ?2",
            ] {
                self.conn
                    .prepare_cached(sql)?
                    .execute(params![collection, id])?;
            }
        }
        Ok(ids.len() as u64)
    }

    pub fn put_idempotency(
        &self,
        collection: &str,
        key: &str,
        hash: &[u8],
        record_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO idempotency (collection, key, request_hash, record_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![collection, key, hash, record_id, now])?;
        Ok(())
    }

    /// Records whose sealed fields are under a data key version other than
    /// `version`, after `(collection, id)`, in key order: (collection, id,
    /// record version, envelope). Records sealed under subject keys are
    /// not: their subject keys are re-wrapped instead.
    pub fn records_sealed_not_under(
        &self,
        version: u32,
        after: (&str, &str),
        limit: u64,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT collection, id, version, sealed FROM records
             WHERE (collection, id) > (?1, ?2) AND sealed IS NOT NULL AND subjects IS NULL
               AND substr(sealed, 2, 4) != ?3
             ORDER BY collection, id LIMIT ?4",
        )?;
        let rows = st
            .query_map(
                params![after.0, after.1, &version.to_be_bytes()[..], limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Replaces a record's sealed fields with the same fields sealed again
    /// (its version and times do not change: its content did not).
    pub fn reseal_record(
        &self,
        collection: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE records SET sealed = ?3 WHERE collection = ?1 AND id = ?2")?
            .execute(params![collection, id, sealed])?;
        Ok(())
    }

    /// Secrets sealed under a key version other than `version`, after
    /// `name`, by name: (name, secret version, envelope).
    pub fn secrets_sealed_not_under(
        &self,
        version: u32,
        after: &str,
        limit: u64,
    ) -> Result<Vec<(String, u32, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, version, ciphertext FROM secrets
             WHERE name > ?1 AND substr(ciphertext, 2, 4) != ?2 ORDER BY name LIMIT ?3",
        )?;
        let rows = st
            .query_map(
                params![after, &version.to_be_bytes()[..], limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Replaces a secret's ciphertext with the same value sealed again.
    pub fn reseal_secret(&self, name: &str, ciphertext: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE secrets SET ciphertext = ?2 WHERE name = ?1")?
            .execute(params![name, ciphertext])?;
        Ok(())
    }

    /// Reads inside the write transaction (for checks that must see it).
    pub fn read(&self) -> ReadTx<'_> {
        ReadTx { conn: self.conn }
    }
}
