//! Group commit: one writer thread per open firm owns the write connection
//! and drains a queue. Every queued command runs in one transaction, then one
//! durable commit, then every caller is answered. Nothing is acknowledged
//! before the commit that contains it is on disk.
//!
//! A failing command must roll back alone. Savepoints per command would do
//! that but cost ~15% of throughput, and commands almost never fail, so a
//! batch first runs optimistically without them; if any command fails, the
//! whole transaction is rolled back and the batch replayed, each command in
//! its own savepoint. Commands are therefore `Fn`: they may run twice, and
//! only the result of the run that was committed is delivered.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;
use super::firm::WriteTx;

/// Commands queued beyond this make callers wait with `Busy` (503) instead of
/// growing memory without bound.
const QUEUE_DEPTH: usize = 16_384;
/// Upper bound on commands in one transaction.
const MAX_BATCH: usize = 4_096;

trait Command: Send {
    /// Runs the command (again, if it ran before); true if it succeeded.
    fn run(&mut self, tx: &WriteTx<'_>) -> bool;
    /// Delivers the outcome once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), Failed>);
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

/// Handle to a firm's writer thread. Dropping it lets the thread finish the
/// queue and close the connection; [`Writer::close`] also waits for that.
pub(crate) struct Writer {
    tx: Option<SyncSender<Box<dyn Command>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    pub(crate) fn spawn(
        conn: Connection,
        name: String,
        path: std::path::PathBuf,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel::<Box<dyn Command>>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(conn, rx, &path))
            .map_err(|e| StoreError::Io {
                path: "writer thread".to_owned(),
                source: e,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
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
        let sender = self.tx.as_ref().ok_or(StoreError::WriterGone)?;
        match sender.try_send(cmd) {
            Ok(()) => {
                crate::telemetry::metrics::metrics().queue_depth.inc();
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterGone),
        }
    }

    /// Stops accepting commands, lets the queue drain, joins the thread.
    pub(crate) fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
    }
}

/// After a commit, how long the writer polls for the next command before it
/// sleeps: a submitter that answers at once (the common case under load, and
/// a lone submitter's next write) then costs no thread wake-up.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

#[allow(clippy::disallowed_methods)] // clock: sub-millisecond real-time lingering
fn next_command(rx: &Receiver<Box<dyn Command>>) -> Option<Box<dyn Command>> {
    let until = std::time::Instant::now() + LINGER; // clock: sub-second real-time wait
    loop {
        match rx.try_recv() {
            Ok(c) => return Some(c),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if std::time::Instant::now() < until => {
                // clock: sub-second real-time wait
                std::hint::spin_loop();
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return rx.recv().ok(),
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
fn gather(
    rx: &Receiver<Box<dyn Command>>,
    first: Box<dyn Command>,
    previous: usize,
) -> Vec<Box<dyn Command>> {
    let mut batch = vec![first];
    let target = previous.min(MAX_BATCH);
    let until = std::time::Instant::now() + GATHER; // clock: sub-second real-time wait
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(std::sync::mpsc::TryRecvError::Empty)
                if batch.len() < target && std::time::Instant::now() < until =>
            // clock: sub-second real-time wait
            {
                std::thread::yield_now();
            }
            Err(_) => break,
        }
    }
    batch
}

#[allow(clippy::disallowed_methods)] // clock: commit duration is real elapsed time
fn run(conn: Connection, rx: Receiver<Box<dyn Command>>, path: &std::path::Path) {
    let m = crate::telemetry::metrics::metrics();
    let mut previous = 1;
    let mut checkpointed_at = 0;
    while let Some(first) = next_command(&rx) {
        let mut batch = gather(&rx, first, previous);
        previous = batch.len();
        m.queue_depth.dec_by(batch.len() as i64);
        m.batch_size.observe(batch.len() as f64);
        let started = std::time::Instant::now(); // clock: a metric of real time
        let commit = run_batch(&conn, &mut batch).map_err(|e| Failed {
            full: matches!(e, StoreError::Full),
            message: e.to_string(),
        });
        m.commit_duration.observe(started.elapsed().as_secs_f64());
        match &commit {
            Ok(appended) => {
                m.audit_appended.inc_by(*appended);
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
            super::firm::after_commit(&conn, path, &mut checkpointed_at);
        }
    }
    // All senders dropped: the connection closes here, checkpointing the
    // WAL; its pages are recorded first.
    super::firm::before_close(&conn, path);
    drop(conn);
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
