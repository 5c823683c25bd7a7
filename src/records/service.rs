//! Firm records: collections with declared schemas, records whose
//! sensitive fields are sealed under the firm's data key and masked for
//! readers without `records:read_sensitive`, PII scanning on every write,
//! idempotent creates and optimistic concurrency (ETag / If-Match).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::audit::trail::{AuditTrail, Outcome};
use crate::auth::policy::{Authorized, perm};
use crate::firms::FirmError;
use crate::firms::pool::{FirmHandle, Pool};
use crate::ids::RecordId;
use crate::records::schema::{self, Invalid, Schema};
use crate::records::subject_keys;
use crate::store::StoreError;
use crate::store::firm::{RecordRow, WriteTx};

/// Largest page of records.
pub const MAX_RECORD_PAGE: u64 = 500;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CollectionView {
    pub name: String,
    pub version: u32,
    pub schema: Schema,
}

/// A record as a reader sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    pub id: String,
    pub collection: String,
    pub version: u32,
    pub created_at: String,
    pub updated_at: String,
    pub data: Map<String, Value>,
}

impl RecordView {
    /// The strong ETag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// PII found in a flagged or redacted field.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PiiWarning {
    pub field: String,
    pub kind: &'static str,
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: RecordView,
    pub warnings: Vec<PiiWarning>,
    pub created: bool,
    /// An idempotent replay: the record the first request created.
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordPage {
    pub records: Vec<RecordView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

pub(crate) fn record_aad(firm: &str, collection: &str, id: &str, version: u32) -> Vec<u8> {
    format!("strongroom/record/v1|{firm}|{collection}|{id}|{version}").into_bytes()
}

fn invalid(e: Invalid) -> FirmError {
    match e {
        Invalid::Shape(m) => FirmError::InvalidRecord(m),
        Invalid::Pii { field, kind } => FirmError::PiiDetected {
            field,
            kind: kind.as_str(),
        },
    }
}

/// What a write stores: the row, its sensitive fields still to seal, its
/// index entries and its PII findings.
struct Prepared {
    row: RecordRow,
    sensitive: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The data subjects the record names (ids): their keys seal `sensitive`.
    subjects: Vec<String>,
    index: Vec<(String, String)>,
    warnings: Vec<PiiWarning>,
}

impl Prepared {
    /// The row to store, its sensitive fields sealed now. Called inside the
    /// write transaction: the seal uses the data key active at commit, so a
    /// data-key rotation never misses a row (see `datakeys`). A record
    /// that names data subjects is sealed under their keys instead (see
    /// `subject_keys`), made here for a subject new to the firm.
    fn sealed_row(&self, h: &FirmHandle, tx: &WriteTx<'_>) -> Result<RecordRow, FirmError> {
        let mut row = self.row.clone();
        if let Some(plain) = &self.sensitive {
            let aad = record_aad(h.id.as_str(), &row.collection, &row.id, row.version);
            row.sealed = Some(if self.subjects.is_empty() {
                h.data_keys()
                    .seal(&aad, plain)
                    .map_err(|_| FirmError::Seal)?
            } else {
                row.subjects = Some(self.subjects.join(","));
                subject_keys::seal_for_subjects(
                    h,
                    tx,
                    &aad,
                    plain,
                    &self.subjects,
                    &row.updated_at,
                )?
            });
        }
        Ok(row)
    }
}

/// A record create prepared up to its write.
pub struct PendingCreate {
    h: Arc<FirmHandle>,
    schema: Arc<Schema>,
    warnings: Vec<PiiWarning>,
    cmd: Arc<CreateCmd>,
}

/// The write command of a create: the idempotency check, the row (its
/// sensitive fields sealed in the transaction) and its audit entry.
struct CreateCmd {
    h: Arc<FirmHandle>,
    p: Prepared,
    key: Option<String>,
    collection: String,
    request_hash: [u8; 32],
    entry: crate::audit::Entry,
}

impl CreateCmd {
    fn run(&self, tx: &WriteTx<'_>) -> Result<(RecordRow, bool), FirmError> {
        let row = &self.p.row;
        if let Some(k) = &self.key {
            if let Some((hash, existing)) = tx.read().idempotency(&self.collection, k)? {
                if hash != self.request_hash {
                    return Err(FirmError::IdempotencyConflict);
                }
                // The first request's record may have been deleted since.
                let row = tx
                    .read()
                    .record(&self.collection, &existing)?
                    .ok_or(FirmError::RecordNotFound)?;
                return Ok((row, true));
            }
            tx.put_idempotency(
                &self.collection,
                k,
                &self.request_hash,
                &row.id,
                &row.created_at,
            )?;
        }
        let row = self.p.sealed_row(&self.h, tx)?;
        tx.write_record(&row, None, &self.p.index)?;
        let data = json!({ "collection": self.collection, "record_id": row.id, "version": 1 });
        crate::webhooks::events::emit(tx, "record.created", &row.created_at, data)?;
        tx.append_audit(self.entry.clone())?;
        Ok((row, false))
    }
}

/// Collections and records: schemas, validated and PII-scanned writes,
/// sensitive fields sealed in the write transaction and masked on read.
#[derive(Debug)]
pub struct Records {
    pub(super) pool: Arc<Pool>,
    pub(super) trail: Arc<AuditTrail>,
    pub(super) retention: std::sync::RwLock<super::retention::RetentionClasses>,
}

impl Records {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>) -> Self {
        Self {
            pool,
            trail,
            retention: Default::default(),
        }
    }

    /// Creates a record. On an open firm with a cached schema it is
    /// prepared on the caller's task and committed through the group-commit
    /// writer while the caller awaits, holding no thread; anything else
    /// runs on a blocking lane. A refused create is audited either way.
    pub async fn create(
        self: Arc<Self>,
        auth: Authorized<perm::RecordsWrite>,
        collection: String,
        body: Value,
        idempotency_key: Option<String>,
    ) -> Result<Written, FirmError> {
        let failed =
            match self.create_record_now(&auth, &collection, &body, idempotency_key.clone()) {
                Some(Ok(pending)) => match self.commit_create(pending).await {
                    Ok(w) => return Ok(w),
                    Err(e) => e,
                },
                Some(Err(e)) => e,
                None => {
                    return crate::firms::blocking(move || {
                        self.create_record(&auth, &collection, body, idempotency_key)
                    })
                    .await;
                }
            };
        let e = crate::firms::lane(move || {
            self.audit_create_refusal(&auth, &collection, &failed);
            failed
        })
        .await?;
        Err(e)
    }

    /// A collection's schema, from the firm's cache or its database.
    pub(super) fn schema_of(
        &self,
        h: &FirmHandle,
        collection: &str,
    ) -> Result<Arc<Schema>, FirmError> {
        if let Some(s) = h.schemas.get(collection) {
            return Ok(s);
        }
        let generation = h.schemas.generation();
        let (text, _) =
            h.db.read_short(|r| r.collection(collection))?
                .ok_or(FirmError::CollectionNotFound)?;
        let schema: Arc<Schema> =
            Arc::new(serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!("collection {collection} schema: {e}"))
            })?);
        h.schemas.fill(generation, collection, schema.clone());
        Ok(schema)
    }

    /// Declares or changes a collection's schema. A change may add fields
    /// and change flags, but never a field's type or sensitivity (stored
    /// data would no longer match it).
    pub fn put_collection(
        &self,
        auth: &Authorized<perm::CollectionsWrite>,
        name: &str,
        schema: Schema,
    ) -> Result<(CollectionView, bool), FirmError> {
        self.trail.change(auth, "collections.put", name, json!({}), |c| {
            if !schema::valid_name(name) {
                return Err(FirmError::Invalid(format!(
                    "collection name {name:?}: 1 to {} of a-z 0-9 _, starting with a letter",
                    schema::MAX_NAME
                )));
            }
            schema.check().map_err(FirmError::Invalid)?;
            self.check_retention_class(&schema)?;
            // Fields the old schema did not declare: records of an
            // `allow_unknown` collection may already hold them in clear.
            let mut undeclared: Vec<String> = Vec::new();
            if let Ok(old) = self.schema_of(&c.h, name) {
                undeclared = schema
                    .fields
                    .keys()
                    .filter(|f| !old.fields.contains_key(*f))
                    .cloned()
                    .collect();
                for (f, was) in &old.fields {
                    match schema.fields.get(f) {
                        // Security invariant: the subject flag is fixed too, so
                        // no schema change hides records from an erasure.
                        Some(now)
                            if now.kind != was.kind
                                || now.sensitive != was.sensitive
                                || now.subject != was.subject =>
                        {
                            return Err(FirmError::SchemaConflict(format!(
                                "field {f:?} cannot change its type, sensitivity or subject flag"
                            )));
                        }
                        None => {
                            return Err(FirmError::SchemaConflict(format!(
                                "field {f:?} cannot be removed"
                            )));
                        }
                        _ => {}
                    }
                }
            }
            let text =
                serde_json::to_string(&schema).map_err(|e| FirmError::Invalid(e.to_string()))?;
            let (n, now) = (name.to_owned(), self.pool.now());
            let version = c.commit(name, json!({ "schema": schema }), move |tx| {
                // Security invariant: a field is declared (sensitive or
                // typed) only while no record holds it undeclared, checked
                // in the transaction that changes the schema, so no value
                // stays in clear under a field the schema calls sensitive.
                for f in &undeclared {
                    let held = tx.read().records_holding(&n, f)?;
                    if held > 0 {
                        return Err(FirmError::SchemaConflict(format!(
                            "field {f:?} is already held, undeclared, by {held} record(s): a field can be declared only while no record holds it"
                        )));
                    }
                }
                Ok(tx.put_collection(&n, &text, &now)?)
            });
            // After the commit: the next write validates against the new schema.
            c.h.schemas.invalidate();
            let version = version?;
            Ok((
                CollectionView {
                    name: name.to_owned(),
                    version,
                    schema: schema.clone(),
                },
                version == 1,
            ))
        })
    }

    /// Validates, scans and seals a record body for version `version`.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        h: &FirmHandle,
        schema: &Schema,
        collection: &str,
        id: &str,
        version: u32,
        created_at: &str,
        body: &Value,
    ) -> Result<Prepared, FirmError> {
        let split = schema::split(schema, body).map_err(invalid)?;
        let subjects = if split.sensitive.is_empty() {
            Vec::new()
        } else {
            subject_keys::subjects_named(h, schema, &[&split.clear, &split.sensitive])
        };
        let sensitive = if split.sensitive.is_empty() {
            None
        } else {
            Some(zeroize::Zeroizing::new(
                serde_json::to_vec(&split.sensitive)
                    .map_err(|e| FirmError::Invalid(e.to_string()))?,
            ))
        };
        let now = self.pool.now();
        Ok(Prepared {
            row: RecordRow {
                collection: collection.to_owned(),
                id: id.to_owned(),
                version,
                clear: Value::Object(split.clear).to_string(),
                sealed: None,
                created_at: created_at.to_owned(),
                updated_at: now,
                subjects: None,
                subject_keys: Vec::new(),
            },
            sensitive,
            subjects,
            index: split.index,
            warnings: split
                .pii
                .into_iter()
                .map(|(field, kind)| PiiWarning {
                    field,
                    kind: kind.as_str(),
                })
                .collect(),
        })
    }

    /// Creates a record. With an Idempotency-Key, the same key and body
    /// return the record the first request created; another body is 409.
    pub fn create_record(
        &self,
        auth: &Authorized<perm::RecordsWrite>,
        collection: &str,
        body: Value,
        idempotency_key: Option<String>,
    ) -> Result<Written, FirmError> {
        // The create's entry is built with its record id (see
        // `create_command`), so it commits through its own command; the
        // refusal path is the trail's.
        self.trail
            .change(auth, "records.create", collection, json!({}), |c| {
                let schema = self.schema_of(&c.h, collection)?;
                let p = self.create_command(
                    auth,
                    c.h.clone(),
                    schema,
                    collection,
                    &body,
                    idempotency_key,
                )?;
                let cmd = p.cmd.clone();
                let stored = p.h.db.write_with(move |tx| cmd.run(tx));
                self.created(p, stored)
            })
    }

    /// `create_record` up to its write, on the calling thread, for the
    /// async request path: None when that would block (firm not open,
    /// schema not cached). Commit with `commit_create`; a refusal is
    /// recorded with `audit_create_refusal`.
    fn create_record_now(
        &self,
        auth: &Authorized<perm::RecordsWrite>,
        collection: &str,
        body: &Value,
        idempotency_key: Option<String>,
    ) -> Option<Result<PendingCreate, FirmError>> {
        let h = self.pool.cached_handle(auth.firm())?;
        let schema = h.schemas.get(collection)?;
        Some(
            self.pool.require_writable(auth.firm()).and_then(|()| {
                self.create_command(auth, h, schema, collection, body, idempotency_key)
            }),
        )
    }

    /// Commits a prepared create; the task waits, no thread does.
    async fn commit_create(&self, p: PendingCreate) -> Result<Written, FirmError> {
        let cmd = p.cmd.clone();
        let stored = p.h.db.write(move |tx| cmd.run(tx)).await;
        self.created(p, stored)
    }

    /// Records a refused create in the audit log (blocking).
    fn audit_create_refusal(
        &self,
        auth: &Authorized<perm::RecordsWrite>,
        collection: &str,
        e: &FirmError,
    ) {
        self.trail
            .audit_failure(auth, "records.create", collection, json!({}), e);
    }

    fn create_command(
        &self,
        auth: &Authorized<perm::RecordsWrite>,
        h: Arc<FirmHandle>,
        schema: Arc<Schema>,
        collection: &str,
        body: &Value,
        idempotency_key: Option<String>,
    ) -> Result<PendingCreate, FirmError> {
        let id =
            RecordId::generate_ordered(crate::clock::unix_ms(self.pool.clock.now()))?.to_string();
        let now = self.pool.now();
        let p = self.prepare(&h, &schema, collection, &id, 1, &now, body)?;
        let request_hash = crate::crypto::sha256(body.to_string().as_bytes());
        let entry = self.trail.audit_entry(
            &h,
            auth.principal(),
            auth.decision(),
            "records.create",
            &format!("{collection}/{id}"),
            Outcome::Success,
            json!({ "version": 1, "pii": p.warnings, "idempotency_key": idempotency_key }),
        )?;
        Ok(PendingCreate {
            warnings: p.warnings.clone(),
            cmd: Arc::new(CreateCmd {
                h: h.clone(),
                p,
                // Idempotency keys are scoped to the credential that sent
                // them: another key replaying the same key and body creates
                // its own record, and never receives someone else's.
                key: idempotency_key.map(|k| format!("{}/{k}", auth.principal().actor.label())),
                collection: collection.to_owned(),
                request_hash,
                entry,
            }),
            h,
            schema,
        })
    }

    fn created(
        &self,
        p: PendingCreate,
        stored: Result<(RecordRow, bool), FirmError>,
    ) -> Result<Written, FirmError> {
        let (row, replayed) = stored?;
        Ok(Written {
            record: self.record_view(&p.h, &p.schema, &row, None),
            warnings: if replayed { Vec::new() } else { p.warnings },
            created: !replayed,
            replayed,
        })
    }

    /// Replaces a record (`patch`: applies a JSON merge patch, RFC 7396, to
    /// it) at the version `if_match` names.
    pub fn update_record(
        &self,
        auth: &Authorized<perm::RecordsWrite>,
        collection: &str,
        id: &str,
        body: Value,
        if_match: Option<u32>,
        patch: bool,
    ) -> Result<Written, FirmError> {
        let action = if patch {
            "records.patch"
        } else {
            "records.replace"
        };
        let resource = format!("{collection}/{id}");
        self.trail.change(auth, action, &resource, json!({}), |c| {
            let expected = if_match.ok_or(FirmError::PreconditionRequired)?;
            let h = c.h.clone();
            let schema = self.schema_of(&h, collection)?;
            let keys = h.data_keys();
            let current =
                h.db.read_blocking(|r| r.record(collection, id))?
                    .ok_or(FirmError::RecordNotFound)?;
            if current.version != expected {
                return Err(FirmError::StaleVersion);
            }
            let body = if patch {
                // Security invariant: a patch never rewrites a record whose
                // sealed fields it could not open (it would drop them).
                if let Some(sealed) = &current.sealed {
                    let aad = record_aad(h.id.as_str(), collection, id, current.version);
                    subject_keys::open_sealed(&h, &keys, &current, &aad, sealed)
                        .map_err(|_| FirmError::Seal)?;
                }
                let mut whole =
                    Value::Object(self.record_view(&h, &schema, &current, Some(&keys)).data);
                merge_patch(&mut whole, &body);
                whole
            } else {
                body.clone()
            };
            let p = self.prepare(
                &h,
                &schema,
                collection,
                id,
                expected + 1,
                &current.created_at,
                &body,
            )?;
            let warnings = p.warnings.clone();
            let details = json!({ "version": expected + 1, "pii": p.warnings });
            let hh = h.clone();
            let row = c.commit(&resource, details, move |tx| {
                let row = p.sealed_row(&hh, tx)?;
                match tx.write_record(&row, Some(expected), &p.index) {
                    Err(StoreError::Stale) => return Err(FirmError::StaleVersion),
                    other => other?,
                }
                let data = json!({ "collection": row.collection, "record_id": row.id, "version": row.version });
                crate::webhooks::events::emit(tx, "record.updated", &row.updated_at, data)?;
                Ok(row)
            })?;
            Ok(Written {
                record: self.record_view(&h, &schema, &row, None),
                warnings,
                created: false,
                replayed: false,
            })
        })
    }

    pub fn delete_record(
        &self,
        auth: &Authorized<perm::RecordsDelete>,
        collection: &str,
        id: &str,
        if_match: Option<u32>,
    ) -> Result<(), FirmError> {
        let resource = format!("{collection}/{id}");
        self.trail
            .change(auth, "records.delete", &resource, json!({}), |c| {
                self.schema_of(&c.h, collection)?;
                let (coll, i, now) = (collection.to_owned(), id.to_owned(), self.pool.now());
                c.commit(&resource, json!({}), move |tx| {
                    match tx.delete_record(&coll, &i, if_match) {
                        Ok(Some(_)) => Ok(crate::webhooks::events::emit(
                            tx,
                            "record.deleted",
                            &now,
                            json!({ "collection": coll, "record_id": i }),
                        )?),
                        Ok(None) => Err(FirmError::RecordNotFound),
                        Err(StoreError::Stale) => Err(FirmError::StaleVersion),
                        Err(e) => Err(e.into()),
                    }
                })
            })
    }
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
