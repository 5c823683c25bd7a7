//! The registry database (`<state_dir>/registry.db`): firms, their states and
//! their wrapped keys. Small and rarely written, so one connection behind a
//! mutex, rollback journal, `synchronous=FULL`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{StoreError, audit_log, migrate, open_encrypted};
use crate::audit::Entry;
use crate::crypto::keyring::SqlcipherKey;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE firms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'frozen', 'deleted')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted_at  TEXT
);
CREATE TABLE firm_keys (
    firm_id     TEXT NOT NULL REFERENCES firms(id),
    purpose     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'pending')),
    wrapped     BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (firm_id, purpose, version)
)
"#,
    r#"
CREATE TABLE appliance_keys (
    purpose     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (purpose, version)
)
"#,
    "ALTER TABLE firms ADD COLUMN audit_retention TEXT",
    // The system audit log: admin-socket actions, same design as a firm's.
    audit_log::SCHEMA,
    audit_log::PURGES_SCHEMA,
    // Data keys keep their old versions, `retired`, until re-encryption
    // leaves nothing sealed under them (SQLite cannot alter a CHECK in place).
    r#"
CREATE TABLE firm_keys_v2 (
    firm_id     TEXT NOT NULL REFERENCES firms(id),
    purpose     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'pending', 'retired')),
    wrapped     BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (firm_id, purpose, version)
);
INSERT INTO firm_keys_v2 SELECT firm_id, purpose, version, state, wrapped, created_at FROM firm_keys;
DROP TABLE firm_keys;
ALTER TABLE firm_keys_v2 RENAME TO firm_keys
"#,
    // Per-firm rate-limit overrides set over the admin socket (JSON).
    "ALTER TABLE firms ADD COLUMN rate_limits TEXT",
];

/// The pseudo firm id appliance keys are wrapped under (never a real id:
/// firm ids start with `frm_`).
pub const APPLIANCE: &str = "@appliance";

/// A firm as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FirmRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    /// The firm's own audit retention (e.g. `3650d`); None: the default.
    pub audit_retention: Option<String>,
    /// The firm's rate-limit overrides, `{"read": 500, ...}` per second.
    pub rate_limits: Option<String>,
}

/// One wrapped key.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub firm_id: String,
    pub purpose: String,
    pub version: u32,
    pub state: String,
    pub wrapped: Vec<u8>,
    pub created_at: String,
}

#[derive(Debug)]
pub struct Registry {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE;
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

impl Registry {
    /// Opens (or creates) the registry. A wrong key is `StoreError::WrongKey`,
    /// detected before anything is written.
    pub fn open(path: &Path, key: &SqlcipherKey) -> Result<Self, StoreError> {
        let conn = open_encrypted(path, key, OpenFlags::default())?;
        configure(&conn)?;
        migrate(&conn, MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// Proves `key` opens the registry, read-only, changing nothing.
    pub fn check_key(path: &Path, key: &SqlcipherKey) -> Result<(), StoreError> {
        open_encrypted(path, key, OpenFlags::SQLITE_OPEN_READ_ONLY).map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `copy` on the registry file while no write can start: the
    /// registry uses a rollback journal and this one connection, so holding
    /// it keeps the file still. Also returns the system log's tree (size,
    /// root) in that state.
    pub fn with_still_file<R>(
        &self,
        copy: impl FnOnce(&Path) -> R,
    ) -> Result<(R, u64, crate::audit::merkle::Hash), StoreError> {
        let conn = self.lock();
        let size = audit_log::size(&conn)?;
        let root = audit_log::root(&conn, size)?;
        Ok((copy(&self.path), size, root))
    }

    pub fn meta(&self, k: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    /// Sets `k` to `v` unless it is already set; returns the stored value.
    pub fn meta_init(&self, k: &str, v: &str) -> Result<String, StoreError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO NOTHING",
            [k, v],
        )?;
        Ok(c.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))?)
    }

