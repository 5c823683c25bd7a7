//! A firm's database (`<state_dir>/firms/<firm_id>.db`): WAL, `synchronous=FULL`,
//! `secure_delete=ON`, foreign keys on. Its one write connection belongs to
//! the shared writer pool (group commit, see `store::writer`); reads use a
//! small pool of read-only connections. Writes run on a writer pool thread.
//! Reads block their caller: services run them on a blocking lane, except
//! the request path's hot reads (a cached API key, an already-audited record
//! read), which run one pooled read on an async worker by design, because a
//! page-cache hit costs microseconds and a lane hop costs more.

mod dirty;
mod people;
mod read;
mod rows;
mod schema;
mod snapshot;
mod subjects;
mod webhooks;
mod write;

pub use dirty::{abort as abort_snapshot, commit as commit_snapshot};
pub(crate) use dirty::{after_commit, before_close};
pub use people::{SessionAuth, SessionRow, UserRow};
pub use read::ReadTx;
pub use rows::{ApiKeyRow, RecordRow, SealedRecord, SecretRow};
pub use snapshot::{FirmSnapshot, committed_prefix};
pub use webhooks::{AttemptRow, EndpointRow, MessageRow, NewMessage};
pub use write::WriteTx;

use schema::MIGRATIONS;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::audit_log;
pub use super::audit_log::{AuditRow, AuditVerification};
use super::writer::Writer;
use super::{PageFormat, StoreError, migrate, open_firm_file, open_with_format};
use crate::crypto::keyring::SqlcipherKey;

/// Read-only connections kept open per firm (the HTTP layer runs at most
/// this many blocking requests at once, so they stay warm).
pub const MAX_IDLE_READERS: usize = 16;

/// Waits for a writer's reply on a plain thread: polls briefly (a commit is a
/// few hundred microseconds), then sleeps.
fn wait_reply<R, E: From<StoreError>>(mut rx: oneshot::Receiver<Result<R, E>>) -> Result<R, E> {
    // clock: a real-time spin of a few hundred microseconds, not domain time.
    #[allow(clippy::disallowed_methods)]
    let until = std::time::Instant::now() + std::time::Duration::from_micros(300); // clock: sub-second real-time wait
    #[allow(clippy::disallowed_methods)]
    while std::time::Instant::now() < until {
        // clock: sub-second real-time wait
        match rx.try_recv() {
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Closed) => return Err(StoreError::WriterGone.into()),
            Err(oneshot::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.blocking_recv()
        .map_err(|_| E::from(StoreError::WriterGone))?
}

fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!("journal_mode is {mode}")));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = 4194304;",
    )?;
    // The WAL and its index stay between opens (emptied at a clean close).
    super::vfs::persist_wal(conn);
    Ok(())
}

/// One open firm database.
pub struct FirmDb {
    firm_id: String,
    path: PathBuf,
    key: Arc<SqlcipherKey>,
    /// The page format the file was found in (every connection uses it).
    format: PageFormat,
    writer: Option<Writer>,
    /// Idle read connections, shared with the writer, which closes them
    /// when the firm is parked (see `store::warm`).
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Async writes queued and not yet answered.
    in_flight: AtomicUsize,
    /// A read connection was opened: short reads use those from then on
    /// (see [`FirmDb::read_short`]).
    readers_opened: AtomicBool,
}

/// Decrements the in-flight count however the write future ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a lone async write polls for its reply before it sleeps.
const LONE_WRITE_POLL: std::time::Duration = std::time::Duration::from_micros(300);

impl std::fmt::Debug for FirmDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmDb")
            .field("firm_id", &self.firm_id)
            .finish_non_exhaustive()
    }
}

impl FirmDb {
    /// Opens (creating if `create`, in the current page format) the firm's
    /// database, runs migrations and hands its write connection to the
    /// writer pool. Blocking: call from a blocking context.
    pub fn open(
        firm_id: &str,
        path: &Path,
        key: SqlcipherKey,
        create: bool,
    ) -> Result<Self, StoreError> {
        Self::open_with(firm_id, path, key, create.then_some(PageFormat::CURRENT))
    }

