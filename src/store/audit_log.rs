//! The audit-log tables, shared by every firm database and the registry's
//! system log: entries with their leaf and chain hashes, the Merkle tree's
//! perfect-subtree nodes, signed checkpoints, and retention purges. Every
//! function runs on the caller's connection, inside the caller's transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::audit::Entry;
use crate::audit::entry::{CHAIN_START, chain_next, encode_canonical};
use crate::audit::merkle::{self, Hash, MemoryTree, MerkleError, NodeSource};

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

/// What re-verifying an audit log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub size: u64,
    pub root: Hash,
    /// The first entry still stored (after retention purges).
    pub first_retained: u64,
    /// The first sequence number that does not check out, and why.
    pub first_bad: Option<(u64, String)>,
    /// The purge anchor the check started from.
    pub anchor: Option<PurgeAnchor>,
    /// The latest signed checkpoint (size, root, note), whose tree the log
    /// was checked to contain.
    pub checkpoint: Option<(u64, Hash, String)>,
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
    let (seq, previous) = match (last, anchor(conn)?) {
        (Some((s, c)), _) => (s as u64 + 1, to_hash(&c)?),
        // Every entry purged (only inside a purge, before its receipt entry).
        (None, Some(a)) => (a.before, a.chain),
        (None, None) => (0u64, CHAIN_START),
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

/// Conditions on listed entries (all that are set must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// RFC 3339 UTC, inclusive.
    pub since: Option<String>,
    /// RFC 3339 UTC, exclusive.
    pub until: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
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

/// What checking a range of entries found: their leaf hashes (up to the
/// first bad one) and the first bad one.
struct RangeCheck {
    leaves: Vec<Hash>,
    first_bad: Option<(u64, String)>,
}

/// Checks entries `[from, to)`: each leaf recomputed from the stored fields
/// against the stored leaf and the tree's level-0 node, and the chain from
/// `chain` (the value of entry `from - 1`) against the stored chain values.
fn check_range(
    conn: &Connection,
    from: u64,
    to: u64,
    mut chain: Hash,
) -> Result<RangeCheck, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_entries WHERE seq >= ?1 AND seq < ?2 ORDER BY seq"
    ))?;
    // The tree's leaves, read in step with the entries (one range scan).
    let mut nodes_st = conn.prepare_cached(
        "SELECT idx, hash FROM audit_nodes WHERE level = 0 AND idx >= ?1 AND idx < ?2 ORDER BY idx",
    )?;
    let mut nodes = nodes_st.query(params![from as i64, to as i64])?;
    let mut rows = st.query(params![from as i64, to as i64])?;
    // Not sized from `to - from`: a forged seq must not make us allocate.
    let mut leaves = Vec::new();
    let mut buf = Vec::with_capacity(512);
    let mut expected = from;
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let blob = |i: usize| -> Result<&[u8], StoreError> {
            r.get_ref(i)?
                .as_bytes()
                .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))
        };
        encode_canonical(
            &mut buf,
            seq,
            [
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
            blob(11)?,
        );
        let leaf = merkle::leaf_hash(&buf);
        chain = chain_next(&chain, &leaf);
        let node_ok = match nodes.next()? {
            Some(n) => {
                n.get::<_, i64>(0)? == seq as i64 && n.get_ref(1)?.as_bytes().ok() == Some(&leaf)
            }
            None => false,
        };
        let problem = if seq != expected {
            Some((
                expected,
                format!("entry {expected} is missing (next is {seq})"),
            ))
        } else if blob(12)? != leaf {
            Some((
                seq,
                "the entry's fields do not match its leaf hash".to_owned(),
            ))
        } else if blob(13)? != chain {
            Some((seq, "the hash chain breaks here".to_owned()))
        } else if !node_ok {
            Some((
                seq,
                "the Merkle tree's leaf differs from the entry".to_owned(),
            ))
        } else {
            None
        };
        if problem.is_some() {
            return Ok(RangeCheck {
                leaves,
                first_bad: problem,
            });
        }
        leaves.push(leaf);
        expected += 1;
    }
    let first_bad = (expected < to).then(|| (expected, format!("entry {expected} is missing")));
    Ok(RangeCheck { leaves, first_bad })
}

/// Below this many entries a second thread is not worth starting (unit
/// tests split small logs, to exercise both paths).
const PARALLEL_MIN: u64 = if cfg!(test) { 8 } else { 1 << 16 };

/// Re-derives every retained leaf from the stored fields, the chain from
/// the leaves (from the purge anchor, if any) and the tree from the leaves,
/// and compares each with what is stored: an edited, deleted or reordered
/// entry is named by the first sequence number that fails.
///
/// With `second` (another connection to the same database) a large log is
/// checked in two halves on two threads: the left half is the largest
/// perfect subtree, so each half's tree is built on its own and the root is
/// their node hash. Returns `second` for reuse.
pub fn verify(
    conn: &Connection,
    second: Option<Connection>,
) -> Result<(AuditVerification, Option<Connection>), StoreError> {
    // One snapshot for the whole check (the caller may already hold one).
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN")?;
    }
    let result = verify_in_txn(conn, second);
    if own {
        let _ = conn.execute_batch("COMMIT");
    }
    result
}

