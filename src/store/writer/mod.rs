//! Group commit on a small shared pool of writer threads. Each open firm
//! has a queue of write commands and owns its only write connection; a firm
//! with queued commands is scheduled onto the pool, and one pool thread at a
//! time takes the firm's connection, drains one batch, runs it in one
//! transaction, commits durably, answers every caller, runs the WAL
//! checkpoint logic and releases the firm. Nothing is acknowledged before
//! the commit that contains it is on disk. The thread count does not grow
//! with the number of open firms; one turn is one batch, so a busy firm
//! goes to the back of the run queue after each and never starves others.
//!
//! A failing command must roll back alone. Savepoints per command would do
//! that but cost ~15% of throughput, and commands almost never fail, so a
//! batch first runs optimistically without them; if any command fails, the
//! whole transaction is rolled back and the batch replayed, each command in
//! its own savepoint. Commands are therefore `Fn`: they may run twice, and
//! only the result of the run that was committed is delivered.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;
use super::firm::WriteTx;
use super::warm::{self, Park};

mod lend;
mod pool;

use pool::pool;

/// Commands queued beyond this make callers wait with `Busy` (503) instead of
/// growing memory without bound.
const QUEUE_DEPTH: usize = 16_384;
/// Deferred best-effort commands kept per firm (see [`Writer::defer`]).
const MAX_DEFERRED: usize = 1_024;
/// Upper bound on commands in one transaction.
const MAX_BATCH: usize = 4_096;

