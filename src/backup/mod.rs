//! Backups: online, incremental, encrypted, verifiable snapshots of the
//! whole state (registry and every firm database), a repository that
//! stores each database page once, restore, and a measured recovery drill.
//!
//! The `Backups` service runs in the daemon (it holds the firms' writers and
//! the appliance key); `restore` runs offline in `strongroomctl`, with the
//! service stopped, given the master key. Formats: repo.rs, manifest.rs.

pub mod manifest;
pub(crate) mod prune;
pub mod repo;
pub mod restore;
mod take;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{AdminActor, AuditTrail, Outcome};
use crate::clock::{Clock, rfc3339};
use crate::firms::FirmError;
use crate::firms::pool::Pool;
use crate::store::StoreError;
use manifest::Manifest;
use repo::{FORMAT, Repo, RepoConfig};

pub use prune::Policy;
pub use take::TakeStats;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no backup repository: pass one (--to / --repository) or set [backup] repository in the config"
    )]
    NoTarget,
    #[error("{0} is not a backup repository (no strongroom-backup.json)")]
    NoRepository(String),
    #[error("no snapshot {0} in the repository")]
    NoSnapshot(String),
    #[error(
        "the repository is busy (a create or prune, or a prune waiting for a verify, drill or restore); try again when it ends"
    )]
    Busy,
    #[error(
        "the master key does not open this snapshot's registry (a wrong key, or one from before a master-key rotation)"
    )]
    WrongKey,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl BackupError {
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::NoTarget | BackupError::Invalid(_) => "bad_request",
            BackupError::NoRepository(_) => "no_repository",
            BackupError::NoSnapshot(_) => "not_found",
            BackupError::Busy => "busy",
            BackupError::WrongKey => "wrong_key",
            BackupError::Damaged(_) => "backup_damaged",
            BackupError::Io { .. } => "storage_io",
            BackupError::Store(e) => e.code(),
        }
    }
}

impl From<FirmError> for BackupError {
    fn from(e: FirmError) -> Self {
        match e {
            FirmError::Store(s) => BackupError::Store(s),
            other => BackupError::Invalid(other.to_string()),
        }
    }
}

/// Progress of a long operation (a bar on a terminal, lines otherwise).
pub trait Progress {
    fn start(&self, what: &str, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn done(&self);
}

/// No progress reports (the daemon).
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn done(&self) {}
}

/// `[backup]` settings the service needs.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub repository: Option<PathBuf>,
    pub policy: Policy,
    /// The state directory: no repository may be inside it.
    pub state_dir: PathBuf,
    /// Where drills and deep verifies restore to (inside the state directory).
    pub scratch: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct CreateReport {
    pub snapshot: String,
    pub repository: String,
    pub firms: usize,
    pub bytes: u64,
    /// New bytes the repository stored (packs and lists).
    pub added_bytes: u64,
    pub added_chunks: u64,
    pub seconds: f64,
    #[serde(flatten)]
    pub pauses: TakeStats,
}

#[derive(Debug, Serialize)]
pub struct SnapshotSummary {
    pub id: String,
    pub started_at: String,
    pub finished_at: String,
    pub firms: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots: Vec<SnapshotCheck>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotCheck {
    pub id: String,
    pub ok: bool,
    pub chunks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deep: Option<restore::Checked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub snapshot: String,
    pub snapshot_taken_at: String,
    /// The recovery point: how old the newest snapshot is.
    pub recovery_point_secs: i64,
    /// The recovery time: restore plus verification.
    pub recovery_time_secs: f64,
    /// Signature and every chunk's hash.
    pub chunks_checked_secs: f64,
    /// Files written, every firm opened and its audit log verified.
    pub restore_verify_secs: f64,
    pub firms: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// The backup service.
pub struct Backups {
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
    clock: Arc<dyn Clock>,
    settings: BackupSettings,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::disallowed_methods)] // clock: durations reported to the operator are real time
fn elapsed(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

#[allow(clippy::disallowed_methods)] // clock: durations reported to the operator are real time
fn now_mono() -> std::time::Instant {
    std::time::Instant::now() // clock: a measurement of real time
}

impl Backups {
    pub fn new(
        pool: Arc<Pool>,
        trail: Arc<AuditTrail>,
        clock: Arc<dyn Clock>,
        settings: BackupSettings,
    ) -> Self {
        // A drill or deep verify interrupted by a crash leaves its scratch copy.
        if let Ok(entries) = std::fs::read_dir(&settings.scratch) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("drill-") {
                    restore::remove_dir(&e.path());
                }
            }
        }
        Self {
            pool,
            trail,
            clock,
            settings,
        }
    }

