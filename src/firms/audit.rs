//! Writing and reading a firm's audit log.
//!
//! Changes append their entry inside the write command that makes the
//! change (see `keys.rs`), so both commit or neither does. Denials and
//! failed authentications change nothing, so their entry is a write of its
//! own. Details are sealed under the firm's audit key; the AAD binds them to
//! the entry's firm, time, request id and action.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{FirmError, FirmHandle, Firms, lock};
use crate::audit::{Entry, merkle, note};
use crate::auth::policy::{Authorized, Decision, perm};
use crate::auth::{Origin, Principal};
use crate::crypto::envelope;
use crate::ids::FirmId;
use crate::store::firm::AuditRow;

/// Reads of sensitive data are audited once per (actor, action, resource)
/// in this window.
const READ_COALESCE: Duration = Duration::from_secs(60);
/// Largest page of entries returned at once.
pub const MAX_PAGE: u64 = 500;

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

pub(super) fn payload_aad(firm: &str, at: &str, request_id: &str, action: &str) -> Vec<u8> {
    format!("strongroom/audit/v1|{firm}|{at}|{request_id}|{action}").into_bytes()
}

/// One entry as the API shows it, details decrypted.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntryView {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub source_ip: String,
    pub request_id: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub decision: String,
    pub rule: String,
    /// The decrypted details; `null` if the audit key was destroyed.
    pub details: Value,
    pub leaf_hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    pub tree_size: u64,
    pub entries: Vec<AuditEntryView>,
    /// Pass as `from` for the next page; absent on the last page.
    pub next: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditVerifyView {
    pub ok: bool,
    pub tree_size: u64,
    /// The first entry still stored: entries before it were purged by
    /// retention (their hashes remain in the tree).
    pub first_retained: u64,
    pub root_hash: String,
    pub first_bad_seq: Option<u64>,
    pub reason: Option<String>,
}

/// An RFC 9162 inclusion proof, hashes in lowercase hex.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionView {
    pub tree_size: u64,
    pub leaf_index: u64,
    pub leaf_hash: String,
    pub root_hash: String,
    pub hashes: Vec<String>,
}

/// An RFC 9162 consistency proof, hashes in lowercase hex.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyView {
    pub from_size: u64,
    pub to_size: u64,
    pub from_root: String,
    pub to_root: String,
    pub hashes: Vec<String>,
}

fn hexes(hs: &[crate::audit::merkle::Hash]) -> Vec<String> {
    hs.iter().map(|h| crate::crypto::hex(h)).collect()
}

impl AuditPage {
    /// A page of at most `limit` entries of a log of `size`.
    pub(super) fn new(size: u64, entries: Vec<AuditEntryView>, limit: u64) -> Self {
        let next = entries
            .last()
            .map(|e| e.seq + 1)
            .filter(|n| *n < size && entries.len() as u64 == limit);
        AuditPage {
            tree_size: size,
            entries,
            next,
        }
    }
}

/// The coalescing memory for audited reads.
#[derive(Debug, Default)]
pub struct ReadLog(std::sync::Mutex<HashMap<(String, String, String), Instant>>);

