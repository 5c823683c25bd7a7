//! RFC 9162 Merkle tree (SHA-256), with proofs in O(log n) node reads.
//!
//! Storage model: the hash of every *perfect* subtree is stored once, as
//! `node(level, index)`, covering leaves `[index << level, (index + 1) << level)`.
//! Level 0 holds the leaf hashes. Appending leaf `i` stores at most
//! `1 + trailing_ones(i)` nodes (amortized two). Any subtree hash the RFC's
//! algorithms ask for is a perfect node or splits into O(log n) of them,
//! so a root, an inclusion proof or a consistency proof reads O(log n) nodes.
//!
//! ```text
//! leaf hash = SHA-256(0x00 ‖ leaf bytes)     node hash = SHA-256(0x01 ‖ left ‖ right)
//! empty tree = SHA-256("")
//! ```

use crate::crypto::sha256_parts;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    #[error("tree node (level {level}, index {index}) is missing")]
    MissingNode { level: u32, index: u64 },
    #[error("invalid range: {0}")]
    Range(String),
    #[error("node store: {0}")]
    Store(String),
}

/// Where perfect-subtree hashes are kept (a table, or memory in tests).
pub trait NodeSource {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError>;
}

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    sha256_parts(&[&[0x00], leaf])
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_parts(&[&[0x01], left, right])
}

pub fn empty_root() -> Hash {
    sha256_parts(&[])
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]): a perfect node when the range is one, else the RFC's
/// split. Every range the algorithms below ask for starts at a multiple of
/// its own split point, so the left half is always a stored perfect node.
fn range_hash<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, MerkleError> {
    let n = end - start;
    if n.is_power_of_two() && start % n == 0 {
        return src.node(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    let left = range_hash(src, start, start + k)?;
    let right = range_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        Ok(empty_root())
    } else {
        range_hash(src, 0, size)
    }
}

/// The nodes to store when leaf `index` (hash `leaf`) is appended: the leaf
/// itself and every perfect subtree it completes.
pub fn append_nodes<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    leaf: Hash,
) -> Result<Vec<(u32, u64, Hash)>, MerkleError> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut idx, mut h) = (0u32, index, leaf);
    while idx & 1 == 1 {
        let left = src.node(level, idx - 1)?;
        h = node_hash(&left, &h);
        level += 1;
        idx >>= 1;
        out.push((level, idx, h));
    }
    Ok(out)
}

/// RFC 9162 §2.1.3.1: the inclusion proof of leaf `index` in the tree of `size`.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::Range(format!(
            "leaf {index} is not in a tree of size {size}"
        )));
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), MerkleError> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, start, start + k, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        path(src, m - k, start + k, end, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1: the consistency proof from the tree of `old` leaves to
/// the tree of `new` leaves (0 < old ≤ new).
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if old == 0 || old > new {
        return Err(MerkleError::Range(format!(
            "no consistency proof from size {old} to size {new}"
        )));
    }
    let mut out = Vec::new();
    subproof(src, old, 0, new, true, &mut out)?;
    Ok(out)
}