trait Command: Send {
    /// Runs the command (again, if it ran before); true if it succeeded.
    fn run(&mut self, tx: &WriteTx<'_>) -> bool;
    /// Delivers the outcome once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), Failed>);
    /// Someone waits for this command's durable commit (see [`BestEffort`]).
    fn acknowledged(&self) -> bool {
        true
    }
}

/// A deferred best-effort command (see [`Writer::defer`]): nobody waits for
/// it, so nothing is acknowledged, and a batch of only these commits with
/// `synchronous=NORMAL`, without an fsync (a crash may lose it, never
/// corrupts; the next durable commit's fsync covers its frames).
struct BestEffort<F> {
    f: F,
}

impl<F> Command for BestEffort<F>
where
    F: Fn(&WriteTx<'_>) -> Result<(), StoreError> + Send,
{
    fn run(&mut self, tx: &WriteTx<'_>) -> bool {
        let f = &self.f;
        catch_unwind(AssertUnwindSafe(|| f(tx))).is_ok_and(|r| r.is_ok())
    }

    fn finish(self: Box<Self>, _commit: Result<(), Failed>) {}

    fn acknowledged(&self) -> bool {
        false
    }
}

/// Why a batch's commit failed, as every caller in it is told.
#[derive(Debug, Clone)]
struct Failed {
    full: bool,
    message: String,
}

/// A command and its reply channel. `E` is the caller's error type, so a
/// service can refuse inside the transaction with its own typed error.
struct Typed<F, R, E> {
    f: F,
    out: Option<Result<R, E>>,
    reply: oneshot::Sender<Result<R, E>>,
}

impl<F, R, E> Command for Typed<F, R, E>
where
    F: Fn(&WriteTx<'_>) -> Result<R, E> + Send,
    R: Send,
    E: From<StoreError> + Send,
{
    fn run(&mut self, tx: &WriteTx<'_>) -> bool {
        let f = &self.f;
        let out = catch_unwind(AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(StoreError::CommandPanicked.into()));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), Failed>) {
        let msg = match (commit, self.out) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(ok)) => ok,
            (Err(Failed { full: true, .. }), _) => Err(StoreError::Full.into()),
            (Err(e), _) => Err(StoreError::CommitFailed(e.message).into()),
            (Ok(()), None) => Err(StoreError::CommandPanicked.into()),
        };
        let _ = self.reply.send(msg);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Opens the firm's write connection again after it was parked.
pub(crate) type Reopen = Box<dyn Fn() -> Result<Connection, StoreError> + Send + Sync>;

/// One firm's writer: its queue and its write connection.
struct Firm {
    name: String,
    path: PathBuf,
    state: Mutex<State>,
    /// Signalled once the connection is closed.
    closed: Condvar,
    /// The firm's idle read connections: parking closes them too.
    readers: Arc<Mutex<Vec<Connection>>>,
    reopen: Reopen,
    /// Its place among warm firms (see `warm`).
    slot: warm::Slot,
    /// Audit entries committed (see [`Writer::audit_appends`]).
    audited: std::sync::atomic::AtomicU64,
}

struct State {
    queue: VecDeque<Box<dyn Command>>,
    /// Best-effort commands that wait for the firm's next turn, park or close
    /// instead of making a turn of their own (see [`Writer::defer`]).
    deferred: Vec<Box<dyn Command>>,
    /// In the pool's run queue or being run by a pool thread: then no other
    /// thread touches the connection, so one firm never runs on two threads.
    scheduled: bool,
    /// No more commands are taken; the queue drains, then the connection closes.
    closing: bool,
    /// The connection closed (or was lost to a panic).
    done: bool,
    /// Here while no pool thread runs the firm; None while parked.
    conn: Option<Connection>,
    /// Close the connections once the queue is empty (too many warm firms).
    park: bool,
    /// Commands in the previous batch (see [`gather`]).
    previous: usize,
    /// The WAL frame of the last checkpoint (see `firm::after_commit`).
    checkpointed_at: u32,
}

/// Handle to a firm's writer. Dropping it lets the pool finish the queue and
/// close the connection; [`Writer::close`] also waits for that.
pub(crate) struct Writer {
    firm: Arc<Firm>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", self.firm.name)
    }
}

impl Writer {
    /// Hands the firm's write connection to the shared writer pool.
    pub(crate) fn spawn(
        conn: Connection,
        name: String,
        path: std::path::PathBuf,
        readers: Arc<Mutex<Vec<Connection>>>,
        reopen: Reopen,
    ) -> Result<Self, StoreError> {
        if pool().threads.load(Ordering::SeqCst) == 0 {
            return Err(StoreError::Io {
                path: "writer threads".to_owned(),
                source: std::io::Error::other("no writer thread could start"),
            });
        }
        let w = Self {
            firm: Arc::new(Firm {
                name,
                path,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    deferred: Vec::new(),
                    scheduled: false,
                    closing: false,
                    done: false,
                    conn: Some(conn),
                    park: false,
                    previous: 1,
                    checkpointed_at: 0,
                }),
                closed: Condvar::new(),
                readers,
                reopen,
                slot: warm::Slot::default(),
                audited: Default::default(),
            }),
        };
        w.touch();
        Ok(w)
    }

    /// How many audit entries committed transactions appended: raised after
    /// each commit is durable and before its callers are answered, so a job
    /// that read the count before reading the database knows whether any
    /// change (every change appends an audit entry) committed since.
    pub(crate) fn audit_appends(&self) -> u64 {
        self.firm.audited.load(Ordering::SeqCst)
    }

    /// The firm was used and holds connections (see `warm`).
    pub(crate) fn touch(&self) {
        warm_touch(&self.firm);
    }

    /// Queues `f`; the receiver yields its result after the durable commit.
    pub(crate) fn submit<F, R, E>(
        &self,
        f: F,
    ) -> Result<oneshot::Receiver<Result<R, E>>, StoreError>
    where
        F: Fn(&WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let cmd: Box<dyn Command> = Box::new(Typed {
            f,
            out: None,
            reply,
        });
        let mut st = lock(&self.firm.state);
        if st.closing {
            return Err(StoreError::WriterGone);
        }
        if st.queue.len() >= QUEUE_DEPTH {
            return Err(StoreError::Busy);
        }
        st.queue.push_back(cmd);
        crate::telemetry::metrics::metrics().queue_depth.inc();
        if !st.scheduled {
            st.scheduled = true;
            drop(st);
            pool().schedule(self.firm.clone());
        }
        Ok(rx)
    }

    /// Queues a best-effort command nobody waits for, to run with the firm's
    /// next batch, or before it parks or closes, rather than in a commit (and
    /// an fsync) of its own: a firm that is only read then never writes for
    /// it, and its write connection stays free to lend (see [`Writer::lend`]).
    /// Lost if the process dies first; dropped if too many wait.
    pub(crate) fn defer<F>(&self, f: F)
    where
        F: Fn(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let cmd: Box<dyn Command> = Box::new(BestEffort { f });
        let mut st = lock(&self.firm.state);
        if st.closing || st.deferred.len() >= MAX_DEFERRED {
            return;
        }
        st.deferred.push(cmd);
        crate::telemetry::metrics::metrics().queue_depth.inc();
    }

    /// Stops accepting commands, lets the queue drain, closes the connection
    /// and waits for that. An idle firm's connection closes on this thread.
    pub(crate) fn close(self) {
        let firm = self.firm.clone();
        let mut st = lock(&firm.state);
        if !st.closing {
            st.closing = true;
            if !st.scheduled && !st.deferred.is_empty() {
                // Deferred commands run in one last turn before the close.
                st.scheduled = true;
                drop(st);
                pool().schedule(firm.clone());
                st = lock(&firm.state);
            } else if !st.scheduled {
                st.scheduled = true;
                let conn = st.conn.take();
                close(&firm, st, conn);
                st = lock(&firm.state);
            }
        }
        while !st.done {
            st = match firm.closed.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut st = lock(&self.firm.state);
        if st.closing {
            return;
        }
        st.closing = true;
        // Running or queued: the pool thread closes it after the last batch.
        // Idle: a pool thread closes it (the checkpoint then is nobody's latency).
        if !st.scheduled {
            st.scheduled = true;
            drop(st);
            pool().schedule(self.firm.clone());
        }
    }
}

