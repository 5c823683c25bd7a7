//! The subject-erasure tables: each data subject's sealed key half and
//! pepper slot, and the erasures done, with their deletion certificates.

use rusqlite::{OptionalExtension, params};

use super::super::StoreError;
use super::WriteTx;

impl WriteTx<'_> {
    /// Stores a new subject key (the caller checked there was none).
    pub fn put_subject_key(
        &self,
        subject: &str,
        slot: u64,
        wrapped: &[u8],
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO subject_keys (subject, slot, wrapped, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![subject, slot as i64, wrapped, now])?;
        Ok(())
    }

    /// The next pepper slot to hand out (and counts it as handed out).
    pub fn next_subject_slot(&self) -> Result<u64, StoreError> {
        let next: i64 = self
            .conn
            .prepare_cached("SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'subject_slot_next'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        self.conn
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES ('subject_slot_next', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )?
            .execute([(next + 1).to_string()])?;
        Ok(next as u64)
    }

    /// Destroys a subject's sealed key half; its pepper slot, which the
    /// caller zeroes, if there was one.
    pub fn destroy_subject_key(&self, subject: &str) -> Result<Option<u64>, StoreError> {
        let slot = self.read().subject_key(subject)?.map(|(slot, _)| slot);
        self.conn
            .prepare_cached("DELETE FROM subject_keys WHERE subject = ?1")?
            .execute([subject])?;
        Ok(slot)
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
    #[allow(clippy::too_many_arguments)]
    pub fn insert_erasure(
        &self,
        id: &str,
        subject: &str,
        erased_at: &str,
        audit_size: u64,
        certificate: &str,
        reapplied_at: Option<&str>,
        slots: &[u64],
    ) -> Result<(), StoreError> {
        let slots: Vec<String> = slots.iter().map(u64::to_string).collect();
        self.conn
            .prepare_cached(
                "INSERT INTO erasures (id, subject, erased_at, audit_size, certificate, reapplied_at, slots)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id,
                subject,
                erased_at,
                audit_size as i64,
                certificate,
                reapplied_at,
                slots.join(",")
            ])?;
        Ok(())
    }

    /// Never hands out a slot below `n` (a restore: the repository's
    /// peppers may hold slots a later timeline handed out).
    pub fn raise_subject_slot(&self, n: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES ('subject_slot_next', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = max(CAST(v AS INTEGER), CAST(excluded.v AS INTEGER))",
            )?
            .execute([n.to_string()])?;
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
