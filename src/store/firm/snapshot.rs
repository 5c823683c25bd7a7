//! An online, consistent image of a firm database, taken while writers go on.
//!
//! A firm database is the main file plus its WAL. The image is taken like
//! this: in the firm's writer turn, between commits (so no commit is half
//! written), a read transaction begins on a connection of its own and the
//! WAL index header is read from the `-shm` file: the last committed frame
//! (`mxFrame`), how far checkpoints got (`nBackfill`) and the WAL's salts.
//! That is the only pause writers see (tens of microseconds).
//!
//! While the read transaction stays open:
//! - no checkpoint copies a frame newer than it into the main file, and
//!   none past `mxFrame`, so the main file only changes in pages that WAL
//!   frames up to `mxFrame` supersede;
//! - if checkpoints had not reached `mxFrame`, the reader uses the WAL, so
//!   the WAL cannot restart: frames up to `mxFrame` stay as they are and are
//!   read after the pause, and checked (salts, checksum chain, a commit
//!   frame last) like SQLite's own recovery;
//! - if they had, the main file alone is the image (the WAL is not kept).
//!
//! Main file + kept WAL frames is exactly the committed state at the pause;
//! SQLite recovers the WAL at the first open.
//!
//! Both are copied as they are on disk: ciphertext pages, never decrypted
//! or re-encrypted, so a page that did not change keeps its bytes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use rusqlite::Connection;

use super::FirmDb;
use super::dirty::{self, WalIndex, read_wal_index, side_path};
use crate::audit::merkle::Hash;
use crate::store::{StoreError, audit_log};
use std::collections::HashSet;

/// A consistent image of one firm database. The read transaction that
/// pins the main file ends when this is dropped.
pub struct FirmSnapshot {
    conn: Connection,
    path: PathBuf,
    /// The WAL's header, when the image keeps WAL frames.
    pub wal_header: Option<[u8; WAL_HEADER]>,
    /// The WAL frames the image keeps: 1 ..= this (the last is a commit).
    pub wal_frames: u32,
    wal_path: PathBuf,
    /// The page size of the main file (and the WAL's frames).
    pub page_size: usize,
    /// The firm's audit tree at the image.
    pub audit_size: u64,
    pub audit_root: Hash,
    /// How long the writer waited for the image to be taken.
    pub paused: Duration,
    /// For an incremental snapshot: the repository's previous snapshot of
    /// this file and the main-file pages (0-based) changed since its pause.
    /// None: read the whole file.
    pub since: Option<(String, HashSet<u32>)>,
}

impl std::fmt::Debug for FirmSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmSnapshot")
            .field("path", &self.path)
            .field("wal_frames", &self.wal_frames)
            .field("audit_size", &self.audit_size)
            .finish_non_exhaustive()
    }
}

impl FirmSnapshot {
    /// The main database file, stable while `self` lives.
    pub fn db_path(&self) -> &Path {
        &self.path
    }

    /// The main file's size. Read through the image's own connection: a
    /// second descriptor of the file would drop SQLite's locks on close
    /// (see `store::vfs`).
    pub fn main_size(&self) -> std::io::Result<u64> {
        crate::store::vfs::MainFile::of(&self.conn)
            .ok_or_else(|| std::io::Error::other("the image's file is not open"))?
            .size()
    }

    /// Fills `buf` from the main file at `offset` (see [`FirmSnapshot::main_size`]).
    pub fn read_main_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        crate::store::vfs::MainFile::of(&self.conn)
            .ok_or_else(|| std::io::Error::other("the image's file is not open"))?
            .read_exact_at(buf, offset)
    }
}

impl Drop for FirmSnapshot {
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("COMMIT");
    }
}

/// What the pause in the firm's writer hands back.
struct Taken {
    conn: Option<Connection>,
    index: Option<WalIndex>,
    since: Option<(String, HashSet<u32>)>,
    paused: Duration,
}

