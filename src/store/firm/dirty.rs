//! Which pages of a firm's main file changed since a backup repository's
//! last snapshot of it, so an incremental snapshot reads only those.
//!
//! In WAL mode the main file changes only when a checkpoint copies WAL
//! frames into it. The firm's writer therefore runs every checkpoint itself
//! (`wal_autocheckpoint = 0`; [`after_commit`], and [`before_close`] for the
//! one SQLite runs when the last connection closes) and first records the
//! page numbers of the frames it is about to copy. A snapshot's pause (in
//! the firm's writer, like its checkpoints) starts a new period for its
//! repository; the set of pages recorded since the previous snapshot's
//! pause is what changed.
//!
//! Anything that writes the file otherwise (a rekey) forgets the firm, and
//! a restarted daemon knows nothing: the next snapshot then reads the whole
//! file. Recording more pages than a checkpoint copied is harmless.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rusqlite::Connection;

/// Frames in the WAL beyond which the writer checkpoints (SQLite's own
/// default for `wal_autocheckpoint`).
const CHECKPOINT_FRAMES: u32 = 1000;
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// One repository's view of one file.
#[derive(Debug, Default)]
struct Track {
    /// The snapshot the pages are counted from (None: not yet committed).
    baseline: Option<String>,
    pages: HashSet<u32>,
    /// A snapshot in progress: its id and the pages since its pause.
    pending: Option<(String, HashSet<u32>)>,
}

type Tracks = HashMap<PathBuf, HashMap<String, Track>>;

fn tracks() -> MutexGuard<'static, Tracks> {
    static T: OnceLock<Mutex<Tracks>> = OnceLock::new();
    match T.get_or_init(Mutex::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Pages a checkpoint is about to copy into `db`.
fn record(db: &Path, pages: &[u32]) {
    if let Some(repos) = tracks().get_mut(db) {
        for t in repos.values_mut() {
            t.pages.extend(pages);
            if let Some((_, p)) = &mut t.pending {
                p.extend(pages);
            }
        }
    }
}

/// `db` changed in a way nobody recorded: every repository reads it whole next.
pub(crate) fn forget(db: &Path) {
    tracks().remove(db);
}

/// At a snapshot's pause: the baseline snapshot and the pages changed
/// since it (None: read the whole file), and a new period starts.
pub(crate) fn begin(db: &Path, repo: &str, snapshot: &str) -> Option<(String, HashSet<u32>)> {
    let mut all = tracks();
    let t = all
        .entry(db.to_owned())
        .or_default()
        .entry(repo.to_owned())
        .or_default();
    t.pending = Some((snapshot.to_owned(), HashSet::new()));
    t.baseline.clone().map(|b| (b, t.pages.clone()))
}

/// The snapshot is durable: it is the baseline from now on.
pub fn commit(db: &Path, repo: &str, snapshot: &str) {
    if let Some(t) = tracks().get_mut(db).and_then(|r| r.get_mut(repo))
        && t.pending.as_ref().is_some_and(|(id, _)| id == snapshot)
        && let Some((id, pages)) = t.pending.take()
    {
        t.baseline = Some(id);
        t.pages = pages;
    }
}

/// The snapshot failed: the old baseline stays, with every page since it.
pub fn abort(db: &Path, repo: &str, snapshot: &str) {
    if let Some(t) = tracks().get_mut(db).and_then(|r| r.get_mut(repo))
        && t.pending.as_ref().is_some_and(|(id, _)| id == snapshot)
    {
        t.pending = None;
    }
}

/// The WAL index header fields the writer and snapshots use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalIndex {
    pub max_frame: u32,
    pub backfilled: u32,
    pub page_size: u32,
    /// The WAL header's salts, as its bytes (the index copies them raw).
    pub salts: [u8; 8],
}

