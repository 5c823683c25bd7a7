//! Erasing data subjects inside one write transaction: every record that
//! names one of them in a `subject` field is deleted, and their keys are
//! destroyed. Used by an erasure request, and by a restore or a restart
//! re-applying the ledger.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::firms::pool::FirmHandle;
use crate::firms::{DataKeys, FirmError};
use crate::records::record_aad;
use crate::records::schema::Schema;
use crate::records::subject_keys::{open_sealed, subjects_named};
use crate::store::StoreError;
use crate::store::firm::{RecordRow, WriteTx};

/// Records read per page while scanning a collection.
const PAGE: u64 = 500;

/// What an erasure removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Records deleted, by collection.
    pub deleted: BTreeMap<String, u64>,
    /// Their ids, by collection.
    pub ids: BTreeMap<String, Vec<String>>,
    pub keys_destroyed: u64,
    /// The pepper slots zeroed (the repository's copy must follow).
    pub slots: Vec<u64>,
}

impl Erased {
    pub fn records(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// Whether `row` names any of `subjects`: by the subject keys it is sealed
/// under, or by the keyed ids of its subject fields' values (opening its
/// sealed fields when a subject field is sensitive).
fn names_any(
    h: &FirmHandle,
    keys: &DataKeys,
    schema: &Schema,
    row: &RecordRow,
    subjects: &[String],
    open: bool,
) -> bool {
    if let Some(list) = &row.subjects
        && list.split(',').any(|s| subjects.iter().any(|x| x == s))
    {
        return true;
    }
    let mut fields: Map<String, Value> = serde_json::from_str(&row.clear).unwrap_or_default();
    if open && let Some(sealed) = &row.sealed {
        let aad = record_aad(h.id.as_str(), &row.collection, &row.id, row.version);
        if let Some(m) = open_sealed(h, keys, row, &aad, sealed)
            .ok()
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        {
            fields.extend(m);
        }
    }
    subjects_named(h, schema, &[&fields])
        .iter()
        .any(|id| subjects.contains(id))
}

/// Deletes every record naming one of `subjects` and destroys their keys,
/// in the caller's write transaction (so nothing written meanwhile can
/// escape it).
pub fn erase_in_tx(
    h: &FirmHandle,
    tx: &WriteTx<'_>,
    subjects: &[String],
) -> Result<Erased, FirmError> {
    let keys = h.data_keys();
    let mut out = Erased::default();
    for name in tx.read().collection_names()? {
        let Some((text, _)) = tx.read().collection(&name)? else {
            continue;
        };
        let schema: Schema = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("collection {name} schema: {e}")))?;
        if !schema.fields.values().any(|f| f.subject) {
            continue;
        }
        let open = schema.fields.values().any(|f| f.subject && f.sensitive);
        let mut after = String::new();
        let mut n = 0;
        loop {
            let rows = tx.read().records(&name, &after, PAGE, None)?;
            for row in &rows {
                if names_any(h, &keys, &schema, row, subjects, open)
                    && tx.erase_record(&name, &row.id)?
                {
                    n += 1;
                    out.ids
                        .entry(name.clone())
                        .or_default()
                        .push(row.id.clone());
                }
            }
            match rows.last() {
                Some(last) if rows.len() as u64 == PAGE => after = last.id.clone(),
                _ => break,
            }
        }
        if n > 0 {
            out.deleted.insert(name, n);
        }
    }
    for s in subjects {
        // Security invariant: erasure destroys the subject's key in the same transaction that deletes their records.
        if let Some(slot) = tx.destroy_subject_key(s)? {
            // The pepper half, outside the database: zeroed before the
            // commit, so no acknowledged erasure leaves it readable.
            h.peppers.zero(slot).map_err(|source| StoreError::Io {
                path: h.peppers.path().display().to_string(),
                source,
            })?;
            out.keys_destroyed += 1;
            out.slots.push(slot);
        }
    }
    Ok(out)
}
