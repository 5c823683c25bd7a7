//! The tamper-evident audit log: canonical entries ([`entry`]) linked by a
//! hash chain, and an RFC 9162 Merkle tree over their leaf hashes
//! ([`merkle`]) with proofs that cost O(log n) node reads. Entries are
//! appended by the firm's writer in the same transaction as the change they
//! record (`store::firm::WriteTx::append_audit`).

pub mod entry;
pub mod export;
pub mod log;
pub mod merkle;
pub mod note;
mod system;
pub mod trail;
pub mod verify;

pub use entry::{Entry, Filter};
pub use log::{
    AuditEntryView, AuditLog, AuditPage, AuditVerifyView, ConsistencyView, InclusionView, MAX_PAGE,
};
pub use trail::{AdminActor, AuditTrail, Outcome, SYSTEM};
