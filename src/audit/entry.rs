//! Audit entries: their canonical bytes, leaf hash and hash chain.
//!
//! Canonical encoding, version 1 (all integers big-endian):
//!
//! ```text
//! "SRAUDIT1"                      8 bytes
//! seq                             u64
//! at, firm, actor, source_ip, request_id, action, resource, outcome,
//! decision, rule                  each: u32 length ‖ UTF-8 bytes
//! payload                         u32 length ‖ bytes (the encrypted envelope, or empty)
//! ```
//!
//! `leaf = SHA-256(0x00 ‖ canonical)` (the RFC 9162 leaf hash) and
//! `chain_n = SHA-256(chain_{n-1} ‖ leaf_n)` with `chain_{-1}` = 32 zero
//! bytes. The payload enters as ciphertext, so destroying the audit key
//! (crypto-shredding the payloads) leaves every hash verifiable.

use super::merkle::{Hash, leaf_hash};
use crate::crypto::sha256_parts;

const MAGIC: &[u8; 8] = b"SRAUDIT1";

/// One audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339, UTC, seconds.
    pub at: String,
    pub firm: String,
    /// Key id, user, or `uid:<n>(<name>)` for the admin socket.
    pub actor: String,
    pub source_ip: String,
    pub request_id: String,
    /// `resource.verb`, e.g. `keys.create`.
    pub action: String,
    pub resource: String,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub rule: String,
    /// The details, sealed under the firm's audit key (empty if none).
    pub payload: Vec<u8>,
}

impl Entry {
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_canonical(
            &mut out,
            self.seq,
            [
                self.at.as_bytes(),
                self.firm.as_bytes(),
                self.actor.as_bytes(),
                self.source_ip.as_bytes(),
                self.request_id.as_bytes(),
                self.action.as_bytes(),
                self.resource.as_bytes(),
                self.outcome.as_bytes(),
                self.decision.as_bytes(),
                self.rule.as_bytes(),
            ],
            &self.payload,
        );
        out
    }

    pub fn leaf(&self) -> Hash {
        leaf_hash(&self.canonical())
    }
}

/// Writes the canonical bytes into `out` (cleared first), from the ten text
/// fields in their fixed order; lets a verifier encode straight from stored
/// rows without building an [`Entry`].
pub fn encode_canonical(out: &mut Vec<u8>, seq: u64, fields: [&[u8]; 10], payload: &[u8]) {
    out.clear();
    out.reserve(8 + 8 + fields.iter().map(|f| 4 + f.len()).sum::<usize>() + 4 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    for f in fields {
        put(out, f);
    }
    put(out, payload);
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    // Fields are bounded far below 4 GiB (request bodies are capped).
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The chain value before the first entry.
pub const CHAIN_START: Hash = [0u8; 32];

pub fn chain_next(previous: &Hash, leaf: &Hash) -> Hash {
    sha256_parts(&[previous, leaf])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            seq: 7,
            at: "2026-11-22T10:00:00Z".into(),
            firm: "frm_1".into(),
            actor: "key_2".into(),
            source_ip: "127.0.0.1".into(),
            request_id: "r".into(),
            action: "keys.create".into(),
            resource: "key_3".into(),
            outcome: "success".into(),
            decision: "allow".into(),
            rule: "role:owner".into(),
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn canonical_bytes_are_fixed_and_every_field_counts() {
        let e = entry();
        let c = e.canonical();
        assert_eq!(&c[..8], b"SRAUDIT1");
        assert_eq!(&c[8..16], &7u64.to_be_bytes());
        assert_eq!(&c[16..20], &20u32.to_be_bytes());
        // Moving a byte between adjacent fields changes the encoding.
        let mut moved = e.clone();
        moved.actor = "key_".into();
        moved.source_ip = "2127.0.0.1".into();
        assert_ne!(moved.canonical(), c);
        let mut changed = e.clone();
        changed.payload[0] ^= 1;
        assert_ne!(changed.leaf(), e.leaf());
        let mut seq = e.clone();
        seq.seq = 8;
        assert_ne!(seq.leaf(), e.leaf());
        assert_ne!(
            chain_next(&CHAIN_START, &e.leaf()),
            chain_next(&CHAIN_START, &seq.leaf())
        );
    }
}
