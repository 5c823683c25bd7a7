//! The backup repository: a directory of content-addressed chunks in packs,
//! per-file chunk lists, and one signed manifest per snapshot.
//!
//! ```text
//! <repo>/
//!   strongroom-backup.json        format, appliance id, verifier key (not trusted: the
//!                                 registry in each snapshot names the real key)
//!   lock                          flock(2): one writer (create, prune) at a time
//!   prune.lock                    flock(2): shared by readers (verify, drill, restore),
//!                                 exclusive by prune, which deletes
//!   packs/<hh>/<pack>.pack        chunks back to back; <pack> = BLAKE3 of the file
//!   packs/<hh>/<pack>.idx         per chunk: id (32) | offset (u64 BE) | length (u32 BE)
//!   lists/<hh>/<list>             a file's chunk ids in order (32 bytes each); <list> = BLAKE3
//!   snapshots/<id>.note           the manifest, a signed note (see manifest.rs)
//! ```
//!
//! Everything is verified by content: a chunk must hash to its id, a list to
//! its id, and the manifest that names the lists carries the appliance's
//! signature. Packs, lists and manifests are written to a temporary name,
//! fsynced and renamed, and a manifest only after everything it names is
//! durable, so a crash leaves at most unreferenced packs (prune removes them).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackupError;
use crate::crypto::hex;

/// A chunk's, list's or pack's id: the BLAKE3 hash of its bytes.
pub type Id = [u8; 32];

pub const FORMAT: &str = "strongroom-backup/1";
/// A pack is written once its chunks reach this size.
const PACK_TARGET: usize = 16 * 1024 * 1024;
const IDX_ENTRY: usize = 32 + 8 + 4;

pub fn id_of(bytes: &[u8]) -> Id {
    *blake3::hash(bytes).as_bytes()
}

pub fn parse_id(s: &str) -> Option<Id> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: String,
    pub appliance_id: String,
    pub verifier_key: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Loc {
    pub pack: Id,
    pub offset: u64,
    pub len: u32,
}

/// An open repository and its chunk index.
pub struct Repo {
    dir: PathBuf,
    pub config: RepoConfig,
    index: HashMap<Id, Loc>,
    pack: Vec<u8>,
    pack_entries: Vec<(Id, u64, u32)>,
    pending: HashSet<Id>,
    /// Bytes of new packs and lists written since open.
    pub bytes_added: u64,
    /// Chunks stored since open (deduplicated ones not counted).
    pub chunks_added: u64,
    /// flock(2)s held for the repository's life.
    locks: Vec<nix::fcntl::Flock<File>>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("dir", &self.dir)
            .field("chunks", &self.index.len())
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn mkdir(path: &Path) -> Result<(), BackupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

fn fsync_dir(path: &Path) -> Result<(), BackupError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

/// Takes an exclusive (or shared) flock on `path`, without waiting.
fn lock(path: &Path, exclusive: bool) -> Result<nix::fcntl::Flock<File>, BackupError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    let arg = if exclusive {
        nix::fcntl::FlockArg::LockExclusiveNonblock
    } else {
        nix::fcntl::FlockArg::LockSharedNonblock
    };
    nix::fcntl::Flock::lock(f, arg).map_err(|_| BackupError::Busy)
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, and
/// an fsync of the directory.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    crate::store::files::write_durably(path, bytes).map_err(io(path))
}

impl Repo {
    fn blob_path(&self, kind: &str, id: &Id, ext: &str) -> PathBuf {
        let h = hex(id);
        self.dir.join(kind).join(&h[..2]).join(format!("{h}{ext}"))
    }

    /// Opens the repository at `dir`, creating it for this appliance if it
    /// does not exist. One writer (create or prune) at a time holds `lock`;
    /// a prune, which deletes, also waits for no reader to hold `prune.lock`.
    pub fn open_for_write(
        dir: &Path,
        config: RepoConfig,
        pruning: bool,
    ) -> Result<Self, BackupError> {
        // A prune never creates a repository (a mistyped path is an error).
        if pruning && !dir.join("strongroom-backup.json").exists() {
            return Err(BackupError::NoRepository(dir.display().to_string()));
        }
        mkdir(dir)?;
        let mut locks = vec![lock(&dir.join("lock"), true)?];
        if pruning {
            locks.push(lock(&dir.join("prune.lock"), true)?);
        }
        let cfg_path = dir.join("strongroom-backup.json");
        if !cfg_path.exists() {
            let body = serde_json::to_vec_pretty(&config).unwrap_or_default();
            write_durable(&cfg_path, &body)?;
        }
        let mut repo = Self::open(dir)?;
        if repo.config.appliance_id != config.appliance_id {
            return Err(BackupError::Invalid(format!(
                "{} holds backups of appliance {}, not this one ({})",
                dir.display(),
                repo.config.appliance_id,
                config.appliance_id
            )));
        }
        repo.locks = locks;
        Ok(repo)
    }