pub(crate) fn side_path(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Reads the WAL index header from the `-shm` mapping `conn` shares (never
/// by opening the file: see `store::vfs`). Its two copies must agree (the
/// caller is the writer, or holds the write lock, so no commit is between
/// them). None: no index (no WAL yet).
pub(crate) fn read_wal_index(conn: &Connection) -> Result<Option<WalIndex>, super::StoreError> {
    let Some(h) = crate::store::vfs::MainFile::of(conn).and_then(|f| f.wal_index::<100>()) else {
        return Ok(None);
    };
    let ne = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..48] != h[48..96] || h[12] != 1 {
        return Err(super::StoreError::Corrupt(
            "the WAL index header copies differ".to_owned(),
        ));
    }
    let page_size = match u16::from_ne_bytes([h[14], h[15]]) {
        1 => 65_536,
        n => u32::from(n),
    };
    Ok(Some(WalIndex {
        max_frame: ne(16),
        backfilled: ne(96),
        page_size,
        salts: [h[32], h[33], h[34], h[35], h[36], h[37], h[38], h[39]],
    }))
}

/// The page numbers of WAL frames `from + 1 ..= to`.
fn frame_pages(db: &Path, i: &WalIndex, from: u32, to: u32) -> std::io::Result<Vec<u32>> {
    let wal = std::fs::File::open(side_path(db, "-wal"))?;
    let frame = FRAME_HEADER + u64::from(i.page_size);
    let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
    let mut b = [0u8; 4];
    for k in from..to {
        wal.read_exact_at(&mut b, WAL_HEADER + u64::from(k) * frame)?;
        out.push(u32::from_be_bytes(b) - 1);
    }
    Ok(out)
}

/// Records the pages of every frame not yet copied into the main file
/// (0-based page indexes), and returns them; forgets the file if they
/// cannot be read.
fn record_pending_frames(conn: &Connection, db: &Path) -> Vec<u32> {
    match read_wal_index(conn) {
        Ok(Some(i)) if i.max_frame > i.backfilled => {
            match frame_pages(db, &i, i.backfilled, i.max_frame) {
                Ok(pages) => {
                    record(db, &pages);
                    pages
                }
                Err(_) => {
                    forget(db);
                    Vec::new()
                }
            }
        }
        Ok(_) => Vec::new(),
        Err(_) => {
            forget(db);
            Vec::new()
        }
    }
}

/// After a commit: checkpoint once the WAL holds enough frames, recording
/// the pages first. `last` is the WAL size at the writer's previous
/// checkpoint: while a reader holds checkpoints back, the frame headers
/// are read again only after another `CHECKPOINT_FRAMES` frames, not at
/// every commit.
pub(crate) fn after_commit(conn: &Connection, db: &Path, last: &mut u32) {
    let Ok(Some(i)) = read_wal_index(conn) else {
        return;
    };
    if i.max_frame.saturating_sub(i.backfilled) < CHECKPOINT_FRAMES
        || (i.max_frame >= *last && i.max_frame - *last < CHECKPOINT_FRAMES)
    {
        return;
    }
    *last = i.max_frame;
    let pages = record_pending_frames(conn, db);
    // PASSIVE, as SQLite's own autocheckpoint: never waits for readers.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    // Again after it: a snapshot that began between the two (on another
    // thread, should a second handle ever write this file) still counts
    // these pages in its own period. Recording too many is harmless.
    record(db, &pages);
    // Fully copied: the WAL restarts at its next write, so count from zero.
    if let Ok(Some(after)) = read_wal_index(conn)
        && after.backfilled >= after.max_frame
    {
        *last = 0;
    }
}

/// Before the writer's connection closes (SQLite checkpoints then).
pub(crate) fn before_close(conn: &Connection, db: &Path) {
    let _ = record_pending_frames(conn, db);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_counts_from_the_last_durable_snapshot() {
        let db = Path::new("/nonexistent/dirty-test.db");
        forget(db);
        // Nothing tracked yet: the first snapshot reads everything.
        assert!(begin(db, "r", "s1").is_none());
        // Pages copied after s1's pause count toward the next snapshot.
        record(db, &[1, 2]);
        commit(db, "r", "s1");
        record(db, &[3]);
        // s2's pause: pages since s1.
        let (base, pages) = begin(db, "r", "s2").unwrap();
        assert_eq!(base, "s1");
        assert_eq!(pages, HashSet::from([1, 2, 3]));
        record(db, &[4]);
        // s2 fails: s3 still counts from s1, with every page since.
        abort(db, "r", "s2");
        let (base, pages) = begin(db, "r", "s3").unwrap();
        assert_eq!(base, "s1");
        assert_eq!(pages, HashSet::from([1, 2, 3, 4]));
        record(db, &[5]);
        commit(db, "r", "s3");
        // Another repository keeps its own period; forgetting resets all.
        assert!(begin(db, "other", "x1").is_none());
        let (base, pages) = begin(db, "r", "s4").unwrap();
        assert_eq!((base.as_str(), pages), ("s3", HashSet::from([5])));
        forget(db);
        assert!(begin(db, "r", "s5").is_none());
    }
}
