//! The tamper-evident audit log. So far: the RFC 9162 Merkle tree over
//! entry hashes ([`merkle`]), with proofs that cost O(log n) node reads.

pub mod merkle;
