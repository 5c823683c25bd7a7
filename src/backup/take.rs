//! Taking a snapshot while the API keeps serving.
//!
//! Order matters for the keys: admin operations that change the registry's
//! keys (firm create and delete, rekey, data-key destruction, master
//! rotation) wait while a snapshot is taken, so the set of firms is fixed;
//! each firm's image is taken in turn (see `store::firm::snapshot`); the
//! registry is copied last, so it holds every key that any firm image uses.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::BackupError;
use super::manifest::{FileEntry, FirmEntry, Manifest, TreeHead};
use super::repo::{FORMAT, Id, Repo, id_of};
use crate::clock::{Clock, rfc3339};
use crate::crypto::hex;
use crate::firms::FirmState;
use crate::firms::pool::Pool;
use crate::ids::FirmId;
use crate::store::firm::FirmSnapshot;

/// Database files are cut into chunks of one page.
pub const PAGE: usize = 4096;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// What a snapshot cost, besides its manifest.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TakeStats {
    /// Firm files read whole, and read only where they changed.
    pub firms_read_whole: usize,
    pub firms_read_changed: usize,
    /// Main-file pages those changed-only reads read.
    pub changed_pages_read: u64,
    /// The longest any firm's writer waited (microseconds).
    pub max_writer_pause_us: u64,
    /// How long the registry was held still (microseconds).
    pub registry_pause_us: u64,
}

/// A snapshot id for `now`: `YYYYMMDDTHHMMSS.mmmZ-<8 hex>` (sorts by time).
pub fn new_id(now: time::OffsetDateTime) -> Result<String, BackupError> {
    let fmt = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    let stamp = now
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .map_err(|e| BackupError::Invalid(format!("clock: {e}")))?;
    let r: [u8; 4] = crate::crypto::random_array()
        .map_err(|_| BackupError::Invalid("the DRBG failed".to_owned()))?;
    Ok(format!("{stamp}-{}", hex(&r)))
}

/// Stores `chunks` (consecutive slices of one file) and its chunk list.
fn store_chunks<'a>(
    repo: &mut Repo,
    chunks: impl Iterator<Item = &'a [u8]>,
    ids: &mut Vec<Id>,
    size: &mut u64,
) -> Result<(), BackupError> {
    for c in chunks {
        let id = id_of(c);
        repo.add_chunk(id, c)?;
        ids.push(id);
        *size += c.len() as u64;
    }
    Ok(())
}