fn subproof<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), MerkleError> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(range_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, whole, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in the tree of
/// `size` with this `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `old` leaves (root
/// `old_root`) is a prefix of the tree of `new` leaves (root `new_root`)?
/// Equal sizes need an empty proof and equal roots; size 0 is never proven.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

/// The perfect subtrees `(level, index)` that cover leaves `[0, k)`, largest
/// first (one per set bit of `k`). They are exactly the left siblings on the
/// path of leaf `k`, so with them every later node and root can be rebuilt.
pub fn prefix_ranges(k: u64) -> impl Iterator<Item = (u32, u64)> {
    (0..64u32)
        .rev()
        .filter(move |l| k >> l & 1 == 1)
        .map(move |l| (l, (k >> l) - 1))
}

/// The roots of the perfect subtrees covering leaves `[0, size)`, largest
/// first: enough to append leaves and to give the root at the current size,
/// in O(log size) memory, so verifying a log of any length holds no tree.
#[derive(Debug, Default, Clone)]
pub struct CompactRange {
    /// (level, hash), levels strictly decreasing: one per set bit of `size`.
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    /// The range of `k` leaves whose [`prefix_ranges`] nodes are `nodes`.
    pub fn with_prefix(k: u64, nodes: &[Hash]) -> Result<Self, MerkleError> {
        let levels: Vec<u32> = prefix_ranges(k).map(|(level, _)| level).collect();
        if levels.len() != nodes.len() {
            return Err(MerkleError::Range(format!(
                "a prefix of {k} leaves needs {} nodes, got {}",
                levels.len(),
                nodes.len()
            )));
        }
        let nodes = levels.into_iter().zip(nodes.iter().copied()).collect();
        Ok(Self { nodes, size: k })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash: it merges with every equal-sized subtree it
    /// completes (one per trailing one bit of the old size).
    pub fn push(&mut self, leaf: Hash) -> Result<(), MerkleError> {
        self.size = self
            .size
            .checked_add(1)
            .ok_or_else(|| MerkleError::Range("the tree is full".to_owned()))?;
        let (mut level, mut h) = (0u32, leaf);
        while let Some(&(top, left)) = self.nodes.last()
            && top == level
        {
            self.nodes.pop();
            h = node_hash(&left, &h);
            level += 1;
        }
        self.nodes.push((level, h));
        Ok(())
    }

    /// MTH of the leaves so far: the subtrees folded from the right, which
    /// is RFC 9162's split at the largest power of two, applied repeatedly.
    pub fn root(&self) -> Hash {
        let mut rest = self.nodes.iter().rev();
        match rest.next() {
            None => empty_root(),
            Some(&(_, last)) => rest.fold(last, |right, (_, left)| node_hash(left, &right)),
        }
    }
}

/// An in-memory node store (tests, and checking an export, whose events are
/// in memory anyway; the daemon's `verify` uses a [`CompactRange`]). It may
/// start after a purged prefix, from that prefix's [`prefix_ranges`] nodes.
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    /// Per level: the index of the first node held, and the nodes from there.
    levels: Vec<(u64, Vec<Hash>)>,
    size: u64,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of `k` leaves of which only the prefix nodes are known
    /// (`nodes` in [`prefix_ranges`] order); leaves from `k` on are pushed.
    pub fn with_prefix(k: u64, nodes: &[Hash]) -> Result<Self, MerkleError> {
        let ranges: Vec<(u32, u64)> = prefix_ranges(k).collect();
        if ranges.len() != nodes.len() {
            return Err(MerkleError::Range(format!(
                "a prefix of {k} leaves needs {} nodes, got {}",
                ranges.len(),
                nodes.len()
            )));
        }
        let height = 64 - k.leading_zeros() as usize;
        let mut levels: Vec<(u64, Vec<Hash>)> = (0..height).map(|l| (k >> l, Vec::new())).collect();
        for ((level, idx), h) in ranges.into_iter().zip(nodes) {
            levels[level as usize] = (idx, vec![*h]);
        }
        Ok(Self { levels, size: k })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns its index.
    pub fn push(&mut self, leaf: Hash) -> Result<u64, MerkleError> {
        let index = self.size;
        // A prefix read from an export may claim any size, the largest too.
        let size = index
            .checked_add(1)
            .ok_or_else(|| MerkleError::Range(format!("a tree of {index} leaves is full")))?;
        for (level, idx, h) in append_nodes(self, index, leaf)? {
            let level = level as usize;
            if self.levels.len() <= level {
                self.levels.push((idx, Vec::new()));
            }
            let (first, nodes) = &mut self.levels[level];
            // Perfect nodes complete left to right, so `idx` is the next slot.
            debug_assert_eq!(*first + nodes.len() as u64, idx);
            nodes.push(h);
        }
        self.size = size;
        Ok(index)
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        self.levels
            .get(level as usize)
            .and_then(|(first, nodes)| nodes.get(index.checked_sub(*first)? as usize))
            .copied()
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_compact_range_gives_the_same_roots_as_the_whole_tree() {
        let leaf = |i: u64| leaf_hash(&i.to_be_bytes());
        let mut whole = MemoryTree::new();
        let mut compact = CompactRange::new();
        assert_eq!(compact.root(), root(&whole, 0).unwrap());
        for i in 0..140u64 {
            whole.push(leaf(i)).unwrap();
            compact.push(leaf(i)).unwrap();
            assert_eq!(compact.size(), i + 1);
            assert_eq!(
                compact.root(),
                root(&whole, i + 1).unwrap(),
                "size {}",
                i + 1
            );
            // Starting from a purged prefix of this size gives the same roots on.
            let k = i + 1;
            let prefix: Vec<Hash> = prefix_ranges(k)
                .map(|(level, idx)| whole.node(level, idx).unwrap())
                .collect();
            let mut from_prefix = CompactRange::with_prefix(k, &prefix).unwrap();
            assert_eq!(from_prefix.root(), compact.root());
            from_prefix.push(leaf(1000)).unwrap();
            let mut longer = whole.clone();
            longer.push(leaf(1000)).unwrap();
            assert_eq!(from_prefix.root(), root(&longer, k + 1).unwrap());
        }
        assert!(CompactRange::with_prefix(3, &[[0; 32]]).is_err());
    }

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/vectors/merkle_vectors.json")).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A 32-byte hash from hex, or None for any other length (malformed probes).
    fn hash(v: &Value) -> Option<Hash> {
        let b = unhex(v.as_str().unwrap_or(""));
        b.try_into().ok()
    }

    fn hashes(v: &Value) -> Option<Vec<Hash>> {
        v.as_array().unwrap().iter().map(hash).collect()
    }

    fn tree_of(n: usize) -> MemoryTree {
        let v = vectors();
        let mut t = MemoryTree::new();
        for leaf in v["leaves"].as_array().unwrap().iter().take(n) {
            t.push(leaf_hash(&unhex(leaf.as_str().unwrap()))).unwrap();
        }
        t
    }

    #[test]
    fn hasher_and_roots_match_the_vectors() {
        let v = vectors();
        assert_eq!(crate::crypto::hex(&empty_root()), v["hasher"][0]["hash"]);
        assert_eq!(crate::crypto::hex(&leaf_hash(b"")), v["hasher"][1]["hash"]);
        for (size, want) in v["roots_by_size"].as_object().unwrap() {
            let size: u64 = size.parse().unwrap();
            let t = tree_of(size as usize);
            assert_eq!(
                crate::crypto::hex(&root(&t, size).unwrap()),
                *want,
                "size {size}"
            );
        }
    }

    #[test]
    fn generated_proofs_match_the_vectors_and_verify() {
        let v = vectors();
        let t = tree_of(8);
        for case in v["inclusion"].as_array().unwrap() {
            let (i, n) = (
                case["leaf_index"].as_u64().unwrap(),
                case["tree_size"].as_u64().unwrap(),
            );
            let want = hashes(&case["proof"]).unwrap();
            assert_eq!(
                inclusion_proof(&t, i, n).unwrap(),
                want,
                "inclusion {i}/{n}"
            );
            let leaf = leaf_hash(&unhex(case["leaf_input"].as_str().unwrap()));
            let r = hash(&case["root"]).unwrap();
            assert!(verify_inclusion(i, n, &leaf, &want, &r));
        }
        for case in v["consistency"].as_array().unwrap() {
            let (a, b) = (
                case["size1"].as_u64().unwrap(),
                case["size2"].as_u64().unwrap(),
            );
            let want = hashes(&case["proof"]).unwrap();
            assert_eq!(
                consistency_proof(&t, a, b).unwrap(),
                want,
                "consistency {a}->{b}"
            );
            let (r1, r2) = (hash(&case["root1"]).unwrap(), hash(&case["root2"]).unwrap());
            assert!(verify_consistency(a, b, &r1, &r2, &want));
        }
    }

    #[test]
    fn verifiers_agree_with_every_probe() {
        let v = vectors();
        let mut n = 0;
        for p in v["probes"]["inclusion"].as_array().unwrap() {
            let ok = match (hash(&p["leaf_hash"]), hash(&p["root"]), hashes(&p["proof"])) {
                (Some(leaf), Some(r), Some(proof)) => verify_inclusion(
                    p["leaf_index"].as_u64().unwrap(),
                    p["tree_size"].as_u64().unwrap(),
                    &leaf,
                    &proof,
                    &r,
                ),
                _ => false,
            };
            assert_eq!(ok, !p["want_err"].as_bool().unwrap(), "{}", p["file"]);
            n += 1;
        }
        for p in v["probes"]["consistency"].as_array().unwrap() {
            // Convention-dependent: transparency-dev accepts equal sizes with
            // equal 12-byte "roots" and an empty proof; our hashes are typed
            // 32-byte values, so malformed roots are refused before any check.
            let stricter = p["file"]
                .as_str()
                .unwrap()
                .ends_with("sizes-are-equal-one-and-proof-is-empty.json");
            let ok = match (hash(&p["root1"]), hash(&p["root2"]), hashes(&p["proof"])) {
                (Some(r1), Some(r2), Some(proof)) => verify_consistency(
                    p["size1"].as_u64().unwrap(),
                    p["size2"].as_u64().unwrap(),
                    &r1,
                    &r2,
                    &proof,
                ),
                _ => false,
            };
            let want_ok = !p["want_err"].as_bool().unwrap() && !stricter;
            assert_eq!(ok, want_ok, "{}", p["file"]);
            n += 1;
        }
        assert_eq!(n, 196);
    }

    #[test]
    fn every_proof_in_a_larger_tree_verifies_and_reads_few_nodes() {
        use std::cell::Cell;
        struct Counting<'a>(&'a MemoryTree, Cell<u32>);
        impl NodeSource for Counting<'_> {
            fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
                self.1.set(self.1.get() + 1);
                self.0.node(level, index)
            }
        }
        let mut t = MemoryTree::new();
        let mut roots = vec![empty_root()];
        for i in 0..300u32 {
            t.push(leaf_hash(&i.to_be_bytes())).unwrap();
            roots.push(root(&t, t.size()).unwrap());
        }
        let c = Counting(&t, Cell::new(0));
        for size in 1..=300u64 {
            assert_eq!(root(&t, size).unwrap(), roots[size as usize]);
            for i in (0..size).step_by(7) {
                c.1.set(0);
                let p = inclusion_proof(&c, i, size).unwrap();
                assert!(c.1.get() <= 2 * 9 + 2, "{} reads", c.1.get());
                let leaf = leaf_hash(&(i as u32).to_be_bytes());
                assert!(verify_inclusion(i, size, &leaf, &p, &roots[size as usize]));
                let mut bad = leaf;
                bad[0] ^= 1;
                assert!(!verify_inclusion(i, size, &bad, &p, &roots[size as usize]));
            }
            for old in (1..=size).step_by(5) {
                c.1.set(0);
                let p = consistency_proof(&c, old, size).unwrap();
                assert!(c.1.get() <= 2 * 9 + 2, "{} reads", c.1.get());
                assert!(verify_consistency(
                    old,
                    size,
                    &roots[old as usize],
                    &roots[size as usize],
                    &p
                ));
                if old < size {
                    assert!(!verify_consistency(
                        old,
                        size,
                        &roots[old as usize - 1],
                        &roots[size as usize],
                        &p
                    ));
                }
            }
        }
    }

    #[test]
    fn a_tree_rebuilt_from_a_purged_prefix_gives_the_same_roots_and_proofs() {
        let leaves: Vec<Hash> = (0..40u8).map(|i| leaf_hash(&[i])).collect();
        let mut full = MemoryTree::new();
        for l in &leaves {
            full.push(*l).unwrap();
        }
        for k in 0..=40u64 {
            let prefix: Vec<Hash> = prefix_ranges(k)
                .map(|(l, i)| full.node(l, i).unwrap())
                .collect();
            let mut t = MemoryTree::with_prefix(k, &prefix).unwrap();
            for n in k..=40 {
                if n > 0 {
                    assert_eq!(root(&t, n), root(&full, n), "k {k} n {n}");
                }
                for j in k..n {
                    assert_eq!(inclusion_proof(&t, j, n), inclusion_proof(&full, j, n));
                }
                if n < 40 {
                    t.push(leaves[n as usize]).unwrap();
                }
            }
        }
        assert!(MemoryTree::with_prefix(5, &[[0; 32]]).is_err());
    }

    #[test]
    fn a_full_tree_refuses_another_leaf() {
        // Found by the `merkle` fuzz target: a prefix of u64::MAX leaves (as
        // a purge receipt may claim), then one more leaf, overflowed the size.
        let mut t = MemoryTree::with_prefix(u64::MAX, &[[7; 32]; 64]).unwrap();
        assert!(matches!(t.push([1; 32]), Err(MerkleError::Range(_))));
        assert_eq!(t.size(), u64::MAX);
        assert!(root(&t, u64::MAX).is_ok());
    }
}