    fn target(&self, given: Option<&Path>) -> Result<PathBuf, BackupError> {
        let dir = given
            .map(Path::to_owned)
            .or_else(|| self.settings.repository.clone())
            .ok_or(BackupError::NoTarget)?;
        // Security invariant: a repository never lives inside the state it backs up (nor may a caller make the daemon write there).
        if inside(&dir, &self.settings.state_dir) {
            return Err(BackupError::Invalid(format!(
                "{} is inside the state directory {}: a backup must live elsewhere",
                dir.display(),
                self.settings.state_dir.display()
            )));
        }
        Ok(dir)
    }

    /// Records `action` in the system log with its outcome: a failure when
    /// it fails, or when its details say `"ok": false` (a check that found
    /// damage).
    fn audited<R>(
        &self,
        by: &AdminActor,
        action: &str,
        f: impl FnOnce() -> Result<(R, Value), BackupError>,
    ) -> Result<R, BackupError> {
        let out = f();
        let (outcome, details) = match &out {
            Ok((_, d)) if d["ok"] == false => (Outcome::Failure, d.clone()),
            Ok((_, d)) => (Outcome::Success, d.clone()),
            Err(e) => (
                Outcome::Failure,
                json!({ "code": e.code(), "message": e.to_string() }),
            ),
        };
        if let Err(e) =
            self.trail
                .system_audit(by, action, "appliance", outcome, "admin_socket", details)
        {
            tracing::error!(error = %e, action, "system audit entry not written");
        }
        out.map(|(r, _)| r)
    }

    fn verifier_key(&self) -> String {
        self.trail.verifier_key()
    }

    /// Opens (or, unless pruning, creates) this appliance's repository at `dir`.
    fn open_for_write(&self, dir: &Path, pruning: bool) -> Result<Repo, BackupError> {
        let config = RepoConfig {
            format: FORMAT.to_owned(),
            appliance_id: self.pool.appliance_id().to_owned(),
            verifier_key: self.verifier_key(),
        };
        Repo::open_for_write(dir, config, pruning)
    }

    /// Takes an online snapshot into the repository.
    pub fn create(&self, to: Option<&Path>, by: &AdminActor) -> Result<CreateReport, BackupError> {
        self.audited(by, "backup.create", || {
            let dir = self.target(to)?;
            let started = now_mono();
            let mut repo = self.open_for_write(&dir, false)?;
            let key = self.verifier_key();
            let (m, pauses, tracked) =
                take::take(&self.pool, self.clock.as_ref(), &mut repo, &key)?;
            // The erasure ledger lives beside the snapshots, outside them:
            // every erasure the images predate is in it before the manifest.
            if let Err(e) = crate::erasure::ledger::copy_missing(&self.settings.state_dir, &dir) {
                tracked.abort();
                return Err(BackupError::Io {
                    path: dir.join("erasures").display().to_string(),
                    source: e,
                });
            }
            if let Err(e) = copy_peppers(&self.settings.state_dir, &dir, &m) {
                tracked.abort();
                return Err(e);
            }
            let signed = self.trail.sign_note(&m.text());
            if let Err(e) = repo::write_durable(&repo.snapshot_path(&m.id), signed.as_bytes()) {
                tracked.abort();
                return Err(e);
            }
            // Durable: the next snapshot into this repository reads only what changes from here.
            tracked.commit();
            let report = CreateReport {
                snapshot: m.id.clone(),
                repository: dir.display().to_string(),
                firms: m.firms.len(),
                bytes: m.total_bytes(),
                added_bytes: repo.bytes_added + signed.len() as u64,
                added_chunks: repo.chunks_added,
                seconds: elapsed(started),
                pauses,
            };
            tracing::info!(snapshot = %report.snapshot, firms = report.firms, bytes = report.bytes, added_bytes = report.added_bytes, max_writer_pause_us = report.pauses.max_writer_pause_us, "backup snapshot taken");
            let details = json!({
                "snapshot": report.snapshot, "repository": report.repository,
                "firms": report.firms, "bytes": report.bytes, "added_bytes": report.added_bytes,
            });
            Ok((report, details))
        })
    }