    /// Inserts a new firm and its wrapped keys in one transaction.
    pub fn insert_firm(
        &self,
        firm: &FirmRow,
        keys: &[WrappedKey],
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO firms (id, name, state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![firm.id, firm.name, firm.state, firm.created_at, firm.updated_at],
        )?;
        for k in keys {
            insert_key(&tx, k)?;
        }
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    pub fn firm(&self, id: &str) -> Result<Option<FirmRow>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, name, state, created_at, updated_at, deleted_at, audit_retention, rate_limits FROM firms WHERE id = ?1",
                [id],
                firm_row,
            )
            .optional()?)
    }

    pub fn firms(&self) -> Result<Vec<FirmRow>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT id, name, state, created_at, updated_at, deleted_at, audit_retention, rate_limits FROM firms ORDER BY created_at, id",
        )?;
        let rows = st.query_map([], firm_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Changes a firm's state (never out of `deleted`).
    pub fn set_state(
        &self,
        id: &str,
        state: &str,
        now: &str,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        self.update_live_firm(
            "UPDATE firms SET state = ?2, updated_at = ?3 WHERE id = ?1 AND state != 'deleted'",
            params![id, state, now],
            audit,
        )
    }

    /// Sets (or with None clears) a firm's own audit retention.
    pub fn set_retention(
        &self,
        id: &str,
        retention: Option<&str>,
        now: &str,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        self.update_live_firm(
            "UPDATE firms SET audit_retention = ?2, updated_at = ?3 WHERE id = ?1 AND state != 'deleted'",
            params![id, retention, now],
            audit,
        )
    }

    /// Sets (or with None clears) a firm's rate-limit overrides.
    pub fn set_rate_limits(
        &self,
        id: &str,
        limits: Option<&str>,
        now: &str,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        self.update_live_firm(
            "UPDATE firms SET rate_limits = ?2, updated_at = ?3 WHERE id = ?1 AND state != 'deleted'",
            params![id, limits, now],
            audit,
        )
    }

    /// One UPDATE of a firm that is not deleted (`NotFound` otherwise) and
    /// its system-log entry, in one transaction.
    fn update_live_firm(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        if tx.execute(sql, args)? == 0 {
            return Err(StoreError::NotFound);
        }
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Appends an entry to the system audit log on its own (actions that
    /// change nothing in the registry, refusals and failures).
    pub fn append_audit(&self, e: Entry) -> Result<u64, StoreError> {
        self.with_audit_log(|c| audit_log::append(c, e))
    }

    /// Runs `f` on the system audit log in one transaction.
    fn with_audit_log<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let r = f(&tx)?;
        tx.commit()?;
        Ok(r)
    }

    /// The system log's size and a page of its entries from `from`.
    pub fn audit_page(
        &self,
        from: u64,
        limit: u64,
    ) -> Result<(u64, Vec<audit_log::AuditRow>), StoreError> {
        self.with_audit_log(|c| Ok((audit_log::size(c)?, audit_log::entries(c, from, limit)?)))
    }

    /// Verifies the system log (see `audit::verify`).
    pub fn audit_verify(&self) -> Result<audit_log::AuditVerification, StoreError> {
        self.with_audit_log(|c| audit_log::verify(c, None).map(|(v, _)| v))
    }

    /// The system log's latest signed checkpoint, signing one if it grew.
    pub fn audit_checkpoint(
        &self,
        at: &str,
        sign: &dyn Fn(u64, &crate::audit::merkle::Hash) -> String,
    ) -> Result<String, StoreError> {
        self.with_audit_log(|c| audit_log::checkpoint(c, at, sign))
    }

    /// True if the system log grew since its latest checkpoint.
    pub fn audit_needs_checkpoint(&self) -> Result<bool, StoreError> {
        self.with_audit_log(audit_log::needs_checkpoint)
    }

    /// What an export of the system log's first `size` entries needs.
    pub fn audit_export_snapshot(
        &self,
        size: u64,
    ) -> Result<audit_log::ExportSnapshot, StoreError> {
        self.with_audit_log(|c| audit_log::export_snapshot(c, size))
    }

    /// Purges the system log's entries older than `cutoff` (see
    /// `audit_log::purge`).
    pub fn audit_purge(
        &self,
        cutoff: &str,
        at: &str,
        receipt: &dyn Fn(&audit_log::PurgePlan) -> (String, Entry),
    ) -> Result<Option<(audit_log::PurgePlan, u64)>, StoreError> {
        self.with_audit_log(|c| audit_log::purge(c, cutoff, at, receipt))
    }

    /// Crypto-shred: marks the firm deleted and destroys every wrapped key in
    /// one transaction (`secure_delete` overwrites the freed pages).
    pub fn shred_firm(&self, id: &str, now: &str, audit: Option<Entry>) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE firms SET state = 'deleted', updated_at = ?2, deleted_at = ?2 WHERE id = ?1 AND state != 'deleted'",
            params![id, now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.execute("DELETE FROM firm_keys WHERE firm_id = ?1", [id])?;
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    pub fn keys(&self, firm_id: &str) -> Result<Vec<WrappedKey>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT firm_id, purpose, version, state, wrapped, created_at FROM firm_keys WHERE firm_id = ?1 ORDER BY purpose, version",
        )?;
        let rows = st
            .query_map([firm_id], key_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Adds a key version in state `pending` (used by rekey before the switch).
    pub fn add_key(&self, key: &WrappedKey) -> Result<(), StoreError> {
        insert_key(&self.lock(), key)
    }

    /// Makes `version` the active key for `purpose` and drops every other version.
    pub fn activate_key(
        &self,
        firm_id: &str,
        purpose: &str,
        version: u32,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE firm_keys SET state = 'active' WHERE firm_id = ?1 AND purpose = ?2 AND version = ?3",
            params![firm_id, purpose, version],
        )?;
        if n != 1 {
            return Err(StoreError::NotFound);
        }
        tx.execute(
            "DELETE FROM firm_keys WHERE firm_id = ?1 AND purpose = ?2 AND version != ?3",
            params![firm_id, purpose, version],
        )?;
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Key rotation that keeps the old versions readable: in one transaction
    /// the active version of `new.purpose` becomes `retired` and `new` becomes
    /// active.
    pub fn rotate_key(&self, new: &WrappedKey, audit: Option<Entry>) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE firm_keys SET state = 'retired' WHERE firm_id = ?1 AND purpose = ?2 AND state = 'active'",
            params![new.firm_id, new.purpose],
        )?;
        if n != 1 {
            return Err(StoreError::NotFound);
        }
        insert_key(&tx, new)?;
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Destroys the retired versions of a firm's `purpose` key
    /// (`secure_delete` overwrites them); returns how many it destroyed.
    pub fn destroy_retired(
        &self,
        firm_id: &str,
        purpose: &str,
        audit: Option<Entry>,
    ) -> Result<usize, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let n = tx.execute(
            "DELETE FROM firm_keys WHERE firm_id = ?1 AND purpose = ?2 AND state = 'retired'",
            params![firm_id, purpose],
        )?;
        append_opt(&tx, audit)?;
        tx.commit()?;
        Ok(n)
    }

    /// Firms with retired versions of `purpose` (unfinished rotations).
    pub fn firms_with_retired(&self, purpose: &str) -> Result<Vec<String>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT DISTINCT firm_id FROM firm_keys WHERE purpose = ?1 AND state = 'retired' ORDER BY firm_id",
        )?;
        let rows = st
            .query_map([purpose], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Drops a pending key version (a rekey that did not happen).
    pub fn drop_pending(&self, firm_id: &str, purpose: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM firm_keys WHERE firm_id = ?1 AND purpose = ?2 AND state = 'pending'",
            params![firm_id, purpose],
        )?;
        Ok(())
    }

    /// Every wrapped key of every firm (for master-key rotation).
    /// Every wrapped key: the firms' and the appliance's (under [`APPLIANCE`]).
    pub fn all_keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT firm_id, purpose, version, state, wrapped, created_at FROM firm_keys
             UNION ALL
             SELECT ?1, purpose, version, 'active', wrapped, created_at FROM appliance_keys",
        )?;
        let rows = st
            .query_map([APPLIANCE], key_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The appliance's wrapped key for `purpose` (latest version), if any.
    pub fn appliance_key(&self, purpose: &str) -> Result<Option<WrappedKey>, StoreError> {
        let c = self.lock();
        Ok(c.query_row(
            "SELECT ?1, purpose, version, 'active', wrapped, created_at FROM appliance_keys
             WHERE purpose = ?2 ORDER BY version DESC LIMIT 1",
            params![APPLIANCE, purpose],
            key_row,
        )
        .optional()?)
    }

    pub fn insert_appliance_key(&self, k: &WrappedKey) -> Result<(), StoreError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO appliance_keys (purpose, version, wrapped, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![k.purpose, k.version, k.wrapped, k.created_at],
        )?;
        Ok(())
    }

    /// Master-key rotation, atomically: writes a complete copy of the registry
    /// under `new_key` with every wrapped key replaced by `rewrapped`, syncs it,
    /// then renames it over the registry. A crash before the rename leaves the
    /// old registry (old master key works); after it, the new one (new key works).
    pub fn rotate(
        &self,
        new_key: &SqlcipherKey,
        rewrapped: &[WrappedKey],
        generation: u64,
        audit: Option<Entry>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tmp = self.path.with_extension("db.rotating");
        let io = |source| StoreError::Io {
            path: tmp.display().to_string(),
            source,
        };
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io)?;
        }
        // The copy is SQLCipher's own export into a database keyed with the new key.
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| StoreError::Corrupt("state dir path is not UTF-8".to_owned()))?
            .to_owned();
        c.execute(
            "ATTACH DATABASE ?1 AS rotated KEY ?2",
            params![tmp_str, new_key.as_pragma_value()],
        )?;
        let exported = (|| -> Result<(), StoreError> {
            c.query_row("SELECT sqlcipher_export('rotated')", [], |_| Ok(()))?;
            let tx = c.transaction()?;
            for k in rewrapped {
                let n = if k.firm_id == APPLIANCE {
                    tx.execute(
                        "UPDATE rotated.appliance_keys SET wrapped = ?3 WHERE purpose = ?1 AND version = ?2",
                        params![k.purpose, k.version, k.wrapped],
                    )?
                } else {
                    tx.execute(
                        "UPDATE rotated.firm_keys SET wrapped = ?4 WHERE firm_id = ?1 AND purpose = ?2 AND version = ?3",
                        params![k.firm_id, k.purpose, k.version, k.wrapped],
                    )?
                };
                if n != 1 {
                    return Err(StoreError::Corrupt(format!(
                        "key {}/{}/{} vanished during rotation",
                        k.firm_id, k.purpose, k.version
                    )));
                }
            }
            tx.execute(
                "INSERT INTO rotated.meta (k, v) VALUES ('master_generation', ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [generation.to_string()],
            )?;
            let user_version: i64 = tx.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
            tx.execute_batch(&format!("PRAGMA rotated.user_version = {user_version}"))?;
            tx.commit()?;
            Ok(())
        })();
        let _ = c.execute("DETACH DATABASE rotated", []);
        // The rotation's audit entry goes into the new registry only, so it
        // exists exactly when the rotation takes effect (at the rename).
        let exported = exported.and_then(|()| {
            let rotated = open_encrypted(&tmp, new_key, OpenFlags::default())?;
            let tx = rotated.unchecked_transaction()?;
            append_opt(&tx, audit)?;
            tx.commit()?;
            Ok(())
        });
        if let Err(e) = exported {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        // The point of no return: the rename is atomic, the directory sync makes it durable.
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
        }
        let reopened = open_encrypted(&self.path, new_key, OpenFlags::default())?;
        configure(&reopened)?;
        *c = reopened;
        Ok(())
    }
}

fn insert_key(c: &Connection, k: &WrappedKey) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO firm_keys (firm_id, purpose, version, state, wrapped, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![k.firm_id, k.purpose, k.version, k.state, k.wrapped, k.created_at],
    )?;
    Ok(())
}

fn append_opt(conn: &Connection, audit: Option<Entry>) -> Result<(), StoreError> {
    if let Some(e) = audit {
        audit_log::append(conn, e)?;
    }
    Ok(())
}

fn firm_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FirmRow> {
    Ok(FirmRow {
        id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        deleted_at: r.get(5)?,
        audit_retention: r.get(6)?,
        rate_limits: r.get(7)?,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WrappedKey> {
    Ok(WrappedKey {
        firm_id: r.get(0)?,
        purpose: r.get(1)?,
        version: r.get(2)?,
        state: r.get(3)?,
        wrapped: r.get(4)?,
        created_at: r.get(5)?,
    })
}
