//! Firm data: collection schemas, record validation and PII scanning.

pub mod pii;
pub mod schema;