impl FirmDb {
    /// Takes a consistent image of the database (see the module comment).
    /// `track`: the repository (a stable key) and the new snapshot's id, to
    /// learn which pages changed since that repository's last snapshot
    /// (see `dirty`); commit or abort it with `dirty::commit`/`abort`.
    /// Blocking.
    pub fn snapshot(&self, track: Option<(&str, &str)>) -> Result<FirmSnapshot, StoreError> {
        let conn = self.open_reader()?;
        // SQLCipher answers with its cipher page size, as text.
        let page_size: usize = conn
            .query_row("PRAGMA cipher_page_size", [], |r| r.get::<_, String>(0))?
            .trim()
            .parse()
            .map_err(|_| StoreError::Corrupt("cipher_page_size is not a number".into()))?;
        let wal_path = wal_path(&self.path);
        let db_path = self.path.clone();
        let track = track.map(|(r, s)| (r.to_owned(), s.to_owned()));
        let taken = Arc::new(Mutex::new(Taken {
            conn: Some(conn),
            index: None,
            since: None,
            paused: Duration::ZERO,
        }));
        let slot = taken.clone();
        // Runs inside the writer's transaction, before any later commit: the
        // only time writers wait. It may run twice (a batch replay); the
        // last run wins.
        self.write_blocking(move |_tx| {
            #[allow(clippy::disallowed_methods)] // clock: the pause is real elapsed time
            let started = std::time::Instant::now(); // clock: a measurement of real time
            let mut t = slot.lock().map_err(|_| StoreError::CommandPanicked)?;
            let c = t.conn.as_ref().ok_or(StoreError::CommandPanicked)?;
            if !c.is_autocommit() {
                c.execute_batch("COMMIT")?;
            }
            c.execute_batch("BEGIN")?;
            // The first read starts the read transaction at the last commit.
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            t.index = read_wal_index(c)?;
            // Checkpoints run only in the firm's writer turns, and this is one:
            // none is between the index and this.
            t.since = track
                .as_ref()
                .and_then(|(repo, id)| dirty::begin(&db_path, repo, id));
            t.paused = started.elapsed();
            Ok(())
        })?;
        let mut t = taken.lock().map_err(|_| StoreError::CommandPanicked)?;
        let conn = t.conn.take().ok_or(StoreError::CommandPanicked)?;
        let (wal_header, wal_frames) = match t.index {
            // No WAL index: the main file alone is the image only if there is no WAL either.
            None if std::fs::metadata(&wal_path).is_ok_and(|m| m.len() > 0) => {
                return Err(StoreError::Corrupt(format!(
                    "{}: a WAL without its index",
                    wal_path.display()
                )));
            }
            None => (None, 0),
            // Checkpoints had copied every committed frame: the main file is the image.
            Some(i) if i.max_frame == 0 || i.backfilled >= i.max_frame => (None, 0),
            Some(i) => (
                Some(read_wal_header(&wal_path, page_size, &i)?),
                i.max_frame,
            ),
        };
        let audit_size = audit_log::size(&conn)?;
        let audit_root = audit_log::root(&conn, audit_size)?;
        Ok(FirmSnapshot {
            conn,
            path: self.path.clone(),
            wal_header,
            wal_frames,
            wal_path,
            page_size,
            audit_size,
            audit_root,
            paused: t.paused,
            since: t.since.take(),
        })
    }
}

/// Reads and checks the WAL header the index describes.
fn read_wal_header(
    path: &Path,
    page_size: usize,
    i: &WalIndex,
) -> Result<[u8; WAL_HEADER], StoreError> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; WAL_HEADER];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut h, 0))
        .map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
    if h[16..24] != i.salts || header_sum(&h, page_size).is_none() {
        return Err(StoreError::Corrupt(format!(
            "{}: the WAL header is not the one its index names",
            path.display()
        )));
    }
    Ok(h)
}