    /// [`FirmDb::open`], creating a missing file in `create`'s page format
    /// (None: the file must exist).
    pub fn open_with(
        firm_id: &str,
        path: &Path,
        key: SqlcipherKey,
        create: Option<PageFormat>,
    ) -> Result<Self, StoreError> {
        if create.is_none() && !path.exists() {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "firm database missing"),
            });
        }
        let (conn, format) = open_firm_file(
            path,
            &key,
            OpenFlags::default(),
            None,
            create.unwrap_or(PageFormat::CURRENT),
        )?;
        configure_writer(&conn)?;
        migrate(&conn, MIGRATIONS)?;
        conn.execute(
            "INSERT INTO meta (k, v) VALUES ('firm_id', ?1) ON CONFLICT (k) DO NOTHING",
            [firm_id],
        )?;
        let stored: String =
            conn.query_row("SELECT v FROM meta WHERE k = 'firm_id'", [], |r| r.get(0))?;
        if stored != firm_id {
            return Err(StoreError::Corrupt(format!(
                "{} belongs to firm {stored}, not {firm_id}",
                path.display()
            )));
        }
        let key = Arc::new(key);
        let readers = Arc::new(Mutex::new(Vec::new()));
        let (again, again_key) = (path.to_owned(), key.clone());
        // The writer runs every checkpoint itself (see `dirty`).
        let writer = Writer::spawn(
            conn,
            format!("w-{}", &firm_id[..firm_id.len().min(12)]),
            path.to_owned(),
            readers.clone(),
            Box::new(move || {
                let c = open_with_format(&again, &again_key, OpenFlags::default(), format)?;
                configure_writer(&c)?;
                Ok(c)
            }),
        )?;
        Ok(Self {
            firm_id: firm_id.to_owned(),
            path: path.to_owned(),
            key,
            format,
            writer: Some(writer),
            readers,
            in_flight: AtomicUsize::new(0),
            readers_opened: AtomicBool::new(false),
        })
    }

    pub fn firm_id(&self) -> &str {
        &self.firm_id
    }

    /// The page format of the firm's file.
    pub fn page_format(&self) -> PageFormat {
        self.format
    }

    /// Queues a write command; the future resolves after its durable commit.
    /// The command may refuse with the caller's own error type `E`.
    pub async fn write<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let lone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        let _guard = InFlight(&self.in_flight);
        let mut rx = self
            .writer
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .submit(f)?;
        if lone {
            // The only write in flight: the writer is idle and commits it at
            // once (~150 us), so poll for the answer rather than pay a worker
            // wake-up. Under load answers come in batches and tasks sleep.
            // clock: a real-time poll of a few hundred microseconds.
            #[allow(clippy::disallowed_methods)]
            let until = std::time::Instant::now() + LONE_WRITE_POLL; // clock: sub-second real-time wait
            #[allow(clippy::disallowed_methods)]
            while std::time::Instant::now() < until {
                // clock: sub-second real-time wait
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err(StoreError::WriterGone.into());
                    }
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        rx.await.map_err(|_| E::from(StoreError::WriterGone))?
    }

    /// [`FirmDb::write_with`] for commands that fail only with store errors.
    pub fn write_blocking<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_with(f)
    }

    /// The blocking form of [`FirmDb::write`]: queues a command and waits
    /// for its durable commit. The command may refuse with `E`.
    pub fn write_with<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let rx = self
            .writer
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .submit(f)?;
        wait_reply(rx)
    }

    /// Queues a best-effort write nobody waits for (metadata such as a key's
    /// last use). Never acknowledged, so never reported as lost; dropped if
    /// the queue is full.
    pub fn write_detached<F>(&self, f: F)
    where
        F: Fn(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        if let Some(w) = self.writer.as_ref() {
            let _ = w.submit(f);
        }
    }

    /// Queues best-effort metadata (a key's last use) to be written with the
    /// firm's next batch, or before it parks or closes: a firm that is only
    /// read never commits, nor fsyncs, for it. Lost if the process dies
    /// first, so never for anything a decision rests on.
    pub fn write_deferred<F>(&self, f: F)
    where
        F: Fn(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        if let Some(w) = self.writer.as_ref() {
            w.defer(f);
        }
    }

    /// Audit entries appended since the firm opened.
    pub fn audit_appends(&self) -> u64 {
        self.writer.as_ref().map_or(0, Writer::audit_appends)
    }

    /// Runs `f` on a pooled read-only connection. Blocking.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = match self.lock_readers().pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = f(&ReadTx { conn: &conn });
        let mut pool = self.lock_readers();
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        drop(pool);
        if let Some(w) = &self.writer {
            w.touch();
        }
        out
    }

    /// [`FirmDb::read_blocking`] for a short read (a row or a few): while the
    /// firm has never needed a read connection and its writer is idle, it
    /// runs on the write connection instead, so a cold firm's first request
    /// opens one connection, not two (schema parsing and page-cache set-up
    /// are most of an open). Writes wait while it runs: never a long read.
    pub fn read_short<R>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if !self.readers_opened.load(Ordering::Relaxed) {
            if let Some(lent) = self.writer.as_ref().and_then(Writer::lend) {
                return f(&ReadTx { conn: &lent });
            }
        }
        self.read_blocking(f)
    }

    /// Re-verifies the whole audit log on two pooled read connections (two
    /// threads for a large log; see [`audit_log::verify`]). Blocking.
    pub fn audit_verify(&self) -> Result<AuditVerification, StoreError> {
        let second = match self.lock_readers().pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        self.read_blocking(move |r| {
            let (v, second) = audit_log::verify(r.conn, Some(second))?;
            if let Some(c) = second {
                let mut pool = self.lock_readers();
                if pool.len() < MAX_IDLE_READERS {
                    pool.push(c);
                }
            }
            Ok(v)
        })
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        self.readers_opened.store(true, Ordering::Relaxed);
        // One thread at a time uses a pooled connection (checked out of the
        // pool), so SQLite's per-call mutex is pure overhead.
        let (c, _) = open_firm_file(
            &self.path,
            &self.key,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            Some(self.format),
            self.format,
        )?;
        c.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
        Ok(c)
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        match self.readers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    #[cfg(test)]
    pub(crate) fn writer_for_tests(&self) -> &Writer {
        self.writer.as_ref().unwrap()
    }

    /// Drains the writer and closes every connection. Blocking.
    pub fn close(mut self) {
        self.lock_readers().clear();
        if let Some(w) = self.writer.take() {
            w.close();
        }
    }

    /// Replaces the database's key with `new_key`, in page format `to`. The
    /// firm must be closed. Within a format this is `PRAGMA rekey`, which
    /// rewrites every page in one transaction; across formats (a migration)
    /// SQLCipher's `sqlcipher_export` copies the database into a new file in
    /// `to`, which is synced and renamed over the old one. Either way the file
    /// on disk opens with exactly one of the two keys at every moment, which
    /// is what recovery from a crash mid-rekey relies on.
    pub fn rekey(
        path: &Path,
        old: &SqlcipherKey,
        new_key: &SqlcipherKey,
        to: PageFormat,
    ) -> Result<(), StoreError> {
        // Every page is rewritten: no backup's page tracking survives it.
        dirty::forget(path);
        let (conn, from) = open_firm_file(path, old, OpenFlags::default(), None, to)?;
        configure_writer(&conn)?;
        // Fold the WAL into the main file first, then leave WAL mode so the
        // rekey rewrites one file; WAL mode comes back on the next open.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let _: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        if from == to {
            conn.pragma_update(None, "rekey", new_key.as_pragma_value())?;
            drop(conn);
        } else {
            migrate_format(conn, path, new_key, to)?;
        }
        // Prove the new key opens it before the caller forgets the old one.
        let (check, found) = open_firm_file(path, new_key, OpenFlags::default(), Some(to), to)?;
        drop(check);
        if found != to {
            return Err(StoreError::Corrupt(format!(
                "{} is in page format {} after a rekey to {}",
                path.display(),
                found.name(),
                to.name()
            )));
        }
        Ok(())
    }

    /// Whether `key` opens the database at `path` (in either page format).
    pub fn key_opens(path: &Path, key: &SqlcipherKey) -> bool {
        open_firm_file(
            path,
            key,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
            None,
            PageFormat::CURRENT,
        )
        .is_ok()
    }

    /// The page format of the file at `path`, which `key` opens.
    pub fn format_of(path: &Path, key: &SqlcipherKey) -> Result<PageFormat, StoreError> {
        let (_, f) = open_firm_file(
            path,
            key,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
            None,
            PageFormat::CURRENT,
        )?;
        Ok(f)
    }
}