    /// Opens an existing repository to read all of it (verify, drill,
    /// restore): a prune cannot delete under it meanwhile.
    pub fn open_reading(dir: &Path) -> Result<Self, BackupError> {
        // The lock first, then the index: a prune between the two would
        // leave the index naming packs that are gone.
        if !dir.join("strongroom-backup.json").exists() {
            return Err(BackupError::NoRepository(dir.display().to_string()));
        }
        let mut locks = Vec::new();
        let path = dir.join("prune.lock");
        // A read-only medium cannot be pruned either: no lock needed there.
        if let Ok(f) = OpenOptions::new().read(true).open(&path).or_else(|_| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
        }) {
            let l = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock)
                .map_err(|_| BackupError::Busy)?;
            locks.push(l);
        }
        let mut repo = Self::open(dir)?;
        repo.locks = locks;
        Ok(repo)
    }

    /// Opens an existing repository to read it.
    pub fn open(dir: &Path) -> Result<Self, BackupError> {
        let cfg_path = dir.join("strongroom-backup.json");
        let raw = fs::read(&cfg_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::NoRepository(dir.display().to_string())
            } else {
                io(&cfg_path)(e)
            }
        })?;
        let config: RepoConfig = serde_json::from_slice(&raw)
            .map_err(|e| BackupError::Invalid(format!("{}: {e}", cfg_path.display())))?;
        if config.format != FORMAT {
            return Err(BackupError::Invalid(format!(
                "{} is format {:?}, this build reads {FORMAT:?}",
                dir.display(),
                config.format
            )));
        }
        let mut repo = Self {
            dir: dir.to_owned(),
            config,
            index: HashMap::new(),
            pack: Vec::new(),
            pack_entries: Vec::new(),
            pending: HashSet::new(),
            bytes_added: 0,
            chunks_added: 0,
            locks: Vec::new(),
        };
        repo.load_index()?;
        Ok(repo)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every pack id with an index file.
    pub fn packs(&self) -> Result<Vec<Id>, BackupError> {
        let mut out = Vec::new();
        let root = self.dir.join("packs");
        let Ok(subdirs) = fs::read_dir(&root) else {
            return Ok(out);
        };
        for sub in subdirs.flatten() {
            for f in fs::read_dir(sub.path()).map_err(io(&sub.path()))?.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".idx").and_then(parse_id) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn pack_index(&self, pack: &Id) -> Result<Vec<(Id, Loc)>, BackupError> {
        let path = self.blob_path("packs", pack, ".idx");
        let raw = fs::read(&path).map_err(io(&path))?;
        if raw.len() % IDX_ENTRY != 0 {
            return Err(BackupError::Damaged(format!(
                "pack index {} is truncated",
                hex(pack)
            )));
        }
        Ok(raw
            .chunks_exact(IDX_ENTRY)
            .map(|e| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[..32]);
                let mut off = [0u8; 8];
                off.copy_from_slice(&e[32..40]);
                let mut len = [0u8; 4];
                len.copy_from_slice(&e[40..44]);
                (
                    id,
                    Loc {
                        pack: *pack,
                        offset: u64::from_be_bytes(off),
                        len: u32::from_be_bytes(len),
                    },
                )
            })
            .collect())
    }

    fn load_index(&mut self) -> Result<(), BackupError> {
        for pack in self.packs()? {
            for (id, loc) in self.pack_index(&pack)? {
                self.index.insert(id, loc);
            }
        }
        Ok(())
    }

    pub fn has(&self, id: &Id) -> bool {
        self.index.contains_key(id) || self.pending.contains(id)
    }

    /// Stores a chunk unless the repository already has it.
    pub fn add_chunk(&mut self, id: Id, bytes: &[u8]) -> Result<(), BackupError> {
        if self.has(&id) {
            return Ok(());
        }
        let offset = self.pack.len() as u64;
        self.pack.extend_from_slice(bytes);
        self.pack_entries.push((id, offset, bytes.len() as u32));
        self.pending.insert(id);
        self.chunks_added += 1;
        if self.pack.len() >= PACK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pack being filled, then its index; both durable.
    pub fn flush(&mut self) -> Result<(), BackupError> {
        if self.pack_entries.is_empty() {
            return Ok(());
        }
        let pack_id = id_of(&self.pack);
        write_durable(&self.blob_path("packs", &pack_id, ".pack"), &self.pack)?;
        let mut idx = Vec::with_capacity(self.pack_entries.len() * IDX_ENTRY);
        for (id, off, len) in &self.pack_entries {
            idx.extend_from_slice(id);
            idx.extend_from_slice(&off.to_be_bytes());
            idx.extend_from_slice(&len.to_be_bytes());
        }
        write_durable(&self.blob_path("packs", &pack_id, ".idx"), &idx)?;
        self.bytes_added += (self.pack.len() + idx.len()) as u64;
        for (id, offset, len) in self.pack_entries.drain(..) {
            self.index.insert(
                id,
                Loc {
                    pack: pack_id,
                    offset,
                    len,
                },
            );
        }
        self.pack.clear();
        self.pending.clear();
        Ok(())
    }

    pub fn locate(&self, id: &Id) -> Option<Loc> {
        self.index.get(id).copied()
    }

    /// Reads a chunk and checks it hashes to its id.
    pub fn read_chunk(&self, id: &Id, packs: &mut PackCache) -> Result<Vec<u8>, BackupError> {
        let loc = self
            .locate(id)
            .ok_or_else(|| BackupError::Damaged(format!("chunk {} is missing", hex(id))))?;
        let f = packs.get(self, &loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        f.seek(SeekFrom::Start(loc.offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|_| {
                BackupError::Damaged(format!(
                    "chunk {} is missing from pack {} (truncated?)",
                    hex(id),
                    hex(&loc.pack)
                ))
            })?;
        if id_of(&buf) != *id {
            return Err(BackupError::Damaged(format!(
                "chunk {} in pack {} does not match its hash",
                hex(id),
                hex(&loc.pack)
            )));
        }
        Ok(buf)
    }

    /// Stores a file's chunk list; its id.
    pub fn put_list(&mut self, ids: &[Id]) -> Result<Id, BackupError> {
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.iter().copied()).collect();
        let id = id_of(&bytes);
        let path = self.blob_path("lists", &id, "");
        if !path.exists() {
            write_durable(&path, &bytes)?;
            self.bytes_added += bytes.len() as u64;
        }
        Ok(id)
    }

    /// Reads a chunk list and checks it hashes to its id.
    pub fn read_list(&self, id: &Id) -> Result<Vec<Id>, BackupError> {
        let path = self.blob_path("lists", id, "");
        let bytes = fs::read(&path)
            .map_err(|_| BackupError::Damaged(format!("chunk list {} is missing", hex(id))))?;
        if id_of(&bytes) != *id || bytes.len() % 32 != 0 {
            return Err(BackupError::Damaged(format!(
                "chunk list {} does not match its hash",
                hex(id)
            )));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut i = [0u8; 32];
                i.copy_from_slice(c);
                i
            })
            .collect())
    }

    pub fn list_ids(&self) -> Result<Vec<Id>, BackupError> {
        let mut out = Vec::new();
        let Ok(subdirs) = fs::read_dir(self.dir.join("lists")) else {
            return Ok(out);
        };
        for sub in subdirs.flatten() {
            for f in fs::read_dir(sub.path()).map_err(io(&sub.path()))?.flatten() {
                if let Some(id) = parse_id(&f.file_name().to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    pub fn remove_list(&self, id: &Id) -> Result<(), BackupError> {
        let p = self.blob_path("lists", id, "");
        fs::remove_file(&p).map_err(io(&p))
    }

    /// Removes a pack and its index (index first: a pack without one is
    /// garbage that the next prune removes).
    pub fn remove_pack(&mut self, id: &Id) -> Result<u64, BackupError> {
        let idx = self.blob_path("packs", id, ".idx");
        let pack = self.blob_path("packs", id, ".pack");
        let size = fs::metadata(&pack).map(|m| m.len()).unwrap_or(0)
            + fs::metadata(&idx).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&idx).map_err(io(&idx))?;
        let _ = fs::remove_file(&pack);
        self.index.retain(|_, l| l.pack != *id);
        Ok(size)
    }

    /// Drops a pack's chunks from the in-memory index only (before its live
    /// chunks are copied into a new pack).
    pub fn forget_pack(&mut self, id: &Id) {
        self.index.retain(|_, l| l.pack != *id);
    }

    /// Pack files that have no index (left by a crash): removed by prune.
    pub fn orphan_packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(subdirs) = fs::read_dir(self.dir.join("packs")) else {
            return out;
        };
        for sub in subdirs.flatten() {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let p = f.path();
                let name = f.file_name().to_string_lossy().into_owned();
                let orphan = match name.strip_suffix(".pack") {
                    Some(stem) => !p.with_file_name(format!("{stem}.idx")).exists(),
                    None => name.starts_with(".tmp-"),
                };
                if orphan {
                    out.push(p);
                }
            }
        }
        out
    }

    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(format!("{id}.note"))
    }

    /// Snapshot ids, oldest first (ids sort by time).
    pub fn snapshot_ids(&self) -> Result<Vec<String>, BackupError> {
        let dir = self.dir.join("snapshots");
        let mut out = Vec::new();
        // Only a missing directory means "no snapshots": any other error must
        // stop a prune, which would otherwise take every chunk for garbage.
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".note")
                && super::manifest::valid_snapshot_id(id)
            {
                out.push(id.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn read_snapshot_note(&self, id: &str) -> Result<String, BackupError> {
        let p = self.snapshot_path(id);
        let raw = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::NoSnapshot(id.to_owned())
            } else {
                io(&p)(e)
            }
        })?;
        String::from_utf8(raw)
            .map_err(|_| BackupError::Damaged(format!("snapshot {id}'s manifest is not text")))
    }

    pub fn remove_snapshot(&self, id: &str) -> Result<(), BackupError> {
        let p = self.snapshot_path(id);
        fs::remove_file(&p).map_err(io(&p))?;
        fsync_dir(&self.dir.join("snapshots"))
    }

    /// Total bytes of packs, lists and manifests.
    pub fn size_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.dir)
    }
}

