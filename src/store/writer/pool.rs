//! The writer pool's threads and its run queue of firms with work.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use super::{Failed, Firm, lock, turn};
use crate::store::warm;

/// Writer threads for every firm together, whatever their number: four per
/// core, at least eight. A writer thread spends most of a commit waiting for
/// its fsync, and fsyncs of several firms in flight at once share the
/// file system's journal commits, so a few threads per core keep the disk
/// busy when many firms write once each.
const THREADS_PER_CORE: usize = 4;
const MIN_THREADS: usize = 8;

/// The threads and the run queue of firms with work.
pub(super) struct Pool {
    run: Mutex<RunQueue>,
    wake: Condvar,
    /// Firms in the run queue (read without the lock by lingering threads).
    pending: AtomicUsize,
    /// One idle thread at a time polls before it sleeps.
    lingering: AtomicBool,
    /// Threads that started.
    pub(super) threads: AtomicUsize,
}

struct RunQueue {
    firms: VecDeque<Arc<Firm>>,
    sleepers: usize,
}

pub(super) fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            run: Mutex::new(RunQueue {
                firms: VecDeque::new(),
                sleepers: 0,
            }),
            wake: Condvar::new(),
            pending: AtomicUsize::new(0),
            lingering: AtomicBool::new(false),
            threads: AtomicUsize::new(0),
        }));
        let n = std::thread::available_parallelism()
            .map_or(MIN_THREADS, |c| usize::from(c) * THREADS_PER_CORE)
            .max(MIN_THREADS);
        for i in 0..n {
            match std::thread::Builder::new()
                .name(format!("writer-{i}"))
                .spawn(move || pool.work())
            {
                Ok(_) => {
                    pool.threads.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => tracing::error!(error = %e, "cannot start a writer thread"),
            }
        }
        pool
    })
}

/// After a turn, how long one idle pool thread polls for the next firm
/// before it sleeps: a submitter that answers at once (the common case
/// under load, and a lone submitter's next write) then costs no wake-up.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

impl Pool {
    pub(super) fn schedule(&self, firm: Arc<Firm>) {
        self.schedule_at(firm, false);
    }

    /// `front`: before the firms waiting to write (a park, which is cheap
    /// and bounds open files, does not wait behind a backlog of writes).
    pub(super) fn schedule_at(&self, firm: Arc<Firm>, front: bool) {
        let mut q = lock(&self.run);
        if front {
            q.firms.push_front(firm);
        } else {
            q.firms.push_back(firm);
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        let wake = q.sleepers > 0;
        drop(q);
        if wake {
            self.wake.notify_one();
        }
    }

    fn try_pop(&self) -> Option<Arc<Firm>> {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let f = lock(&self.run).firms.pop_front()?;
        self.pending.fetch_sub(1, Ordering::SeqCst);
        Some(f)
    }

    #[allow(clippy::disallowed_methods)] // clock: sub-millisecond real-time lingering
    fn next(&self) -> Arc<Firm> {
        if let Some(f) = self.try_pop() {
            return f;
        }
        if !self.lingering.swap(true, Ordering::SeqCst) {
            let until = std::time::Instant::now() + LINGER; // clock: sub-second real-time wait
            while self.pending.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
                // clock: sub-second real-time wait
                std::hint::spin_loop();
            }
            self.lingering.store(false, Ordering::SeqCst);
        }
        let mut q = lock(&self.run);
        loop {
            if let Some(f) = q.firms.pop_front() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                return f;
            }
            q.sleepers += 1;
            q = match self.wake.wait(q) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            q.sleepers -= 1;
        }
    }

    fn work(&'static self) {
        loop {
            let firm = self.next();
            if catch_unwind(AssertUnwindSafe(|| turn(&firm))).is_err() {
                // The connection went with the unwinding turn: the firm
                // takes no more writes, and whoever waits is told.
                tracing::error!(firm = %firm.name, "a firm's writer turn panicked; its writer is gone");
                let queued: Vec<_> = {
                    let mut st = lock(&firm.state);
                    st.closing = true;
                    st.done = true;
                    st.conn = None;
                    let deferred = std::mem::take(&mut st.deferred);
                    st.queue.drain(..).chain(deferred).collect()
                };
                warm::forget(&firm.slot);
                crate::telemetry::metrics::metrics()
                    .queue_depth
                    .dec_by(queued.len() as i64);
                for cmd in queued {
                    cmd.finish(Err(Failed {
                        full: false,
                        message: "the writer is gone".to_owned(),
                    }));
                }
                firm.closed.notify_all();
            }
        }
    }
}
