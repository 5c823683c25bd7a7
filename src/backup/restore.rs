//! Restoring a snapshot, and checking one by restoring it.
//!
//! A restore writes the snapshot's files into a fresh directory, proves the
//! master key opens its registry before any firm file is written, checks
//! the manifest's signature with the appliance key held in that registry,
//! then opens every firm the way the daemon would and verifies its audit
//! log against the tree recorded in the manifest, and its latest signed
//! checkpoint. Only then does the directory take its final name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::manifest::{FileEntry, Manifest};
use super::repo::{PackCache, Repo, parse_id};
use super::{BackupError, Progress};
use crate::audit::note;
use crate::clock::Clock;
use crate::crypto::hex;
use crate::crypto::keyring::Keyring;
use crate::firms::FirmError;
use crate::firms::pool::{ApplianceKeys, Pool};
use crate::ids::FirmId;
use crate::store::StoreError;

/// What checking a restored snapshot found.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub snapshot: String,
    pub firms: usize,
    /// Audit entries verified, the system log's included.
    pub entries: u64,
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one file of the snapshot under `dir`, chunk by chunk, checking
/// every chunk's hash and the file's size.
fn write_file(
    repo: &Repo,
    f: &FileEntry,
    dir: &Path,
    packs: &mut PackCache,
    progress: &dyn Progress,
) -> Result<(), BackupError> {
    let list = parse_id(&f.list)
        .ok_or_else(|| BackupError::Damaged(format!("{}: malformed list id", f.path)))?;
    let ids = repo.read_list(&list)?;
    let path = dir.join(&f.path);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent))?;
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    let mut written = 0u64;
    for id in &ids {
        let chunk = repo.read_chunk(id, packs)?;
        out.write_all(&chunk).map_err(io(&path))?;
        written += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    if written != f.size || ids.len() as u64 != f.chunks {
        return Err(BackupError::Damaged(format!(
            "{}: restored {written} bytes in {} chunks, the manifest says {} in {}",
            f.path,
            ids.len(),
            f.size,
            f.chunks
        )));
    }
    out.sync_all().map_err(io(&path))?;
    Ok(())
}

/// Opens the restored state like the daemon does. A wrong master key is
/// `WrongKey`, found before any firm file is written.
fn open_pool(
    dir: &Path,
    ring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
) -> Result<(Pool, ApplianceKeys), BackupError> {
    match Pool::open_with_ring(dir, ring, clock, Duration::from_secs(3600)) {
        Ok(p) => Ok(p),
        Err(FirmError::Store(StoreError::WrongKey { .. })) => Err(BackupError::WrongKey),
        Err(e) => Err(BackupError::Invalid(format!(
            "the restored registry does not open: {e}"
        ))),
    }
}

/// Verifies every firm's audit log (and the system log) in the restored
/// state against the manifest: same tree size and root, no bad entry, a
/// latest checkpoint signed by the appliance that the tree contains.
fn check(pool: &Pool, keys: &ApplianceKeys, m: &Manifest) -> Result<u64, BackupError> {
    let verifier = note::verifier_key(&keys.signer_name, &keys.signer.public());
    let v = note::parse_verifier_key(&verifier)
        .map_err(|_| BackupError::Invalid("the appliance verifier key is malformed".into()))?;
    let mut entries = 0;
    let mut compare = |what: &str,
                       origin: String,
                       got: crate::audit::verify::AuditVerification,
                       want: &super::manifest::TreeHead|
     -> Result<(), BackupError> {
        if let Some((seq, why)) = got.first_bad {
            return Err(BackupError::Damaged(format!(
                "{what}: audit entry {seq} does not verify: {why}"
            )));
        }
        if got.size != want.size || hex(&got.root) != want.root {
            return Err(BackupError::Damaged(format!(
                "{what}: the restored audit tree (size {}) is not the one recorded in the snapshot (size {})",
                got.size, want.size
            )));
        }
        if let Some((size, root, signed)) = &got.checkpoint {
            let ok = note::open(signed, &v)
                .ok()
                .and_then(|t| note::parse_checkpoint(t).ok())
                .is_some_and(|(o, s, r)| o == origin && s == *size && r == *root);
            if !ok {
                return Err(BackupError::Damaged(format!(
                    "{what}: the latest checkpoint is not signed by this appliance or does not match the tree"
                )));
            }
        }
        entries += got.size;
        Ok(())
    };
    for f in &m.firms {
        let id = FirmId::parse(&f.id)
            .ok_or_else(|| BackupError::Damaged(format!("malformed firm id {:?}", f.id)))?;
        let h = pool
            .handle(&id)
            .map_err(|e| BackupError::Damaged(format!("firm {id} does not open: {e}")))?;
        let got = h.db.audit_verify()?;
        let origin = format!("strongroom/{}/{id}", pool.appliance_id());
        compare(&format!("firm {id}"), origin, got, &f.audit)?;
    }
    let sys = pool.registry.audit_verify()?;
    let origin = format!("strongroom/{}/system", pool.appliance_id());
    compare("the system log", origin, sys, &m.system_log)?;
    Ok(entries)
}