/// Copies the database open on `conn` into `<path>.migrating` under `new_key`
/// in page format `to`, syncs it and renames it over `path`.
fn migrate_format(
    conn: Connection,
    path: &Path,
    new_key: &SqlcipherKey,
    to: PageFormat,
) -> Result<(), StoreError> {
    let tmp = path.with_extension("db.migrating");
    let io = |source| StoreError::Io {
        path: tmp.display().to_string(),
        source,
    };
    for stale in [tmp.clone(), tmp.with_extension("migrating-journal")] {
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io)?;
        }
    }
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| StoreError::Corrupt("state dir path is not UTF-8".to_owned()))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS migrating KEY ?2",
        rusqlite::params![tmp_str, new_key.as_pragma_value()],
    )?;
    let exported = (|| -> Result<(), StoreError> {
        to.apply(&conn, "migrating")?;
        conn.query_row("SELECT sqlcipher_export('migrating')", [], |_| Ok(()))?;
        let user_version: i64 = conn.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
        conn.execute_batch(&format!("PRAGMA migrating.user_version = {user_version}"))?;
        Ok(())
    })();
    let _ = conn.execute("DETACH DATABASE migrating", []);
    // Closed before the rename: nothing may touch the old file's name after it.
    drop(conn);
    exported?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Entry;
    use crate::audit::merkle;
    use crate::crypto::keyring::SqlcipherKey;
    use crate::crypto::secret::SecretKey;
    use std::sync::Arc;

    fn key(b: u8) -> SqlcipherKey {
        SqlcipherKey::from_secret(&SecretKey::from_bytes([b; 32]))
    }

    #[test]
    fn writes_are_durable_and_failures_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = Arc::new(FirmDb::open("frm_x", &path, key(1), true).unwrap());
        let ok = db.write_blocking(|tx| tx.set_profile("display_name", "A", "t"));
        assert!(ok.is_ok());
        // A failing command in the same batch does not sink the others.
        let mut handles = Vec::new();
        for i in 0..50 {
            let db = db.clone();
            handles.push(std::thread::spawn(move || {
                db.write_blocking(move |tx| {
                    if i % 7 == 0 {
                        tx.set_profile("k", "bad", "t")?;
                        Err(StoreError::NotFound)
                    } else {
                        tx.set_profile(&format!("k{i}"), "v", "t")
                    }
                })
            }));
        }
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 8);
        let profile = db.read_blocking(|r| r.profile()).unwrap();
        assert_eq!(profile.len(), 1 + 42);
        assert!(
            !profile.iter().any(|(k, _)| k == "k"),
            "failed command rolled back"
        );
        Arc::try_unwrap(db).unwrap().close();

        // Reopen: everything acknowledged is there; the wrong key is refused.
        assert!(matches!(
            FirmDb::open("frm_x", &path, key(2), false),
            Err(StoreError::WrongKey { .. })
        ));
        let db = FirmDb::open("frm_x", &path, key(1), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 43);
        // Another firm's id on this file is refused.
        db.close();
        assert!(matches!(
            FirmDb::open("frm_y", &path, key(1), false),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_failing_command_in_a_batch_rolls_back_alone() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let db = FirmDb::open("frm_x", &dir.path().join("f.db"), key(1), true).unwrap();
        let writer = db.writer.as_ref().unwrap();
        // The first command holds the writer so the next ones queue into one batch.
        let gate = writer
            .submit(|_tx| -> Result<(), StoreError> {
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(())
            })
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut replies = Vec::new();
        for i in 0..20 {
            let runs = runs.clone();
            replies.push(
                writer
                    .submit(move |tx| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tx.set_profile(&format!("k{i}"), "v", "t")?;
                        if i == 10 {
                            // Wrote, then failed: its write must not survive.
                            return Err(StoreError::NotFound);
                        }
                        Ok(i)
                    })
                    .unwrap(),
            );
        }
        gate.blocking_recv().unwrap().unwrap();
        for (i, rx) in replies.into_iter().enumerate() {
            let r = rx.blocking_recv().unwrap();
            if i == 10 {
                assert!(matches!(r, Err(StoreError::NotFound)));
            } else {
                assert_eq!(r.unwrap(), i);
            }
        }
        // Optimistic pass stopped at the failure (11 runs), replay ran all 20.
        assert_eq!(runs.load(Ordering::SeqCst), 31);
        let keys: Vec<String> = db
            .read_blocking(|r| r.profile())
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 19);
        assert!(!keys.contains(&"k10".to_owned()));
        db.close();
    }

    /// Runs SQL on the closed database with its raw key (tampering).
    fn raw_sql(path: &Path, sql: &str) {
        let c = crate::store::open_firm(path, &key(1), OpenFlags::default()).unwrap();
        c.execute_batch(sql).unwrap();
    }

    /// Reopens the database and verifies it (on one thread, or on two for
    /// a log large enough): the first bad seq, if any.
    fn first_bad(path: &Path, two_threads: bool) -> Option<u64> {
        let db = FirmDb::open("frm_x", path, key(1), false).unwrap();
        let v = if two_threads {
            db.audit_verify()
        } else {
            db.read_blocking(|r| r.audit_verify())
        }
        .unwrap();
        db.close();
        v.first_bad.map(|(seq, _)| seq)
    }

    fn audit_entry(i: u64) -> Entry {
        Entry {
            seq: 0,
            at: format!("2026-11-22T10:00:{:02}Z", i % 60),
            firm: "frm_x".into(),
            actor: format!("key_{i}"),
            source_ip: "127.0.0.1".into(),
            request_id: format!("req{i}"),
            action: "keys.create".into(),
            resource: format!("res{i}"),
            outcome: "success".into(),
            decision: "allow".into(),
            rule: "role:owner".into(),
            payload: vec![i as u8; 5],
        }
    }

    #[test]
    fn audit_log_proves_and_finds_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..40u64 {
            let seq = db
                .write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
            assert_eq!(seq, i);
        }
        let v = db.read_blocking(|r| r.audit_verify()).unwrap();
        assert_eq!((v.size, v.first_bad.clone()), (40, None));
        let root = db.read_blocking(|r| r.audit_root(40)).unwrap();
        assert_eq!(v.root, root);
        let rows = db.read_blocking(|r| r.audit_entries(0, 100)).unwrap();
        for size in [1u64, 17, 40] {
            let root_n = db.read_blocking(move |r| r.audit_root(size)).unwrap();
            for i in (0..size).step_by(3) {
                let p = db
                    .read_blocking(move |r| r.audit_inclusion(i, size))
                    .unwrap();
                assert!(merkle::verify_inclusion(
                    i,
                    size,
                    &rows[i as usize].entry.leaf(),
                    &p,
                    &root_n
                ));
            }
            let p = db
                .read_blocking(move |r| r.audit_consistency(size, 40))
                .unwrap();
            assert!(merkle::verify_consistency(size, 40, &root_n, &root, &p));
        }
        db.close();

        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, false);
        // One flipped byte in one entry's payload.
        raw("UPDATE audit_entries SET payload = x'0c0c0c0c0d' WHERE seq = 12");
        assert_eq!(verify(), Some(12));
        raw("UPDATE audit_entries SET payload = x'0c0c0c0c0c' WHERE seq = 12");
        assert_eq!(verify(), None);
        // Two entries swapped (every column but seq).
        raw("UPDATE audit_entries SET seq = -1 WHERE seq = 20;
             UPDATE audit_entries SET seq = 20 WHERE seq = 21;
             UPDATE audit_entries SET seq = 21 WHERE seq = -1;");
        assert_eq!(verify(), Some(20));
        raw("UPDATE audit_entries SET seq = -1 WHERE seq = 20;
             UPDATE audit_entries SET seq = 20 WHERE seq = 21;
             UPDATE audit_entries SET seq = 21 WHERE seq = -1;");
        assert_eq!(verify(), None);
        // A deleted entry.
        raw("DELETE FROM audit_entries WHERE seq = 30");
        assert_eq!(verify(), Some(30));
    }

    #[test]
    fn a_purged_log_still_proves_and_a_forged_anchor_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..30u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
        }
        let root30 = db.read_blocking(|r| r.audit_root(30)).unwrap();
        let purge = || {
            db.write_blocking(|tx| {
                tx.purge_audit("2026-11-22T10:00:20Z", "2026-11-22T11:00:00Z", &|_| {
                    ("receipt".to_owned(), audit_entry(99))
                })
            })
            .unwrap()
        };
        let (plan, deleted) = purge().unwrap();
        assert_eq!((plan.before, deleted, plan.tree_size), (20, 20, 30));
        assert_eq!(plan.root, root30);
        assert!(purge().is_none(), "nothing more is old enough");
        let v = db.read_blocking(|r| r.audit_verify()).unwrap();
        assert_eq!((v.size, v.first_retained, v.first_bad), (31, 20, None));
        // Proofs for purged and retained entries alike, across the purge.
        let root31 = db.read_blocking(|r| r.audit_root(31)).unwrap();
        assert_eq!(v.root, root31);
        for i in [0u64, 19, 20, 30] {
            let leaf = db.read_blocking(move |r| r.audit_leaf(i)).unwrap();
            let p = db.read_blocking(move |r| r.audit_inclusion(i, 31)).unwrap();
            assert!(merkle::verify_inclusion(i, 31, &leaf, &p, &root31));
        }
        let p = db.read_blocking(|r| r.audit_consistency(30, 31)).unwrap();
        assert!(merkle::verify_consistency(30, 31, &root30, &root31, &p));
        db.close();
        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, false);
        // A forged entry in the purged range.
        raw("INSERT INTO audit_entries SELECT 5, at, firm, actor, source_ip, request_id, action,
             resource, outcome, decision, rule, payload, leaf, chain FROM audit_entries WHERE seq = 25");
        assert_eq!(verify(), Some(5));
        raw("DELETE FROM audit_entries WHERE seq = 5");
        assert_eq!(verify(), None);
        raw("UPDATE audit_purges SET chain = zeroblob(32)");
        assert_eq!(verify(), Some(20));
    }

    #[test]
    fn cutting_entries_off_the_end_is_found_against_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for i in 0..40u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(i)))
                .unwrap();
        }
        db.write_blocking(|tx| tx.checkpoint_audit("2026-11-22T11:00:00Z", &|_, _| "note".into()))
            .unwrap();
        let v = db.audit_verify().unwrap();
        assert_eq!((v.first_bad, v.checkpoint.map(|c| c.0)), (None, Some(40)));
        db.close();
        let c = crate::store::open_firm(&path, &key(1), OpenFlags::default()).unwrap();
        // The last five entries and their leaves go; the tree below 35 stays whole.
        c.execute_batch(
            "DELETE FROM audit_entries WHERE seq >= 35;
             DELETE FROM audit_nodes WHERE level = 0 AND idx >= 35;",
        )
        .unwrap();
        drop(c);
        let db = FirmDb::open("frm_x", &path, key(1), false).unwrap();
        let v = db.audit_verify().unwrap();
        assert_eq!(v.size, 35);
        assert_eq!(v.first_bad.map(|b| b.0), Some(35));
        db.close();
    }

    #[test]
    fn two_thread_verify_agrees_with_one_thread_and_finds_tampering_in_either_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        for n in 1..=40u64 {
            db.write_blocking(move |tx| tx.append_audit(audit_entry(n)))
                .unwrap();
            let one = db.read_blocking(|r| r.audit_verify()).unwrap();
            let two = db.audit_verify().unwrap();
            assert_eq!(one, two, "size {n}");
            assert_eq!((two.size, two.first_bad), (n, None));
        }
        db.close();
        let raw = |sql: &str| raw_sql(&path, sql);
        let verify = || first_bad(&path, true);
        // The halves are [0, 32) and [32, 40).
        for seq in [3, 31, 32, 39] {
            raw(&format!(
                "UPDATE audit_entries SET actor = 'x' WHERE seq = {seq}"
            ));
            assert_eq!(verify(), Some(seq));
            raw(&format!(
                "UPDATE audit_entries SET actor = 'key_{}' WHERE seq = {seq}",
                seq + 1
            ));
            assert_eq!(verify(), None);
        }
        raw("DELETE FROM audit_entries WHERE seq = 31");
        assert_eq!(verify(), Some(31));
    }

    #[test]
    fn rekey_switches_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_x", &path, key(1), true).unwrap();
        db.write_blocking(|tx| tx.set_profile("a", "b", "t"))
            .unwrap();
        db.close();
        FirmDb::rekey(&path, &key(1), &key(3), PageFormat::CURRENT).unwrap();
        assert!(!FirmDb::key_opens(&path, &key(1)));
        let db = FirmDb::open("frm_x", &path, key(3), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 1);
        db.close();
    }

    #[test]
    fn page_formats_are_found_and_a_rekey_migrates_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open_with("frm_x", &path, key(1), Some(PageFormat::HmacSha512)).unwrap();
        assert_eq!(db.page_format(), PageFormat::HmacSha512);
        db.write_blocking(|tx| tx.set_profile("a", "b", "t"))
            .unwrap();
        db.close();
        // Read from page 1's MAC, with no failed open; another key made neither.
        assert_eq!(
            crate::store::format_from_page_one(&path, &key(1)),
            Some(PageFormat::HmacSha512)
        );
        assert_eq!(crate::store::format_from_page_one(&path, &key(9)), None);
        // Reopened without being told: the older format is found.
        let db = FirmDb::open("frm_x", &path, key(1), false).unwrap();
        assert_eq!(db.page_format(), PageFormat::HmacSha512);
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 1);
        db.close();
        let version = |k: SqlcipherKey| {
            let (c, f) =
                open_firm_file(&path, &k, OpenFlags::default(), None, PageFormat::CURRENT).unwrap();
            (
                f,
                c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                    .unwrap(),
            )
        };
        let (_, before) = version(key(1));
        assert!(before > 1);
        // A rekey across formats rewrites the file in the new one, same schema.
        FirmDb::rekey(&path, &key(1), &key(2), PageFormat::HmacSha256).unwrap();
        assert!(!FirmDb::key_opens(&path, &key(1)));
        assert_eq!(version(key(2)), (PageFormat::HmacSha256, before));
        assert_eq!(
            crate::store::format_from_page_one(&path, &key(2)),
            Some(PageFormat::HmacSha256)
        );
        assert!(!path.with_extension("db.migrating").exists());
        let db = FirmDb::open("frm_x", &path, key(2), false).unwrap();
        assert_eq!(db.page_format(), PageFormat::HmacSha256);
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 1);
        db.write_blocking(|tx| tx.set_profile("c", "d", "t"))
            .unwrap();
        db.close();
        // The formats really differ: forcing the other one does not open it.
        assert!(matches!(
            super::super::open_with_format(
                &path,
                &key(2),
                OpenFlags::SQLITE_OPEN_READ_ONLY,
                PageFormat::HmacSha512
            ),
            Err(StoreError::WrongKey { .. })
        ));
        // And back, within the reach of the same code.
        FirmDb::rekey(&path, &key(2), &key(3), PageFormat::HmacSha512).unwrap();
        assert_eq!(
            FirmDb::format_of(&path, &key(3)).unwrap(),
            PageFormat::HmacSha512
        );
        let db = FirmDb::open("frm_x", &path, key(3), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 2);
        db.close();
    }

    #[test]
    fn database_runs_on_our_fips_provider() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_firm(&dir.path().join("p.db"), &key(5), OpenFlags::default())
            .unwrap();
        let v: String = conn
            .query_row("PRAGMA cipher_provider_version", [], |r| r.get(0))
            .unwrap();
        assert!(v.starts_with("AWS-LC FIPS"), "{v}");
        assert!(crate::store::sqlcipher_version().starts_with("4."));
    }
}
