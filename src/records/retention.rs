//! Record retention: a collection's schema names a class from the config's
//! `[retention] classes`; the job deletes the records older than their
//! class, in bounded batches, each batch and its audit entry (actor
//! `system:retention`, action `records.retention_purge`, the count) in one
//! transaction of the firm's writer.
//!
//! Frozen firms are skipped (a freeze stops every change, a legal hold
//! included). With `secure_delete` on, the deleted rows' cells are zeroed in
//! the file; their earlier page images stay in WAL frames until the writer's
//! next checkpoint and the WAL's restart overwrite them, and in backups
//! taken before the deletion until those are pruned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::Records;
use super::schema::Schema;
use crate::audit::Outcome;
use crate::auth::Origin;
use crate::firms::pool::FirmHandle;
use crate::firms::{FirmError, FirmState};
use crate::ids::FirmId;

/// The retention job's settings (from `[retention]`).
#[derive(Debug, Clone, Default)]
pub struct RetentionClasses {
    pub classes: BTreeMap<String, Duration>,
    pub batch: u32,
}

/// What one run deleted.
#[derive(Debug, Default, Serialize)]
pub struct RetentionReport {
    pub firms: usize,
    pub collections: usize,
    pub deleted: u64,
}

impl Records {
    pub fn set_retention(&self, r: RetentionClasses) {
        match self.retention.write() {
            Ok(mut g) => *g = r,
            Err(p) => *p.into_inner() = r,
        }
    }

    /// The configured classes and their durations.
    pub fn retention_classes(&self) -> BTreeMap<String, Duration> {
        self.retention().classes
    }

    pub(super) fn retention(&self) -> RetentionClasses {
        match self.retention.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Refuses a schema whose class is not configured (its records would
    /// never be deleted, which is not what its author meant).
    pub(super) fn check_retention_class(&self, schema: &Schema) -> Result<(), FirmError> {
        let Some(class) = &schema.retention_class else {
            return Ok(());
        };
        let known = self.retention().classes;
        if known.contains_key(class) {
            return Ok(());
        }
        Err(FirmError::Invalid(format!(
            "retention_class {class:?} is not configured ([retention] classes: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )))
    }

    /// Deletes every record older than its collection's class, in every
    /// firm that takes writes.
    pub fn purge_expired(&self) -> RetentionReport {
        let r = self.retention();
        let mut report = RetentionReport::default();
        if r.classes.is_empty() {
            return report;
        }
        let firms = match self.pool.registry.firms() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "record retention: cannot list firms");
                return report;
            }
        };
        for row in firms {
            let Some(id) = FirmId::parse(&row.id) else {
                continue;
            };
            if FirmState::parse(&row.state) != FirmState::Active {
                continue;
            }
            match self.purge_firm(&id, &r) {
                Ok((collections, n)) => {
                    report.firms += usize::from(collections > 0);
                    report.collections += collections;
                    report.deleted += n;
                }
                Err(e) => tracing::error!(firm = %id, error = %e, "record retention failed"),
            }
        }
        report
    }

    /// One firm: (collections with a class, records deleted).
    fn purge_firm(&self, id: &FirmId, r: &RetentionClasses) -> Result<(usize, u64), FirmError> {
        self.pool.visit(id, |h| self.purge_open_firm(id, h, r))
    }

    fn purge_open_firm(
        &self,
        id: &FirmId,
        h: &Arc<FirmHandle>,
        r: &RetentionClasses,
    ) -> Result<(usize, u64), FirmError> {
        let names = h.db.read_blocking(|tx| tx.collection_names())?;
        let now = self.pool.clock.now();
        let (mut collections, mut deleted) = (0, 0);
        for name in names {
            let schema = self.schema_of(h, &name)?;
            let Some(class) = schema.retention_class.clone() else {
                continue;
            };
            let Some(keep) = r.classes.get(&class) else {
                tracing::warn!(firm = %id, collection = %name, class = %class, "record retention: the collection's class is not configured; nothing deleted");
                continue;
            };
            collections += 1;
            let cutoff =
                crate::clock::rfc3339(now - time::Duration::seconds(keep.as_secs() as i64));
            loop {
                let (trail, hh) = (self.trail.clone(), h.clone());
                let (coll, from, cut, batch) = (
                    name.clone(),
                    schema.retention_from.clone(),
                    cutoff.clone(),
                    r.batch,
                );
                let cls = class.clone();
                // One batch and its audit entry, with the count, in one transaction.
                let n = h.db.write_with(move |tx| {
                    let n = tx.purge_expired_records(&coll, from.as_deref(), &cut, batch)?;
                    if n > 0 {
                        let origin = Origin {
                            request_id: format!(
                                "ret_{}",
                                crate::crypto::hex(
                                    &crate::crypto::random_array::<8>().unwrap_or_default()
                                )
                            ),
                            source_ip: "-".to_owned(),
                        };
                        let e = trail.sealed_entry(
                            &hh,
                            "system:retention",
                            &origin,
                            "allow",
                            "retention_class".to_owned(),
                            "records.retention_purge",
                            &coll,
                            Outcome::Success,
                            json!({
                                "class": cls, "cutoff": cut, "deleted": n,
                                "from": from.as_deref().unwrap_or("created_at"),
                            }),
                        )?;
                        tx.append_audit(e)?;
                    }
                    Ok::<u64, FirmError>(n)
                })?;
                deleted += n;
                if n > 0 {
                    tracing::info!(firm = %id, collection = %name, class = %class, deleted = n, "record retention: expired records deleted");
                }
                if n < u64::from(r.batch) {
                    break;
                }
            }
        }
        Ok((collections, deleted))
    }
}