/// Restores snapshot `id` into `dir` (a new, empty directory) and checks
/// it. Leaves the restored pool open for the caller (to record the restore).
pub fn restore_into(
    repo: &Repo,
    id: &str,
    dir: &Path,
    ring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    progress: &dyn Progress,
) -> Result<(Manifest, Checked, Pool, ApplianceKeys), BackupError> {
    let signed = repo.read_snapshot_note(id)?;
    let peeked = Manifest::peek(id, &signed)?;
    let mut packs = PackCache::default();
    progress.start(&format!("restoring {id}"), peeked.total_bytes());
    let (registry, firm_files): (Vec<&FileEntry>, Vec<&FileEntry>) =
        peeked.files.iter().partition(|f| f.path == "registry.db");
    let registry = registry
        .first()
        .ok_or_else(|| BackupError::Damaged(format!("snapshot {id} has no registry")))?;
    write_file(repo, registry, dir, &mut packs, progress)?;
    let (pool, keys) = open_pool(dir, ring, clock)?;
    let checked = (|| {
        // Security invariant: a manifest is trusted only once the appliance key in the registry the master key opened verifies it.
        let verifier = note::verifier_key(&keys.signer_name, &keys.signer.public());
        let m = Manifest::open(id, &signed, &verifier)?;
        if m.appliance_id != pool.appliance_id() {
            return Err(BackupError::Damaged(format!(
                "snapshot {id} names appliance {}, its registry is appliance {}",
                m.appliance_id,
                pool.appliance_id()
            )));
        }
        for f in &firm_files {
            write_file(repo, f, dir, &mut packs, progress)?;
        }
        progress.done();
        let entries = check(&pool, &keys, &m)?;
        Ok((m, entries))
    })();
    let (m, entries) = match checked {
        Ok(x) => x,
        Err(e) => {
            // Every file closed before the caller removes the directory.
            pool.close_all();
            return Err(e);
        }
    };
    let checked = Checked {
        snapshot: m.id.clone(),
        firms: m.firms.len(),
        entries,
        bytes: m.total_bytes(),
    };
    Ok((m, checked, pool, keys))
}

