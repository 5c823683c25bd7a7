//! The access log, off the request path: a request hands a small record to
//! a bounded queue and a dedicated thread writes one log line (one journald
//! entry) per request. Formatting the line and its write system call were
//! about 7% of the daemon's CPU on authenticated GETs, all of it on the
//! async workers between a response and the next request.
//!
//! Nothing is dropped: a full queue writes the line on the caller's thread,
//! and [`flush`] (at shutdown) waits for every queued line before exit.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Lines queued at most before a request writes its own.
const QUEUE: usize = 16_384;

/// Who a request acted as, when it was authenticated.
#[derive(Debug)]
pub struct Actor {
    pub firm: String,
    pub actor: String,
    pub session: Option<String>,
    pub permission: &'static str,
    pub decision: String,
}

/// One request's line.
#[derive(Debug)]
pub struct Record {
    pub request_id: String,
    pub method: axum::http::Method,
    pub route: String,
    pub status: u16,
    pub latency_us: u64,
    pub peer: String,
    pub actor: Option<Actor>,
}

impl Record {
    fn write(self) {
        let Record {
            request_id,
            method,
            route,
            status,
            latency_us,
            peer,
            actor,
        } = self;
        match actor {
            Some(a) => tracing::info!(
                target: "strongroom::request",
                request_id = %request_id,
                method = %method,
                route = %route,
                status,
                latency_us,
                peer = %peer,
                firm = %a.firm,
                actor = %a.actor,
                session = a.session.as_deref().unwrap_or("-"),
                permission = a.permission,
                decision = %a.decision,
                "request"
            ),
            None => tracing::info!(
                target: "strongroom::request",
                request_id = %request_id,
                method = %method,
                route = %route,
                status,
                latency_us,
                peer = %peer,
                "request"
            ),
        }
    }
}

// Lines are nearly every message: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Record),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

fn queue() -> Option<&'static SyncSender<Msg>> {
    static Q: OnceLock<Option<SyncSender<Msg>>> = OnceLock::new();
    Q.get_or_init(|| {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || drain(rx))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// How long the thread rests after writing what was queued: requests then
/// queue lines without waking it, one wake-up per rest instead of per line.
const REST: std::time::Duration = std::time::Duration::from_millis(2);

fn drain(rx: Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Line(r) => r.write(),
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        std::thread::sleep(REST);
    }
}

/// Logs one request: queued for the access-log thread, or written here if
/// the queue is full.
pub fn log(record: Record) {
    let Some(tx) = queue() else {
        return record.write();
    };
    match tx.try_send(Msg::Line(record)) {
        Ok(()) => {}
        Err(TrySendError::Full(Msg::Line(r)) | TrySendError::Disconnected(Msg::Line(r))) => {
            r.write()
        }
        Err(_) => {}
    }
}

/// Waits until every line queued so far is written. Call before exit.
pub fn flush() {
    let Some(tx) = queue() else {
        return;
    };
    let (done, wait) = sync_channel(1);
    if tx.send(Msg::Flush(done)).is_ok() {
        let _ = wait.recv();
    }
}
