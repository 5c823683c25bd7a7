//! The audit-log tables, shared by every firm database and the registry's
//! system log: entries with their leaf and chain hashes, the Merkle tree's
//! perfect-subtree nodes, signed checkpoints, and retention purges. Every
//! function runs on the caller's connection, inside the caller's transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::audit::Entry;
pub use crate::audit::entry::Filter;
use crate::audit::entry::{CHAIN_START, chain_next};
use crate::audit::merkle::{self, Hash, MerkleError, NodeSource};
pub use crate::audit::verify::AuditVerification;
use crate::audit::verify::{LogReader, Stored};

/// The tables as created in a new database (firm databases reached the same
/// shape through their migrations).
pub const SCHEMA: &str = r#"
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
) WITHOUT ROWID;
CREATE TABLE audit_checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL,
    note       TEXT NOT NULL,
    signed_at  TEXT NOT NULL
);
"#;

/// Retention purges: entries `seq < before` were deleted; `chain` is the
/// chain value of entry `before - 1`; `tree_size`/`root` is the tree the
/// signed `receipt` names.
pub const PURGES_SCHEMA: &str = r#"
CREATE TABLE audit_purges (
    before     INTEGER PRIMARY KEY,
    chain      BLOB NOT NULL,
    tree_size  INTEGER NOT NULL,
    root       BLOB NOT NULL,
    receipt    TEXT NOT NULL,
    at         TEXT NOT NULL
)
"#;

const COLUMNS: &str = "seq, at, firm, actor, source_ip, request_id, action, resource, \
     outcome, decision, rule, payload, leaf, chain";

fn to_hash(b: &[u8]) -> Result<Hash, StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".into()))
}

fn merkle_err(e: MerkleError) -> StoreError {
    StoreError::Corrupt(format!("audit tree: {e}"))
}

/// The Merkle tree's perfect-subtree hashes, read from `audit_nodes`.
struct ConnNodes<'c>(&'c Connection);

impl NodeSource for ConnNodes<'_> {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        let row: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT hash FROM audit_nodes WHERE level = ?1 AND idx = ?2")
            .and_then(|mut st| {
                st.query_row(params![level, index as i64], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| MerkleError::Store(e.to_string()))?;
        let b = row.ok_or(MerkleError::MissingNode { level, index })?;
        b.try_into()
            .map_err(|_| MerkleError::Store("node hash is not 32 bytes".into()))
    }
}

/// A stored audit row: the entry and the hashes stored with it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub entry: Entry,
    pub leaf: Vec<u8>,
    pub chain: Vec<u8>,
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        entry: Entry {
            seq: r.get::<_, i64>(0)? as u64,
            at: r.get(1)?,
            firm: r.get(2)?,
            actor: r.get(3)?,
            source_ip: r.get(4)?,
            request_id: r.get(5)?,
            action: r.get(6)?,
            resource: r.get(7)?,
            outcome: r.get(8)?,
            decision: r.get(9)?,
            rule: r.get(10)?,
            payload: r.get(11)?,
        },
        leaf: r.get(12)?,
        chain: r.get(13)?,
    })
}

/// The latest retention purge: where the retained log starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeAnchor {
    pub before: u64,
    pub chain: Hash,
    pub tree_size: u64,
    pub root: Hash,
    pub receipt: String,
}

/// Appends an entry (its `seq` is assigned here) with its chain value and
/// Merkle nodes, in the caller's transaction.
pub fn append(conn: &Connection, mut e: Entry) -> Result<u64, StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, chain FROM audit_entries ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // The purge anchor is read only when no entry is stored: it is the
    // rarest case, and the anchor row carries a whole signed receipt.
    let (seq, previous) = match last {
        Some((s, c)) => (s as u64 + 1, to_hash(&c)?),
        None => match anchor(conn)? {
            // Every entry purged (only inside a purge, before its receipt entry).
            Some(a) => (a.before, a.chain),
            None => (0u64, CHAIN_START),
        },
    };
    e.seq = seq;
    let leaf = e.leaf();
    let chain = chain_next(&previous, &leaf);
    conn.prepare_cached(
        "INSERT INTO audit_entries (seq, at, firm, actor, source_ip, request_id, action,
         resource, outcome, decision, rule, payload, leaf, chain)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        seq as i64,
        e.at,
        e.firm,
        e.actor,
        e.source_ip,
        e.request_id,
        e.action,
        e.resource,
        e.outcome,
        e.decision,
        e.rule,
        e.payload,
        &leaf[..],
        &chain[..]
    ])?;
    let nodes = merkle::append_nodes(&ConnNodes(conn), seq, leaf).map_err(merkle_err)?;
    let mut st =
        conn.prepare_cached("INSERT INTO audit_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for (level, idx, h) in nodes {
        st.execute(params![level, idx as i64, &h[..]])?;
    }
    Ok(seq)
}

