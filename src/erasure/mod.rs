//! Subject erasure (GDPR Art. 17): `POST /api/v1/erasure/{firm_id}` with a
//! subject's identifying values deletes every record that names them,
//! destroys their subject keys (see `records::subject_keys`), and returns
//! a deletion certificate signed by the appliance key.
//!
//! Order, which is what makes an erasure survive restores and crashes:
//! 1. the intent goes into the erasure ledger (state directory, and the
//!    backup repository when one is set up), synced, before anything is
//!    deleted; if it cannot be written, nothing is erased (503);
//! 2. one write transaction deletes the records, destroys the keys,
//!    appends the audit entry, and stores the certificate, which names the
//!    audit tree size and root including that entry;
//! 3. the certificate goes into the ledger next to its intent.
//!
//! A restore re-applies every ledger entry the restored firm lacks; a
//! start re-applies an intent left without its certificate (a crash
//! between 1 and 3). Re-applying runs the same transaction.

pub mod apply;
pub mod certificate;
pub mod ledger;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditTrail, Outcome};
use crate::auth::Origin;
use crate::auth::policy::{Authorized, perm};
use crate::crypto::hex;
use crate::firms::FirmError;
use crate::firms::pool::{FirmHandle, Pool};
use crate::ids::FirmId;
use crate::records::subject_keys::subject_id;
use certificate::{SaltedHash, Statement, TreeHead};
use ledger::Intent;

/// The most identifiers one request may name (one person's email, client
/// number, national id, …).
pub const MAX_VALUES: usize = 16;
/// The longest identifier accepted.
pub const MAX_VALUE_CHARS: usize = 1024;

/// An erasure request: the values that identify one data subject.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// 1 to 16 identifiers of the subject (values of `subject` fields).
    #[schema(min_items = 1, max_items = 16)]
    pub values: Vec<String>,
}

impl std::fmt::Debug for ErasureRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Security invariant: identifiers never reach Debug output.
        write!(
            f,
            "ErasureRequest {{ values: <{} redacted> }}",
            self.values.len()
        )
    }
}

impl Drop for ErasureRequest {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.values.zeroize();
    }
}

/// A deletion certificate as the API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErasureCertificate {
    /// The signed note (C2SP signed-note format, the appliance key).
    pub certificate: String,
    /// The note's statement, parsed.
    pub statement: Statement,
    /// The verifier key that checks it (also on `/status`).
    pub verifier_key: String,
}

/// What re-applying a ledger did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Reapplied {
    pub erasures: usize,
    pub records_deleted: u64,
}

/// Subject erasure, its ledger and its certificates.
pub struct Erasures {
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
    /// The state directory, whose `erasures/` is the local ledger.
    state_dir: PathBuf,
    /// The backup repository that must hold the ledger too.
    repository: Option<PathBuf>,
}

impl std::fmt::Debug for Erasures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Erasures")
            .field("state_dir", &self.state_dir)
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// How one erasure is carried out: by a request, or re-applied.
struct Run<'a> {
    id: &'a str,
    subjects: &'a [String],
    /// The salted hashes of the identifiers (empty when re-applied).
    identifiers: &'a [SaltedHash],
    by: &'a str,
    /// The actor re-applying it from the ledger, if it is.
    reapply: Option<&'a str>,
}

/// A repository the ledger and the pepper zeroing must reach.
struct Target {
    path: PathBuf,
    /// The configured repository, once it holds snapshots: an erasure is
    /// refused if it cannot be written. Others (`backup create --to`) are
    /// reached when they can be, and catch up at their next snapshot.
    strict: bool,
}

impl Erasures {
    pub fn new(
        pool: Arc<Pool>,
        trail: Arc<AuditTrail>,
        state_dir: PathBuf,
        repository: Option<PathBuf>,
    ) -> Self {
        Self {
            pool,
            trail,
            state_dir,
            repository,
        }
    }

