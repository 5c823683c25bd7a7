//! A firm's audit log as its auditors use it: pages of entries (details
//! decrypted), verification, RFC 9162 proofs, signed checkpoints and the
//! CloudEvents export. Reading the log is itself audited.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;

use super::merkle;
use super::note;
use super::trail::AuditTrail;
use crate::auth::policy::{Authorized, perm};
use crate::firms::pool::{FirmHandle, Pool};
use crate::firms::{FirmError, lock};
use crate::ids::FirmId;
use crate::store::firm::AuditRow;

/// Largest page of entries returned at once.
pub const MAX_PAGE: u64 = 500;

/// One entry as the API shows it, details decrypted.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub tree_size: u64,
    pub entries: Vec<AuditEntryView>,
    /// Pass as `from` for the next page; absent on the last page.
    pub next: Option<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InclusionView {
    pub tree_size: u64,
    pub leaf_index: u64,
    pub leaf_hash: String,
    pub root_hash: String,
    pub hashes: Vec<String>,
}

/// An RFC 9162 consistency proof, hashes in lowercase hex.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    pub(crate) fn new(size: u64, entries: Vec<AuditEntryView>, limit: u64) -> Self {
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

/// The audit log service: queries, verification, proofs, checkpoints,
/// export, the system log and retention.
#[derive(Debug)]
pub struct AuditLog {
    pub(crate) pool: Arc<Pool>,
    pub(crate) trail: Arc<AuditTrail>,
    /// The default audit retention, in seconds.
    pub(crate) retention_secs: std::sync::atomic::AtomicU64,
    /// When a signing pass last left no grown log unsigned (monotonic).
    all_signed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl AuditLog {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>) -> Self {
        Self {
            pool,
            trail,
            retention_secs: std::sync::atomic::AtomicU64::new(2557 * 86_400),
            all_signed: std::sync::Mutex::new(None),
        }
    }

    /// Seconds since every grown log last had its checkpoint signed (0
    /// before the first signing pass).
    pub fn checkpoint_age_secs(&self) -> f64 {
        lock(&self.all_signed).map_or(0.0, |t| {
            self.pool.clock.monotonic().duration_since(t).as_secs_f64()
        })
    }

    fn view_entry(&self, h: &FirmHandle, row: &AuditRow) -> AuditEntryView {
        self.trail.view_entry_with(&h.audit_key, row)
    }

    /// A page of entries from `from`. Reading the log is itself audited,
    /// once per reader per minute.
    pub fn audit_page(
        &self,
        auth: &Authorized<perm::AuditRead>,
        from: u64,
        limit: u64,
        filter: &super::Filter,
    ) -> Result<AuditPage, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        self.trail
            .audit_read(&h, auth.principal(), auth.decision(), "audit.read", "log")?;
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
        let h = self.pool.handle(auth.firm())?;
        self.trail
            .audit_read(&h, auth.principal(), auth.decision(), "audit.verify", "log")?;
        self.verify_log(&h)
    }

    /// `strongroomctl audit verify`: the same check, from the admin socket.
    pub fn audit_verify_admin(&self, firm: &FirmId) -> Result<AuditVerifyView, FirmError> {
        let h = self.pool.handle(firm)?;
        self.verify_log(&h)
    }

    fn verify_log(&self, h: &FirmHandle) -> Result<AuditVerifyView, FirmError> {
        let v = h.db.audit_verify()?;
        Ok(self.verify_view(v, &self.trail.checkpoint_origin(&h.id)))
    }

    /// The verification as shown, with the purge receipt (if any) checked
    /// against the appliance key and the stored purge anchor.
    pub(crate) fn verify_view(
        &self,
        mut v: crate::store::audit_log::AuditVerification,
        origin: &str,
    ) -> AuditVerifyView {
        let verifier = note::parse_verifier_key(&self.trail.verifier_key()).ok();
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
        let h = self.pool.handle(auth.firm())?;
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
        let h = self.pool.handle(auth.firm())?;
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

    /// The latest signed checkpoint of the firm's log, signing a new one
    /// first if the log grew since. Runs in the firm's writer, so two
    /// signings never race.
    pub fn checkpoint(&self, firm: &FirmId) -> Result<String, FirmError> {
        let h = self.pool.handle(firm)?;
        let sign = self
            .trail
            .checkpoint_signer(self.trail.checkpoint_origin(firm));
        let at = self.pool.now();
        Ok(h.db.write_blocking(move |tx| tx.checkpoint_audit(&at, &sign))?)
    }

    /// Signs a checkpoint for every open firm whose log grew since its last
    /// one, and for the system log (the daemon calls this every second).
    pub fn sign_pending_checkpoints(&self) -> usize {
        let open: Vec<std::sync::Arc<FirmHandle>> =
            lock(&self.pool.open).values().cloned().collect();
        let mut signed = 0;
        let mut failed = false;
        for h in open {
            // No audit entry since the last look found the log signed.
            let audited = h.db.audit_appends();
            if h.seen.checkpoint.load(Ordering::SeqCst) == audited {
                continue;
            }
            match h.db.read_blocking(|r| r.audit_needs_checkpoint()) {
                Ok(true) => match self.checkpoint(&h.id) {
                    Ok(_) => signed += 1,
                    Err(e) => {
                        failed = true;
                        tracing::error!(firm = %h.id, error = %e, "checkpoint signing failed")
                    }
                },
                Ok(false) => h.seen.checkpoint.store(audited, Ordering::SeqCst),
                Err(_) => {}
            }
        }
        match self.system_checkpoint_if_grown() {
            Ok(true) => signed += 1,
            Ok(false) => {}
            Err(e) => {
                failed = true;
                tracing::error!(error = %e, "system log checkpoint signing failed")
            }
        }
        if !failed {
            *lock(&self.all_signed) = Some(self.pool.clock.monotonic());
        }
        signed
    }

    /// The whole log as CloudEvents 1.0 (one JSON object per entry), closed
    /// by a checkpoint event whose signed note covers exactly those entries,
    /// so `strongroomctl audit verify-export` can check it offline.
    pub fn audit_export(
        &self,
        auth: &Authorized<perm::AuditRead>,
    ) -> Result<Vec<Value>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        self.trail
            .audit_read(&h, auth.principal(), auth.decision(), "audit.export", "log")?;
        let source = self.trail.checkpoint_origin(auth.firm());
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
pub(crate) fn checkpoint_size(note: &str) -> Result<u64, FirmError> {
    let body = &note[..note.find("\n\n").map_or(0, |i| i + 1)];
    note::parse_checkpoint(body)
        .map(|(_, size, _)| size)
        .map_err(|e| {
            tracing::error!(error = %e, "a checkpoint this appliance signed does not parse");
            FirmError::Internal("checkpoint does not parse")
        })
}

/// Signs a checkpoint and reads the export under it; if a retention purge
/// ran in between (its receipt names a tree past the checkpoint), signs again.
pub(crate) fn export_consistent(
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
pub(crate) fn export_events(
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