fn verify_in_txn(
    conn: &Connection,
    second: Option<Connection>,
) -> Result<(AuditVerification, Option<Connection>), StoreError> {
    let anchor = anchor(conn)?;
    let size = size(conn)?;
    let (start, chain0, prefix) = match &anchor {
        None => (0, CHAIN_START, Vec::new()),
        Some(a) => (a.before, a.chain, prefix_nodes(conn, a.before)?),
    };
    let left_tree = |leaves: &[Hash]| -> Result<MemoryTree, StoreError> {
        let mut t = MemoryTree::with_prefix(start, &prefix).map_err(merkle_err)?;
        for l in leaves {
            t.push(*l).map_err(merkle_err)?;
        }
        Ok(t)
    };
    // Rows below the purge anchor, or an anchor past the end, are forged.
    let lowest: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM audit_entries")?
        .query_row([], |r| r.get(0))?;
    if let Some(low) = lowest.filter(|l| (*l as u64) < start || *l < 0) {
        let v = AuditVerification {
            size,
            root: [0; 32],
            first_retained: start,
            first_bad: Some((
                low.max(0) as u64,
                "an entry is stored below the purge anchor".to_owned(),
            )),
            anchor,
            checkpoint: None,
        };
        return Ok((v, second));
    }
    let k = if size >= 2 {
        1u64 << (63 - (size - 1).leading_zeros())
    } else {
        0
    };
    let parallel = size - start >= PARALLEL_MIN && k > start;
    let other = match second {
        Some(c) if parallel => c,
        unused => {
            let c = check_range(conn, start, size, chain0)?;
            let tree = left_tree(&c.leaves)?;
            let v = finish(conn, anchor, size, start, c.first_bad, &|n| {
                merkle::root(&tree, n).ok()
            })?;
            return Ok((v, unused));
        }
    };
    // The second connection must see the same log (same anchor, at least as
    // many entries); otherwise check on one thread.
    other.execute_batch("BEGIN")?;
    if self::anchor(&other)? != anchor || self::size(&other)? < size {
        let _ = other.execute_batch("COMMIT");
        return verify_in_txn(conn, None).map(|(v, _)| (v, Some(other)));
    }
    let chain_k: Vec<u8> = other
        .prepare_cached("SELECT chain FROM audit_entries WHERE seq = ?1")?
        .query_row([k as i64 - 1], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    let (left, right, other) = std::thread::scope(|s| {
        let right = s.spawn(move || {
            let r = (|| {
                // Entry k-1's stored chain value: the left half checks it
                // (and names k-1 if it is missing).
                let Ok(chain) = to_hash(&chain_k) else {
                    let missing = (k - 1, format!("entry {} is missing", k - 1));
                    return Ok((Some(missing), MemoryTree::new()));
                };
                let c = check_range(&other, k, size, chain)?;
                let mut t = MemoryTree::new();
                for l in &c.leaves {
                    t.push(*l).map_err(merkle_err)?;
                }
                Ok::<_, StoreError>((c.first_bad, t))
            })();
            let _ = other.execute_batch("COMMIT");
            (r, other)
        });
        let left = check_range(conn, start, k, chain0)
            .and_then(|c| Ok((c.first_bad, left_tree(&c.leaves)?)));
        match right.join() {
            Ok((r, other)) => (left, r, Some(other)),
            Err(_) => (
                left,
                Err(StoreError::Corrupt("the verify thread failed".into())),
                None,
            ),
        }
    });
    let (left_bad, left_tree) = left?;
    let (right_bad, right_tree) = right?;
    // The left half is the largest perfect subtree: MTH(D[0:n]) for n > k is
    // the node hash of the two halves' roots.
    let root_at = |n: u64| -> Option<Hash> {
        if n <= k {
            merkle::root(&left_tree, n).ok()
        } else {
            let l = merkle::root(&left_tree, k).ok()?;
            let r = merkle::root(&right_tree, n - k).ok()?;
            Some(merkle::node_hash(&l, &r))
        }
    };
    let v = finish(conn, anchor, size, start, left_bad.or(right_bad), &root_at)?;
    Ok((v, other))
}

/// Compares the rebuilt tree (`root_at(n)`: the rebuilt root of size n, if
/// every leaf up to n checked out) with the stored tree and the purge anchor.
fn finish(
    conn: &Connection,
    anchor: Option<PurgeAnchor>,
    size: u64,
    start: u64,
    mut first_bad: Option<(u64, String)>,
    root_at: &dyn Fn(u64) -> Option<Hash>,
) -> Result<AuditVerification, StoreError> {
    let rebuilt = root_at(size);
    if first_bad.is_none() {
        let stored = root(conn, size).ok();
        if rebuilt.is_none() || stored != rebuilt {
            first_bad = Some((
                start,
                "the stored Merkle tree does not match the entries".to_owned(),
            ));
        }
    }
    if first_bad.is_none()
        && let Some(a) = &anchor
    {
        // The retained entries and the kept prefix must rebuild the tree the
        // purge receipt signed.
        if a.tree_size > size || root_at(a.tree_size) != Some(a.root) {
            first_bad = Some((
                a.before,
                "the retained log does not rebuild the tree its purge receipt names".to_owned(),
            ));
        }
    }
    // The log must still hold the tree its latest signed checkpoint names:
    // cutting entries off the end is found here (the caller checks the
    // note's signature).
    let checkpoint = latest_checkpoint(conn)?;
    if first_bad.is_none()
        && let Some((cp_size, cp_root, _)) = &checkpoint
        && *cp_size >= start
        && (*cp_size > size || root_at(*cp_size) != Some(*cp_root))
    {
        first_bad = Some((
            (*cp_size).min(size),
            format!("the log does not contain the tree of its signed checkpoint at size {cp_size}"),
        ));
    }
    Ok(AuditVerification {
        size,
        root: rebuilt.unwrap_or_default(),
        first_retained: start,
        first_bad,
        anchor,
        checkpoint,
    })
}