    /// Every repository that holds snapshots of this appliance: the
    /// configured one (strict once it was initialised, or once it was given
    /// peppers, so an unmounted backup disk refuses erasures rather than
    /// missing them), and every other one a snapshot went into.
    fn targets(&self) -> Vec<Target> {
        let listed = ledger::repositories(&self.state_dir);
        let configured = self.repository.as_ref().map(|r| {
            let canon = r.canonicalize().unwrap_or_else(|_| r.clone());
            (r.clone(), canon)
        });
        let mut out = Vec::new();
        if let Some((r, canon)) = &configured
            && (r.join("strongroom-backup.json").exists() || listed.contains(canon))
        {
            out.push(Target {
                path: r.clone(),
                strict: true,
            });
        }
        for l in listed {
            if configured.as_ref().is_none_or(|(_, canon)| *canon != l) {
                out.push(Target {
                    path: l,
                    strict: false,
                });
            }
        }
        out
    }

    fn verifier_key(&self) -> String {
        self.trail.verifier_key()
    }

    /// Erases the subject `values` identify, and certifies it.
    pub fn erase(
        &self,
        auth: &Authorized<perm::SubjectsErase>,
        req: &ErasureRequest,
    ) -> Result<ErasureCertificate, FirmError> {
        let invalid = |m: String| FirmError::Invalid(m);
        if req.values.is_empty() || req.values.len() > MAX_VALUES {
            return Err(invalid(format!("values: 1 to {MAX_VALUES} identifiers")));
        }
        if req
            .values
            .iter()
            .any(|v| v.is_empty() || v.chars().count() > MAX_VALUE_CHARS)
        {
            return Err(invalid(format!(
                "values: each 1 to {MAX_VALUE_CHARS} characters"
            )));
        }
        let firm = auth.firm().clone();
        let result = (|| {
            self.pool.require_writable(&firm)?;
            let h = self.pool.handle(&firm)?;
            let mut subjects: Vec<String> = Vec::new();
            for v in &req.values {
                let id = subject_id(&h, v);
                if !subjects.contains(&id) {
                    subjects.push(id);
                }
            }
            let identifiers = req
                .values
                .iter()
                .map(|v| SaltedHash::of(v))
                .collect::<Result<Vec<_>, _>>()?;
            let id = format!(
                "era_{:012x}{}",
                crate::clock::unix_ms(self.pool.clock.now()),
                hex(&crate::crypto::random_array::<6>()?)
            );
            let by = auth.principal().actor.label();
            let intent = Intent {
                format: ledger::FORMAT.to_owned(),
                id: id.clone(),
                firm_id: firm.to_string(),
                subjects: subjects.clone(),
                requested_at: self.pool.now(),
                by: by.clone(),
            };
            self.record_intent(&intent)?;
            let run = Run {
                id: &id,
                subjects: &subjects,
                identifiers: &identifiers,
                by: &by,
                reapply: None,
            };
            // From here the intent stays, whatever happens: an erasure
            // that fails now (its pepper may be zeroed already) is carried
            // out at the next start.
            let (statement, note, slots) = self.run_tx(&h, &run, Some(auth))?;
            self.finish(&firm, &id, &slots);
            Ok((statement, note))
        })();
        match result {
            Ok((statement, certificate)) => Ok(ErasureCertificate {
                certificate,
                statement,
                verifier_key: self.verifier_key(),
            }),
            Err(e) => {
                self.trail
                    .audit_failure(auth, "subjects.erase", "erasure", json!({}), &e);
                Err(e)
            }
        }
    }

    /// Writes the intent to the local ledger and every repository's; the
    /// state directory or a strict repository failing refuses the erasure.
    fn record_intent(&self, intent: &Intent) -> Result<(), FirmError> {
        ledger::write_intent(&self.state_dir, intent)
            .map_err(|e| FirmError::LedgerUnavailable(format!("state directory: {e}")))?;
        for t in self.targets() {
            if let Err(e) = ledger::write_intent(&t.path, intent) {
                if t.strict {
                    ledger::withdraw(&self.state_dir, &intent.firm_id, &intent.id);
                    return Err(FirmError::LedgerUnavailable(format!(
                        "backup repository {}: {e}",
                        t.path.display()
                    )));
                }
                tracing::error!(repository = %t.path.display(), error = %e, "an erasure intent could not reach a backup repository; it gets it at its next snapshot");
            }
        }
        Ok(())
    }