impl Firms {
    /// Builds an entry (its `seq` is set at append) with the details sealed
    /// under the firm's audit key.
    #[allow(clippy::too_many_arguments)]
    fn sealed_entry(
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
        let at = self.now();
        let aad = payload_aad(h.id.as_str(), &at, &origin.request_id, action);
        let payload = envelope::seal(
            &h.audit_key,
            h.audit_key_version,
            &aad,
            details.to_string().as_bytes(),
        )
        .map_err(|e| FirmError::Invalid(format!("sealing audit details: {e}")))?;
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
    pub(super) fn audit_entry(
        &self,
        h: &FirmHandle,
        principal: &Principal,
        decision: Decision,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<Entry, FirmError> {
        self.sealed_entry(
            h,
            principal.key_id.as_str(),
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
        let h = self.handle(firm)?;
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
        let h = self.handle(&principal.firm)?;
        let e = self.audit_entry(&h, principal, decision, action, resource, outcome, details)?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(())
    }

    /// Records a failed authentication with a key of an existing firm: the
    /// first from its source in a window now, the rest in one summary entry
    /// when the window closes (see `auth::failures`).
    pub fn audit_auth_failure(
        &self,
        firm: &FirmId,
        key_id: &str,
        origin: &crate::auth::Origin,
        reason: &str,
    ) -> Result<(), FirmError> {
        let h = self.handle(firm)?;
        let ip: std::net::IpAddr = origin
            .source_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let verdict = lock(&self.auth_failures).note(
            firm.as_str(),
            ip,
            key_id,
            reason,
            Instant::now(),
            &self.now(),
        );
        let crate::auth::failures::Verdict::Record { source } = verdict else {
            return Ok(());
        };
        let e = self.sealed_entry(
            &h,
            key_id,
            origin,
            "deny",
            "authentication".to_owned(),
            "auth.authenticate",
            key_id,
            Outcome::Denied,
            serde_json::json!({
                "reason": reason,
                "source": source,
                "note": "the first failure from this source in this window; later ones are counted in one auth.failures entry",
            }),
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(())
    }

    /// Writes the summary entry (`auth.failures`) of every failure group
    /// whose window has closed, or of every group with `all` (at shutdown).
    pub fn flush_auth_failures(&self, all: bool) {
        let due = lock(&self.auth_failures).close(Instant::now(), all);
        for s in due {
            let Some(firm) = FirmId::parse(&s.firm) else {
                continue;
            };
            let written = self.handle(&firm).and_then(|h| {
                let e = self.sealed_entry(
                    &h,
                    "unauthenticated",
                    &Origin {
                        request_id: String::new(),
                        source_ip: if s.source == "*" {
                            String::new()
                        } else {
                            s.source.clone()
                        },
                    },
                    "deny",
                    "authentication".to_owned(),
                    "auth.failures",
                    &s.source,
                    Outcome::Denied,
                    serde_json::json!({
                        "further_failures": s.more,
                        "first_at": s.first_at,
                        "last_at": s.last_at,
                        "distinct_key_ids": s.distinct_key_ids,
                        "reasons": s.reasons,
                    }),
                )?;
                h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
                Ok(())
            });
            if let Err(e) = written {
                tracing::error!(firm = %s.firm, error = %e, "could not write a failed-authentication summary");
            }
        }
    }

    fn view_entry(&self, h: &FirmHandle, row: &AuditRow) -> AuditEntryView {
        self.view_entry_with(&h.audit_key, row)
    }

    pub(super) fn view_entry_with(
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

    /// A page of entries from `from`. Reading the log is itself audited,
    /// once per reader per minute.
    pub fn audit_page(
        &self,
        auth: &Authorized<perm::AuditRead>,
        from: u64,
        limit: u64,
        filter: &crate::store::audit_log::Filter,
    ) -> Result<AuditPage, FirmError> {
        let h = self.handle(auth.firm())?;
        self.audit_read(&h, auth.principal(), auth.decision(), "audit.read", "log")?;
        let limit = limit.clamp(1, MAX_PAGE);
        let (size, (rows, scanned_to)) = h.db.read_blocking(|r| {
            let size = r.audit_size()?;
            Ok((size, r.audit_entries_matching(from, limit, filter)?))
        })?;
        let entries: Vec<AuditEntryView> = rows.iter().map(|r| self.view_entry(&h, r)).collect();
        let mut page = AuditPage::new(size, entries, limit);
        // A short page that stopped at the scan bound continues from there.
        if page.next.is_none() && (page.entries.len() as u64) < limit && scanned_to < size {
            page.next = Some(scanned_to);
        }
        Ok(page)
    }

    /// Re-verifies the firm's whole log (leaves, chain, tree).
    pub fn audit_verify(
        &self,
        auth: &Authorized<perm::AuditRead>,
    ) -> Result<AuditVerifyView, FirmError> {
        let h = self.handle(auth.firm())?;
        self.audit_read(&h, auth.principal(), auth.decision(), "audit.verify", "log")?;
        self.verify_log(&h)
    }

    /// `strongroomctl audit verify`: the same check, from the admin socket.
    pub fn audit_verify_admin(&self, firm: &FirmId) -> Result<AuditVerifyView, FirmError> {
        let h = self.handle(firm)?;
        self.verify_log(&h)
    }

    fn verify_log(&self, h: &FirmHandle) -> Result<AuditVerifyView, FirmError> {
        let v = h.db.audit_verify()?;
        Ok(self.verify_view(v, &self.checkpoint_origin(&h.id)))
    }

    /// The verification as shown, with the purge receipt (if any) checked
    /// against the appliance key and the stored purge anchor.
    pub(super) fn verify_view(
        &self,
        mut v: crate::store::audit_log::AuditVerification,
        origin: &str,
    ) -> AuditVerifyView {
        let verifier = note::parse_verifier_key(&self.verifier_key()).ok();
        let signed_body = |text: &str| -> Option<String> {
            note::open(text, verifier.as_ref()?).ok().map(str::to_owned)
        };
        if v.first_bad.is_none()
            && let Some(a) = v.anchor.clone()
        {
            let matches = signed_body(&a.receipt)
                .and_then(|body| note::parse_purge_receipt(&body).ok())
                .is_some_and(|r| {
                    r.origin == origin
                        && r.before == a.before
                        && r.chain == a.chain
                        && r.tree_size == a.tree_size
                        && r.root == a.root
                });
            if !matches {
                v.first_bad = Some((
                    a.before,
                    "the purge anchor does not match a purge receipt signed by this appliance"
                        .to_owned(),
                ));
            }
        }
        // The stored checkpoint the log was checked against must be the one
        // this appliance signed.
        if v.first_bad.is_none()
            && let Some((size, root, text)) = v.checkpoint.clone()
        {
            let genuine = signed_body(&text)
                .and_then(|body| note::parse_checkpoint(&body).ok())
                .is_some_and(|(o, s, r)| o == origin && s == size && r == root);
            if !genuine {
                v.first_bad = Some((
                    size.min(v.size),
                    "the latest checkpoint is not one this appliance signed for this log"
                        .to_owned(),
                ));
            }
        }
        AuditVerifyView {
            ok: v.first_bad.is_none(),
            tree_size: v.size,
            first_retained: v.first_retained,
            root_hash: crate::crypto::hex(&v.root),
            first_bad_seq: v.first_bad.as_ref().map(|(s, _)| *s),
            reason: v.first_bad.map(|(_, r)| r),
        }
    }

    /// The proof that entry `seq` is in the tree of `size` entries (`size`
    /// defaults to the current size).
    pub fn audit_inclusion(
        &self,
        auth: &Authorized<perm::AuditRead>,
        seq: u64,
        size: Option<u64>,
    ) -> Result<InclusionView, FirmError> {
        let h = self.handle(auth.firm())?;
        h.db.read_blocking(|r| {
            let current = r.audit_size()?;
            let size = size.unwrap_or(current);
            if size > current || seq >= size {
                return Ok(Err(FirmError::Invalid(format!(
                    "need seq < size <= {current}; got seq {seq}, size {size}"
                ))));
            }
            // From the tree, so purged entries keep their proofs.
            let leaf = r.audit_leaf(seq)?;
            Ok(Ok(InclusionView {
                tree_size: size,
                leaf_index: seq,
                leaf_hash: crate::crypto::hex(&leaf),
                root_hash: crate::crypto::hex(&r.audit_root(size)?),
                hashes: hexes(&r.audit_inclusion(seq, size)?),
            }))
        })?
    }

    /// The proof that the tree of `from` entries is a prefix of the tree of
    /// `to` entries (`to` defaults to the current size).
    pub fn audit_consistency(
        &self,
        auth: &Authorized<perm::AuditRead>,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyView, FirmError> {
        let h = self.handle(auth.firm())?;
        h.db.read_blocking(|r| {
            let current = r.audit_size()?;
            let to = to.unwrap_or(current);
            if from == 0 || from > to || to > current {
                return Ok(Err(FirmError::Invalid(format!(
                    "need 0 < from <= to <= {current}; got from {from}, to {to}"
                ))));
            }
            Ok(Ok(ConsistencyView {
                from_size: from,
                to_size: to,
                from_root: crate::crypto::hex(&r.audit_root(from)?),
                to_root: crate::crypto::hex(&r.audit_root(to)?),
                hashes: hexes(&r.audit_consistency(from, to)?),
            }))
        })?
    }

    /// The note key name and verifier key of the appliance's checkpoint key.
    pub fn verifier_key(&self) -> String {
        crate::audit::note::verifier_key(&self.signer_name, &self.signer.public())
    }

    /// The checkpoint origin for a firm's log.
    pub fn checkpoint_origin(&self, firm: &FirmId) -> String {
        format!("strongroom/{}/{firm}", self.appliance_id)
    }

    /// Makes the signed note for a checkpoint of `origin`'s log.
    pub(super) fn checkpoint_signer(
        &self,
        origin: String,
    ) -> impl Fn(u64, &merkle::Hash) -> String + Send + use<> {
        let signer = self.signer.clone();
        let name = self.signer_name.clone();
        move |size, root| note::sign(&name, &signer, &note::checkpoint_body(&origin, size, root))
    }

    /// The latest signed checkpoint of the firm's log, signing a new one
    /// first if the log grew since. Runs in the firm's writer, so two
    /// signings never race.
    pub fn checkpoint(&self, firm: &FirmId) -> Result<String, FirmError> {
        let h = self.handle(firm)?;
        let sign = self.checkpoint_signer(self.checkpoint_origin(firm));
        let at = self.now();
        Ok(h.db.write_blocking(move |tx| tx.checkpoint_audit(&at, &sign))?)
    }

    /// Signs a checkpoint for every open firm whose log grew since its last
    /// one, and for the system log (the daemon calls this every second).
    pub fn sign_pending_checkpoints(&self) -> usize {
        let open: Vec<std::sync::Arc<FirmHandle>> = lock(&self.open).values().cloned().collect();
        let mut signed = 0;
        for h in open {
            let grew = h.db.read_blocking(|r| r.audit_needs_checkpoint());
            if matches!(grew, Ok(true)) {
                match self.checkpoint(&h.id) {
                    Ok(_) => signed += 1,
                    Err(e) => {
                        tracing::error!(firm = %h.id, error = %e, "checkpoint signing failed")
                    }
                }
            }
        }
        match self.system_checkpoint_if_grown() {
            Ok(true) => signed += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "system log checkpoint signing failed"),
        }
        signed
    }

    /// True the first time (actor, action, resource) is seen in a minute.
    pub(super) fn first_in_window(&self, actor: &str, action: &str, resource: &str) -> bool {
        let key = (actor.to_owned(), action.to_owned(), resource.to_owned());
        let mut seen = lock(&self.reads.0);
        let now = Instant::now();
        seen.retain(|_, t| now.duration_since(*t) < READ_COALESCE);
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, now);
        true
    }

    /// Whether a read by `actor` is already recorded in this window (so
    /// another needs no entry). Changes nothing.
    pub(super) fn read_recorded(&self, actor: &str, action: &str, resource: &str) -> bool {
        let key = (actor.to_owned(), action.to_owned(), resource.to_owned());
        lock(&self.reads.0)
            .get(&key)
            .is_some_and(|t| t.elapsed() < READ_COALESCE)
    }

    /// Audits a read of sensitive data, coalesced per (actor, action,
    /// resource) within a minute.
    pub(super) fn audit_read(
        &self,
        h: &FirmHandle,
        principal: &Principal,
        decision: Decision,
        action: &str,
        resource: &str,
    ) -> Result<(), FirmError> {
        if !self.first_in_window(
            principal.key_id.as_str(),
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
}

impl Firms {
    /// The whole log as CloudEvents 1.0 (one JSON object per entry), closed
    /// by a checkpoint event whose signed note covers exactly those entries,
    /// so `strongroomctl audit verify-export` can check it offline.
    pub fn audit_export(
        &self,
        auth: &Authorized<perm::AuditRead>,
    ) -> Result<Vec<Value>, FirmError> {
        let h = self.handle(auth.firm())?;
        self.audit_read(&h, auth.principal(), auth.decision(), "audit.export", "log")?;
        let source = self.checkpoint_origin(auth.firm());
        export_consistent(|| {
            let note = self.checkpoint(auth.firm())?;
            let size = checkpoint_size(&note)?;
            Ok((
                note,
                size,
                h.db.read_blocking(|r| r.audit_export_snapshot(size))?,
            ))
        })
        .map(|(note, size, (anchor, prefix, rows))| {
            export_events(&source, anchor.as_ref(), &prefix, &rows, size, &note)
        })
    }
}

/// The tree size a signed checkpoint names.
pub(super) fn checkpoint_size(note: &str) -> Result<u64, FirmError> {
    let body = &note[..note.find("\n\n").map_or(0, |i| i + 1)];
    note::parse_checkpoint(body)
        .map(|(_, size, _)| size)
        .map_err(|e| FirmError::Invalid(e.to_string()))
}

/// Signs a checkpoint and reads the export under it; if a retention purge
/// ran in between (its receipt names a tree past the checkpoint), signs again.
pub(super) fn export_consistent(
    read: impl Fn() -> Result<(String, u64, crate::store::audit_log::ExportSnapshot), FirmError>,
) -> Result<(String, u64, crate::store::audit_log::ExportSnapshot), FirmError> {
    for _ in 0..3 {
        let got = read()?;
        if got.2.0.as_ref().is_none_or(|a| a.tree_size <= got.1) {
            return Ok(got);
        }
    }
    Err(FirmError::Maintenance)
}

/// An export's events: the purge anchor if any, the entries, the checkpoint.
pub(super) fn export_events(
    source: &str,
    anchor: Option<&crate::store::audit_log::PurgeAnchor>,
    prefix: &[merkle::Hash],
    rows: &[AuditRow],
    size: u64,
    note: &str,
) -> Vec<Value> {
    use crate::audit::export;
    let mut out: Vec<Value> = Vec::with_capacity(rows.len() + 2);
    if let Some(a) = anchor {
        out.push(export::purge_event(
            source,
            &export::Anchor {
                before: a.before,
                chain: &a.chain,
                prefix,
                receipt: &a.receipt,
            },
        ));
    }
    out.extend(
        rows.iter()
            .filter(|row| row.entry.seq < size)
            .map(|row| export::entry_event(source, &row.entry, &row.leaf, &row.chain)),
    );
    out.push(export::checkpoint_event(source, size, note));
    out
}
