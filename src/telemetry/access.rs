//! The access log, off the request path: a request hands a small record to
//! a bounded queue and a dedicated thread writes one log line (one journald
//! entry) per request. Formatting the line and its write system call were
//! about 7% of the daemon's CPU on authenticated GETs, all of it on the
//! async workers between a response and the next request.
//!
//! Nothing is dropped: a full queue writes the line on the caller's thread,
//! and [`flush`] (at shutdown) waits for every queued line before exit.
//!
//! On the stderr sink the thread gathers the lines of one wake-up and
//! writes them with one system call ([`StderrLines`]); journald still gets
//! one entry (one datagram) per request.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
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
    pub route: Route,
    pub status: u16,
    pub latency_us: u64,
    /// Formatted on the access-log thread, not the request's.
    pub peer: Option<SocketAddr>,
    pub actor: Option<Actor>,
}

/// The route template a request matched: the route table's own string
/// (no copy per request), else a copy.
#[derive(Debug)]
pub enum Route {
    Static(&'static str),
    Owned(String),
}

impl Route {
    pub fn as_str(&self) -> &str {
        match self {
            Route::Static(r) => r,
            Route::Owned(r) => r,
        }
    }
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
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        // Strings are given as `&str`, not `%Display`: the JSON formatter
        // then copies them instead of running them through `fmt`.
        match actor {
            Some(a) => tracing::info!(
                target: "strongroom::request",
                request_id = request_id.as_str(),
                method = method.as_str(),
                route = route.as_str(),
                status,
                latency_us,
                peer = peer.as_str(),
                firm = a.firm.as_str(),
                actor = a.actor.as_str(),
                session = a.session.as_deref().unwrap_or("-"),
                permission = a.permission,
                decision = a.decision.as_str(),
                "request"
            ),
            None => tracing::info!(
                target: "strongroom::request",
                request_id = request_id.as_str(),
                method = method.as_str(),
                route = route.as_str(),
                status,
                latency_us,
                peer = peer.as_str(),
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
        gathering(true);
        while let Some(m) = next {
            match m {
                Msg::Line(r) => r.write(),
                Msg::Flush(done) => {
                    write_gathered();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        gathering(false);
        std::thread::sleep(REST);
    }
}

/// Gathered lines are written once they reach this many bytes, or when the
/// queue is empty.
const GATHER: usize = 64 * 1024;

/// Lines formatted on this thread and not yet written.
struct Gathered {
    /// Set on the access-log thread while it drains its queue; elsewhere
    /// (and between its wake-ups) each line is written as it comes.
    on: bool,
    /// Kept between wake-ups: it grows once to its working size.
    buf: Vec<u8>,
}

thread_local! {
    static GATHERED: RefCell<Gathered> = const {
        RefCell::new(Gathered { on: false, buf: Vec::new() })
    };
}

/// Starts (true) or ends (false, writing what was gathered) gathering this
/// thread's stderr lines.
fn gathering(on: bool) {
    write_gathered();
    GATHERED.with(|g| g.borrow_mut().on = on);
}

fn write_gathered() {
    GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        if !g.buf.is_empty() {
            let _ = std::io::stderr().lock().write_all(&g.buf);
            g.buf.clear();
        }
    });
}

/// The stderr writer of the JSON sink. Each log line arrives as one
/// `write_all`; on the access-log thread the lines of one wake-up are kept
/// and written together (whole lines, in order), elsewhere each is written
/// at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLines;

impl std::io::Write for StderrLines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let full = GATHERED.with(|g| {
            let g = &mut *g.borrow_mut();
            g.on.then(|| {
                g.buf.extend_from_slice(line);
                g.buf.len() >= GATHER
            })
        });
        match full {
            None => std::io::stderr().write(line),
            Some(full) => {
                if full {
                    write_gathered();
                }
                Ok(line.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrLines {
    type Writer = StderrLines;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLines
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