    /// After the commit: zeroes the erased peppers in every repository's
    /// copy, then marks the erasure done everywhere. What fails here is
    /// redone at the next start (the intent is not marked done locally).
    fn finish(&self, firm: &FirmId, id: &str, slots: &[u64]) {
        let mut complete = true;
        {
            let _g = crate::store::peppers::REPOSITORY_COPY
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for t in self.targets() {
                let copy = t.path.join("peppers").join(format!("{firm}.peppers"));
                for slot in slots {
                    if let Err(e) = crate::store::peppers::zero_in(&copy, *slot) {
                        complete = false;
                        tracing::error!(firm = %firm, error = %e, path = %copy.display(), "could not zero an erased subject's pepper in a backup repository");
                    }
                }
                let _ = ledger::mark_done(&t.path, firm.as_str(), id);
            }
        }
        if complete && let Err(e) = ledger::mark_done(&self.state_dir, firm.as_str(), id) {
            tracing::error!(firm = %firm, erasure = id, error = %e, "could not mark an erasure done; it is checked again at the next start");
        }
    }

    /// The erasure's transaction: delete, destroy (zeroing the live
    /// peppers), audit, certify. The pepper slots zeroed.
    fn run_tx(
        &self,
        h: &Arc<FirmHandle>,
        run: &Run<'_>,
        auth: Option<&Authorized<perm::SubjectsErase>>,
    ) -> Result<(Statement, String, Vec<u64>), FirmError> {
        let (hh, trail) = (h.clone(), self.trail.clone());
        let principal = auth.map(|a| (a.principal().clone(), a.decision()));
        let origin = self.trail.checkpoint_origin(&h.id);
        let appliance_id = self.pool.appliance_id().to_owned();
        let (id, subjects, identifiers, by) = (
            run.id.to_owned(),
            run.subjects.to_vec(),
            run.identifiers.to_vec(),
            run.by.to_owned(),
        );
        let reapply = run.reapply.map(str::to_owned);
        let now = self.pool.now();
        h.db.write_with(move |tx| {
            let erased = apply::erase_in_tx(&hh, tx, &subjects)?;
            let details = json!({
                "erasure": id, "subjects": subjects, "deleted": erased.deleted,
                "records_deleted": erased.records(),
                "subject_keys_destroyed": erased.keys_destroyed,
            });
            // Security invariant: the audit entry names subjects by keyed id only, never an identifier.
            let entry = match (&principal, &reapply) {
                (Some((p, d)), None) => trail.audit_entry(
                    &hh,
                    p,
                    *d,
                    "subjects.erase",
                    &format!("erasure/{id}"),
                    Outcome::Success,
                    details,
                )?,
                (_, Some(actor)) => trail.sealed_entry(
                    &hh,
                    actor,
                    &Origin {
                        request_id: format!("{id}-reapply"),
                        source_ip: "-".to_owned(),
                    },
                    "allow",
                    "erasure_ledger".to_owned(),
                    "subjects.erasure_reapplied",
                    &format!("erasure/{id}"),
                    Outcome::Success,
                    details,
                )?,
                (None, None) => return Err(FirmError::Internal("an erasure without an actor")),
            };
            tx.append_audit(entry)?;
            // Receivers that hold copies hear which records went (Art. 19).
            crate::webhooks::events::emit(
                tx,
                "subject.erased",
                &now,
                json!({
                    "erasure_id": id, "records": erased.ids,
                    "records_deleted": erased.records(), "reapplied": reapply.is_some(),
                }),
            )?;
            let size = tx.read().audit_size()?;
            let root = tx.read().audit_root(size)?;
            let statement = Statement {
                format: certificate::FORMAT.to_owned(),
                id: id.clone(),
                appliance_id: appliance_id.clone(),
                firm_id: hh.id.to_string(),
                erased_at: now.clone(),
                by: by.clone(),
                subjects: identifiers.clone(),
                deleted: erased.deleted.clone(),
                records_deleted: erased.records(),
                subject_keys_destroyed: erased.keys_destroyed,
                audit: TreeHead {
                    origin: origin.clone(),
                    size,
                    root: hex(&root),
                },
                reapplied: reapply.is_some(),
            };
            let note = trail.sign_note(&statement.text());
            let reapplied_at = reapply.as_ref().map(|_| now.as_str());
            tx.insert_erasure(
                &id,
                &subjects.join(","),
                &now,
                size,
                &note,
                reapplied_at,
                &erased.slots,
            )?;
            Ok::<_, FirmError>((statement, note, erased.slots.clone()))
        })
    }

