//! A firm's database (`<state_dir>/firms/<firm_id>.db`): WAL, `synchronous=FULL`,
//! `secure_delete=ON`, foreign keys on. One writer thread (group commit) and a
//! small pool of read-only connections; no rusqlite call runs on the async
//! runtime's worker threads.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::audit_log;
pub use super::audit_log::{AuditRow, AuditVerification};
use super::writer::Writer;
use super::{StoreError, migrate, open_encrypted};
use crate::audit::Entry;
use crate::audit::merkle::Hash;
use crate::crypto::keyring::SqlcipherKey;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE profile (
    k           TEXT PRIMARY KEY,
    v           TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    mac           BLOB NOT NULL,
    allow         TEXT NOT NULL DEFAULT '[]',
    deny          TEXT NOT NULL DEFAULT '[]',
    created_at    TEXT NOT NULL,
    created_by    TEXT,
    expires_at    TEXT,
    revoked_at    TEXT
)
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT
"#,
    r#"
CREATE TABLE audit_entries (
    seq         INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    firm        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source_ip   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    decision    TEXT NOT NULL,
    rule        TEXT NOT NULL,
    payload     BLOB NOT NULL,
    leaf        BLOB NOT NULL,
    chain       BLOB NOT NULL
);
CREATE TABLE audit_nodes (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID
"#,
    r#"
CREATE TABLE audit_checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL,
    note       TEXT NOT NULL,
    signed_at  TEXT NOT NULL
)
"#,
    audit_log::PURGES_SCHEMA,
    r#"
CREATE TABLE secrets (
    name         TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    ciphertext   BLOB NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    rotated_at   TEXT
)
"#,
    r#"
CREATE TABLE collections (
    name        TEXT PRIMARY KEY,
    schema      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE records (
    collection  TEXT NOT NULL,
    id          TEXT NOT NULL,
    version     INTEGER NOT NULL,
    clear       TEXT NOT NULL,
    sealed      BLOB,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE record_index (
    collection  TEXT NOT NULL,
    field       TEXT NOT NULL,
    value       TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (collection, field, value, id)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    collection    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    record_id     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID
"#,
];

/// A record's sealed fields as re-encryption sees them: collection, id,
/// record version, envelope.
pub type SealedRecord = (String, String, u32, Vec<u8>);

/// Read-only connections kept open per firm (the HTTP layer runs at most
/// this many blocking requests at once, so they stay warm).
pub const MAX_IDLE_READERS: usize = 16;

/// An API key's stored form (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub mac: Vec<u8>,
    pub allow: String,
    pub deny: String,
    pub created_at: String,
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// To the minute: refreshed at most once a minute per key.
    pub last_used_at: Option<String>,
    /// The key that replaced this one by rotation.
    pub replaced_by: Option<String>,
}

/// A secret as stored: its value only as ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub version: u32,
    pub ciphertext: Vec<u8>,
    pub fingerprint: String,
    pub created_at: String,
    pub rotated_at: Option<String>,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        name: r.get(0)?,
        version: r.get(1)?,
        ciphertext: r.get(2)?,
        fingerprint: r.get(3)?,
        created_at: r.get(4)?,
        rotated_at: r.get(5)?,
    })
}

const SECRET_COLUMNS: &str = "name, version, ciphertext, fingerprint, created_at, rotated_at";

/// A record as stored: non-sensitive fields as JSON text, sensitive ones
/// sealed (an envelope over their JSON).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub collection: String,
    pub id: String,
    pub version: u32,
    pub clear: String,
    pub sealed: Option<Vec<u8>>,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for RecordRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordRow")
            .field("collection", &self.collection)
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

const RECORD_COLUMNS: &str = "collection, id, version, clear, sealed, created_at, updated_at";

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        collection: r.get(0)?,
        id: r.get(1)?,
        version: r.get(2)?,
        clear: r.get(3)?,
        sealed: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// The write side handed to commands, inside the writer's transaction.