impl FirmSnapshot {
    /// The image's WAL frames `from + 1 ..= wal_frames`, read now and checked
    /// like SQLite's recovery (salts, the checksum chain continued from
    /// frame `from`, a commit frame last). Frames never change once
    /// committed while the image's read transaction is open.
    pub fn wal_frames_after(&self, from: u32) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt;
        let Some(header) = &self.wal_header else {
            return Ok(Vec::new());
        };
        let bad = || {
            StoreError::Corrupt(format!(
                "{}: the WAL does not hold the {} committed frames its index names",
                self.wal_path.display(),
                self.wal_frames
            ))
        };
        if from > self.wal_frames {
            return Err(bad());
        }
        let frame = (FRAME_HEADER + self.page_size) as u64;
        let f = std::fs::File::open(&self.wal_path).map_err(|source| StoreError::Io {
            path: self.wal_path.display().to_string(),
            source,
        })?;
        let start = WAL_HEADER as u64 + u64::from(from) * frame;
        let sum = if from == 0 {
            header_sum(header, self.page_size).ok_or_else(bad)?
        } else {
            let mut h = [0u8; FRAME_HEADER];
            f.read_exact_at(&mut h, start - frame).map_err(|_| bad())?;
            if h[8..16] != header[16..24] {
                return Err(bad());
            }
            (be32(&h, 16), be32(&h, 20))
        };
        let mut frames = vec![0u8; (u64::from(self.wal_frames - from) * frame) as usize];
        f.read_exact_at(&mut frames, start).map_err(|_| bad())?;
        if committed_frames(header, sum, &frames, self.page_size) != frames.len() {
            return Err(bad());
        }
        Ok(frames)
    }
}

pub(crate) fn wal_path(db: &Path) -> PathBuf {
    side_path(db, "-wal")
}

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing
/// from `s`; `big` says how the 32-bit words are read.
fn wal_checksum(data: &[u8], big: bool, mut s: (u32, u32)) -> (u32, u32) {
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big {
            (be32(w, 0), be32(w, 4))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s.0 = s.0.wrapping_add(x0).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(x1).wrapping_add(s.0);
    }
    s
}

/// The WAL header's own checksum, checked: the start of the frame chain.
/// None if the header is not a valid one for `page_size`.
fn header_sum(h: &[u8], page_size: usize) -> Option<(u32, u32)> {
    if h.len() < WAL_HEADER || page_size == 0 {
        return None;
    }
    let magic = be32(h, 0);
    if magic & !1 != 0x377f_0682 || be32(h, 8) as usize != page_size {
        return None;
    }
    let sum = wal_checksum(&h[..24], magic & 1 == 1, (0, 0));
    (sum == (be32(h, 24), be32(h, 28))).then_some(sum)
}

/// How many bytes of `frames` (whole frames following a frame whose
/// running checksum is `sum`) end at the last valid commit frame.
fn committed_frames(header: &[u8], mut sum: (u32, u32), frames: &[u8], page_size: usize) -> usize {
    let big = be32(header, 0) & 1 == 1;
    let salts = (be32(header, 16), be32(header, 20));
    let frame = FRAME_HEADER + page_size;
    let (mut at, mut kept) = (0, 0);
    while at + frame <= frames.len() {
        let h = &frames[at..at + FRAME_HEADER];
        if (be32(h, 8), be32(h, 12)) != salts || be32(h, 0) == 0 {
            break;
        }
        sum = wal_checksum(&h[..8], big, sum);
        sum = wal_checksum(&frames[at + FRAME_HEADER..at + frame], big, sum);
        if sum != (be32(h, 16), be32(h, 20)) {
            break;
        }
        at += frame;
        if be32(h, 4) != 0 {
            kept = at;
        }
    }
    kept
}