    /// Re-applies the ledger under `root` to every firm it names that
    /// still exists here: each erasure the firm does not hold is carried
    /// out again (actor `actor`), with a new certificate for this log.
    /// With `pending_only` (a start), only entries not marked done: those
    /// the firm holds get their repository peppers zeroed again.
    pub fn reapply(
        &self,
        root: &Path,
        actor: &str,
        pending_only: bool,
    ) -> Result<Reapplied, FirmError> {
        let io = |e: std::io::Error| FirmError::LedgerUnavailable(e.to_string());
        let mut out = Reapplied::default();
        for firm in ledger::firms(root).map_err(io)? {
            let Some(id) = FirmId::parse(&firm) else {
                continue;
            };
            let found: Vec<_> = ledger::entries(root, &firm)
                .map_err(io)?
                .into_iter()
                .filter(|f| !(pending_only && f.done))
                .collect();
            if found.is_empty() {
                continue;
            }
            let h = match self.pool.handle(&id) {
                Ok(h) => h,
                // A firm deleted since: nothing of it is left to erase.
                Err(FirmError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let held = h.db.read_blocking(|r| r.erasure_ids())?;
            for f in found {
                let eid = f.intent.id.clone();
                let slots = if held.contains(&eid) {
                    h.db.read_blocking(|r| r.erasure_slots(&eid))?
                } else {
                    let run = Run {
                        id: &eid,
                        subjects: &f.intent.subjects,
                        identifiers: &[],
                        by: &f.intent.by,
                        reapply: Some(actor),
                    };
                    let (statement, _, slots) = self.run_tx(&h, &run, None)?;
                    tracing::warn!(firm = %id, erasure = %eid, records = statement.records_deleted, "erasure re-applied from the ledger");
                    out.erasures += 1;
                    out.records_deleted += statement.records_deleted;
                    slots
                };
                if root == self.state_dir {
                    self.finish(&id, &eid, &slots);
                } else if let Err(e) = ledger::mark_done(root, &firm, &eid) {
                    tracing::error!(erasure = %eid, error = %e, "could not mark a re-applied erasure done");
                }
            }
        }
        Ok(out)
    }

    /// At start: finish erasures a crash interrupted, then copy the local
    /// ledger into the repositories (entries written while one was missing).
    pub fn resume(&self) {
        match self.reapply(&self.state_dir, "system:erasure", true) {
            Ok(r) if r.erasures > 0 => {
                tracing::warn!(erasures = r.erasures, "interrupted erasures completed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not complete interrupted erasures"),
        }
        for t in self.targets() {
            if let Err(e) = ledger::copy_missing(&self.state_dir, &t.path) {
                tracing::error!(repository = %t.path.display(), error = %e, "could not copy the erasure ledger into a backup repository");
            }
        }
    }

    /// Deletion certificates issued for `firm` between two audit tree
    /// sizes (for evidence bundles).
    pub fn certificates(h: &FirmHandle, from: u64, to: u64) -> Result<Vec<String>, FirmError> {
        Ok(h.db.read_blocking(|r| r.erasure_certificates(from, to))?)
    }
}
