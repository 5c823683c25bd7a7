//! Reads on a pooled read-only connection (or inside a write).

use rusqlite::{Connection, OptionalExtension, params};

use super::super::StoreError;
use super::super::audit_log;
use super::super::audit_log::{AuditRow, AuditVerification};
use super::rows::*;
use crate::audit::merkle::Hash;

/// The read side, on a read-only connection.
pub struct ReadTx<'c> {
    pub(super) conn: &'c Connection,
}

impl ReadTx<'_> {
    pub fn profile(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT k, v FROM profile ORDER BY k")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?1"
        ))?;
        Ok(st.query_row([id], api_key_row).optional()?)
    }

    /// Every key, oldest first, revoked ones included.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], api_key_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn audit_size(&self) -> Result<u64, StoreError> {
        audit_log::size(self.conn)
    }

    /// Stored entries with `seq >= from`, oldest first, at most `limit`.
    pub fn audit_entries(&self, from: u64, limit: u64) -> Result<Vec<AuditRow>, StoreError> {
        audit_log::entries(self.conn, from, limit)
    }

    /// Entries from `from` that match the filter, at most `limit`.
    pub fn audit_entries_matching(
        &self,
        from: u64,
        limit: u64,
        f: &audit_log::Filter,
    ) -> Result<(Vec<AuditRow>, u64), StoreError> {
        audit_log::entries_matching(self.conn, from, limit, f)
    }

    /// The leaf hash of entry `seq`, kept after a purge.
    pub fn audit_leaf(&self, seq: u64) -> Result<Hash, StoreError> {
        audit_log::leaf(self.conn, seq)
    }

    /// The purge anchor (with its signed receipt), if entries were purged.
    pub fn audit_anchor(&self) -> Result<Option<audit_log::PurgeAnchor>, StoreError> {
        audit_log::anchor(self.conn)
    }

    pub fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        audit_log::root(self.conn, size)
    }

    pub fn audit_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        audit_log::inclusion(self.conn, index, size)
    }

    pub fn audit_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        audit_log::consistency(self.conn, old, new)
    }

    /// See [`audit_log::verify`] (on this one connection).
    pub fn audit_verify(&self) -> Result<AuditVerification, StoreError> {
        audit_log::verify(self.conn, None).map(|(v, _)| v)
    }

    pub fn audit_needs_checkpoint(&self) -> Result<bool, StoreError> {
        audit_log::needs_checkpoint(self.conn)
    }

    /// See [`audit_log::export_snapshot`].
    pub fn audit_export_snapshot(
        &self,
        size: u64,
    ) -> Result<audit_log::ExportSnapshot, StoreError> {
        audit_log::export_snapshot(self.conn, size)
    }

    pub fn secret(&self, name: &str) -> Result<Option<SecretRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {SECRET_COLUMNS} FROM secrets WHERE name = ?1"
            ))?
            .query_row([name], secret_row)
            .optional()?)
    }

    pub fn secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets ORDER BY name"
        ))?;
        let rows = st.query_map([], secret_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every collection's name.
    pub fn collection_names(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM collections ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A collection's schema (JSON text) and version.
    pub fn collection(&self, name: &str) -> Result<Option<(String, u32)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT schema, version FROM collections WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// How many records of `collection` hold `field` in their clear part
    /// (any value, `null` included).
    pub fn records_holding(&self, collection: &str, field: &str) -> Result<u64, StoreError> {
        let path = format!("$.\"{}\"", field.replace('"', ""));
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM records WHERE collection = ?1 AND json_type(clear, ?2) IS NOT NULL",
            )?
            .query_row(params![collection, path], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn record(&self, collection: &str, id: &str) -> Result<Option<RecordRow>, StoreError> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id = ?2"
            ))?
            .query_row(params![collection, id], record_row)
            .optional()?;
        Ok(match row {
            Some(r) => self.with_subject_keys(vec![r])?.pop(),
            None => None,
        })
    }

    /// Fills in each row's wrapped subject keys, read in this same
    /// transaction so the rows and their keys are one snapshot.
    fn with_subject_keys(&self, mut rows: Vec<RecordRow>) -> Result<Vec<RecordRow>, StoreError> {
        for r in &mut rows {
            let Some(ids) = &r.subjects else { continue };
            for id in ids.split(',') {
                if let Some((slot, w)) = self.subject_key(id)? {
                    r.subject_keys.push((id.to_owned(), slot, w));
                }
            }
        }
        Ok(rows)
    }

    /// A data subject's key: its pepper slot and its half sealed under
    /// the data key.
    pub fn subject_key(&self, subject: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT slot, wrapped FROM subject_keys WHERE subject = ?1")?
            .query_row([subject], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .optional()?)
    }

    /// The pepper slots an erasure zeroed.
    pub fn erasure_slots(&self, id: &str) -> Result<Vec<u64>, StoreError> {
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT slots FROM erasures WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        Ok(text
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// How many subject keys this firm holds.
    pub fn subject_key_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM subject_keys")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The ids of the erasures this firm holds (done here, or re-applied).
    pub fn erasure_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM erasures ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// Deletion certificates whose erasure entered the audit log after
    /// entry `from` and at or before `to` (tree sizes), in order.
    pub fn erasure_certificates(&self, from: u64, to: u64) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT certificate FROM erasures WHERE audit_size > ?1 AND audit_size <= ?2
                 ORDER BY audit_size",
            )?
            .query_map(params![from as i64, to as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// Records by id after `after`, at most `limit`; with `filter` (an
    /// indexed field and a value) only those matching.
    pub fn records(
        &self,
        collection: &str,
        after: &str,
        limit: u64,
        filter: Option<(&str, &str)>,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let rows: Vec<RecordRow> = match filter {
            None => self
                .conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id > ?2
                     ORDER BY id LIMIT ?3"
                ))?
                .query_map(params![collection, after, limit as i64], record_row)?
                .collect::<Result<_, _>>()?,
            Some((field, value)) => self
                .conn
                .prepare_cached(
                    "SELECT r.collection, r.id, r.version, r.clear, r.sealed, r.created_at, r.updated_at,
                            r.subjects
                     FROM record_index i JOIN records r ON r.collection = i.collection AND r.id = i.id
                     WHERE i.collection = ?1 AND i.field = ?4 AND i.value = ?5 AND i.id > ?2
                     ORDER BY i.id LIMIT ?3",
                )?
                .query_map(
                    params![collection, after, limit as i64, field, value],
                    record_row,
                )?
                .collect::<Result<_, _>>()?,
        };
        self.with_subject_keys(rows)
    }

    /// A stored idempotency key: (request hash, record id).
    /// How many secrets, records and subject keys are sealed under a data
    /// key version other than `version` (the envelope's bytes 1..5 name
    /// it). Records sealed under subject keys are not under the data key.
    pub fn count_sealed_not_under(&self, version: u32) -> Result<u64, StoreError> {
        let v = &version.to_be_bytes()[..];
        Ok(self
            .conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM records
                     WHERE sealed IS NOT NULL AND subjects IS NULL AND substr(sealed, 2, 4) != ?1)
                  + (SELECT count(*) FROM secrets WHERE substr(ciphertext, 2, 4) != ?1)
                  + (SELECT count(*) FROM subject_keys WHERE substr(wrapped, 2, 4) != ?1)",
            )?
            .query_row([v], |r| r.get::<_, i64>(0))?
            .try_into()
            .unwrap_or(0))
    }

    pub fn idempotency(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT request_hash, record_id FROM idempotency WHERE collection = ?1 AND key = ?2",
            )?
            .query_row(params![collection, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}
