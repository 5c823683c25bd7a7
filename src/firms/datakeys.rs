//! Data-key rotation. A firm's data key seals its secrets and the sensitive
//! fields of its records; rotation makes a new version active at once and
//! keeps the old ones `retired` in the registry. A background job then
//! re-encrypts everything still sealed under a retired version, batch by
//! batch through the firm's writer, and destroys the retired versions when
//! nothing needs them. Progress shows in `strongroomctl firm show`.
//!
//! Ordering, which is what makes this safe without a maintenance window:
//! - every seal happens inside a write transaction, on the firm's single
//!   writer, with the active version read at that moment;
//! - the final check (nothing left under a retired version) is itself a
//!   write transaction, so it comes after every write that could have sealed
//!   under a retired version;
//! - readers take a snapshot of the key set *before* they read rows, so a row
//!   they read is always openable with the keys they hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::lifecycle::Lifecycle;
use super::pool::FirmHandle;
use super::{FirmError, FirmState, lock};
use crate::audit::trail::{AdminActor, Outcome};
use crate::crypto::envelope::{self, EnvelopeError};
use crate::crypto::keyring::Purpose;
use crate::crypto::secret::SecretKey;
use crate::ids::FirmId;
use crate::store::StoreError;
use crate::store::registry::WrappedKey;

/// The data-key versions an open firm holds: the active one seals, any
/// of them opens what it sealed.
pub struct DataKeys {
    active: u32,
    keys: BTreeMap<u32, Arc<SecretKey>>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("active", &self.active)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DataKeys {
    pub(crate) fn new(active: u32, keys: BTreeMap<u32, Arc<SecretKey>>) -> Self {
        Self { active, keys }
    }

    pub fn active(&self) -> u32 {
        self.active
    }

    /// Seals under the active version (the envelope names it).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let key = self.keys.get(&self.active).ok_or(EnvelopeError::Seal)?;
        envelope::seal(key, self.active, aad, plain)
    }

    /// Opens with the version the envelope names, active or retired.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let version = envelope::key_version(sealed)?;
        let key = self.keys.get(&version).ok_or(EnvelopeError::Auth)?;
        envelope::open(key, aad, sealed)
    }

    /// This set with `version` active and added.
    fn rotated(&self, version: u32, key: SecretKey) -> Self {
        let mut keys = self.keys.clone();
        keys.insert(version, Arc::new(key));
        Self {
            active: version,
            keys,
        }
    }

    /// This set with only the active version.
    fn pruned(&self) -> Self {
        Self {
            active: self.active,
            keys: self
                .keys
                .iter()
                .filter(|(v, _)| **v == self.active)
                .map(|(v, k)| (*v, k.clone()))
                .collect(),
        }
    }
}

/// How far a firm's re-encryption has come (`firm show`).
#[derive(Debug, Clone, Serialize)]
pub struct Reencryption {
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    pub to_version: u32,
    /// Items sealed under older versions when the job started, and how many
    /// it has re-encrypted so far.
    pub total: u64,
    pub done: u64,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The retired versions it destroyed when it finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destroyed: Vec<u32>,
}

/// A firm's data-key status for `firm show`.
#[derive(Debug, Serialize)]
pub struct DataKeyStatus {
    pub active: u32,
    /// Retired versions still kept because something may be sealed under them.
    pub retiring: Vec<u32>,
    pub reencryption: Option<Reencryption>,
}

/// Re-encryption jobs: progress per firm, and pacing.
impl Jobs {
    /// How many jobs are running now.
    pub(crate) fn running(&self) -> usize {
        lock(&self.progress)
            .values()
            .filter(|j| j.state == "running")
            .count()
    }
}

#[derive(Debug)]
pub(crate) struct Jobs {
    progress: Mutex<HashMap<FirmId, Reencryption>>,
    batch: AtomicU64,
    pause_ms: AtomicU64,
    /// Set at shutdown: jobs stop after their current batch.
    stopping: AtomicBool,
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            progress: Mutex::new(HashMap::new()),
            batch: AtomicU64::new(500),
            pause_ms: AtomicU64::new(10),
            stopping: AtomicBool::new(false),
        }
    }
}

/// What one batch did.
struct Batch {
    resealed: u64,
    failed: u64,
    /// Where the next batch starts; None: this table is finished.
    next: Option<Cursor>,
}

