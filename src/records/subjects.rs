//! Subject access (GDPR Art. 15/20): everything a firm holds about one data
//! subject, as one JSON document.
//!
//! A subject is named by a value of a collection's `subject` fields. Every
//! collection with subject fields is read whole, sensitive fields opened
//! (they may be the subject field), and each record whose subject field
//! holds the value goes into the document. The read is audited as a
//! sensitive read (`subjects.access`), naming the subject only by a keyed
//! hash: the identifier itself never reaches a log or an audit payload.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{RecordView, Records};
use crate::audit::Outcome;
use crate::auth::policy::{Authorized, perm};
use crate::firms::FirmError;

/// The longest subject identifier accepted.
pub const MAX_SUBJECT_CHARS: usize = 1024;
/// Records read per page while scanning a collection.
const PAGE: u64 = 500;

/// Everything held about one subject.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubjectDocument {
    pub firm_id: String,
    /// A keyed hash of the identifier (HMAC-SHA256 under the firm's auth
    /// key, first 16 bytes, hex): stable per firm, never the value.
    pub subject: String,
    pub generated_at: String,
    /// Matching records by collection, sensitive fields in clear.
    pub collections: BTreeMap<String, Vec<RecordView>>,
    pub records: usize,
}

/// Whether a field's value is the subject's identifier.
fn names(v: &Value, subject: &str) -> bool {
    match v {
        Value::String(s) => s == subject,
        Value::Number(n) => n.to_string() == subject,
        _ => false,
    }
}

impl Records {
    pub fn subject_access(
        &self,
        auth: &Authorized<perm::RecordsReadSensitive>,
        subject: &str,
    ) -> Result<SubjectDocument, FirmError> {
        if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(FirmError::InvalidQuery(format!(
                "value: 1 to {MAX_SUBJECT_CHARS} characters naming the subject"
            )));
        }
        let h = self.pool.handle(auth.firm())?;
        let keys = h.data_keys();
        let hash = super::subject_keys::subject_id(&h, subject);
        let mut collections = BTreeMap::new();
        for name in h.db.read_blocking(|r| r.collection_names())? {
            let schema = self.schema_of(&h, &name)?;
            let fields: Vec<&String> = schema
                .fields
                .iter()
                .filter(|(_, f)| f.subject)
                .map(|(n, _)| n)
                .collect();
            if fields.is_empty() {
                continue;
            }
            let mut found = Vec::new();
            let mut after = String::new();
            loop {
                let rows =
                    h.db.read_blocking(|r| r.records(&name, &after, PAGE, None))?;
                for row in &rows {
                    let view = self.record_view(&h, &schema, row, Some(&keys));
                    if fields
                        .iter()
                        .any(|f| view.data.get(*f).is_some_and(|v| names(v, subject)))
                    {
                        found.push(view);
                    }
                }
                match rows.last() {
                    Some(last) if rows.len() as u64 == PAGE => after = last.id.clone(),
                    _ => break,
                }
            }
            if !found.is_empty() {
                collections.insert(name, found);
            }
        }
        let records = collections.values().map(Vec::len).sum();
        let counts: BTreeMap<&String, usize> =
            collections.iter().map(|(k, v)| (k, v.len())).collect();
        // Security invariant: the subject is audited by its keyed hash only, never its identifier.
        let e = self.trail.audit_entry(
            &h,
            auth.principal(),
            auth.decision(),
            "subjects.access",
            &format!("subject:{hash}"),
            Outcome::Success,
            json!({ "records": records, "collections": counts }),
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(SubjectDocument {
            firm_id: h.id.to_string(),
            subject: hash,
            generated_at: self.pool.now(),
            collections,
            records,
        })
    }
}
