//! The system audit log (admin-socket actions, kept in the registry with the
//! same entries, chain, tree, checkpoints and purges as a firm's log) and
//! the retention job that purges every log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::audit::{
    AuditPage, AuditVerifyView, MAX_PAGE, Outcome, checkpoint_size, export_consistent,
    export_events, payload_aad,
};
use super::{FirmError, Firms};
use crate::audit::{Entry, note};
use crate::config::parse_duration;
use crate::crypto::envelope;
use crate::crypto::secret::SecretKey;
use crate::ids::FirmId;
use crate::store::audit_log::{self, PurgePlan};

/// The `firm` field of system-log entries (never a firm id).
pub const SYSTEM: &str = "@system";

/// Who ran an admin-socket command, from the kernel (SO_PEERCRED).
#[derive(Debug, Clone)]
pub struct AdminActor {
    pub uid: u32,
    /// The uid's user name, if it has one.
    pub name: String,
    /// Ties the command's system-log entry to its journal line.
    pub request_id: String,
}

impl AdminActor {
    /// The entry's `actor`: `uid:<n>(<name>)`.
    pub fn label(&self) -> String {
        format!("uid:{}({})", self.uid, self.name)
    }
}

/// The system log's audit key: an appliance key, wrapped under the master key.
pub(super) fn system_audit_key(
    registry: &crate::store::registry::Registry,
    ring: &crate::crypto::keyring::Keyring,
) -> Result<SecretKey, FirmError> {
    super::load_or_create_appliance_key(registry, ring, crate::crypto::keyring::Purpose::Audit)
}

impl Firms {
    /// A system-log entry for an admin action, details sealed under the
    /// system audit key.
    pub fn system_entry(
        &self,
        by: &AdminActor,
        action: &str,
        resource: &str,
        outcome: Outcome,
        rule: &str,
        details: Value,
    ) -> Result<Entry, FirmError> {
        self.system_entry_for(
            &by.label(),
            &by.request_id,
            action,
            resource,
            outcome,
            rule,
            details,
        )
    }

    /// A system-log entry for `actor` (an admin, or the daemon itself as
    /// `system:<job>`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn system_entry_for(
        &self,
        actor: &str,
        request_id: &str,
        action: &str,
        resource: &str,
        outcome: Outcome,
        rule: &str,
        details: Value,
    ) -> Result<Entry, FirmError> {
        let at = self.now();
        let aad = payload_aad(SYSTEM, &at, request_id, action);
        let payload = envelope::seal(&self.system_key, 1, &aad, details.to_string().as_bytes())
            .map_err(|e| FirmError::Invalid(format!("sealing audit details: {e}")))?;
        Ok(Entry {
            seq: 0,
            at,
            firm: SYSTEM.to_owned(),
            actor: actor.to_owned(),
            source_ip: "admin-socket".to_owned(),
            request_id: request_id.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.as_str().to_owned(),
            decision: if outcome == Outcome::Denied {
                "deny"
            } else {
                "allow"
            }
            .to_owned(),
            rule: rule.to_owned(),
            payload,
        })
    }

    /// Records an admin action that changed nothing in the registry (a read
    /// of sensitive data, a refusal, a failure) in the system log.
    pub fn system_audit(
        &self,
        by: &AdminActor,
        action: &str,
        resource: &str,
        outcome: Outcome,
        rule: &str,
        details: Value,
    ) -> Result<(), FirmError> {
        let e = self.system_entry(by, action, resource, outcome, rule, details)?;
        self.registry.append_audit(e)?;
        Ok(())
    }

    /// A refused admin-socket peer: once per uid a minute (each attempt is
    /// still in the journal).
    pub fn system_audit_refused_peer(&self, by: &AdminActor) -> Result<(), FirmError> {
        if !self.first_in_window(&by.label(), "admin.connect", SYSTEM) {
            return Ok(());
        }
        self.system_audit(
            by,
            "admin.connect",
            "admin-socket",
            Outcome::Denied,
            "admin_socket_peer",
            Value::Null,
        )
    }

    pub fn system_origin(&self) -> String {
        format!("strongroom/{}/system", self.appliance_id)
    }

    /// Reading the system log is itself audited, once per reader a minute.
    fn system_read(&self, by: &AdminActor, action: &str) -> Result<(), FirmError> {
        if self.first_in_window(&by.label(), action, SYSTEM) {
            self.system_audit(
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
        let (size, rows) = self
            .registry
            .with_audit_log(|c| Ok((audit_log::size(c)?, audit_log::entries(c, from, limit)?)))?;
        let entries: Vec<_> = rows
            .iter()
            .map(|r| self.view_entry_with(&self.system_key, r))
            .collect();
        Ok(AuditPage::new(size, entries, limit))
    }

    pub fn system_audit_verify(&self, by: &AdminActor) -> Result<AuditVerifyView, FirmError> {
        self.system_read(by, "audit.verify")?;
        let (v, _) = self
            .registry
            .with_audit_log(|c| audit_log::verify(c, None))?;
        Ok(self.verify_view(v, &self.system_origin()))
    }

    /// The system log's latest signed checkpoint, signing one if it grew.
    pub fn system_checkpoint(&self) -> Result<String, FirmError> {
        let sign = self.checkpoint_signer(self.system_origin());
        let at = self.now();
        Ok(self
            .registry
            .with_audit_log(|c| audit_log::checkpoint(c, &at, &sign))?)
    }

    pub(super) fn system_checkpoint_if_grown(&self) -> Result<bool, FirmError> {
        if !self.registry.with_audit_log(audit_log::needs_checkpoint)? {
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
            let snap = self
                .registry
                .with_audit_log(|c| audit_log::export_snapshot(c, size))?;
            Ok((note, size, snap))
        })?;
        Ok(export_events(
            &self.system_origin(),
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

    fn default_retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs.load(Ordering::Relaxed))
    }

    /// Sets (or, with None, clears back to the default) a firm's own audit
    /// retention; recorded in the system log in the same transaction.
    pub fn set_retention(
        &self,
        id: &FirmId,
        retention: Option<&str>,
        by: &AdminActor,
    ) -> Result<super::FirmRow, FirmError> {
        if let Some(r) = retention
            && parse_duration(r).is_none()
        {
            return Err(FirmError::Invalid(format!(
                "{r:?} is not a duration like 3650d, 12h or 30m"
            )));
        }
        let e = self.system_entry(
            by,
            "firm.set_retention",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "retention": retention }),
        )?;
        match self
            .registry
            .set_retention(id.as_str(), retention, &self.now(), Some(e))
        {
            Err(crate::store::StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.row(id)
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
        let signer = self.signer.clone();
        let name = self.signer_name.clone();
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
        let now = self.clock.now();
        let at = self.now();
        let mut purged = 0;
        let cutoff_of =
            |d: Duration| crate::clock::rfc3339(now - time::Duration::seconds(d.as_secs() as i64));
        let default = self.default_retention();
        let firms = match self.registry.firms() {
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
                self.checkpoint_origin(&id),
                id.to_string(),
                cutoff_of(retention),
                label,
                at.clone(),
            );
            let cutoff = cutoff_of(retention);
            let at = at.clone();
            let result = self.handle(&id).and_then(|h| {
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
            self.system_origin(),
            SYSTEM.to_owned(),
            cutoff_of(default),
            format!("{}s", default.as_secs()),
            at.clone(),
        );
        let cutoff = cutoff_of(default);
        match self
            .registry
            .with_audit_log(|c| audit_log::purge(c, &cutoff, &at, &make))
        {
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
