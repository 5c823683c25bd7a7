//! The audit trail every capability writes through: entries for a firm's
//! log (details sealed under the firm's audit key) and for the system log
//! (sealed under the appliance's), the refusal path for calls that fail or
//! are denied, coalescing of audited reads, and the checkpoint signer.
//!
//! Changes append their entry inside the write command that makes the
//! change, so both commit or neither does. Denials and failures change
//! nothing, so their entry is a write of its own ([`AuditTrail::audited`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::log::AuditEntryView;
use super::{Entry, merkle, note};
use crate::auth::policy::{self, Authorized, Decision, perm};
use crate::auth::{Origin, Principal};
use crate::clock::{Clock, rfc3339};
use crate::crypto::envelope;
use crate::crypto::secret::SecretKey;
use crate::crypto::sign::SigningKey;
use crate::firms::pool::{ApplianceKeys, FirmHandle, Pool};
use crate::firms::{FirmError, lock};
use crate::ids::FirmId;
use crate::store::firm::{AuditRow, WriteTx};

/// Reads of sensitive data are audited once per (actor, action, resource)
/// in this window.
const READ_COALESCE: Duration = Duration::from_secs(60);

/// The `firm` field of system-log entries (never a firm id).
pub const SYSTEM: &str = "@system";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused by the policy or by authentication.
    Denied,
    /// Allowed, but failed (conflict, invalid state); nothing changed.
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

pub(crate) fn payload_aad(firm: &str, at: &str, request_id: &str, action: &str) -> Vec<u8> {
    format!("strongroom/audit/v1|{firm}|{at}|{request_id}|{action}").into_bytes()
}

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

/// Seals system-log entries under the appliance's audit key.
pub struct SystemSeal {
    key: SecretKey,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SystemSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSeal(<redacted>)")
    }
}

impl SystemSeal {
    pub fn new(key: SecretKey, clock: Arc<dyn Clock>) -> Self {
        Self { key, clock }
    }

    pub(crate) fn key(&self) -> &SecretKey {
        &self.key
    }

    /// A system-log entry for `actor`, details sealed.
    #[allow(clippy::too_many_arguments)]
    pub fn entry_for(
        &self,
        actor: &str,
        request_id: &str,
        action: &str,
        resource: &str,
        outcome: Outcome,
        rule: &str,
        details: Value,
    ) -> Result<Entry, FirmError> {
        let at = rfc3339(self.clock.now());
        let aad = payload_aad(SYSTEM, &at, request_id, action);
        let payload = envelope::seal(&self.key, 1, &aad, details.to_string().as_bytes())
            .map_err(|_| FirmError::Seal)?;
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
}

/// A change to one firm in progress: the firm's handle, and the commit that
/// writes the change with its audit entry. Made only by
/// [`AuditTrail::change`], after the writable check.
pub(crate) struct Change<'a, P: perm::Marker> {
    trail: &'a AuditTrail,
    auth: &'a Authorized<P>,
    action: &'a str,
    pub h: Arc<FirmHandle>,
}

impl<P: perm::Marker> Change<'_, P> {
    /// Commits `write` and its success entry (`resource`, `details`) in one
    /// transaction of the firm's writer: no change without its entry, no
    /// entry without its change. `write` may refuse with a `FirmError`: then
    /// nothing is written, and the refusal path records why.
    pub fn commit<R: Send + 'static>(
        &self,
        resource: &str,
        details: Value,
        write: impl Fn(&WriteTx<'_>) -> Result<R, FirmError> + Send + 'static,
    ) -> Result<R, FirmError> {
        let entry = self.trail.audit_entry(
            &self.h,
            self.auth.principal(),
            self.auth.decision(),
            self.action,
            resource,
            Outcome::Success,
            details,
        )?;
        self.h.db.write_with(move |tx| {
            let r = write(tx)?;
            tx.append_audit(entry.clone())?;
            Ok(r)
        })
    }
}

/// The audit trail: the pool (to reach each firm's log), the appliance's
/// keys, and the memory of recently audited reads.
#[derive(Debug)]
pub struct AuditTrail {
    pub(crate) pool: Arc<Pool>,
    pub(crate) signer: Arc<SigningKey>,
    pub(crate) signer_name: String,
    seal: Arc<SystemSeal>,
    /// Recently audited reads: (actor, action, resource) → first seen.
    reads: std::sync::Mutex<HashMap<(String, String, String), Instant>>,
}

impl AuditTrail {
    pub fn new(pool: Arc<Pool>, keys: ApplianceKeys) -> Self {
        Self {
            pool,
            signer: keys.signer,
            signer_name: keys.signer_name,
            seal: keys.seal,
            reads: Default::default(),
        }
    }

    pub(crate) fn system_key(&self) -> &SecretKey {
        self.seal.key()
    }