/// Stores a file from disk, page by page, as it is (ciphertext).
fn store_file(repo: &mut Repo, src: &Path, name: &str) -> Result<FileEntry, BackupError> {
    let mut f = File::open(src).map_err(|source| BackupError::Io {
        path: src.display().to_string(),
        source,
    })?;
    let (mut ids, mut size) = (Vec::new(), 0u64);
    let mut buf = vec![0u8; 256 * PAGE];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f
                .read(&mut buf[filled..])
                .map_err(|source| BackupError::Io {
                    path: src.display().to_string(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        store_chunks(repo, buf[..filled].chunks(PAGE), &mut ids, &mut size)?;
        if filled < buf.len() {
            break;
        }
    }
    finish_file(repo, name, &ids, size)
}

/// Stores a firm's main file, reading only `dirty` pages (and any past the
/// end of `old`, the file's chunk list in the baseline snapshot); every other
/// page is unchanged since the baseline and keeps its chunk. `old` empty:
/// every page is read. Read through the image's own connection (never a
/// second descriptor of a live database: see `store::vfs`).
fn store_db(
    repo: &mut Repo,
    snap: &FirmSnapshot,
    name: &str,
    old: &[Id],
    dirty: &HashSet<u32>,
    read: &mut u64,
) -> Result<FileEntry, BackupError> {
    let io = |source| BackupError::Io {
        path: snap.db_path().display().to_string(),
        source,
    };
    let size = snap.main_size().map_err(io)?;
    let pages = size.div_ceil(PAGE as u64);
    let (mut ids, mut stored) = (Vec::with_capacity(pages as usize), 0u64);
    let mut buf = vec![0u8; PAGE];
    for p in 0..pages {
        let start = p * PAGE as u64;
        let len = (size - start).min(PAGE as u64) as usize;
        // A baseline chunk the repository no longer has is never reused.
        let unchanged = len == PAGE
            && (p as usize) < old.len()
            && u32::try_from(p).is_ok_and(|q| !dirty.contains(&q))
            && repo.has(&old[p as usize]);
        if unchanged {
            ids.push(old[p as usize]);
        } else {
            snap.read_main_at(&mut buf[..len], start).map_err(io)?;
            *read += 1;
            let id = id_of(&buf[..len]);
            repo.add_chunk(id, &buf[..len])?;
            ids.push(id);
        }
        stored += len as u64;
    }
    finish_file(repo, name, &ids, stored)
}

/// The chunk list of `name` in snapshot `id`, if the repository still has
/// it and it checks out (else the file is read whole).
fn baseline_list(
    repo: &Repo,
    manifests: &mut HashMap<String, Option<Manifest>>,
    verifier_key: &str,
    id: &str,
    name: &str,
) -> Option<Vec<Id>> {
    let m = manifests
        .entry(id.to_owned())
        .or_insert_with(|| {
            let note = repo.read_snapshot_note(id).ok()?;
            Manifest::open(id, &note, verifier_key).ok()
        })
        .as_ref()?;
    let f = m.files.iter().find(|f| f.path == name)?;
    repo.read_list(&super::repo::parse_id(&f.list)?).ok()
}

fn finish_file(
    repo: &mut Repo,
    name: &str,
    ids: &[Id],
    size: u64,
) -> Result<FileEntry, BackupError> {
    let list = repo.put_list(ids)?;
    Ok(FileEntry {
        path: name.to_owned(),
        size,
        list: hex(&list),
        chunks: ids.len() as u64,
    })
}

/// Stores the image's WAL: its header, then one chunk per frame. When the
/// baseline snapshot kept the same WAL (same header: same salts, so the
/// same generation, whose committed frames never change), its first frames'
/// chunks are reused and only the frames after them are read.
fn store_wal(
    repo: &mut Repo,
    snap: &FirmSnapshot,
    name: &str,
    old: Option<Vec<Id>>,
) -> Result<Option<FileEntry>, BackupError> {
    let Some(header) = snap.wal_header else {
        return Ok(None);
    };
    let head = id_of(&header);
    let frame = FRAME_HEADER + snap.page_size;
    let (mut ids, from) = match old {
        Some(o)
            if o.first() == Some(&head)
                && u32::try_from(o.len() - 1).is_ok_and(|k| k <= snap.wal_frames)
                && o.iter().all(|id| repo.has(id)) =>
        {
            let k = (o.len() - 1) as u32;
            (o, k)
        }
        _ => {
            repo.add_chunk(head, &header)?;
            (vec![head], 0)
        }
    };
    let frames = snap.wal_frames_after(from)?;
    let mut size = (WAL_HEADER + from as usize * frame) as u64;
    store_chunks(repo, frames.chunks(frame), &mut ids, &mut size)?;
    finish_file(repo, name, &ids, size).map(Some)
}

/// The firm files a snapshot tracks changes of: once its manifest is
/// durable, `commit` makes it their baseline; otherwise `abort`.
#[derive(Debug)]
pub struct Tracked {
    pub repo_key: String,
    pub snapshot: String,
    pub files: Vec<PathBuf>,
}

impl Tracked {
    pub fn commit(&self) {
        for f in &self.files {
            crate::store::firm::commit_snapshot(f, &self.repo_key, &self.snapshot);
        }
    }

    pub fn abort(&self) {
        for f in &self.files {
            crate::store::firm::abort_snapshot(f, &self.repo_key, &self.snapshot);
        }
    }
}

/// Takes a snapshot of every firm and the registry into `repo`; returns
/// the manifest (not yet written), what it cost, and the tracked files
/// (aborted here if the snapshot fails).
pub fn take(
    pool: &Pool,
    clock: &dyn Clock,
    repo: &mut Repo,
    verifier_key: &str,
) -> Result<(Manifest, TakeStats, Tracked), BackupError> {
    let started = clock.now();
    let id = new_id(started)?;
    let mut tracked = Tracked {
        repo_key: repo
            .dir()
            .canonicalize()
            .unwrap_or_else(|_| repo.dir().to_owned())
            .display()
            .to_string(),
        snapshot: id.clone(),
        files: Vec::new(),
    };
    match take_into(pool, clock, repo, verifier_key, started, &mut tracked) {
        Ok((m, stats)) => Ok((m, stats, tracked)),
        Err(e) => {
            tracked.abort();
            Err(e)
        }
    }
}

fn take_into(
    pool: &Pool,
    clock: &dyn Clock,
    repo: &mut Repo,
    verifier_key: &str,
    started: time::OffsetDateTime,
    tracked: &mut Tracked,
) -> Result<(Manifest, TakeStats), BackupError> {
    let id = tracked.snapshot.clone();
    let mut stats = TakeStats::default();
    let mut baselines = HashMap::new();
    // Security invariant: no key changes while a snapshot is taken, so the registry copied last holds every key its firm images use.
    let _ops = pool.admin_ops();
    let mut files = Vec::new();
    let mut firms = Vec::new();
    for row in pool.registry.firms()? {
        let Some(fid) = FirmId::parse(&row.id) else {
            continue;
        };
        if FirmState::parse(&row.state) == FirmState::Deleted {
            continue;
        }
        let was_open = pool.cached_handle(&fid).is_some();
        let h = pool.handle(&fid).map_err(|e| {
            BackupError::Invalid(format!("firm {fid} cannot be opened for the snapshot: {e}"))
        })?;
        let snap =
            h.db.snapshot(Some((tracked.repo_key.as_str(), id.as_str())))?;
        tracked.files.push(snap.db_path().to_owned());
        let db_name = format!("firms/{fid}.db");
        let old = snap.since.as_ref().and_then(|(base, _)| {
            baseline_list(repo, &mut baselines, verifier_key, base, &db_name)
        });
        files.push(match (old, &snap.since) {
            (Some(old), Some((_, dirty))) => {
                stats.firms_read_changed += 1;
                store_db(
                    repo,
                    &snap,
                    &db_name,
                    &old,
                    dirty,
                    &mut stats.changed_pages_read,
                )?
            }
            _ => {
                stats.firms_read_whole += 1;
                let mut whole = 0;
                store_db(repo, &snap, &db_name, &[], &HashSet::new(), &mut whole)?
            }
        });
        let wal_name = format!("{db_name}-wal");
        let old_wal = snap.since.as_ref().and_then(|(base, _)| {
            baseline_list(repo, &mut baselines, verifier_key, base, &wal_name)
        });
        if let Some(entry) = store_wal(repo, &snap, &wal_name, old_wal)? {
            files.push(entry);
        }
        let pause = snap.paused.as_micros() as u64;
        stats.max_writer_pause_us = stats.max_writer_pause_us.max(pause);
        firms.push(FirmEntry {
            id: fid.to_string(),
            state: row.state.clone(),
            audit: TreeHead {
                size: snap.audit_size,
                root: hex(&snap.audit_root),
            },
            writer_pause_us: pause,
        });
        drop(snap);
        drop(h);
        // A firm opened only to be copied does not stay open (thousands of
        // firms would mean thousands of open connections until the reaper).
        if !was_open {
            pool.close_if_unused(&fid);
        }
    }
    #[allow(clippy::disallowed_methods)] // clock: the pause is real elapsed time
    let held = std::time::Instant::now(); // clock: a measurement of real time
    let (registry, size, root) = pool
        .registry
        .with_still_file(|path| store_file(repo, path, "registry.db"))?;
    stats.registry_pause_us = held.elapsed().as_micros() as u64;
    files.insert(0, registry?);
    repo.flush()?;
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        id,
        appliance_id: pool.appliance_id().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: rfc3339(started),
        finished_at: rfc3339(clock.now()),
        files,
        firms,
        system_log: TreeHead {
            size,
            root: hex(&root),
        },
    };
    Ok((manifest, stats))
}