#[derive(Clone)]
enum Cursor {
    Records(String, String),
    Secrets(String),
    SubjectKeys(String),
}

fn reseal(keys: &DataKeys, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let plain = zeroize::Zeroizing::new(keys.open(aad, sealed).ok()?);
    keys.seal(aad, &plain).ok()
}

impl Lifecycle {
    /// Items per re-encryption transaction and the pause between two (so
    /// the job leaves the writer to the API).
    pub fn set_reencrypt_pacing(&self, batch: u64, pause: Duration) {
        self.data_jobs.batch.store(batch.max(1), Ordering::Relaxed);
        self.data_jobs.pause_ms.store(
            pause.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Stops re-encryption jobs after their current batch (shutdown); the
    /// next start resumes them.
    pub fn stop_jobs(&self) {
        self.data_jobs.stopping.store(true, Ordering::SeqCst);
    }

    /// Drops a deleted firm's job progress.
    pub(crate) fn forget_jobs(&self, id: &FirmId) {
        lock(&self.data_jobs.progress).remove(id);
    }

    /// The data-key versions and the re-encryption job's progress.
    pub fn data_key_status(&self, id: &FirmId) -> Result<DataKeyStatus, FirmError> {
        let keys = self.pool.registry.keys(id.as_str())?;
        let data = keys.iter().filter(|k| k.purpose == Purpose::Data.as_str());
        let active = data
            .clone()
            .find(|k| k.state == "active")
            .map_or(0, |k| k.version);
        Ok(DataKeyStatus {
            active,
            retiring: data
                .filter(|k| k.state == "retired")
                .map(|k| k.version)
                .collect(),
            reencryption: lock(&self.data_jobs.progress).get(id).cloned(),
        })
    }

    /// Rotates a firm's data key: the new version is active for every write
    /// from now on; the old one is retired (still opens what it sealed) until
    /// the re-encryption job, which the caller starts, has moved everything.
    pub fn rotate_data_key(
        &self,
        id: &FirmId,
        by: &AdminActor,
    ) -> Result<(u32, Vec<u32>), FirmError> {
        match self.pool.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let _ops = self.pool.admin_ops();
        let keys = self.pool.registry.keys(id.as_str())?;
        let data: Vec<&WrappedKey> = keys
            .iter()
            .filter(|k| k.purpose == Purpose::Data.as_str())
            .collect();
        let version = data.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let mut retiring: Vec<u32> = data
            .iter()
            .filter(|k| k.state != "pending")
            .map(|k| k.version)
            .collect();
        retiring.sort_unstable();
        let key = SecretKey::random()?;
        let wrapped = WrappedKey {
            firm_id: id.to_string(),
            purpose: Purpose::Data.as_str().to_owned(),
            version,
            state: "active".to_owned(),
            wrapped: self
                .pool
                .ring()
                .wrap(id.as_str(), Purpose::Data, version, &key)?,
            created_at: self.pool.now(),
        };
        let e = self.trail.system_entry(
            by,
            "firm.rotate_data_key",
            id.as_str(),
            Outcome::Success,
            "admin_socket",
            json!({ "data_key_version": version, "retiring": retiring }),
        )?;
        match self.pool.registry.rotate_key(&wrapped, Some(e)) {
            Err(StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        // The open handle switches now; a handle being opened concurrently
        // sees the epoch change and reloads (see `handle`).
        let open = lock(&self.pool.open);
        self.pool.key_epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(h) = open.get(id) {
            let next = h.data_keys().rotated(version, key);
            h.set_data_keys(next);
        }
        Ok((version, retiring))
    }

    /// Starts re-encryption for every firm with retired data keys and no
    /// job running (after a restart, or when a job failed). Blocking: runs
    /// the jobs one after another.
    pub fn resume_reencryption(&self) {
        let firms = match self
            .pool
            .registry
            .firms_with_retired(Purpose::Data.as_str())
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot list firms with retired data keys");
                return;
            }
        };
        for id in firms.iter().filter_map(|f| FirmId::parse(f)) {
            if matches!(
                self.pool.state(&id),
                Some(FirmState::Active | FirmState::Frozen)
            ) {
                self.reencrypt_data(&id);
            }
        }
    }

    /// Re-encrypts everything a firm sealed under retired data-key versions,
    /// then destroys those versions. Blocking; returns at once if a job for
    /// this firm is already running. Progress and the outcome are kept for
    /// `firm show`, the outcome is also logged and in the system log.
    pub fn reencrypt_data(&self, id: &FirmId) {
        if self.begin_reencryption(id) {
            self.run_begun_reencryption(id);
        }
    }

    /// Records the job as running (see [`Lifecycle::begin_reencryption`])
    /// and runs it on a thread of its own; nothing if one already runs.
    pub fn start_reencryption(this: &Arc<Self>, id: &FirmId) -> std::io::Result<()> {
        if !this.begin_reencryption(id) {
            return Ok(());
        }
        let (f, job) = (this.clone(), id.clone());
        let started = std::thread::Builder::new()
            .name("reencrypt".to_owned())
            .spawn(move || f.run_begun_reencryption(&job));
        if let Err(e) = &started {
            // Not left "running": the periodic resume starts it again.
            this.progress(id, |p| {
                p.state = "failed";
                p.error = Some(e.to_string());
            });
        }
        started.map(|_| ())
    }

    /// Records a job as running, with its target version and total when
    /// they can be read now, so `firm show` shows it at once; false if one
    /// already runs. [`Lifecycle::run_begun_reencryption`] then runs it.
    fn begin_reencryption(&self, id: &FirmId) -> bool {
        {
            let mut jobs = lock(&self.data_jobs.progress);
            if jobs.get(id).is_some_and(|j| j.state == "running") {
                return false;
            }
            jobs.insert(
                id.clone(),
                Reencryption {
                    state: "running",
                    to_version: 0,
                    total: 0,
                    done: 0,
                    started_at: self.pool.now(),
                    finished_at: None,
                    error: None,
                    destroyed: Vec::new(),
                },
            );
        }
        if let Ok(h) = self.pool.handle(id) {
            let active = h.data_keys().active();
            if let Ok(total) = h.db.read_blocking(|r| r.count_sealed_not_under(active)) {
                self.progress(id, |p| {
                    p.to_version = active;
                    p.total = total;
                });
            }
        }
        true
    }

    /// Runs a job [`Lifecycle::begin_reencryption`] recorded. Blocking.
    fn run_begun_reencryption(&self, id: &FirmId) {
        let outcome = self.run_reencryption(id);
        let mut jobs = lock(&self.data_jobs.progress);
        let Some(p) = jobs.get_mut(id) else {
            return;
        };
        p.finished_at = Some(self.pool.now());
        match outcome {
            Ok(destroyed) => {
                tracing::info!(firm = %id, re_encrypted = p.done, ?destroyed, "data-key re-encryption finished");
                p.state = "done";
                p.destroyed = destroyed;
            }
            Err(e) => {
                tracing::error!(firm = %id, error = %e, "data-key re-encryption stopped; it resumes within a minute");
                p.state = "failed";
                p.error = Some(e.to_string());
            }
        }
    }

    fn progress(&self, id: &FirmId, f: impl FnOnce(&mut Reencryption)) {
        if let Some(p) = lock(&self.data_jobs.progress).get_mut(id) {
            f(p);
        }
    }

    fn run_reencryption(&self, id: &FirmId) -> Result<Vec<u32>, FirmError> {
        // Counted when the job began, unless that read failed.
        let counted = lock(&self.data_jobs.progress)
            .get(id)
            .is_some_and(|p| p.to_version != 0);
        if !counted {
            let h = self.pool.handle(id)?;
            let active = h.data_keys().active();
            let total = h.db.read_blocking(|r| r.count_sealed_not_under(active))?;
            self.progress(id, |p| {
                p.to_version = active;
                p.total = total;
            });
        }
        let mut failed = 0;
        for start in [
            Cursor::Records(String::new(), String::new()),
            Cursor::Secrets(String::new()),
            Cursor::SubjectKeys(String::new()),
        ] {
            let mut cursor = Some(start);
            while let Some(c) = cursor {
                if self.data_jobs.stopping.load(Ordering::SeqCst) {
                    return Err(FirmError::Invalid(
                        "the daemon is stopping; the job resumes at the next start".to_owned(),
                    ));
                }
                // A fresh handle each batch, so a rekey or an idle close is never held up.
                let h = self.pool.handle(id)?;
                let b = self.reencrypt_batch(&h, c)?;
                drop(h);
                failed += b.failed;
                self.progress(id, |p| p.done += b.resealed);
                crate::telemetry::metrics::metrics()
                    .reencrypted
                    .inc_by(b.resealed);
                cursor = b.next;
                let pause = self.data_jobs.pause_ms.load(Ordering::Relaxed);
                if cursor.is_some() && pause > 0 {
                    std::thread::sleep(Duration::from_millis(pause));
                }
            }
        }
        if failed > 0 {
            return Err(FirmError::Invalid(format!(
                "{failed} sealed items do not open with this firm's data keys; retired keys kept"
            )));
        }
        // No rotation may slip in between the check and the destruction.
        let _ops = self.pool.admin_ops();
        let h = self.pool.handle(id)?;
        let keys = h.data_keys();
        let active = keys.active();
        // A write transaction: it comes after every write that sealed under a retired version.
        let left =
            h.db.write_blocking(move |tx| tx.read().count_sealed_not_under(active))?;
        if left > 0 {
            return Err(FirmError::Invalid(format!(
                "{left} items still sealed under retired versions"
            )));
        }
        let destroyed: Vec<u32> = self
            .pool
            .registry
            .keys(id.as_str())?
            .into_iter()
            .filter(|k| k.purpose == Purpose::Data.as_str() && k.state == "retired")
            .map(|k| k.version)
            .collect();
        if !destroyed.is_empty() {
            let done = lock(&self.data_jobs.progress).get(id).map_or(0, |p| p.done);
            let e = self.trail.seal().entry_for(
                "system:data-keys",
                "",
                "firm.data_keys_destroyed",
                id.as_str(),
                Outcome::Success,
                "reencryption_complete",
                json!({ "destroyed": destroyed, "active": active, "re_encrypted": done }),
            )?;
            self.pool
                .registry
                .destroy_retired(id.as_str(), Purpose::Data.as_str(), Some(e))?;
        }
        // Security invariant: a destroyed key version leaves memory with its registry row.
        h.set_data_keys(keys.pruned());
        Ok(destroyed)
    }

    /// Re-encrypts one batch of records (or secrets) from `cursor` on, in one
    /// write transaction.
    fn reencrypt_batch(&self, h: &Arc<FirmHandle>, cursor: Cursor) -> Result<Batch, FirmError> {
        let limit = self.data_jobs.batch.load(Ordering::Relaxed);
        let hh = h.clone();
        Ok(h.db.write_blocking(move |tx| {
            let keys = hh.data_keys();
            let active = keys.active();
            let firm = hh.id.as_str();
            let mut b = Batch {
                resealed: 0,
                failed: 0,
                next: None,
            };
            match &cursor {
                Cursor::Records(c, i) => {
                    let rows = tx.records_sealed_not_under(active, (c, i), limit)?;
                    let full = rows.len() as u64 == limit;
                    for (coll, rid, version, sealed) in rows {
                        let aad = crate::records::record_aad(firm, &coll, &rid, version);
                        match reseal(&keys, &aad, &sealed) {
                            Some(new) => {
                                tx.reseal_record(&coll, &rid, &new)?;
                                b.resealed += 1;
                            }
                            None => b.failed += 1,
                        }
                        b.next = full.then_some(Cursor::Records(coll, rid));
                    }
                }
                Cursor::Secrets(after) => {
                    let rows = tx.secrets_sealed_not_under(active, after, limit)?;
                    let full = rows.len() as u64 == limit;
                    for (name, version, sealed) in rows {
                        let aad = crate::vault::secret_aad(firm, &name, version);
                        match reseal(&keys, &aad, &sealed) {
                            Some(new) => {
                                tx.reseal_secret(&name, &new)?;
                                b.resealed += 1;
                            }
                            None => b.failed += 1,
                        }
                        b.next = full.then_some(Cursor::Secrets(name));
                    }
                }
                Cursor::SubjectKeys(after) => {
                    let rows = tx.subject_keys_sealed_not_under(active, after, limit)?;
                    let full = rows.len() as u64 == limit;
                    for (subject, wrapped) in rows {
                        let aad = crate::records::subject_key_aad(firm, &subject);
                        match reseal(&keys, &aad, &wrapped) {
                            Some(new) => {
                                tx.rewrap_subject_key(&subject, &new)?;
                                b.resealed += 1;
                            }
                            None => b.failed += 1,
                        }
                        b.next = full.then_some(Cursor::SubjectKeys(subject));
                    }
                }
            }
            Ok(b)
        })?)
    }
}
