//! Verifying an audit log: every retained leaf re-derived from its stored
//! fields, the chain from the leaves (from the purge anchor, if any), and
//! the tree from the leaves, each compared with what is stored. An edited,
//! deleted or reordered entry is named by the first sequence number that
//! fails. The log is read through [`LogReader`] (the store implements it
//! for a database snapshot), as the Merkle code reads nodes through
//! `NodeSource`.

use super::entry::{CHAIN_START, chain_next, encode_canonical};
use super::merkle::{self, CompactRange, Hash, MerkleError};
use crate::store::StoreError;
use crate::store::audit_log::PurgeAnchor;

/// One stored entry as verification reads it.
pub struct Stored<'a> {
    pub seq: u64,
    /// The canonical fields after `seq`, in order: at, firm, actor,
    /// source_ip, request_id, action, resource, outcome, decision, rule.
    pub fields: [&'a [u8]; 10],
    pub payload: &'a [u8],
    /// The leaf and chain hashes stored with the entry.
    pub leaf: &'a [u8],
    pub chain: &'a [u8],
    /// The tree's level-0 node read in step with the entry: (index, hash).
    pub node: Option<(i64, Option<&'a [u8]>)>,
}

/// Read access to one snapshot of a log.
pub trait LogReader {
    fn size(&self) -> Result<u64, StoreError>;
    fn anchor(&self) -> Result<Option<PurgeAnchor>, StoreError>;
    /// The perfect subtrees covering leaves `[0, k)`.
    fn prefix_nodes(&self, k: u64) -> Result<Vec<Hash>, StoreError>;
    /// The lowest stored sequence number.
    fn lowest_seq(&self) -> Result<Option<i64>, StoreError>;
    /// The chain value stored with entry `seq`.
    fn stored_chain(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The stored tree's root of size `size`.
    fn root(&self, size: u64) -> Result<Hash, StoreError>;
    /// The latest signed checkpoint: (size, root, note).
    fn latest_checkpoint(&self) -> Result<Option<(u64, Hash, String)>, StoreError>;
    /// Calls `f` on entries `[from, to)` in sequence order until it
    /// returns false.
    fn scan(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&Stored<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;
    /// Starts reading one snapshot (a second reader on another thread).
    fn begin(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Ends the snapshot `begin` started.
    fn end(&self) {}
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

fn to_hash(b: &[u8]) -> Result<Hash, StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".into()))
}

fn merkle_err(e: MerkleError) -> StoreError {
    StoreError::Corrupt(format!("audit tree: {e}"))
}

/// What checking a range of entries found: the rebuilt tree's root at each
/// wanted size it reached while every leaf checked out, and the first bad
/// entry.
struct RangeCheck {
    roots: Vec<(u64, Hash)>,
    first_bad: Option<(u64, String)>,
}

/// The root recorded for tree size `n`, if the check reached it.
fn root_of(roots: &[(u64, Hash)], n: u64) -> Option<Hash> {
    roots.iter().find(|(size, _)| *size == n).map(|(_, h)| *h)
}

/// Checks entries `[from, to)`: each leaf recomputed from the stored fields
/// against the stored leaf and the tree's level-0 node, and the chain from
/// `chain` (the value of entry `from - 1`) against the stored chain values.
/// Each good leaf is appended to `tree`, whose root is kept at every size
/// in `wanted` (sizes of `tree`, so a handful of roots is all it holds).
fn check_range(
    log: &dyn LogReader,
    from: u64,
    to: u64,
    mut chain: Hash,
    tree: &mut CompactRange,
    wanted: &[u64],
) -> Result<RangeCheck, StoreError> {
    let mut roots = Vec::new();
    if wanted.contains(&tree.size()) {
        roots.push((tree.size(), tree.root()));
    }
    let mut buf = Vec::with_capacity(512);
    let mut expected = from;
    let mut first_bad = None;
    log.scan(from, to, &mut |e| {
        let seq = e.seq;
        encode_canonical(&mut buf, seq, e.fields, e.payload);
        let leaf = merkle::leaf_hash(&buf);
        chain = chain_next(&chain, &leaf);
        let node_ok = e
            .node
            .is_some_and(|(idx, hash)| idx == seq as i64 && hash == Some(&leaf[..]));
        let problem = if seq != expected {
            Some((
                expected,
                format!("entry {expected} is missing (next is {seq})"),
            ))
        } else if e.leaf != leaf {
            Some((
                seq,
                "the entry's fields do not match its leaf hash".to_owned(),
            ))
        } else if e.chain != chain {
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
            first_bad = problem;
            return Ok(false);
        }
        tree.push(leaf).map_err(merkle_err)?;
        if wanted.contains(&tree.size()) {
            roots.push((tree.size(), tree.root()));
        }
        expected += 1;
        Ok(true)
    })?;
    if first_bad.is_none() && expected < to {
        first_bad = Some((expected, format!("entry {expected} is missing")));
    }
    Ok(RangeCheck { roots, first_bad })
}

/// Below this many entries a second thread is not worth starting (unit
/// tests split small logs, to exercise both paths).
const PARALLEL_MIN: u64 = if cfg!(test) { 8 } else { 1 << 16 };

/// Verifies the log `first` reads. With `second` (another reader of the
/// same database) a large log is checked in two halves on two threads: the
/// left half is the largest perfect subtree, so each half's tree is built
/// on its own and the root is their node hash. Returns `second` for reuse.
pub fn verify<A: LogReader, B: LogReader + Send>(
    first: &A,
    second: Option<B>,
) -> Result<(AuditVerification, Option<B>), StoreError> {
    let anchor = first.anchor()?;
    let size = first.size()?;
    let (start, chain0, prefix) = match &anchor {
        None => (0, CHAIN_START, Vec::new()),
        Some(a) => (a.before, a.chain, first.prefix_nodes(a.before)?),
    };
    let left_tree = || CompactRange::with_prefix(start, &prefix).map_err(merkle_err);
    // The latest signed checkpoint, read in the same snapshot: its tree size,
    // the purge receipt's and the log's own are the roots the check needs.
    let checkpoint = first.latest_checkpoint()?;
    let mut wanted = vec![size];
    wanted.extend(anchor.as_ref().map(|a| a.tree_size));
    wanted.extend(checkpoint.as_ref().map(|(n, _, _)| *n));
    // Rows below the purge anchor, or an anchor past the end, are forged.
    if let Some(low) = first
        .lowest_seq()?
        .filter(|l| (*l as u64) < start || *l < 0)
    {
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
        Some(r) if parallel => r,
        unused => {
            let c = check_range(first, start, size, chain0, &mut left_tree()?, &wanted)?;
            let v = finish(first, anchor, checkpoint, size, start, c.first_bad, &|n| {
                root_of(&c.roots, n)
            })?;
            return Ok((v, unused));
        }
    };
    // The second reader must see the same log (same anchor, at least as
    // many entries); otherwise check on one thread.
    other.begin()?;
    if other.anchor()? != anchor || other.size()? < size {
        other.end();
        return verify::<A, B>(first, None).map(|(v, _)| (v, Some(other)));
    }
    let chain_k = other.stored_chain(k - 1)?.unwrap_or_default();
    // The left half keeps the roots at sizes up to k (k itself included);
    // the right half its own roots at the sizes past k, counted from k.
    let mut left_wanted: Vec<u64> = wanted.iter().copied().filter(|n| *n <= k).collect();
    left_wanted.push(k);
    let right_wanted: Vec<u64> = wanted.iter().filter(|n| **n > k).map(|n| n - k).collect();
    let (left, right, other) = std::thread::scope(|s| {
        let right = s.spawn(move || {
            let r = (|| {
                // Entry k-1's stored chain value: the left half checks it
                // (and names k-1 if it is missing).
                let Ok(chain) = to_hash(&chain_k) else {
                    let missing = (k - 1, format!("entry {} is missing", k - 1));
                    return Ok((Some(missing), Vec::new()));
                };
                let mut tree = CompactRange::new();
                let c = check_range(&other, k, size, chain, &mut tree, &right_wanted)?;
                Ok::<_, StoreError>((c.first_bad, c.roots))
            })();
            other.end();
            (r, other)
        });
        let left = left_tree()
            .and_then(|mut t| check_range(first, start, k, chain0, &mut t, &left_wanted))
            .map(|c| (c.first_bad, c.roots));
        match right.join() {
            Ok((r, other)) => (left, r, Some(other)),
            Err(_) => (
                left,
                Err(StoreError::Corrupt("the verify thread failed".into())),
                None,
            ),
        }
    });
    let (left_bad, left_roots) = left?;
    let (right_bad, right_roots) = right?;
    // The left half is the largest perfect subtree: MTH(D[0:n]) for n > k is
    // the node hash of the two halves' roots.
    let root_at = |n: u64| -> Option<Hash> {
        if n <= k {
            root_of(&left_roots, n)
        } else {
            let l = root_of(&left_roots, k)?;
            let r = root_of(&right_roots, n - k)?;
            Some(merkle::node_hash(&l, &r))
        }
    };
    let bad = left_bad.or(right_bad);
    let v = finish(first, anchor, checkpoint, size, start, bad, &root_at)?;
    Ok((v, other))
}

/// Compares the rebuilt tree (`root_at(n)`: the rebuilt root of size n, if
/// every leaf up to n checked out and n was wanted) with the stored tree,
/// the purge anchor and the latest checkpoint.
fn finish(
    log: &dyn LogReader,
    anchor: Option<PurgeAnchor>,
    checkpoint: Option<(u64, Hash, String)>,
    size: u64,
    start: u64,
    mut first_bad: Option<(u64, String)>,
    root_at: &dyn Fn(u64) -> Option<Hash>,
) -> Result<AuditVerification, StoreError> {
    let rebuilt = root_at(size);
    if first_bad.is_none() {
        let stored = log.root(size).ok();
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
