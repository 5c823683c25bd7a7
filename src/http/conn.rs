//! Connection admission and lifetimes: how many connections may be open,
//! overall and per source address, when an idle one is closed, and which one
//! makes room when the cap is reached.
//!
//! Every connection holds a [`ConnGuard`] from accept to close. Its
//! [`Activity`] counts requests in progress and remembers when bytes last
//! moved; a connection with no request in progress is *idle*, and an idle
//! connection is what the cap closes first (the one idle longest), much as a
//! web server reuses keep-alive connections when it runs out of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::auth::failures::source_of;
use crate::config::ServerSection;

/// Descriptors kept back from connections: the databases, the admin socket
/// and the log need some even when every connection slot is taken.
const MIN_RESERVED_FDS: u64 = 64;

/// The connection limits in force.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_source: usize,
    pub handshake: Duration,
    pub header: Duration,
    pub idle: Duration,
    pub body_grace: Duration,
    pub body_min_rate: u64,
    pub max_body: u64,
}

impl Limits {
    /// The configured limits, with the total cap lowered to fit `nofile`
    /// (the soft open-file limit): three quarters of it, less 64.
    pub fn new(s: &ServerSection, nofile: Option<u64>) -> Self {
        let fit = nofile
            .map(|n| (n - n / 4).saturating_sub(MIN_RESERVED_FDS).max(1) as usize)
            .unwrap_or(usize::MAX);
        Self {
            max_total: s.max_connections.min(fit),
            max_per_source: s.max_connections_per_source,
            handshake: Duration::from_secs(s.handshake_timeout_secs),
            header: Duration::from_secs(s.header_timeout_secs),
            idle: Duration::from_secs(s.idle_timeout_secs),
            body_grace: Duration::from_secs(s.body_timeout_secs),
            body_min_rate: s.body_min_bytes_per_sec,
            max_body: s.max_body_bytes as u64,
        }
    }
}

/// What a connection is doing: requests in progress, when one last began
/// or ended (milliseconds since the tracker started), and a count of I/O
/// operations. Reads and writes only bump the count (no clock read on the
/// hot path); the connection's idle timer notices the count move.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    busy: AtomicUsize,
    last_ms: AtomicU64,
    moved: AtomicU64,
    /// When the first byte of the next request head arrived ([`NO_HEAD`]: none yet).
    head_ms: AtomicU64,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    fn new(epoch: Instant) -> Self {
        let a = Self {
            epoch,
            busy: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            head_ms: AtomicU64::new(NO_HEAD),
        };
        a.touch();
        a
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request began or ended, or the idle timer saw bytes move.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes moved (called on every successful read or write).
    fn moved(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read: with no request in progress, they begin the next request's
    /// head, and the header timeout runs from the first of them (one clock
    /// read per request, not per read).
    fn read(&self) {
        self.moved();
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_ms.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// How long a request head has been arriving without being complete;
    /// `None` when no byte of one has come (an idle keep-alive connection is
    /// the idle timeout's, not the header timeout's).
    pub fn head_waiting_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.head_ms.load(Ordering::Relaxed) {
            NO_HEAD => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t))),
        }
    }

    /// The I/O count, for the idle timer to compare between wake-ups.
    pub fn io_count(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Marks a request in progress until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_ms.store(NO_HEAD, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// How long the connection has been idle; `None` while a request is in progress.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[derive(Debug)]
struct Slot {
    source: IpAddr,
    activity: Arc<Activity>,
    close: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    conns: HashMap<u64, Slot>,
    per_source: HashMap<IpAddr, usize>,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.conns.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&slot.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&slot.source);
            }
        }
        Some(slot)
    }

    /// Closes the connection idle longest (of `source`, if given) to make room.
    fn evict_idlest(&mut self, source: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, s)| source.is_none_or(|src| s.source == src))
            .filter_map(|(id, s)| s.activity.idle_for().map(|d| (*id, d)))
            .max_by_key(|(_, d)| *d)
            .map(|(id, _)| id);
        match victim.and_then(|id| self.remove(id)) {
            Some(slot) => {
                slot.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection from this source is busy.
    SourceFull,
    /// Every connection is busy.
    Full,
}

/// The open connections.
#[derive(Debug)]
pub struct Tracker {
    limits: Limits,
    epoch: Instant,
    state: Mutex<State>,
}

impl Tracker {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            // clock: connection deadlines are real time (a socket does not
            // wait for a test clock).
            #[allow(clippy::disallowed_methods)]
            epoch: Instant::now(), // clock: I/O deadline, real time
            state: Mutex::new(State::default()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    /// Admits a connection from `peer`, closing the idlest connection (of the
    /// same source first) when a cap is reached.
    // Security invariant: no source holds more than max_per_source
    // connections and the daemon never more than max_total, so idle clients
    // cannot exhaust descriptors.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnGuard, Refused> {
        let source = source_of(peer);
        let mut st = self.lock();
        if st.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source
            && !st.evict_idlest(Some(source))
        {
            return Err(Refused::SourceFull);
        }
        if st.conns.len() >= self.limits.max_total && !st.evict_idlest(None) {
            return Err(Refused::Full);
        }
        let id = st.next_id;
        st.next_id += 1;
        let activity = Arc::new(Activity::new(self.epoch));
        let close = Arc::new(Notify::new());
        st.conns.insert(
            id,
            Slot {
                source,
                activity: activity.clone(),
                close: close.clone(),
            },
        );
        *st.per_source.entry(source).or_insert(0) += 1;
        Ok(ConnGuard {
            id,
            tracker: self.clone(),
            activity,
            close,
        })
    }
}

/// One admitted connection; leaving the tracker when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    id: u64,
    tracker: Arc<Tracker>,
    pub activity: Arc<Activity>,
    close: Arc<Notify>,
}

