//! The system audit log (admin-socket actions, kept in the registry with the
//! same entries, chain, tree, checkpoints and purges as a firm's log) and
//! the retention job that purges every log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::log::{
    AuditLog, AuditPage, AuditVerifyView, MAX_PAGE, checkpoint_size, export_consistent,
    export_events,
};
use super::trail::{AdminActor, Outcome, SYSTEM};
use super::{Entry, note};
use crate::config::parse_duration;
use crate::firms::FirmError;
use crate::ids::FirmId;
use crate::store::audit_log::PurgePlan;

impl AuditLog {
    /// Reading the system log is itself audited, once per reader a minute.
    fn system_read(&self, by: &AdminActor, action: &str) -> Result<(), FirmError> {
        if self.trail.first_in_window(&by.label(), action, SYSTEM) {
            self.trail.system_audit(
                by,
                action,
                "system-log",
                Outcome::Success,
                "admin_socket",
                Value::Null,
            )?;
        }
        Ok(())
    }

    pub fn system_audit_page(
        &self,
        by: &AdminActor,
        from: u64,
        limit: u64,
    ) -> Result<AuditPage, FirmError> {
        self.system_read(by, "audit.read")?;
        let limit = limit.clamp(1, MAX_PAGE);
        let (size, rows) = self.pool.registry.audit_page(from, limit)?;
        let entries: Vec<_> = rows
            .iter()
            .map(|r| self.trail.view_entry_with(self.trail.system_key(), r))
            .collect();
        Ok(AuditPage::new(size, entries, limit))
    }

    pub fn system_audit_verify(&self, by: &AdminActor) -> Result<AuditVerifyView, FirmError> {
        self.system_read(by, "audit.verify")?;
        let v = self.pool.registry.audit_verify()?;
        Ok(self.verify_view(v, &self.trail.system_origin()))
    }

    /// The system log's latest signed checkpoint, signing one if it grew.
    pub fn system_checkpoint(&self) -> Result<String, FirmError> {
        let sign = self.trail.checkpoint_signer(self.trail.system_origin());
        let at = self.pool.now();
        Ok(self.pool.registry.audit_checkpoint(&at, &sign)?)
    }

    pub(crate) fn system_checkpoint_if_grown(&self) -> Result<bool, FirmError> {
        if !self.pool.registry.audit_needs_checkpoint()? {
            return Ok(false);
        }
        self.system_checkpoint().map(|_| true)
    }

    /// The system log as CloudEvents, closed by a signed checkpoint (checked
    /// offline by `strongroomctl audit verify-export`).
    pub fn system_audit_export(&self, by: &AdminActor) -> Result<Vec<Value>, FirmError> {
        self.system_read(by, "audit.export")?;
        let (note, size, (anchor, prefix, rows)) = export_consistent(|| {
            let note = self.system_checkpoint()?;
            let size = checkpoint_size(&note)?;
            let snap = self.pool.registry.audit_export_snapshot(size)?;
            Ok((note, size, snap))
        })?;
        Ok(export_events(
            &self.trail.system_origin(),
            anchor.as_ref(),
            &prefix,
            &rows,
            size,
            &note,
        ))
    }

    /// Sets the default audit retention (from the configuration).
    pub fn set_default_retention(&self, d: Duration) {
        self.retention_secs.store(d.as_secs(), Ordering::Relaxed);
    }