    /// The system log's seal, for entries by the daemon itself
    /// (`system:<job>`).
    pub(crate) fn seal(&self) -> &SystemSeal {
        &self.seal
    }

    /// The one way a service changes a firm: refused unless the firm takes
    /// writes; `f` gets the firm's handle and the commit for its write, and
    /// whatever `f` refuses or fails is recorded in the firm's log (the
    /// refusal path, [`AuditTrail::audited`]). A service says only what it
    /// checks, what it writes and what it records.
    pub(crate) fn change<P: perm::Marker, R>(
        &self,
        auth: &Authorized<P>,
        action: &str,
        resource: &str,
        details: Value,
        f: impl FnOnce(&Change<'_, P>) -> Result<R, FirmError>,
    ) -> Result<R, FirmError> {
        self.audited(auth, action, resource, details, || {
            // Security invariant: no change reaches a frozen or deleted firm.
            self.pool.require_writable(auth.firm())?;
            let h = self.pool.handle(auth.firm())?;
            f(&Change {
                trail: self,
                auth,
                action,
                h,
            })
        })
    }

    /// Builds an entry (its `seq` is set at append) with the details sealed
    /// under the firm's audit key.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sealed_entry(
        &self,
        h: &FirmHandle,
        actor: &str,
        origin: &Origin,
        decision: &str,
        rule: String,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<Entry, FirmError> {
        let at = self.pool.now();
        let aad = payload_aad(h.id.as_str(), &at, &origin.request_id, action);
        let payload = envelope::seal(
            &h.audit_key,
            h.audit_key_version,
            &aad,
            details.to_string().as_bytes(),
        )
        .map_err(|_| FirmError::Seal)?;
        Ok(Entry {
            seq: 0,
            at,
            firm: h.id.to_string(),
            actor: actor.to_owned(),
            source_ip: origin.source_ip.clone(),
            request_id: origin.request_id.clone(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.as_str().to_owned(),
            decision: decision.to_owned(),
            rule,
            payload,
        })
    }

    /// Builds an entry for `principal`'s request; `seq` is set at append.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn audit_entry(
        &self,
        h: &FirmHandle,
        principal: &Principal,
        decision: Decision,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<Entry, FirmError> {
        // A person's entries name their session too.
        let details = match (principal.actor.session(), details) {
            (Some(s), Value::Object(mut m)) => {
                m.insert("session".to_owned(), json!(s));
                Value::Object(m)
            }
            (Some(s), Value::Null) => json!({ "session": s }),
            (_, d) => d,
        };
        self.sealed_entry(
            h,
            &principal.actor.label(),
            &principal.origin,
            if decision.allowed { "allow" } else { "deny" },
            decision.rule.name(),
            action,
            resource,
            outcome,
            details,
        )
    }

    /// Records an admin-socket action on a firm in the firm's own log too
    /// (actor `uid:<n>(<name>)`), so the firm's auditors see it.
    pub fn audit_admin(
        &self,
        firm: &FirmId,
        by: &super::AdminActor,
        action: &str,
        details: Value,
    ) -> Result<(), FirmError> {
        let h = self.pool.handle(firm)?;
        let e = self.sealed_entry(
            &h,
            &by.label(),
            &Origin {
                request_id: by.request_id.clone(),
                source_ip: "admin-socket".to_owned(),
            },
            "allow",
            "admin_socket".to_owned(),
            action,
            firm.as_str(),
            Outcome::Success,
            details,
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(())
    }

    /// Records an action that changed nothing (a denial or a failure) in
    /// the principal's own firm's log.
    pub fn audit_refusal(
        &self,
        principal: &Principal,
        decision: Decision,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<(), FirmError> {
        let h = self.pool.handle(&principal.firm)?;
        let e = self.audit_entry(&h, principal, decision, action, resource, outcome, details)?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(())
    }

    /// True the first time (actor, action, resource) is seen in a minute.
    pub(crate) fn first_in_window(&self, actor: &str, action: &str, resource: &str) -> bool {
        let key = (actor.to_owned(), action.to_owned(), resource.to_owned());
        let mut seen = lock(&self.reads);
        let now = self.pool.clock.monotonic();
        seen.retain(|_, t| now.duration_since(*t) < READ_COALESCE);
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, now);
        true
    }

    /// Whether a read by `actor` is already recorded in this window (so
    /// another needs no entry). Changes nothing.
    pub(crate) fn read_recorded(&self, actor: &str, action: &str, resource: &str) -> bool {
        let key = (actor.to_owned(), action.to_owned(), resource.to_owned());
        lock(&self.reads)
            .get(&key)
            .is_some_and(|t| self.pool.clock.monotonic().duration_since(*t) < READ_COALESCE)
    }

    /// Audits a read of sensitive data, coalesced per (actor, action,
    /// resource) within a minute.
    pub(crate) fn audit_read(
        &self,
        h: &FirmHandle,
        principal: &Principal,
        decision: Decision,
        action: &str,
        resource: &str,
    ) -> Result<(), FirmError> {
        if !self.first_in_window(
            &principal.actor.label(),
            action,
            &format!("{}/{resource}", h.id),
        ) {
            return Ok(());
        }
        let e = self.audit_entry(
            h,
            principal,
            decision,
            action,
            resource,
            Outcome::Success,
            Value::Null,
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(())
    }

    /// The note key name and verifier key of the appliance's checkpoint key.
    pub fn verifier_key(&self) -> String {
        crate::audit::note::verifier_key(&self.signer_name, &self.signer.public())
    }

    /// Signs `text` (ending in a newline) as a note with the appliance key
    /// (backup manifests).
    pub(crate) fn sign_note(&self, text: &str) -> String {
        note::sign(&self.signer_name, &self.signer, text)
    }

    /// The checkpoint origin for a firm's log.
    pub fn checkpoint_origin(&self, firm: &FirmId) -> String {
        format!("strongroom/{}/{firm}", self.pool.appliance_id())
    }

    /// Makes the signed note for a checkpoint of `origin`'s log.
    pub(crate) fn checkpoint_signer(
        &self,
        origin: String,
    ) -> impl Fn(u64, &merkle::Hash) -> String + Send + use<> {
        let signer = self.signer.clone();
        let name = self.signer_name.clone();
        move |size, root| note::sign(&name, &signer, &note::checkpoint_body(&origin, size, root))
    }

    pub(crate) fn view_entry_with(
        &self,
        key: &crate::crypto::secret::SecretKey,
        row: &AuditRow,
    ) -> AuditEntryView {
        let e = &row.entry;
        let aad = payload_aad(&e.firm, &e.at, &e.request_id, &e.action);
        let details = envelope::open(key, &aad, &e.payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        AuditEntryView {
            seq: e.seq,
            at: e.at.clone(),
            actor: e.actor.clone(),
            source_ip: e.source_ip.clone(),
            request_id: e.request_id.clone(),
            action: e.action.clone(),
            resource: e.resource.clone(),
            outcome: e.outcome.clone(),
            decision: e.decision.clone(),
            rule: e.rule.clone(),
            details,
            leaf_hash: crate::crypto::hex(&row.leaf),
        }
    }

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
        self.seal.entry_for(
            &by.label(),
            &by.request_id,
            action,
            resource,
            outcome,
            rule,
            details,
        )
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
        self.pool.registry.append_audit(e)?;
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
        format!("strongroom/{}/system", self.pool.appliance_id())
    }

    /// Runs a state-changing service call; if it is refused (escalation) or
    /// fails on the firm's state, records that in the audit log, since
    /// nothing else will. Successes record themselves, in their own write.
    pub(crate) fn audited<P: perm::Marker, R>(
        &self,
        auth: &Authorized<P>,
        action: &str,
        resource: &str,
        details: serde_json::Value,
        f: impl FnOnce() -> Result<R, FirmError>,
    ) -> Result<R, FirmError> {
        let result = f();
        if let Err(e) = &result {
            self.audit_failure(auth, action, resource, details, e);
        }
        result
    }

    /// Records a refused or failed state-changing call in the audit log
    /// (`audited`'s failure half). Errors nothing else records (storage,
    /// crypto) are left to the error log.
    pub(crate) fn audit_failure<P: perm::Marker>(
        &self,
        auth: &Authorized<P>,
        action: &str,
        resource: &str,
        details: serde_json::Value,
        e: &FirmError,
    ) {
        let (outcome, decision) = match e {
            FirmError::Escalation => (
                Outcome::Denied,
                policy::Decision {
                    allowed: false,
                    rule: policy::Rule::Escalation,
                },
            ),
            FirmError::KeyRevoked
            | FirmError::LastOwnerKey
            | FirmError::KeyNotFound
            | FirmError::SecretNotFound
            | FirmError::CollectionNotFound
            | FirmError::RecordNotFound
            | FirmError::StaleVersion
            | FirmError::PreconditionRequired
            | FirmError::IdempotencyConflict
            | FirmError::InvalidRecord(_)
            | FirmError::PiiDetected { .. }
            | FirmError::SchemaConflict(_)
            | FirmError::Frozen
            | FirmError::InvalidName(_)
            | FirmError::WebhookNotFound
            | FirmError::WebhookMessageNotFound
            | FirmError::DestinationNotAllowed(_)
            | FirmError::Invalid(_) => (Outcome::Failure, auth.decision()),
            _ => return,
        };
        let details = json!({ "error": e.code(), "request": details });
        if let Err(log_err) = self.audit_refusal(
            auth.principal(),
            decision,
            action,
            resource,
            outcome,
            details,
        ) {
            tracing::error!(error = %log_err, action, "could not audit a refused request");
        }
    }
}