pub struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Self { conn }
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
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Exists
                }
                other => other.into(),
            })?;
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
        audit_log::append(self.conn, e)
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
                        "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ))?
                    .execute(params![
                        row.collection,
                        row.id,
                        row.version,
                        row.clear,
                        row.sealed,
                        row.created_at,
                        row.updated_at
                    ])?;
            }
            Some(v) => {
                let n = self
                    .conn
                    .prepare_cached(
                        "UPDATE records SET version = ?3, clear = ?4, sealed = ?5, updated_at = ?6
                         WHERE collection = ?1 AND id = ?2 AND version = ?7",
                    )?
                    .execute(params![
                        row.collection,
                        row.id,
                        row.version,
                        row.clear,
                        row.sealed,
                        row.updated_at,
                        v
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

    /// Records whose sealed fields are under a key version other than
    /// `version`, after `(collection, id)`, in key order: (collection, id,
    /// record version, envelope).
    pub fn records_sealed_not_under(
        &self,
        version: u32,
        after: (&str, &str),
        limit: u64,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT collection, id, version, sealed FROM records
             WHERE (collection, id) > (?1, ?2) AND sealed IS NOT NULL AND substr(sealed, 2, 4) != ?3
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

    pub fn set_meta(&self, k: &str, v: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [k, v],
        )?;
        Ok(())
    }
}

const API_KEY_COLUMNS: &str = "id, name, role, mac, allow, deny, created_at, created_by, \
     expires_at, revoked_at, last_used_at, replaced_by";

fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        mac: r.get(3)?,
        allow: r.get(4)?,
        deny: r.get(5)?,
        created_at: r.get(6)?,
        created_by: r.get(7)?,
        expires_at: r.get(8)?,
        revoked_at: r.get(9)?,
        last_used_at: r.get(10)?,
        replaced_by: r.get(11)?,
    })
}