    pub fn default_retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs.load(Ordering::Relaxed))
    }

    /// Sets (or, with None, clears back to the default) a firm's own audit
    /// retention; recorded in the system log in the same transaction.
    pub fn set_retention(
        &self,
        id: &FirmId,
        retention: Option<&str>,
        by: &AdminActor,
    ) -> Result<crate::store::registry::FirmRow, FirmError> {
        if let Some(r) = retention
            && parse_duration(r).is_none()
        {
            return Err(FirmError::Invalid(format!(
                "{r:?} is not a duration like 3650d, 12h or 30m"
            )));
        }
        let e = self.trail.system_entry(
            by,
            "firm.set_retention",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "retention": retention }),
        )?;
        match self
            .pool
            .registry
            .set_retention(id.as_str(), retention, &self.pool.now(), Some(e))
        {
            Err(crate::store::StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.pool.row(id)
    }

    /// Builds the signed receipt and its log entry for a purge of `origin`'s
    /// log (the entry's `firm` field is `firm`).
    fn receipt_maker(
        &self,
        origin: String,
        firm: String,
        cutoff: String,
        retention: String,
        at: String,
    ) -> impl Fn(&PurgePlan) -> (String, Entry) + Send + use<> {
        let signer = self.trail.signer.clone();
        let name = self.trail.signer_name.clone();
        move |plan| {
            let body = note::purge_receipt_body(&note::PurgeReceipt {
                origin: origin.clone(),
                before: plan.before,
                chain: plan.chain,
                tree_size: plan.tree_size,
                root: plan.root,
                cutoff: cutoff.clone(),
            });
            let receipt = note::sign(&name, &signer, &body);
            let entry = Entry {
                seq: 0,
                at: at.clone(),
                firm: firm.clone(),
                actor: "system:retention".to_owned(),
                source_ip: String::new(),
                request_id: String::new(),
                action: "audit.purge".to_owned(),
                // The receipt is metadata, not a sealed payload: it must stay
                // readable after the audit key is shredded.
                resource: receipt.clone(),
                outcome: "success".to_owned(),
                decision: "allow".to_owned(),
                rule: format!("retention:{retention}"),
                payload: Vec::new(),
            };
            (receipt, entry)
        }
    }

    /// The retention job: purges, from every firm's log and the system log,
    /// the entries older than its retention, each purge recorded with a
    /// signed receipt in the same transaction. Returns the number of
    /// entries purged.
    pub fn purge_expired(&self) -> u64 {
        let now = self.pool.clock.now();
        let at = self.pool.now();
        let mut purged = 0;
        let cutoff_of =
            |d: Duration| crate::clock::rfc3339(now - time::Duration::seconds(d.as_secs() as i64));
        let default = self.default_retention();
        let firms = match self.pool.registry.firms() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list firms");
                return 0;
            }
        };
        for row in firms.into_iter().filter(|r| r.state != "deleted") {
            let Some(id) = FirmId::parse(&row.id) else {
                continue;
            };
            let (retention, label) = match row
                .audit_retention
                .as_deref()
                .and_then(|r| parse_duration(r).map(|d| (d, r.to_owned())))
            {
                Some(x) => x,
                None => (default, format!("{}s", default.as_secs())),
            };
            let make = self.receipt_maker(
                self.trail.checkpoint_origin(&id),
                id.to_string(),
                cutoff_of(retention),
                label,
                at.clone(),
            );
            let cutoff = cutoff_of(retention);
            let at = at.clone();
            let result = self.pool.visit(&id, |h| {
                Ok(h.db.write_blocking(move |tx| tx.purge_audit(&cutoff, &at, &make))?)
            });
            match result {
                Ok(Some((plan, n))) => {
                    purged += n;
                    tracing::info!(firm = %id, purged_before = plan.before, entries = n, "audit retention: entries purged, receipt recorded");
                }
                Ok(None) => {}
                Err(e) => tracing::error!(firm = %id, error = %e, "audit retention purge failed"),
            }
        }
        let make = self.receipt_maker(
            self.trail.system_origin(),
            SYSTEM.to_owned(),
            cutoff_of(default),
            format!("{}s", default.as_secs()),
            at.clone(),
        );
        let cutoff = cutoff_of(default);
        match self.pool.registry.audit_purge(&cutoff, &at, &make) {
            Ok(Some((plan, n))) => {
                purged += n;
                tracing::info!(
                    purged_before = plan.before,
                    entries = n,
                    "system audit retention: entries purged, receipt recorded"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "system audit retention purge failed"),
        }
        purged
    }
}