pub fn insert_checkpoint(
    conn: &Connection,
    size: u64,
    root: &Hash,
    note: &str,
    at: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![size as i64, &root[..], note, at])?;
    Ok(())
}

/// The number of entries ever appended (purged ones included).
pub fn size(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM audit_entries")?
        .query_row([], |r| r.get(0))?;
    match n {
        Some(n) => Ok(n as u64 + 1),
        None => Ok(anchor(conn)?.map_or(0, |a| a.before)),
    }
}

/// Stored entries with `seq >= from`, oldest first, at most `limit`.
pub fn entries(conn: &Connection, from: u64, limit: u64) -> Result<Vec<AuditRow>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_entries WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = st
        .query_map(params![from as i64, limit as i64], audit_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Rows one filtered page may scan: a filter that matches nothing costs a
/// bounded read, and the caller gets a cursor to continue from.
pub const MAX_SCAN: u64 = 20_000;

/// Stored entries with `seq >= from` that match `f`, oldest first, at most
/// `limit`, looking at no more than [`MAX_SCAN`] rows. Returns them and the
/// seq the scan stopped before (continue from there).
pub fn entries_matching(
    conn: &Connection,
    from: u64,
    limit: u64,
    f: &Filter,
) -> Result<(Vec<AuditRow>, u64), StoreError> {
    // Purged entries are not scanned for.
    let lowest: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM audit_entries")?
        .query_row([], |r| r.get(0))?;
    let from = from.max(lowest.unwrap_or(0).max(0) as u64);
    let end = from.saturating_add(MAX_SCAN);
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_entries WHERE seq >= ?1 AND seq < ?8
           AND (?3 IS NULL OR at >= ?3) AND (?4 IS NULL OR at < ?4)
           AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR action = ?6)
           AND (?7 IS NULL OR resource = ?7)
         ORDER BY seq LIMIT ?2"
    ))?;
    let rows: Vec<AuditRow> = st
        .query_map(
            params![
                from as i64,
                limit as i64,
                f.since,
                f.until,
                f.actor,
                f.action,
                f.resource,
                end.min(i64::MAX as u64) as i64
            ],
            audit_row,
        )?
        .collect::<Result<_, _>>()?;
    Ok((rows, end))
}

/// The leaf hash of entry `seq` (kept in the tree after the entry is purged).
pub fn leaf(conn: &Connection, seq: u64) -> Result<Hash, StoreError> {
    ConnNodes(conn).node(0, seq).map_err(merkle_err)
}

/// The most recent signed checkpoint: (size, root, note).
pub fn latest_checkpoint(conn: &Connection) -> Result<Option<(u64, Hash, String)>, StoreError> {
    let row: Option<(i64, Vec<u8>, String)> = conn
        .prepare_cached(
            "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    row.map(|(s, r, n)| Ok((s as u64, to_hash(&r)?, n)))
        .transpose()
}

pub fn root(conn: &Connection, size: u64) -> Result<Hash, StoreError> {
    merkle::root(&ConnNodes(conn), size).map_err(merkle_err)
}

pub fn inclusion(conn: &Connection, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
    merkle::inclusion_proof(&ConnNodes(conn), index, size).map_err(merkle_err)
}

pub fn consistency(conn: &Connection, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
    merkle::consistency_proof(&ConnNodes(conn), old, new).map_err(merkle_err)
}

/// Signs a checkpoint of the log's current size unless the latest one
/// already covers it; returns the latest signed note. `sign(size, root)`
/// makes the note. Run it in the log's write transaction, so two signings
/// never race.
pub fn checkpoint(
    conn: &Connection,
    at: &str,
    sign: &dyn Fn(u64, &Hash) -> String,
) -> Result<String, StoreError> {
    let size = size(conn)?;
    let latest = latest_checkpoint(conn)?;
    if let Some((last_size, last_root, note)) = &latest {
        if *last_size == size {
            return Ok(note.clone());
        }
        // Security invariant: never sign a tree inconsistent with the last signed one.
        if *last_size > 0 {
            let consistent = *last_size < size
                && merkle::verify_consistency(
                    *last_size,
                    size,
                    last_root,
                    &root(conn, size)?,
                    &consistency(conn, *last_size, size)?,
                );
            if !consistent {
                return Err(StoreError::Corrupt(format!(
                    "the audit log is not consistent with its checkpoint at size {last_size}; refusing to sign"
                )));
            }
        }
    }
    let root = root(conn, size)?;
    let note = sign(size, &root);
    insert_checkpoint(conn, size, &root, &note, at)?;
    Ok(note)
}

/// True if the log grew since its latest checkpoint.
pub fn needs_checkpoint(conn: &Connection) -> Result<bool, StoreError> {
    let size = size(conn)?;
    Ok(latest_checkpoint(conn)?.is_none_or(|(s, _, _)| s < size))
}

/// The latest retention purge, if any.
pub fn anchor(conn: &Connection) -> Result<Option<PurgeAnchor>, StoreError> {
    conn.prepare_cached(
        "SELECT before, chain, tree_size, root, receipt FROM audit_purges
         ORDER BY before DESC LIMIT 1",
    )?
    .query_row([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, String>(4)?,
        ))
    })
    .optional()?
    .map(|(b, c, s, r, receipt)| {
        Ok(PurgeAnchor {
            before: b as u64,
            chain: to_hash(&c)?,
            tree_size: s as u64,
            root: to_hash(&r)?,
            receipt,
        })
    })
    .transpose()
}