/// The read side, on a read-only connection.
pub struct ReadTx<'c> {
    conn: &'c Connection,
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
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id = ?2"
            ))?
            .query_row(params![collection, id], record_row)
            .optional()?)
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
        let rows = match filter {
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
                    "SELECT r.collection, r.id, r.version, r.clear, r.sealed, r.created_at, r.updated_at
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
        Ok(rows)
    }

    /// A stored idempotency key: (request hash, record id).
    /// How many secrets and records are sealed under a key version other
    /// than `version` (the envelope's bytes 1..5 name it).
    pub fn count_sealed_not_under(&self, version: u32) -> Result<u64, StoreError> {
        let v = &version.to_be_bytes()[..];
        Ok(self.conn.prepare_cached(
            "SELECT (SELECT count(*) FROM records WHERE sealed IS NOT NULL AND substr(sealed, 2, 4) != ?1)
                  + (SELECT count(*) FROM secrets WHERE substr(ciphertext, 2, 4) != ?1)",
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

    pub fn count_api_keys(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM api_keys", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

/// Waits for a writer's reply on a plain thread: polls briefly (a commit is a
/// few hundred microseconds), then sleeps.
fn wait_reply<R, E: From<StoreError>>(mut rx: oneshot::Receiver<Result<R, E>>) -> Result<R, E> {
    // clock: a real-time spin of a few hundred microseconds, not domain time.
    #[allow(clippy::disallowed_methods)]
    let until = std::time::Instant::now() + std::time::Duration::from_micros(300);
    #[allow(clippy::disallowed_methods)]
    while std::time::Instant::now() < until {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Closed) => return Err(StoreError::WriterGone.into()),
            Err(oneshot::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.blocking_recv()
        .map_err(|_| E::from(StoreError::WriterGone))?
}

fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!("journal_mode is {mode}")));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

/// One open firm database.
pub struct FirmDb {
    firm_id: String,
    path: PathBuf,
    key: SqlcipherKey,
    writer: Option<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// Async writes queued and not yet answered.
    in_flight: AtomicUsize,
}

/// Decrements the in-flight count however the write future ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a lone async write polls for its reply before it sleeps.
const LONE_WRITE_POLL: std::time::Duration = std::time::Duration::from_micros(300);

impl std::fmt::Debug for FirmDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmDb")
            .field("firm_id", &self.firm_id)
            .finish_non_exhaustive()
    }
}

impl FirmDb {
    /// Opens (creating if `create`) the firm's database, runs migrations and
    /// starts its writer thread. Blocking: call from a blocking context.
    pub fn open(
        firm_id: &str,
        path: &Path,
        key: SqlcipherKey,
        create: bool,
    ) -> Result<Self, StoreError> {
        if !create && !path.exists() {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "firm database missing"),
            });
        }
        let conn = open_encrypted(path, &key, OpenFlags::default())?;
        configure_writer(&conn)?;
        migrate(&conn, MIGRATIONS)?;
        conn.execute(
            "INSERT INTO meta (k, v) VALUES ('firm_id', ?1) ON CONFLICT (k) DO NOTHING",
            [firm_id],
        )?;
        let stored: String =
            conn.query_row("SELECT v FROM meta WHERE k = 'firm_id'", [], |r| r.get(0))?;
        if stored != firm_id {
            return Err(StoreError::Corrupt(format!(
                "{} belongs to firm {stored}, not {firm_id}",
                path.display()
            )));
        }
        let writer = Writer::spawn(conn, format!("w-{}", &firm_id[..firm_id.len().min(12)]))?;
        Ok(Self {
            firm_id: firm_id.to_owned(),
            path: path.to_owned(),
            key,
            writer: Some(writer),
            readers: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn firm_id(&self) -> &str {
        &self.firm_id
    }

    /// Queues a write command; the future resolves after its durable commit.
    /// The command may refuse with the caller's own error type `E`.
    pub async fn write<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let lone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        let _guard = InFlight(&self.in_flight);
        let mut rx = self
            .writer
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .submit(f)?;
        if lone {
            // The only write in flight: the writer is idle and commits it at
            // once (~150 us), so poll for the answer rather than pay a worker
            // wake-up. Under load answers come in batches and tasks sleep.
            // clock: a real-time poll of a few hundred microseconds.
            #[allow(clippy::disallowed_methods)]
            let until = std::time::Instant::now() + LONE_WRITE_POLL;
            #[allow(clippy::disallowed_methods)]
            while std::time::Instant::now() < until {
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err(StoreError::WriterGone.into());
                    }
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        rx.await.map_err(|_| E::from(StoreError::WriterGone))?
    }

    /// [`FirmDb::write_with`] for commands that fail only with store errors.
    pub fn write_blocking<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_with(f)
    }

    /// The blocking form of [`FirmDb::write`]: queues a command and waits
    /// for its durable commit. The command may refuse with `E`.
    pub fn write_with<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let rx = self
            .writer
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .submit(f)?;
        wait_reply(rx)
    }

    /// Queues a best-effort write nobody waits for (metadata such as a key's
    /// last use). Never acknowledged, so never reported as lost; dropped if
    /// the queue is full.
    pub fn write_detached<F>(&self, f: F)
    where
        F: Fn(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        if let Some(w) = self.writer.as_ref() {
            let _ = w.submit(f);
        }
    }

    /// Runs `f` on a pooled read-only connection. Blocking.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = match self.lock_readers().pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = f(&ReadTx { conn: &conn });
        let mut pool = self.lock_readers();
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Re-verifies the whole audit log on two pooled read connections (two
    /// threads for a large log; see [`audit_log::verify`]). Blocking.
    pub fn audit_verify(&self) -> Result<AuditVerification, StoreError> {
        let second = match self.lock_readers().pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        self.read_blocking(move |r| {
            let (v, second) = audit_log::verify(r.conn, Some(second))?;
            if let Some(c) = second {
                let mut pool = self.lock_readers();
                if pool.len() < MAX_IDLE_READERS {
                    pool.push(c);
                }
            }
            Ok(v)
        })
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        // One thread at a time uses a pooled connection (checked out of the
        // pool), so SQLite's per-call mutex is pure overhead.
        let c = open_encrypted(
            &self.path,
            &self.key,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
        Ok(c)
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        match self.readers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drains the writer and closes every connection. Blocking.
    pub fn close(mut self) {
        self.lock_readers().clear();
        if let Some(w) = self.writer.take() {
            w.close();
        }
    }

    /// Replaces the database's key with `new_key` (`PRAGMA rekey`, which
    /// rewrites every page in one transaction). The firm must be closed.
    pub fn rekey(
        path: &Path,
        old: &SqlcipherKey,
        new_key: &SqlcipherKey,
    ) -> Result<(), StoreError> {
        let conn = open_encrypted(path, old, OpenFlags::default())?;
        configure_writer(&conn)?;
        // Fold the WAL into the main file first, then leave WAL mode so the
        // rekey rewrites one file; WAL mode comes back on the next open.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let _: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        conn.pragma_update(None, "rekey", new_key.as_pragma_value())?;
        drop(conn);
        // Prove the new key opens it before the caller forgets the old one.
        let check = open_encrypted(path, new_key, OpenFlags::default())?;
        drop(check);
        Ok(())
    }

    /// Whether `key` opens the database at `path`.
    pub fn key_opens(path: &Path, key: &SqlcipherKey) -> bool {
        open_encrypted(path, key, OpenFlags::SQLITE_OPEN_READ_ONLY).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle;
    use crate::crypto::keyring::SqlcipherKey;
    use crate::crypto::secret::SecretKey;
    use std::sync::Arc;

    fn key(b: u8) -> SqlcipherKey {
        SqlcipherKey::from_secret(&SecretKey::from_bytes([b; 32]))
    }

    #[test]
    fn writes_are_durable_and_failures_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = Arc::new(FirmDb::open("frm_x", &path, key(1), true).unwrap());
        let ok = db.write_blocking(|tx| tx.set_profile("display_name", "A", "t"));
        assert!(ok.is_ok());
        // A failing command in the same batch does not sink the others.
        let mut handles = Vec::new();
        for i in 0..50 {
            let db = db.clone();
            handles.push(std::thread::spawn(move || {
                db.write_blocking(move |tx| {
                    if i % 7 == 0 {
                        tx.set_profile("k", "bad", "t")?;
                        Err(StoreError::NotFound)
                    } else {
                        tx.set_profile(&format!("k{i}"), "v", "t")
                    }
                })
            }));
        }
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 8);
        let profile = db.read_blocking(|r| r.profile()).unwrap();
        assert_eq!(profile.len(), 1 + 42);
        assert!(
            !profile.iter().any(|(k, _)| k == "k"),
            "failed command rolled back"
        );
        Arc::try_unwrap(db).unwrap().close();

        // Reopen: everything acknowledged is there; the wrong key is refused.
        assert!(matches!(
            FirmDb::open("frm_x", &path, key(2), false),
            Err(StoreError::WrongKey { .. })
        ));
        let db = FirmDb::open("frm_x", &path, key(1), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 43);
        // Another firm's id on this file is refused.
        db.close();
        assert!(matches!(
            FirmDb::open("frm_y", &path, key(1), false),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_failing_command_in_a_batch_rolls_back_alone() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let db = FirmDb::open("frm_x", &dir.path().join("f.db"), key(1), true).unwrap();
        let writer = db.writer.as_ref().unwrap();
        // The first command holds the writer so the next ones queue into one batch.
        let gate = writer
            .submit(|_tx| -> Result<(), StoreError> {
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(())
            })
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut replies = Vec::new();
        for i in 0..20 {
            let runs = runs.clone();
            replies.push(
                writer
                    .submit(move |tx| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tx.set_profile(&format!("k{i}"), "v", "t")?;
                        if i == 10 {
                            // Wrote, then failed: its write must not survive.
                            return Err(StoreError::NotFound);
                        }
                        Ok(i)
                    })
                    .unwrap(),
            );
        }
        gate.blocking_recv().unwrap().unwrap();
        for (i, rx) in replies.into_iter().enumerate() {
            let r = rx.blocking_recv().unwrap();
            if i == 10 {
                assert!(matches!(r, Err(StoreError::NotFound)));
            } else {
                assert_eq!(r.unwrap(), i);
            }
        }
        // Optimistic pass stopped at the failure (11 runs), replay ran all 20.
        assert_eq!(runs.load(Ordering::SeqCst), 31);
        let keys: Vec<String> = db
            .read_blocking(|r| r.profile())
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 19);
        assert!(!keys.contains(&"k10".to_owned()));
        db.close();
    }

    /// Runs SQL on the closed database with its raw key (tampering).
    fn raw_sql(path: &Path, sql: &str) {
        let c = crate::store::open_encrypted(path, &key(1), OpenFlags::default()).unwrap();
        c.execute_batch(sql).unwrap();
    }

    /// Reopens the database and verifies it (on one thread, or on two for
    /// a log large enough): the first bad seq, if any.
    fn first_bad(path: &Path, two_threads: bool) -> Option<u64> {
        let db = FirmDb::open("frm_x", path, key(1), false).unwrap();
        let v = if two_threads {
            db.audit_verify()
        } else {
            db.read_blocking(|r| r.audit_verify())
        }
        .unwrap();
        db.close();
        v.first_bad.map(|(seq, _)| seq)
    }

    fn audit_entry(i: u64) -> Entry {
        Entry {
            seq: 0,
            at: format!("2026-11-22T10:00:{:02}Z", i % 60),
            firm: "frm_x".into(),
            actor: format!("key_{i}"),
            source_ip: "127.0.0.1".into(),
            request_id: format!("req{i}"),
            action: "keys.create".into(),
            resource: format!("res{i}"),
            outcome: "success".into(),
            decision: "allow".into(),
            rule: "role:owner".into(),
            payload: vec![i as u8; 5],
        }
    }

    #[test]
    fn audit_log_proves_and_finds_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..40u64 {
            let seq = db
                .write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
            assert_eq!(seq, i);
        }
        let v = db.read_blocking(|r| r.audit_verify()).unwrap();
        assert_eq!((v.size, v.first_bad.clone()), (40, None));
        let root = db.read_blocking(|r| r.audit_root(40)).unwrap();
        assert_eq!(v.root, root);
        let rows = db.read_blocking(|r| r.audit_entries(0, 100)).unwrap();
        for size in [1u64, 17, 40] {
            let root_n = db.read_blocking(move |r| r.audit_root(size)).unwrap();
            for i in (0..size).step_by(3) {
                let p = db
                    .read_blocking(move |r| r.audit_inclusion(i, size))
                    .unwrap();
                assert!(merkle::verify_inclusion(
                    i,
                    size,
                    &rows[i as usize].entry.leaf(),
                    &p,
                    &root_n
                ));
            }
            let p = db
                .read_blocking(move |r| r.audit_consistency(size, 40))
                .unwrap();
            assert!(merkle::verify_consistency(size, 40, &root_n, &root, &p));
        }
        db.close();

        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, false);
        // One flipped byte in one entry's payload.
        raw("UPDATE audit_entries SET payload = x'0c0c0c0c0d' WHERE seq = 12");
        assert_eq!(verify(), Some(12));
        raw("UPDATE audit_entries SET payload = x'0c0c0c0c0c' WHERE seq = 12");
        assert_eq!(verify(), None);
        // Two entries swapped (every column but seq).
        raw("UPDATE audit_entries SET seq = -1 WHERE seq = 20;
             UPDATE audit_entries SET seq = 20 WHERE seq = 21;
             UPDATE audit_entries SET seq = 21 WHERE seq = -1;");
        assert_eq!(verify(), Some(20));
        raw("UPDATE audit_entries SET seq = -1 WHERE seq = 20;
             UPDATE audit_entries SET seq = 20 WHERE seq = 21;
             UPDATE audit_entries SET seq = 21 WHERE seq = -1;");
        assert_eq!(verify(), None);
        // A deleted entry.
        raw("DELETE FROM audit_entries WHERE seq = 30");
        assert_eq!(verify(), Some(30));
    }

    #[test]
    fn a_purged_log_still_proves_and_a_forged_anchor_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..30u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
        }
        let root30 = db.read_blocking(|r| r.audit_root(30)).unwrap();
        let purge = || {
            db.write_blocking(|tx| {
                tx.purge_audit("2026-11-22T10:00:20Z", "2026-11-22T11:00:00Z", &|_| {
                    ("receipt".to_owned(), audit_entry(99))
                })
            })
            .unwrap()
        };
        let (plan, deleted) = purge().unwrap();
        assert_eq!((plan.before, deleted, plan.tree_size), (20, 20, 30));
        assert_eq!(plan.root, root30);
        assert!(purge().is_none(), "nothing more is old enough");
        let v = db.read_blocking(|r| r.audit_verify()).unwrap();
        assert_eq!((v.size, v.first_retained, v.first_bad), (31, 20, None));
        // Proofs for purged and retained entries alike, across the purge.
        let root31 = db.read_blocking(|r| r.audit_root(31)).unwrap();
        assert_eq!(v.root, root31);
        for i in [0u64, 19, 20, 30] {
            let leaf = db.read_blocking(move |r| r.audit_leaf(i)).unwrap();
            let p = db.read_blocking(move |r| r.audit_inclusion(i, 31)).unwrap();
            assert!(merkle::verify_inclusion(i, 31, &leaf, &p, &root31));
        }
        let p = db.read_blocking(|r| r.audit_consistency(30, 31)).unwrap();
        assert!(merkle::verify_consistency(30, 31, &root30, &root31, &p));
        db.close();
        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, false);
        // A forged entry in the purged range.
        raw("INSERT INTO audit_entries SELECT 5, at, firm, actor, source_ip, request_id, action,
             resource, outcome, decision, rule, payload, leaf, chain FROM audit_entries WHERE seq = 25");
        assert_eq!(verify(), Some(5));
        raw("DELETE FROM audit_entries WHERE seq = 5");
        assert_eq!(verify(), None);
        raw("UPDATE audit_purges SET chain = zeroblob(32)");
        assert_eq!(verify(), Some(20));
    }

    #[test]
    fn cutting_entries_off_the_end_is_found_against_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..40u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
        }
        db.write_blocking(|tx| tx.checkpoint_audit("2026-11-22T11:00:00Z", &|_, _| "note".into()))
            .unwrap();
        let v = db.audit_verify().unwrap();
        assert_eq!((v.first_bad, v.checkpoint.map(|c| c.0)), (None, Some(40)));
        db.close();
        let c = crate::store::open_encrypted(&path, &key(1), OpenFlags::default()).unwrap();
        // The last five entries and their leaves go; the tree below 35 stays whole.
        c.execute_batch(
            "DELETE FROM audit_entries WHERE seq >= 35;
             DELETE FROM audit_nodes WHERE level = 0 AND idx >= 35;",
        )
        .unwrap();
        drop(c);
        let db = FirmDb::open("frm_x", &path, key(1), false).unwrap();
        let v = db.audit_verify().unwrap();
        assert_eq!(v.size, 35);
        assert_eq!(v.first_bad.map(|b| b.0), Some(35));
        db.close();
    }

    #[test]
    fn two_thread_verify_agrees_with_one_thread_and_finds_tampering_in_either_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for n in 1..=40u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(n)))
                .unwrap();
            let one = db.read_blocking(|r| r.audit_verify()).unwrap();
            let two = db.audit_verify().unwrap();
            assert_eq!(one, two, "size {n}");
            assert_eq!((two.size, two.first_bad), (n, None));
        }
        db.close();
        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, true);
        // The halves are [0, 32) and [32, 40).
        for seq in [3, 31, 32, 39] {
            raw(&format!(
                "UPDATE audit_entries SET actor = 'x' WHERE seq = {seq}"
            ));
            assert_eq!(verify(), Some(seq));
            raw(&format!(
                "UPDATE audit_entries SET actor = 'key_{}' WHERE seq = {seq}",
                seq + 1
            ));
            assert_eq!(verify(), None);
        }
        raw("DELETE FROM audit_entries WHERE seq = 31");
        assert_eq!(verify(), Some(31));
    }

    #[test]
    fn rekey_switches_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        db.write_blocking(|tx| tx.set_profile("a", "b", "t"))
            .unwrap();
        db.close();
        FirmDb::rekey(&path, &key(1), &key(3)).unwrap();
        assert!(!FirmDb::key_opens(&path, &key(1)));
        let db = FirmDb::open("frm_x", &path, key(3), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 1);
        db.close();
    }

    #[test]
    fn database_runs_on_our_fips_provider() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_encrypted(&dir.path().join("p.db"), &key(5), OpenFlags::default()).unwrap();
        let v: String = conn
            .query_row("PRAGMA cipher_provider_version", [], |r| r.get(0))
            .unwrap();
        assert!(v.starts_with("AWS-LC FIPS"), "{v}");
        assert!(crate::store::sqlcipher_version().starts_with("4."));
    }
}