    /// The repository's snapshots, oldest first (signatures checked).
    pub fn list(&self, repository: Option<&Path>) -> Result<Vec<SnapshotSummary>, BackupError> {
        let repo = Repo::open(&self.target(repository)?)?;
        let key = self.verifier_key();
        let mut out = Vec::new();
        for id in repo.snapshot_ids()? {
            let m = Manifest::open(&id, &repo.read_snapshot_note(&id)?, &key)?;
            out.push(SnapshotSummary {
                id: m.id.clone(),
                started_at: m.started_at.clone(),
                finished_at: m.finished_at.clone(),
                firms: m.firms.len(),
                bytes: m.total_bytes(),
            });
        }
        Ok(out)
    }

    fn pick(repo: &Repo, snapshot: Option<&str>) -> Result<Vec<String>, BackupError> {
        let ids = repo.snapshot_ids()?;
        match snapshot {
            None => Ok(ids),
            Some("latest") => ids
                .last()
                .map(|i| vec![i.clone()])
                .ok_or_else(|| BackupError::NoSnapshot("latest".to_owned())),
            Some(s) if manifest::valid_snapshot_id(s) => Ok(vec![s.to_owned()]),
            Some(s) => Err(BackupError::Invalid(format!(
                "{s:?} is not a snapshot id (YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx) or `latest`"
            ))),
        }
    }

    /// Checks snapshots: the manifest's signature, every chunk present and
    /// matching its hash; with `deep`, a restore into scratch and a check
    /// of every firm's audit log against the recorded tree.
    pub fn verify(
        &self,
        repository: Option<&Path>,
        snapshot: Option<&str>,
        deep: bool,
        by: &AdminActor,
    ) -> Result<VerifyReport, BackupError> {
        self.audited(by, "backup.verify", || {
            let repo = Repo::open_reading(&self.target(repository)?)?;
            let key = self.verifier_key();
            let mut checks = Vec::new();
            for id in Self::pick(&repo, snapshot)? {
                let mut check = SnapshotCheck {
                    id: id.clone(),
                    ok: false,
                    chunks: 0,
                    deep: None,
                    problem: None,
                };
                match verify_chunks(&repo, &id, &key) {
                    Ok(n) => check.chunks = n,
                    Err(e) => check.problem = Some(e.to_string()),
                }
                if deep && check.problem.is_none() {
                    match self.restore_scratch(&repo, &id) {
                        Ok(c) => check.deep = Some(c),
                        Err(e) => check.problem = Some(e.to_string()),
                    }
                }
                check.ok = check.problem.is_none();
                checks.push(check);
            }
            let ok = checks.iter().all(|c| c.ok);
            let details = json!({
                "snapshots": checks.len(), "deep": deep, "ok": ok,
                "failed": checks.iter().filter(|c| !c.ok).map(|c| c.id.clone()).collect::<Vec<_>>(),
            });
            Ok((
                VerifyReport {
                    ok,
                    snapshots: checks,
                },
                details,
            ))
        })
    }

    /// Restores `id` into a scratch directory, checks it, removes it.
    fn restore_scratch(&self, repo: &Repo, id: &str) -> Result<restore::Checked, BackupError> {
        let dir = self.settings.scratch.join(format!(
            "drill-{}",
            crate::crypto::hex(&crate::crypto::random_array::<6>().unwrap_or_default())
        ));
        std::fs::create_dir_all(&self.settings.scratch).map_err(|source| BackupError::Io {
            path: self.settings.scratch.display().to_string(),
            source,
        })?;
        restore::fresh_dir(&dir)?;
        let out =
            restore::restore_into(repo, id, &dir, self.pool.ring(), self.clock.clone(), &Quiet)
                .map(|(_, checked, pool, _)| {
                    pool.close_all();
                    checked
                });
        restore::remove_dir(&dir);
        out
    }