/// Open pack files, kept while a restore or verify reads them.
#[derive(Default)]
pub struct PackCache {
    open: HashMap<Id, File>,
}

impl PackCache {
    fn get(&mut self, repo: &Repo, id: &Id) -> Result<&mut File, BackupError> {
        if !self.open.contains_key(id) {
            if self.open.len() >= 64 {
                self.open.clear();
            }
            let p = repo.blob_path("packs", id, ".pack");
            let f = File::open(&p)
                .map_err(|_| BackupError::Damaged(format!("pack {} is missing", hex(id))))?;
            self.open.insert(*id, f);
        }
        self.open
            .get_mut(id)
            .ok_or_else(|| BackupError::Damaged(format!("pack {} is missing", hex(id))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(appliance: &str) -> RepoConfig {
        RepoConfig {
            format: FORMAT.to_owned(),
            appliance_id: appliance.to_owned(),
            verifier_key: "k".to_owned(),
        }
    }

    #[test]
    fn a_prune_waits_for_readers_and_one_writer_holds_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let w = Repo::open_for_write(dir.path(), config("a"), false).unwrap();
        // A second writer is refused while the first holds the lock.
        assert!(matches!(
            Repo::open_for_write(dir.path(), config("a"), false),
            Err(BackupError::Busy)
        ));
        drop(w);
        let r = Repo::open_reading(dir.path()).unwrap();
        // A create may run under a reader; a prune, which deletes, may not.
        drop(Repo::open_for_write(dir.path(), config("a"), false).unwrap());
        assert!(matches!(
            Repo::open_for_write(dir.path(), config("a"), true),
            Err(BackupError::Busy)
        ));
        drop(r);
        drop(Repo::open_for_write(dir.path(), config("a"), true).unwrap());
        // Another appliance's repository is refused.
        assert!(matches!(
            Repo::open_for_write(dir.path(), config("b"), false),
            Err(BackupError::Invalid(_))
        ));
    }

    #[test]
    fn a_prune_never_takes_unreadable_snapshots_for_garbage() {
        let dir = tempfile::tempdir().unwrap();
        // No repository there: a prune does not create one.
        assert!(matches!(
            Repo::open_for_write(&dir.path().join("typo"), config("a"), true),
            Err(BackupError::NoRepository(_))
        ));
        let mut repo = Repo::open_for_write(dir.path(), config("a"), false).unwrap();
        repo.add_chunk(id_of(b"page"), b"page").unwrap();
        repo.flush().unwrap();
        drop(repo);
        // Packs but no manifest (lost, or unreadable): nothing is deleted.
        let mut repo = Repo::open_for_write(dir.path(), config("a"), true).unwrap();
        let policy = super::super::Policy {
            keep_last: 1,
            keep_daily: 0,
        };
        let e = super::super::prune::prune(&mut repo, policy, "k").unwrap_err();
        assert!(matches!(e, BackupError::Damaged(_)), "{e}");
        assert_eq!(repo.packs().unwrap().len(), 1);
        // A snapshots directory that cannot be read is an error, not "none".
        std::fs::write(dir.path().join("snapshots"), b"not a directory").unwrap();
        assert!(repo.snapshot_ids().is_err());
    }

    #[test]
    fn chunks_are_stored_once_and_checked_against_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repo::open_for_write(dir.path(), config("a"), false).unwrap();
        let page = vec![7u8; 4096];
        let id = id_of(&page);
        repo.add_chunk(id, &page).unwrap();
        repo.add_chunk(id, &page).unwrap();
        repo.flush().unwrap();
        assert_eq!(repo.chunks_added, 1);
        let list = repo.put_list(&[id, id]).unwrap();
        let reopened = Repo::open(dir.path()).unwrap();
        let mut packs = PackCache::default();
        assert_eq!(reopened.read_list(&list).unwrap(), vec![id, id]);
        assert_eq!(reopened.read_chunk(&id, &mut packs).unwrap(), page);
        let missing = id_of(b"other");
        let e = reopened.read_chunk(&missing, &mut packs).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