/// The length of `wal`'s prefix that ends at its last valid commit frame:
/// the frames SQLite's recovery would keep (matching salts, an unbroken
/// checksum chain). 0 when no frame is committed.
pub fn committed_prefix(wal: &[u8], page_size: usize) -> usize {
    match header_sum(wal, page_size) {
        Some(sum) => match committed_frames(wal, sum, &wal[WAL_HEADER..], page_size) {
            0 => 0,
            n => WAL_HEADER + n,
        },
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::SqlcipherKey;
    use crate::crypto::secret::SecretKey;

    fn key() -> SqlcipherKey {
        SqlcipherKey::from_secret(&SecretKey::from_bytes([7; 32]))
    }

    #[test]
    fn the_image_is_the_state_at_the_pause_and_later_writes_are_not_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(), true).unwrap();
        db.write_blocking(|tx| tx.set_profile("display_name", "before", "t"))
            .unwrap();
        let snap = db.snapshot(None).unwrap();
        assert!(snap.wal_frames > 0, "the commit is still in the WAL");
        let wal = whole_wal(&snap);
        // Written after the image: must not be in it.
        db.write_blocking(|tx| tx.set_profile("display_name", "after", "t"))
            .unwrap();
        let main = std::fs::read(snap.db_path()).unwrap();
        let out = dir.path().join("copy.db");
        std::fs::write(&out, &main).unwrap();
        std::fs::write(wal_path(&out), &wal).unwrap();
        drop(snap);
        db.close();
        let copy = FirmDb::open("frm_x", &out, key(), false).unwrap();
        let name = copy
            .read_blocking(|r| {
                Ok(r.conn
                    .query_row("SELECT v FROM profile WHERE k = 'display_name'", [], |r| {
                        r.get::<_, String>(0)
                    })?)
            })
            .unwrap();
        assert_eq!(name, "before");
    }

    fn whole_wal(snap: &FirmSnapshot) -> Vec<u8> {
        let mut wal = snap.wal_header.unwrap().to_vec();
        wal.extend(snap.wal_frames_after(0).unwrap());
        wal
    }

    fn profile_name(db: &FirmDb) -> String {
        db.read_blocking(|r| {
            Ok(r.conn
                .query_row("SELECT v FROM profile WHERE k = 'display_name'", [], |r| {
                    r.get::<_, String>(0)
                })?)
        })
        .unwrap()
    }

    #[test]
    fn after_a_checkpoint_the_main_file_alone_is_the_image_and_stays_still() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(), true).unwrap();
        db.write_blocking(|tx| tx.set_profile("display_name", "checkpointed", "t"))
            .unwrap();
        let other = crate::store::open_firm(&path, &key(), rusqlite::OpenFlags::default()).unwrap();
        other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        let snap = db.snapshot(None).unwrap();
        assert!(
            snap.wal_header.is_none(),
            "every frame was in the main file"
        );
        // Later writes, and a checkpoint attempt, leave the main file as it was.
        for i in 0..50 {
            db.write_blocking(move |tx| tx.set_profile("display_name", &format!("later {i}"), "t"))
                .unwrap();
        }
        other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        let out = dir.path().join("copy.db");
        std::fs::copy(snap.db_path(), &out).unwrap();
        drop(snap);
        let copy = FirmDb::open("frm_x", &out, key(), false).unwrap();
        assert_eq!(profile_name(&copy), "checkpointed");
    }

    #[test]
    fn a_torn_or_uncommitted_tail_is_cut_and_garbage_keeps_nothing() {
        assert_eq!(committed_prefix(b"", 4096), 0);
        assert_eq!(committed_prefix(&[0u8; 5000], 4096), 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(), true).unwrap();
        for i in 0..3 {
            db.write_blocking(move |tx| tx.set_profile("display_name", &format!("n{i}"), "t"))
                .unwrap();
        }
        let snap = db.snapshot(None).unwrap();
        let wal = whole_wal(&snap);
        // Reading from a later frame continues the chain from that frame.
        let tail = snap.wal_frames_after(2).unwrap();
        assert_eq!(&wal[wal.len() - tail.len()..], &tail[..]);
        assert!(snap.wal_frames_after(snap.wal_frames + 1).is_err());
        let n = committed_prefix(&wal, 4096);
        assert_eq!(n, wal.len());
        assert_eq!((n - WAL_HEADER) % (FRAME_HEADER + 4096), 0);
        // A flipped byte in the last frame ends the log before that frame.
        let mut torn = wal.clone();
        let last = torn.len() - 100;
        torn[last] ^= 1;
        assert!(committed_prefix(&torn, 4096) < n);
        // A wrong page size or a broken header keeps nothing.
        assert_eq!(committed_prefix(&wal, 1024), 0);
        let mut bad = wal;
        bad[3] ^= 0x10;
        assert_eq!(committed_prefix(&bad, 4096), 0);
    }
}