    /// Restores the newest snapshot into scratch, verifies every firm, and
    /// reports the recovery point and recovery time.
    pub fn drill(
        &self,
        repository: Option<&Path>,
        by: &AdminActor,
    ) -> Result<DrillReport, BackupError> {
        self.audited(by, "backup.drill", || {
            let repo = Repo::open_reading(&self.target(repository)?)?;
            let id = Self::pick(&repo, Some("latest"))?.remove(0);
            let key = self.verifier_key();
            let m = Manifest::open(&id, &repo.read_snapshot_note(&id)?, &key)?;
            let started = now_mono();
            verify_chunks(&repo, &id, &key)?;
            let chunks_checked = elapsed(started);
            let checked = self.restore_scratch(&repo, &id)?;
            let total = elapsed(started);
            let taken = time::OffsetDateTime::parse(
                &m.finished_at,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|_| BackupError::Damaged(format!("snapshot {id} has a malformed time")))?;
            let report = DrillReport {
                snapshot: id,
                snapshot_taken_at: m.finished_at.clone(),
                recovery_point_secs: (self.clock.now() - taken).whole_seconds(),
                recovery_time_secs: total,
                chunks_checked_secs: chunks_checked,
                restore_verify_secs: total - chunks_checked,
                firms: checked.firms,
                entries: checked.entries,
                bytes: checked.bytes,
            };
            let details = serde_json::to_value(&report).unwrap_or_default();
            Ok((report, details))
        })
    }

    /// Removes snapshots outside the policy (the configured one unless
    /// given), then every chunk no remaining snapshot uses.
    pub fn prune(
        &self,
        repository: Option<&Path>,
        keep_last: Option<u32>,
        keep_daily: Option<u32>,
        by: &AdminActor,
    ) -> Result<prune::PruneReport, BackupError> {
        self.audited(by, "backup.prune", || {
            let dir = self.target(repository)?;
            let mut repo = self.open_for_write(&dir, true)?;
            let policy = Policy {
                keep_last: keep_last.unwrap_or(self.settings.policy.keep_last),
                keep_daily: keep_daily.unwrap_or(self.settings.policy.keep_daily),
            };
            let report = prune::prune(&mut repo, policy, &self.verifier_key())?;
            let details = serde_json::to_value(&report).unwrap_or_default();
            Ok((report, details))
        })
    }

    /// The time, as the snapshot ids and manifests write it.
    pub fn now(&self) -> String {
        rfc3339(self.clock.now())
    }
}

/// Whether `path` is `dir` or below it, once symbolic links and `..` are
/// resolved (through its nearest existing ancestor).
/// Copies each firm's subject peppers into `<repo>/peppers/` (one current
/// copy, replaced, never part of a snapshot): it serves every snapshot,
/// since slots are only added, or zeroed by an erasure, which zeroes this
/// copy too.
fn copy_peppers(state_dir: &Path, repo: &Path, m: &manifest::Manifest) -> Result<(), BackupError> {
    let _g = crate::store::peppers::REPOSITORY_COPY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for f in &m.firms {
        let from = state_dir.join("firms").join(format!("{}.peppers", f.id));
        if !from.exists() {
            continue;
        }
        let to = repo.join("peppers").join(format!("{}.peppers", f.id));
        crate::store::peppers::copy_durably(&from, &to).map_err(|source| BackupError::Io {
            path: to.display().to_string(),
            source,
        })?;
    }
    // Erasures zero this copy too from now on.
    crate::erasure::ledger::note_repository(state_dir, repo).map_err(|source| BackupError::Io {
        path: state_dir.join("erasures").display().to_string(),
        source,
    })
}

fn inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let mut probe = path.to_owned();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = probe.canonicalize() {
            let full = rest.iter().rev().fold(real, |p: PathBuf, c| p.join(c));
            return full.starts_with(&dir) || rest.iter().any(|c: &std::ffi::OsString| c == "..");
        }
        match (probe.file_name(), probe.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                probe = parent.to_owned();
            }
            _ => return false,
        }
    }
}

/// Checks a snapshot's signature and every chunk of every file; returns
/// the number of chunks read.
pub fn verify_chunks(repo: &Repo, id: &str, verifier_key: &str) -> Result<u64, BackupError> {
    let m = Manifest::open(id, &repo.read_snapshot_note(id)?, verifier_key)?;
    let mut packs = repo::PackCache::default();
    let mut n = 0;
    for f in &m.files {
        let list = repo::parse_id(&f.list)
            .ok_or_else(|| BackupError::Damaged(format!("{}: malformed list id", f.path)))?;
        let ids = repo.read_list(&list)?;
        let mut size = 0u64;
        for c in &ids {
            size += repo.read_chunk(c, &mut packs)?.len() as u64;
        }
        if size != f.size || ids.len() as u64 != f.chunks {
            return Err(BackupError::Damaged(format!(
                "{}: {size} bytes in {} chunks, the manifest says {} in {}",
                f.path,
                ids.len(),
                f.size,
                f.chunks
            )));
        }
        n += ids.len() as u64;
    }
    Ok(n)
}