/// How long the writer may wait for a batch to fill back up to the size of
/// the previous one (see [`gather`]).
const GATHER: std::time::Duration = std::time::Duration::from_micros(400);

/// Collects the commands queued behind `first`. When the previous batch had
/// several commands, their callers are likely about to submit again: waiting
/// a moment for them (at most [`GATHER`], yielding the CPU to them) turns
/// two half-full commits, each paying an fsync, into one full one. A lone
/// submitter (previous batch of one) never waits.
#[allow(clippy::disallowed_methods)] // clock: sub-millisecond real-time gathering
fn gather(firm: &Firm, first: Box<dyn Command>, previous: usize) -> Vec<Box<dyn Command>> {
    let mut batch = vec![first];
    let target = previous.min(MAX_BATCH);
    let until = std::time::Instant::now() + GATHER; // clock: sub-second real-time wait
    loop {
        {
            let mut st = lock(&firm.state);
            while batch.len() < MAX_BATCH {
                match st.queue.pop_front() {
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
        }
        // clock: sub-second real-time wait
        if batch.len() >= target || std::time::Instant::now() >= until {
            return batch;
        }
        std::thread::yield_now();
    }
}

/// One turn of a scheduled firm on a pool thread: at most one batch.
#[allow(clippy::disallowed_methods)] // clock: commit duration is real elapsed time
fn turn(firm: &Arc<Firm>) {
    let m = crate::telemetry::metrics::metrics();
    let (conn, first, previous, mut checkpointed_at) = {
        let mut st = lock(&firm.state);
        if st.done {
            st.scheduled = false;
            return;
        }
        // Deferred commands join any batch; before a park or close they are
        // a batch of their own, which does not undo the park.
        let flush = st.queue.is_empty() && (st.park || st.closing) && !st.deferred.is_empty();
        let deferred = std::mem::take(&mut st.deferred);
        st.queue.extend(deferred);
        match st.queue.pop_front() {
            Some(first) => {
                if !flush {
                    st.park = false;
                }
                (st.conn.take(), first, st.previous, st.checkpointed_at)
            }
            None if st.closing => {
                let conn = st.conn.take();
                return close(firm, st, conn);
            }
            None if st.park => return park(firm, st),
            None => {
                st.scheduled = false;
                return;
            }
        }
    };
    // Parked: the connection opens again here (the firm is this thread's).
    let conn = match conn.map_or_else(|| (firm.reopen)(), Ok) {
        Ok(c) => c,
        Err(e) => {
            m.queue_depth.dec();
            first.finish(Err(Failed {
                full: matches!(e, StoreError::Full),
                message: e.to_string(),
            }));
            return release(firm, lock(&firm.state));
        }
    };
    let mut batch = gather(firm, first, previous);
    let size = batch.len();
    m.queue_depth.dec_by(size as i64);
    m.batch_size.observe(size as f64);
    let started = std::time::Instant::now(); // clock: a metric of real time
    // Security invariant: a batch with any acknowledged command commits with
    // an fsync (synchronous=FULL); only a batch nobody waits for skips it.
    let durable = batch.iter().any(|c| c.acknowledged());
    if !durable && exec(&conn, "PRAGMA synchronous = NORMAL").is_err() {
        tracing::warn!(firm = %firm.name, "cannot skip the fsync of a best-effort batch");
    }
    let commit = run_batch(&conn, &mut batch).map_err(|e| Failed {
        full: matches!(e, StoreError::Full),
        message: e.to_string(),
    });
    m.commit_duration.observe(started.elapsed().as_secs_f64());
    if !durable && let Err(e) = exec(&conn, "PRAGMA synchronous = FULL") {
        // This connection must never commit again without an fsync: it
        // closes, and the next turn opens a fresh one (synchronous=FULL).
        // Its batch was best effort only: nobody is told.
        tracing::error!(firm = %firm.name, error = %e, "cannot restore synchronous=FULL; reopening");
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        close_without_checkpoint(firm, conn);
        let mut st = lock(&firm.state);
        st.previous = size;
        return release(firm, st);
    }
    match &commit {
        Ok(appended) => {
            m.audit_appended.inc_by(*appended);
            firm.audited.fetch_add(*appended, Ordering::SeqCst);
            super::space::ok();
        }
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    let committed = commit.is_ok();
    let commit = commit.map(|_| ());
    for cmd in batch {
        cmd.finish(commit.clone());
    }
    // After the answers: a checkpoint is nobody's latency.
    if committed {
        super::firm::after_commit(&conn, &firm.path, &mut checkpointed_at);
    }
    let mut st = lock(&firm.state);
    st.previous = size;
    st.checkpointed_at = checkpointed_at;
    st.conn = Some(conn);
    release(firm, st);
}

/// Ends a turn: more queued goes to the back of the run queue, so other
/// firms get their turn; a closing firm closes; an idle one is warm.
fn release(firm: &Arc<Firm>, mut st: MutexGuard<'_, State>) {
    // Deferred commands run before a park or close (see `turn`).
    let flush = (st.closing || st.park) && !st.deferred.is_empty();
    if !st.queue.is_empty() || flush {
        drop(st);
        pool().schedule(firm.clone());
    } else if st.closing {
        let conn = st.conn.take();
        close(firm, st, conn);
    } else if st.park {
        park(firm, st);
    } else {
        st.scheduled = false;
        let warm = st.conn.is_some();
        drop(st);
        if warm {
            warm_touch(firm);
        }
    }
}

fn warm_touch(firm: &Arc<Firm>) {
    warm::touch(&firm.slot, || Arc::downgrade(firm) as Weak<dyn Park>);
}

impl Park for Firm {
    fn request_park(self: Arc<Self>) {
        let mut st = lock(&self.state);
        if st.closing || st.done {
            return;
        }
        st.park = true;
        // Running or queued: the turn parks it once its queue is empty.
        if !st.scheduled {
            st.scheduled = true;
            drop(st);
            pool().schedule_at(self, true);
        }
    }
}

/// Closes an idle firm's connections (too many warm firms), without the
/// checkpoint SQLite runs when a last connection closes: parking costs no
/// fsync, and the committed frames stay in the WAL (durable since their
/// commit) until a later checkpoint records and copies them (see `dirty`).
/// The firm stays scheduled meanwhile, so no turn runs until it is closed.
fn park(firm: &Arc<Firm>, mut st: MutexGuard<'_, State>) {
    st.park = false;
    let conn = st.conn.take();
    drop(st);
    warm::forget(&firm.slot);
    drop(std::mem::take(&mut *lock(&firm.readers)));
    if let Some(conn) = conn {
        close_without_checkpoint(firm, conn);
    }
    let mut st = lock(&firm.state);
    if !st.queue.is_empty() || st.closing {
        drop(st);
        pool().schedule(firm.clone());
    } else {
        st.scheduled = false;
    }
}

/// Closes a write connection without SQLite's closing checkpoint.
fn close_without_checkpoint(firm: &Firm, conn: Connection) {
    // The main file changes only in checkpoints whose pages are recorded
    // (backups rely on it): none on this close, or record them first.
    if conn
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .is_err()
    {
        super::firm::before_close(&conn, &firm.path);
    }
    drop(conn);
}

/// The queue is drained and no command comes any more: the connection
/// closes here, checkpointing the WAL; its pages are recorded first.
fn close(firm: &Firm, st: MutexGuard<'_, State>, conn: Option<Connection>) {
    drop(st);
    warm::forget(&firm.slot);
    if let Some(conn) = conn {
        super::firm::before_close(&conn, &firm.path);
        drop(conn);
    }
    let mut st = lock(&firm.state);
    st.done = true;
    st.scheduled = false;
    drop(st);
    firm.closed.notify_all();
}

fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs and commits a batch; how many audit entries it appended.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Command>]) -> Result<u64, StoreError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let tx = WriteTx::new(conn);
    let mut all_ok = true;
    for cmd in batch.iter_mut() {
        all_ok &= cmd.run(&tx);
        if !all_ok {
            break;
        }
    }
    if !all_ok {
        exec(conn, "ROLLBACK")?;
        if batch.len() == 1 {
            // A lone command's failure is its own; nothing else to keep.
            return Ok(0);
        }
        // Replay with a savepoint per command so each failure rolls back alone.
        exec(conn, "BEGIN IMMEDIATE")?;
        tx.appended.set(0);
        for cmd in batch.iter_mut() {
            exec(conn, "SAVEPOINT cmd")?;
            let before = tx.appended.get();
            if cmd.run(&tx) {
                exec(conn, "RELEASE cmd")?;
            } else {
                exec(conn, "ROLLBACK TO cmd")?;
                exec(conn, "RELEASE cmd")?;
                tx.appended.set(before);
            }
        }
    }
    // synchronous=FULL: COMMIT returns only after the WAL is fsynced.
    exec(conn, "COMMIT")?;
    Ok(tx.appended.get())
}

