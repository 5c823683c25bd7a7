//! A firm's subject peppers: `firms/<id>.peppers`, fixed 32-byte slots of
//! random bytes, one per data subject, kept outside the firm database and
//! so outside every snapshot of it.
//!
//! A subject's key is derived from its pepper and from a key sealed in the
//! database (see `records::subject_keys`); erasing the subject zeroes the
//! slot here and in the backup repository's copy. A snapshot taken before
//! the erasure still holds the sealed half, but the pepper it needs is gone
//! from every place that keeps one: erasure reaches into old backups.
//!
//! Slots are made ahead, in batches, and synced before the database hands
//! one out, so a committed record never names a slot that could be lost.
//! An all-zero slot is an erased one. Readers use `pread`; appends and
//! zeroing hold a lock.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const SLOT: u64 = 32;
/// Slots made at a time when the file runs out.
const BATCH: u64 = 1024;

/// Serialises copying pepper files into a repository with zeroing a slot
/// there, so a copy never puts back a slot an erasure just zeroed.
pub static REPOSITORY_COPY: Mutex<()> = Mutex::new(());

/// One firm's pepper file (created with its first slot).
pub struct Peppers {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl std::fmt::Debug for Peppers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peppers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl Peppers {
    /// The pepper file beside a firm database (`<id>.db` → `<id>.peppers`).
    pub fn beside(db_path: &Path) -> Self {
        Self {
            path: db_path.with_extension("peppers"),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_file<R>(
        &self,
        create: bool,
        f: impl FnOnce(&File) -> std::io::Result<R>,
    ) -> std::io::Result<Option<R>> {
        let mut g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            match open_rw(&self.path, create) {
                Ok(file) => *g = Some(file),
                Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        match g.as_ref() {
            Some(file) => f(file).map(Some),
            None => Ok(None),
        }
    }

    /// Makes sure slot `index` exists and is durable, adding a batch of
    /// fresh random slots (synced, with the directory) if it does not.
    pub fn ensure(&self, index: u64) -> std::io::Result<()> {
        // Only the firm's first subject makes the file: a file missing
        // later is lost, and making a fresh one would shadow every key.
        let made = self.with_file(index == 0, |file| {
            let len = file.metadata()?.len();
            if (index + 1) * SLOT <= len {
                return Ok(());
            }
            let slots = (index + 1 - len / SLOT).max(BATCH);
            let mut fresh = zeroize::Zeroizing::new(vec![0u8; (slots * SLOT) as usize]);
            crate::crypto::fill_random(&mut fresh).map_err(std::io::Error::other)?;
            file.write_all_at(&fresh, len - len % SLOT)?;
            file.sync_all()?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })?;
        made.ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} is missing: restore it from the backup repository's peppers/",
                    self.path.display()
                ),
            )
        })
    }

    /// Slot `index`, or None if it is missing or erased.
    pub fn read(&self, index: u64) -> std::io::Result<Option<zeroize::Zeroizing<[u8; 32]>>> {
        Ok(self
            .with_file(false, |file| read_slot(file, index))?
            .flatten())
    }

    /// Zeroes slot `index` and syncs it (erasure).
    pub fn zero(&self, index: u64) -> std::io::Result<()> {
        self.with_file(false, |file| zero_slot(file, index))
            .map(|_| ())
    }
}

fn read_slot(file: &File, index: u64) -> std::io::Result<Option<zeroize::Zeroizing<[u8; 32]>>> {
    let mut buf = zeroize::Zeroizing::new([0u8; 32]);
    match file.read_exact_at(&mut buf[..], index * SLOT) {
        Ok(()) => Ok((buf.iter().any(|b| *b != 0)).then_some(buf)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn zero_slot(file: &File, index: u64) -> std::io::Result<()> {
    if (index + 1) * SLOT > file.metadata()?.len() {
        return Ok(());
    }
    // Security invariant: an erased subject's pepper is overwritten in place and synced.
    file.write_all_at(&[0u8; SLOT as usize], index * SLOT)?;
    file.sync_data()
}

/// Zeroes slot `index` of a pepper file elsewhere (a repository's copy);
/// a missing file holds nothing to zero.
pub fn zero_in(path: &Path, index: u64) -> std::io::Result<()> {
    match open_rw(path, false) {
        Ok(file) => zero_slot(&file, index),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a pepper file to `to` durably (see `store::files`).
pub fn copy_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(from)?);
    super::files::write_durably(to, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_made_ahead_read_and_zeroed() {
        let t = tempfile::tempdir().unwrap();
        let p = Peppers::beside(&t.path().join("frm_a.db"));
        assert!(p.read(0).unwrap().is_none(), "no file yet");
        assert!(!p.path().exists());
        assert!(p.ensure(3).is_err(), "a later slot never makes the file");
        p.ensure(0).unwrap();
        assert_eq!(std::fs::metadata(p.path()).unwrap().len(), BATCH * SLOT);
        let a = p.read(0).unwrap().unwrap();
        let b = p.read(1).unwrap().unwrap();
        assert_ne!(*a, *b);
        assert!(p.read(BATCH).unwrap().is_none());
        p.ensure(BATCH + 5).unwrap();
        assert_eq!(std::fs::metadata(p.path()).unwrap().len(), 2 * BATCH * SLOT);
        assert_eq!(*p.read(0).unwrap().unwrap(), *a, "growing keeps slots");
        p.zero(1).unwrap();
        assert!(p.read(1).unwrap().is_none());
        assert_eq!(*p.read(0).unwrap().unwrap(), *a);
        let copy = t.path().join("repo/peppers/frm_a.peppers");
        copy_durably(p.path(), &copy).unwrap();
        zero_in(&copy, 0).unwrap();
        zero_in(&t.path().join("missing"), 0).unwrap();
        let c = Peppers::beside(&copy.with_extension("db"));
        assert!(c.read(0).unwrap().is_none() && c.read(1).unwrap().is_none());
        assert!(c.read(2).unwrap().is_some());
    }
}