impl ConnGuard {
    /// Completes when the tracker closes this connection to make room.
    pub async fn evicted(&self) {
        self.close.notified().await
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.tracker.lock().remove(self.id);
    }
}

/// A byte stream that records when bytes move on it.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> Limits {
        let s = ServerSection {
            max_connections: total,
            max_connections_per_source: per_source,
            ..ServerSection::default()
        };
        Limits::new(&s, None)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let s = ServerSection::default();
        assert_eq!(Limits::new(&s, Some(256)).max_total, 128);
        assert_eq!(Limits::new(&s, Some(1 << 20)).max_total, 1024);
        assert_eq!(Limits::new(&s, Some(10)).max_total, 1);
    }

    #[test]
    fn a_full_source_gives_up_its_idlest_connection_and_busy_ones_are_kept() {
        let t = Tracker::new(limits(100, 2));
        let a = t.admit(ip("127.0.0.2")).unwrap();
        let b = t.admit(ip("127.0.0.2")).unwrap();
        let _busy_b = b.activity.begin();
        // `a` is idle: it makes room.
        let c = t.admit(ip("127.0.0.2")).unwrap();
        assert_eq!(t.open(), 2);
        let _busy_c = c.activity.begin();
        // Both remaining connections are busy: the next is refused.
        assert_eq!(t.admit(ip("127.0.0.2")).unwrap_err(), Refused::SourceFull);
        // Another source is unaffected.
        let _d = t.admit(ip("127.0.0.3")).unwrap();
        drop(a);
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn the_total_cap_closes_the_idlest_anywhere() {
        let t = Tracker::new(limits(2, 10));
        let a = t.admit(ip("127.0.0.2")).unwrap();
        let b = t.admit(ip("127.0.0.3")).unwrap();
        let _busy = a.activity.begin();
        let _c = t.admit(ip("127.0.0.4")).unwrap();
        assert_eq!(t.open(), 2);
        // b was closed: its eviction signal is pending.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), b.evicted())
                .await
                .unwrap()
        });
    }
}
