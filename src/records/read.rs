//! Reading records: masking by the schema, audited clear reads of
//! sensitive fields (coalesced per reader and minute), pages and filters.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::schema::{MASK, Schema};
use super::service::{
    CollectionView, MAX_RECORD_PAGE, RecordPage, RecordView, Records, record_aad,
};
use crate::auth::policy::{self, Authorized, Permission, perm};
use crate::firms::pool::FirmHandle;
use crate::firms::{DataKeys, FirmError};
use crate::store::StoreError;
use crate::store::firm::RecordRow;

/// Whether a reader of `row` would see a field the schema calls sensitive:
/// sealed fields, or a declared-sensitive field held in clear. Decides
/// whether a clear read is audited, whatever the storage.
pub(super) fn holds_sensitive(schema: &Schema, row: &RecordRow) -> bool {
    row.sealed.is_some()
        || (schema.fields.values().any(|f| f.sensitive)
            && serde_json::from_str::<Map<String, Value>>(&row.clear).is_ok_and(|m| {
                schema
                    .fields
                    .iter()
                    .any(|(n, f)| f.sensitive && m.contains_key(n))
            }))
}

impl Records {
    /// Reads a record. On an open firm with a cached schema, and a clear
    /// read (if any) already audited this minute, it is one pooled read on
    /// the caller's task; anything else runs on a blocking lane.
    pub async fn get(
        self: Arc<Self>,
        auth: Authorized<perm::RecordsRead>,
        collection: String,
        id: String,
    ) -> Result<RecordView, FirmError> {
        if let Some(v) = self.get_record_now(&auth, &collection, &id) {
            return v;
        }
        crate::firms::blocking(move || self.get_record(&auth, &collection, &id)).await
    }