/// The perfect subtrees covering leaves `[0, k)`, largest first: with them
/// a verifier rebuilds every root of size ≥ k from the leaves from `k` on.
pub fn prefix_nodes(conn: &Connection, k: u64) -> Result<Vec<Hash>, StoreError> {
    let src = ConnNodes(conn);
    merkle::prefix_ranges(k)
        .map(|(level, idx)| src.node(level, idx).map_err(merkle_err))
        .collect()
}

/// What an export of the first `size` entries needs, read in one snapshot:
/// the purge anchor (if any), its prefix nodes, and the retained entries.
pub type ExportSnapshot = (Option<PurgeAnchor>, Vec<Hash>, Vec<AuditRow>);

pub fn export_snapshot(conn: &Connection, size: u64) -> Result<ExportSnapshot, StoreError> {
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN")?;
    }
    let read = (|| {
        let anchor = anchor(conn)?;
        let prefix = match &anchor {
            Some(a) => prefix_nodes(conn, a.before)?,
            None => Vec::new(),
        };
        let from = anchor.as_ref().map_or(0, |a| a.before);
        let rows = entries(conn, from, size.saturating_sub(from))?;
        Ok((anchor, prefix, rows))
    })();
    if own {
        let _ = conn.execute_batch("COMMIT");
    }
    read
}

/// What a purge of every entry older than a cutoff would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgePlan {
    /// Entries `seq < before` go.
    pub before: u64,
    /// The chain value of entry `before - 1`: the retained log's anchor.
    pub chain: Hash,
    /// The tree at the time of the purge.
    pub tree_size: u64,
    pub root: Hash,
}

/// Plans purging the entries whose time is before `cutoff` (RFC 3339 UTC,
/// so text order is time order). Stops at the first entry at or after the
/// cutoff: nothing younger than the retention is ever purged.
pub fn plan_purge(conn: &Connection, cutoff: &str) -> Result<Option<PurgePlan>, StoreError> {
    let start = anchor(conn)?.map_or(0, |a| a.before);
    let size = size(conn)?;
    let first_young: Option<i64> = conn
        .prepare_cached(
            "SELECT seq FROM audit_entries WHERE seq >= ?1 AND at >= ?2 ORDER BY seq LIMIT 1",
        )?
        .query_row(params![start as i64, cutoff], |r| r.get(0))
        .optional()?;
    let before = first_young.map_or(size, |s| s as u64);
    if before <= start {
        return Ok(None);
    }
    let chain: Vec<u8> = conn
        .prepare_cached("SELECT chain FROM audit_entries WHERE seq = ?1")?
        .query_row([before as i64 - 1], |r| r.get(0))?;
    Ok(Some(PurgePlan {
        before,
        chain: to_hash(&chain)?,
        tree_size: size,
        root: root(conn, size)?,
    }))
}

/// Deletes the planned entries and records the purge with its signed
/// receipt. The tree's node hashes stay, so every proof still verifies.
pub fn apply_purge(
    conn: &Connection,
    plan: &PurgePlan,
    receipt: &str,
    at: &str,
) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM audit_entries WHERE seq < ?1")?
        .execute([plan.before as i64])?;
    conn.prepare_cached(
        "INSERT INTO audit_purges (before, chain, tree_size, root, receipt, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        plan.before as i64,
        &plan.chain[..],
        plan.tree_size as i64,
        &plan.root[..],
        receipt,
        at
    ])?;
    Ok(deleted as u64)
}