/// Refuses a restore target that holds anything (it must not exist, or be
/// an empty directory). Creates nothing.
pub fn check_target(dir: &Path) -> Result<(), BackupError> {
    let empty = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io(dir)(e)),
    };
    if !empty {
        return Err(BackupError::Invalid(format!(
            "{} is not empty: restore only into a new or empty directory, with the service stopped",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates a new private directory (a scratch or work directory).
pub fn fresh_dir(dir: &Path) -> Result<(), BackupError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Removes a scratch or failed restore directory.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a restore directory");
    }
}

/// What an offline restore did.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub to: String,
    #[serde(flatten)]
    pub checked: Checked,
    /// Erasures from the ledger carried out again (after the snapshot).
    pub erasures_reapplied: usize,
    pub records_erased: u64,
    pub seconds: f64,
}

/// Restores snapshot `id` (or `latest`) from the repository at `repo_dir`
/// into the state directory `to` (new or empty; the service stopped),
/// given the master key. Nothing is left in `to` unless every check
/// passed. The restore is recorded in the restored system log.
pub fn restore(
    repo_dir: &Path,
    id: &str,
    to: &Path,
    ring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    by: &crate::audit::AdminActor,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    #[allow(clippy::disallowed_methods)] // clock: durations reported to the operator are real time
    let started = std::time::Instant::now(); // clock: a measurement of real time
    let repo = Repo::open_reading(repo_dir)?;
    let ids = repo.snapshot_ids()?;
    let id = match id {
        "latest" => ids
            .last()
            .cloned()
            .ok_or_else(|| BackupError::NoSnapshot("latest".to_owned()))?,
        s if super::manifest::valid_snapshot_id(s) => s.to_owned(),
        s => {
            return Err(BackupError::Invalid(format!(
                "{s:?} is not a snapshot id (YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx) or `latest`"
            )));
        }
    };
    check_target(to)?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let work = to.with_file_name(format!(
        ".{name}.restoring-{}",
        hex(&crate::crypto::random_array::<6>().unwrap_or_default())
    ));
    fresh_dir(&work)?;
    let done = restore_into(&repo, &id, &work, ring, clock, progress).and_then(
        |(m, checked, pool, keys)| {
            pool.close_all();
            let pool = Arc::new(pool);
            let trail = Arc::new(crate::audit::AuditTrail::new(pool.clone(), keys));
            let reapplied = reapply_erasures(repo_dir, &work, &pool, &trail)?;
            trail
                .system_audit(
                    by,
                    "backup.restore",
                    "appliance",
                    crate::audit::Outcome::Success,
                    "offline_restore",
                    serde_json::json!({
                        "snapshot": m.id, "repository": repo_dir.display().to_string(),
                        "firms": checked.firms, "entries": checked.entries,
                        "erasures_reapplied": reapplied.erasures,
                    }),
                )
                .map_err(BackupError::from)?;
            pool.close_all();
            Ok((checked, reapplied))
        },
    );
    let (checked, erasures) = match done {
        Ok(c) => c,
        Err(e) => {
            remove_dir(&work);
            return Err(e);
        }
    };
    // `to` is empty (checked above): the rename replaces it atomically.
    fs::rename(&work, to).map_err(|e| {
        remove_dir(&work);
        io(to)(e)
    })?;
    Ok(RestoreReport {
        snapshot: id,
        to: to.display().to_string(),
        checked,
        erasures_reapplied: erasures.erasures,
        records_erased: erasures.records_deleted,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The erasure ledger outlives every snapshot: the repository's copy goes
/// into the restored state directory, and each erasure a restored firm
/// does not hold (it happened after the snapshot) is carried out again.
fn reapply_erasures(
    repo_dir: &Path,
    work: &Path,
    pool: &Arc<Pool>,
    trail: &Arc<crate::audit::AuditTrail>,
) -> Result<crate::erasure::Reapplied, BackupError> {
    crate::erasure::ledger::copy_missing(repo_dir, work).map_err(io(repo_dir))?;
    // The repository's current peppers: every subject the snapshot names
    // but an erasure since.
    for firm in pool.registry.firms()? {
        let from = repo_dir
            .join("peppers")
            .join(format!("{}.peppers", firm.id));
        let to = work.join("firms").join(format!("{}.peppers", firm.id));
        let Some(id) = FirmId::parse(&firm.id) else {
            continue;
        };
        let Ok(h) = pool.handle(&id) else {
            continue;
        };
        if from.exists() {
            crate::store::peppers::copy_durably(&from, &to).map_err(io(&to))?;
            // Slots the repository's copy holds may have been handed out
            // after this snapshot: never hand them out again.
            let slots = fs::metadata(&to).map_err(io(&to))?.len() / crate::store::peppers::SLOT;
            h.db.write_blocking(move |tx| tx.raise_subject_slot(slots))
                .map_err(FirmError::from)?;
        } else if h.db.read_blocking(|r| r.subject_key_count())? > 0 {
            return Err(BackupError::Damaged(format!(
                "firm {id} seals data under subject keys but the repository holds no peppers for it ({})",
                from.display()
            )));
        }
    }
    let erasures =
        crate::erasure::Erasures::new(pool.clone(), trail.clone(), work.to_path_buf(), None);
    // Security invariant: a restore never brings back a subject erased after its snapshot.
    Ok(erasures.reapply(work, "system:restore", false)?)
}