    pub fn get_collection(
        &self,
        auth: &Authorized<perm::RecordsRead>,
        name: &str,
    ) -> Result<CollectionView, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let (text, version) =
            h.db.read_short(|r| r.collection(name))?
                .ok_or(FirmError::CollectionNotFound)?;
        Ok(CollectionView {
            name: name.to_owned(),
            version,
            schema: serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("schema: {e}")))?,
        })
    }

    /// The record as a reader sees it: sensitive fields decrypted with
    /// `clear` (a key snapshot taken before the row was read), else masked.
    pub(super) fn record_view(
        &self,
        h: &FirmHandle,
        schema: &Schema,
        row: &RecordRow,
        clear: Option<&DataKeys>,
    ) -> RecordView {
        let mut data: Map<String, Value> = serde_json::from_str(&row.clear).unwrap_or_default();
        match (clear, &row.sealed) {
            (Some(keys), Some(sealed)) => {
                let aad = record_aad(h.id.as_str(), &row.collection, &row.id, row.version);
                let opened = super::subject_keys::open_sealed(h, keys, row, &aad, sealed)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok());
                match opened {
                    Some(m) => data.extend(m),
                    None => tracing::error!(record = %row.id, "sensitive fields do not decrypt"),
                }
            }
            (Some(_), None) => {}
            // Security invariant: masking follows the schema, never how a
            // value was stored: a field the schema calls sensitive is masked
            // whether it was sealed or (written before it was declared) not.
            (None, _) => {
                for (name, f) in &schema.fields {
                    if f.sensitive && (row.sealed.is_some() || data.contains_key(name)) {
                        data.insert(name.clone(), Value::String(MASK.to_owned()));
                    }
                }
            }
        }
        RecordView {
            id: row.id.clone(),
            collection: row.collection.clone(),
            version: row.version,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
            data,
        }
    }

    /// Whether this read returns sensitive fields in clear: the reader has
    /// `records:read_sensitive` and there are some. Such a read is audited,
    /// once per key and `resource` a minute.
    fn clear_read(
        &self,
        h: &FirmHandle,
        auth: &Authorized<perm::RecordsRead>,
        has_sensitive: bool,
        resource: &str,
    ) -> Result<bool, FirmError> {
        let decision = policy::decide(
            auth.principal(),
            Permission::RecordsReadSensitive,
            auth.firm(),
        );
        if !(decision.allowed && has_sensitive) {
            return Ok(false);
        }
        self.trail.audit_read(
            h,
            auth.principal(),
            decision,
            "records.read_sensitive",
            resource,
        )?;
        Ok(true)
    }

    pub fn get_record(
        &self,
        auth: &Authorized<perm::RecordsRead>,
        collection: &str,
        id: &str,
    ) -> Result<RecordView, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let schema = self.schema_of(&h, collection)?;
        let keys = h.data_keys();
        let row =
            h.db.read_short(|r| r.record(collection, id))?
                .ok_or(FirmError::RecordNotFound)?;
        let clear = self.clear_read(
            &h,
            auth,
            holds_sensitive(&schema, &row),
            &format!("{collection}/{id}"),
        )?;
        Ok(self.record_view(&h, &schema, &row, clear.then_some(&*keys)))
    }

    /// `get_record` on the calling thread, for the async request path:
    /// None when it would need more than one pooled read (firm not open,
    /// schema not cached, or a clear read whose audit entry is due).
    fn get_record_now(
        &self,
        auth: &Authorized<perm::RecordsRead>,
        collection: &str,
        id: &str,
    ) -> Option<Result<RecordView, FirmError>> {
        let h = self.pool.cached_handle(auth.firm())?;
        let schema = h.schemas.get(collection)?;
        let clear = policy::decide(
            auth.principal(),
            Permission::RecordsReadSensitive,
            auth.firm(),
        )
        .allowed;
        // Security invariant: a clear read takes this path only if its audit entry already exists this window.
        if clear
            && !self.trail.read_recorded(
                &auth.principal().actor.label(),
                "records.read_sensitive",
                &format!("{}/{collection}/{id}", h.id),
            )
        {
            return None;
        }
        let keys = h.data_keys();
        let row = match h.db.read_short(|r| r.record(collection, id)) {
            Ok(Some(row)) => row,
            Ok(None) => return Some(Err(FirmError::RecordNotFound)),
            Err(e) => return Some(Err(e.into())),
        };
        let clear = clear && holds_sensitive(&schema, &row);
        Some(Ok(self.record_view(
            &h,
            &schema,
            &row,
            clear.then_some(&*keys),
        )))
    }

    /// A page of records by id, optionally filtered on one indexed field.
    pub fn list_records(
        &self,
        auth: &Authorized<perm::RecordsRead>,
        collection: &str,
        after: &str,
        limit: u64,
        filter: Option<(String, String)>,
    ) -> Result<RecordPage, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let schema = self.schema_of(&h, collection)?;
        if let Some((field, _)) = &filter
            && !schema.fields.get(field).is_some_and(|f| f.indexed)
        {
            return Err(FirmError::InvalidQuery(format!(
                "{field:?} is not an indexed field of {collection} (parameters: after, limit, and one indexed field)"
            )));
        }
        if limit == 0 {
            return Err(FirmError::InvalidQuery(format!(
                "limit must be between 1 and {MAX_RECORD_PAGE} (larger values are lowered to it)"
            )));
        }
        let limit = limit.min(MAX_RECORD_PAGE);
        let keys = h.data_keys();
        let rows = h.db.read_blocking(|r| {
            r.records(
                collection,
                after,
                limit,
                filter.as_ref().map(|(f, v)| (f.as_str(), v.as_str())),
            )
        })?;
        let sensitive = rows.iter().any(|r| holds_sensitive(&schema, r));
        let clear = self.clear_read(&h, auth, sensitive, &format!("{collection}/*"))?;
        let records: Vec<RecordView> = rows
            .iter()
            .map(|r| self.record_view(&h, &schema, r, clear.then_some(&*keys)))
            .collect();
        let next = (records.len() as u64 == limit)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        Ok(RecordPage { records, next })
    }
}