/// Purges the entries older than `cutoff`, in the caller's transaction:
/// `receipt` turns the plan into the signed receipt and the entry that
/// records it, appended to the log in the same transaction. Returns the plan
/// and the number of entries deleted, or None when nothing is old enough.
pub fn purge(
    conn: &Connection,
    cutoff: &str,
    at: &str,
    receipt: &dyn Fn(&PurgePlan) -> (String, Entry),
) -> Result<Option<(PurgePlan, u64)>, StoreError> {
    let Some(plan) = plan_purge(conn, cutoff)? else {
        return Ok(None);
    };
    let (note, entry) = receipt(&plan);
    let deleted = apply_purge(conn, &plan, &note, at)?;
    append(conn, entry)?;
    Ok(Some((plan, deleted)))
}

/// A log read on one connection, for `audit::verify` (inside the caller's
/// snapshot).
struct ConnLog<'c>(&'c Connection);

/// A second connection reading the same log in its own snapshot (on the
/// verify's second thread).
struct OwnedLog(Connection);

impl LogReader for ConnLog<'_> {
    fn size(&self) -> Result<u64, StoreError> {
        size(self.0)
    }

    fn anchor(&self) -> Result<Option<PurgeAnchor>, StoreError> {
        anchor(self.0)
    }

    fn prefix_nodes(&self, k: u64) -> Result<Vec<Hash>, StoreError> {
        prefix_nodes(self.0, k)
    }

    fn lowest_seq(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT min(seq) FROM audit_entries")?
            .query_row([], |r| r.get(0))?)
    }

    fn stored_chain(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT chain FROM audit_entries WHERE seq = ?1")?
            .query_row([seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn root(&self, size: u64) -> Result<Hash, StoreError> {
        root(self.0, size)
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, Hash, String)>, StoreError> {
        latest_checkpoint(self.0)
    }

    fn scan(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&Stored<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.0.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE seq >= ?1 AND seq < ?2 ORDER BY seq"
        ))?;
        // The tree's leaves, read in step with the entries (one range scan).
        let mut nodes_st = self.0.prepare_cached(
            "SELECT idx, hash FROM audit_nodes WHERE level = 0 AND idx >= ?1 AND idx < ?2 ORDER BY idx",
        )?;
        let mut nodes = nodes_st.query(params![from as i64, to as i64])?;
        let mut rows = st.query(params![from as i64, to as i64])?;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            let blob = |i: usize| -> Result<&[u8], StoreError> {
                r.get_ref(i)?
                    .as_bytes()
                    .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))
            };
            let node = match nodes.next()? {
                Some(n) => Some((n.get::<_, i64>(0)?, n.get_ref(1)?.as_bytes().ok())),
                None => None,
            };
            let stored = Stored {
                seq,
                fields: [
                    blob(1)?,
                    blob(2)?,
                    blob(3)?,
                    blob(4)?,
                    blob(5)?,
                    blob(6)?,
                    blob(7)?,
                    blob(8)?,
                    blob(9)?,
                    blob(10)?,
                ],
                payload: blob(11)?,
                leaf: blob(12)?,
                chain: blob(13)?,
                node,
            };
            if !f(&stored)? {
                break;
            }
        }
        Ok(())
    }
}

impl LogReader for OwnedLog {
    fn size(&self) -> Result<u64, StoreError> {
        ConnLog(&self.0).size()
    }

    fn anchor(&self) -> Result<Option<PurgeAnchor>, StoreError> {
        ConnLog(&self.0).anchor()
    }

    fn prefix_nodes(&self, k: u64) -> Result<Vec<Hash>, StoreError> {
        ConnLog(&self.0).prefix_nodes(k)
    }

    fn lowest_seq(&self) -> Result<Option<i64>, StoreError> {
        ConnLog(&self.0).lowest_seq()
    }

    fn stored_chain(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        ConnLog(&self.0).stored_chain(seq)
    }

    fn root(&self, size: u64) -> Result<Hash, StoreError> {
        ConnLog(&self.0).root(size)
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, Hash, String)>, StoreError> {
        ConnLog(&self.0).latest_checkpoint()
    }

    fn scan(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&Stored<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        ConnLog(&self.0).scan(from, to, f)
    }

    fn begin(&self) -> Result<(), StoreError> {
        self.0.execute_batch("BEGIN")?;
        Ok(())
    }

    fn end(&self) {
        let _ = self.0.execute_batch("COMMIT");
    }
}

/// Verifies the log on `conn` (see `audit::verify`), in one snapshot; with
/// `second`, a large log on two threads. Returns `second` for reuse.
pub fn verify(
    conn: &Connection,
    second: Option<Connection>,
) -> Result<(AuditVerification, Option<Connection>), StoreError> {
    // One snapshot for the whole check (the caller may already hold one).
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN")?;
    }
    let result = crate::audit::verify::verify(&ConnLog(conn), second.map(OwnedLog));
    if own {
        let _ = conn.execute_batch("COMMIT");
    }
    result.map(|(v, second)| (v, second.map(|o| o.0)))
}