#[cfg(test)]
mod tests {
    use super::super::firm::FirmDb;
    use super::*;
    use crate::crypto::keyring::SqlcipherKey;
    use crate::crypto::secret::SecretKey;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn key() -> SqlcipherKey {
        SqlcipherKey::from_secret(&SecretKey::from_bytes([7; 32]))
    }

    fn pool_threads() -> usize {
        pool().threads.load(Ordering::SeqCst)
    }

    #[test]
    fn many_firms_run_on_the_few_pool_threads_and_each_on_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let firms: Vec<Arc<FirmDb>> = (0..40)
            .map(|i| {
                let id = format!("frm_{i}");
                Arc::new(
                    FirmDb::open(&id, &dir.path().join(format!("{i}.db")), key(), true).unwrap(),
                )
            })
            .collect();
        let names = Arc::new(Mutex::new(HashSet::new()));
        let mut handles = Vec::new();
        for (n, db) in firms.iter().enumerate() {
            // One "running" flag per firm: never two commands of a firm at once.
            let running = Arc::new(AtomicBool::new(false));
            for t in 0..4 {
                let (db, names, running) = (db.clone(), names.clone(), running.clone());
                handles.push(std::thread::spawn(move || {
                    for j in 0..10 {
                        let (names, running) = (names.clone(), running.clone());
                        db.write_blocking(move |tx| {
                            assert!(
                                !running.swap(true, Ordering::SeqCst),
                                "firm {n} on two threads"
                            );
                            let name = std::thread::current().name().unwrap_or("").to_owned();
                            lock(&names).insert(name);
                            tx.set_profile(&format!("k{t}_{j}"), "v", "t")?;
                            running.store(false, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                    }
                }));
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        let names = lock(&names).clone();
        assert!(names.iter().all(|n| n.starts_with("writer-")), "{names:?}");
        assert!(names.len() <= pool_threads(), "{names:?}");
        for db in firms {
            assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 40);
            Arc::try_unwrap(db).unwrap().close();
        }
    }

    #[test]
    fn close_drains_the_queue_before_the_connection_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let db = FirmDb::open("frm_c", &path, key(), true).unwrap();
        let w = db.writer_for_tests();
        // The first command holds the firm's turn, so the others queue behind it.
        let gate = w
            .submit(|_tx| -> Result<(), StoreError> {
                std::thread::sleep(std::time::Duration::from_millis(50));
                Ok(())
            })
            .unwrap();
        let replies: Vec<_> = (0..100)
            .map(|i| {
                w.submit(move |tx| tx.set_profile(&format!("c{i}"), "v", "t"))
                    .unwrap()
            })
            .collect();
        let firm = w.firm.clone();
        db.close();
        assert!(lock(&firm.state).done);
        assert!(lock(&firm.state).queue.is_empty());
        gate.blocking_recv().unwrap().unwrap();
        for rx in replies {
            rx.blocking_recv().unwrap().unwrap();
        }
        let db = FirmDb::open("frm_c", &path, key(), false).unwrap();
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 100);
        db.close();
    }

    #[test]
    fn a_lent_write_connection_reads_refuses_writes_and_holds_writes_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = FirmDb::open("frm_l", &dir.path().join("l.db"), key(), true).unwrap();
        let w = db.writer_for_tests();
        let lent = w.lend().expect("an idle writer lends its connection");
        assert!(w.lend().is_none(), "lent once at a time");
        let n: i64 = lent
            .query_row("SELECT count(*) FROM profile", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // Security invariant: the lent connection is query-only.
        assert!(
            lent.execute(
                "INSERT INTO profile (k, v, updated_at) VALUES ('a', 'b', 'c')",
                []
            )
            .is_err()
        );
        // A write submitted meanwhile waits in the queue: no turn runs it.
        let rx = w.submit(|tx| tx.set_profile("k", "v", "t")).unwrap();
        assert_eq!(lock(&w.firm.state).queue.len(), 1);
        assert!(lock(&w.firm.state).conn.is_none());
        drop(lent);
        rx.blocking_recv().unwrap().unwrap();
        // Back with the writer, and writable again.
        db.write_blocking(|tx| tx.set_profile("k2", "v", "t"))
            .unwrap();
        assert_eq!(db.read_short(|r| r.profile()).unwrap().len(), 2);
        db.close();
    }

    #[test]
    fn deferred_commands_wait_for_the_next_batch_or_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let db = FirmDb::open("frm_d", &path, key(), true).unwrap();
        db.write_deferred(|tx| tx.set_profile("later", "1", "t"));
        // Nothing ran it: the firm stays idle and its connection lendable.
        assert!(db.writer_for_tests().lend().is_some());
        assert!(db.read_short(|r| r.profile()).unwrap().is_empty());
        // The next write carries it.
        db.write_blocking(|tx| tx.set_profile("now", "1", "t"))
            .unwrap();
        assert_eq!(db.read_short(|r| r.profile()).unwrap().len(), 2);
        // One still waiting when the firm closes is written first.
        db.write_deferred(|tx| tx.set_profile("at close", "1", "t"));
        db.close();
        let db = FirmDb::open("frm_d", &path, key(), false).unwrap();
        assert_eq!(db.read_short(|r| r.profile()).unwrap().len(), 3);
        // And before a park (too many warm firms) closes its connections.
        db.write_deferred(|tx| tx.set_profile("at park", "1", "t"));
        let firm = db.writer_for_tests().firm.clone();
        firm.clone().request_park();
        for _ in 0..500 {
            let st = lock(&firm.state);
            if st.conn.is_none() && !st.scheduled {
                break;
            }
            drop(st);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(lock(&firm.state).conn.is_none(), "parked");
        assert!(lock(&firm.state).deferred.is_empty());
        assert_eq!(db.read_blocking(|r| r.profile()).unwrap().len(), 4);
        db.close();
    }

    #[test]
    fn a_busy_firm_does_not_starve_another() {
        let dir = tempfile::tempdir().unwrap();
        let n = pool_threads();
        // One busy firm per pool thread, each with a deep queue of slow commands.
        let busy: Vec<FirmDb> = (0..n)
            .map(|i| {
                FirmDb::open(
                    &format!("frm_b{i}"),
                    &dir.path().join(format!("b{i}.db")),
                    key(),
                    true,
                )
                .unwrap()
            })
            .collect();
        let done = Arc::new(AtomicUsize::new(0));
        let mut replies = Vec::new();
        for db in &busy {
            let w = db.writer_for_tests();
            for _ in 0..(2 * MAX_BATCH) {
                let done = done.clone();
                replies.push(
                    w.submit(move |_tx| -> Result<(), StoreError> {
                        std::thread::sleep(std::time::Duration::from_micros(20));
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap(),
                );
            }
        }
        let quiet = FirmDb::open("frm_q", &dir.path().join("q.db"), key(), true).unwrap();
        quiet
            .write_blocking(|tx| tx.set_profile("k", "v", "t"))
            .unwrap();
        // The quiet firm's write waited for at most one batch per busy firm.
        assert!(
            done.load(Ordering::SeqCst) < 2 * MAX_BATCH * n,
            "the quiet firm waited for every queued command"
        );
        for rx in replies {
            rx.blocking_recv().unwrap().unwrap();
        }
        for db in busy {
            db.close();
        }
        quiet.close();
    }

    #[test]
    fn past_the_warm_bound_idle_firms_park_and_reopen_on_their_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let n = warm::WARM_FIRMS + 40;
        let firms: Vec<FirmDb> = (0..n)
            .map(|i| {
                let db = FirmDb::open(
                    &format!("frm_w{i}"),
                    &dir.path().join(format!("w{i}.db")),
                    key(),
                    true,
                )
                .unwrap();
                db.write_blocking(move |tx| tx.set_profile("i", &i.to_string(), "t"))
                    .unwrap();
                db
            })
            .collect();
        let parked = |db: &FirmDb| {
            let st = lock(&db.writer_for_tests().firm.state);
            st.conn.is_none() && !st.scheduled
        };
        // Parking runs on the pool: wait for it (bounded).
        for _ in 0..2000 {
            if parked(&firms[0]) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(parked(&firms[0]), "the least recently used firm is parked");
        assert!(lock(&firms[0].writer_for_tests().firm.readers).is_empty());
        assert!(!parked(&firms[n - 1]), "the most recent stays warm");
        assert!(warm::warm() <= warm::WARM_FIRMS);
        // A parked firm reads and writes as before; its connection reopens.
        assert_eq!(
            firms[0].read_blocking(|r| r.profile()).unwrap(),
            vec![("i".to_owned(), "0".to_owned())]
        );
        firms[0]
            .write_blocking(|tx| tx.set_profile("j", "x", "t"))
            .unwrap();
        assert_eq!(firms[0].read_blocking(|r| r.profile()).unwrap().len(), 2);
        assert!(!parked(&firms[0]));
        for db in firms {
            db.close();
        }
        // Closed firms leave the warm set.
        assert!(warm::warm() <= warm::WARM_FIRMS);
    }
}
