//! Firm data: collection schemas, record validation and PII scanning, and
//! the records service.

pub mod pii;
mod read;
pub mod retention;
pub mod schema;
mod service;
pub(crate) mod subject_keys;
pub mod subjects;

pub(crate) use service::record_aad;
pub use service::{
    CollectionView, PendingCreate, PiiWarning, RecordPage, RecordView, Records, Written,
};
pub(crate) use subject_keys::subject_key_aad;
