//! The subject-erasure tables: each data subject's key (wrapped under the
//! data key), and the erasures done, with their deletion certificates.

use rusqlite::params;

use super::super::StoreError;
use super::WriteTx;

impl WriteTx<'_> {
    /// Stores a new subject key (the caller checked there was none).
    pub fn put_subject_key(
        &self,
        subject: &str,
        wrapped: &[u8],
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO subject_keys (subject, wrapped, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![subject, wrapped, now])?;
        Ok(())
    }

    /// Destroys a subject's key: whatever it sealed, in this file's older
    /// pages or anywhere else, no longer opens. Whether there was one.
    pub fn destroy_subject_key(&self, subject: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM subject_keys WHERE subject = ?1")?
            .execute([subject])?
            > 0)
    }

    /// Deletes one record with its index rows and idempotency keys
    /// (`secure_delete` zeroes the freed cells). Whether it was there.
    pub fn erase_record(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
            .execute(params![collection, id])?;
        for sql in [
            "DELETE FROM record_index WHERE collection = ?1 AND id = ?2",
            "DELETE FROM idempotency WHERE collection = ?1 AND record_id = ?2",
        ] {
            self.conn
                .prepare_cached(sql)?
                .execute(params![collection, id])?;
        }
        Ok(n > 0)
    }

    /// Records an erasure and its certificate. `reapplied_at` is set when a
    /// restore or a restart re-applied it from the ledger.
    pub fn insert_erasure(
        &self,
        id: &str,
        subject: &str,
        erased_at: &str,
        audit_size: u64,
        certificate: &str,
        reapplied_at: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO erasures (id, subject, erased_at, audit_size, certificate, reapplied_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                subject,
                erased_at,
                audit_size as i64,
                certificate,
                reapplied_at
            ])?;
        Ok(())
    }

    /// Subject keys wrapped under a data key version other than `version`,
    /// after `subject`, by subject: (subject, envelope).
    pub fn subject_keys_sealed_not_under(
        &self,
        version: u32,
        after: &str,
        limit: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT subject, wrapped FROM subject_keys
             WHERE subject > ?1 AND substr(wrapped, 2, 4) != ?2 ORDER BY subject LIMIT ?3",
        )?;
        let rows = st
            .query_map(
                params![after, &version.to_be_bytes()[..], limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Replaces a subject key's wrapping with the same key wrapped again.
    pub fn rewrap_subject_key(&self, subject: &str, wrapped: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE subject_keys SET wrapped = ?2 WHERE subject = ?1")?
            .execute(params![subject, wrapped])?;
        Ok(())
    }
}
