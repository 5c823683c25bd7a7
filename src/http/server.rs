//! The TLS accept loop and HTTP connection serving, with graceful drain.
//!
//! Every connection is admitted by the [`Tracker`] (caps overall and per
//! source), must finish its TLS handshake within the handshake timeout, its
//! headers within the header timeout, its body at a minimum rate, and is
//! closed after the idle timeout with no request in progress.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::PeerAddr;
use super::body::{BodyTimedOut, MinRate};
use super::conn::{Refused, Tracked, Tracker};

/// Longest pause after a failed accept (out of descriptors, say).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Accepts connections until `shutdown` turns true, then lets in-flight
/// requests finish for at most `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let limits = tracker.limits().clone();
    let graceful = GracefulShutdown::new();
    let mut h1 = http1::Builder::new();
    // hyper's own header timeout also runs while a keep-alive connection
    // waits for its next request, which would close idle connections at the
    // header timeout (with an unasked-for 408) instead of the idle timeout:
    // the header deadline is kept below, from a head's first byte.
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));

    let mut accept_failures = 0u32;
    let mut refusing = false;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors (or another transient error): back
                    // off, doubling up to a second, and say so once. The
                    // admin socket and open connections go on meanwhile.
                    accept_failures += 1;
                    if accept_failures == 1 {
                        tracing::warn!(error = %e, open = tracker.open(), "accept failed; backing off");
                    }
                    let wait = Duration::from_millis(10u64 << accept_failures.min(7));
                    tokio::time::sleep(wait.min(MAX_ACCEPT_BACKOFF)).await;
                    continue;
                }
            },
        };
        if accept_failures > 0 {
            tracing::info!(failures = accept_failures, "accepting connections again");
            accept_failures = 0;
        }
        let guard = match tracker.admit(peer.ip()) {
            Ok(g) => {
                if refusing {
                    tracing::info!("connection cap: admitting again");
                    refusing = false;
                }
                g
            }
            Err(why) => {
                if !refusing {
                    tracing::warn!(
                        peer = %peer,
                        reason = if why == Refused::Full { "every connection is busy" } else { "every connection from this source is busy" },
                        open = tracker.open(),
                        "connection cap reached: refusing new connections"
                    );
                    refusing = true;
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let limits = limits.clone();
        tokio::spawn(async move {
            let io = Tracked::new(tcp, guard.activity.clone());
            let tls = tokio::select! {
                r = tokio::time::timeout(limits.handshake, acceptor.accept(io)) => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        crate::telemetry::metrics::metrics().tls_handshake_failures.inc();
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        crate::telemetry::metrics::metrics().tls_handshake_failures.inc();
                        tracing::debug!(peer = %peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = guard.evicted() => return,
            };
            let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let activity = guard.activity.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let busy = activity.begin();
                req.extensions_mut().insert(PeerAddr(peer));
                let flag = BodyTimedOut::default();
                req.extensions_mut().insert(flag.clone());
                let req =
                    req.map(|b| MinRate::new(b, limits.body_grace, limits.body_min_rate, flag));
                let mut router = router.clone();
                async move {
                    let resp = router.call(req).await;
                    drop(busy);
                    resp
                }
            });
            let io = TokioIo::new(tls);
            let mut conn: ConnFuture = if is_h2 {
                Box::pin(watcher.watch(h2.serve_connection(io, svc)))
            } else {
                Box::pin(watcher.watch(h1.serve_connection(io, svc)))
            };
            let mut seen_io = guard.activity.io_count();
            loop {
                let mut wait = match guard.activity.idle_for() {
                    Some(idle) => limits.idle.saturating_sub(idle),
                    None => limits.idle,
                };
                // HTTP/1.1: a request head must be complete within the header
                // timeout of its first byte (h2 has its own framing deadlines).
                let head = (!is_h2)
                    .then(|| guard.activity.head_waiting_for())
                    .flatten();
                if let Some(waited) = head {
                    if waited >= limits.header {
                        refused_slow_head(peer);
                        return;
                    }
                    wait = wait.min(limits.header - waited);
                }
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            refused_by_parser(peer, &e);
                        }
                        return;
                    }
                    _ = guard.evicted() => {
                        tracing::debug!(peer = %peer, "idle connection closed to make room");
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {
                        // Bytes moved since the last wake-up (a long
                        // response still streaming): not idle.
                        let io = guard.activity.io_count();
                        if io != seen_io {
                            seen_io = io;
                            guard.activity.touch();
                            continue;
                        }
                        if !is_h2 && guard.activity.head_waiting_for().is_some() {
                            continue;
                        }
                        if guard.activity.idle_for().is_some_and(|d| d >= limits.idle) {
                            tracing::debug!(peer = %peer, "idle connection timed out");
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(deadline_secs = drain.as_secs(), "drain deadline reached; closing remaining connections"),
    }
}

/// A request head that did not arrive within the header timeout: the
/// connection is closed (a slow-headers client gets no more of our time).
fn refused_slow_head(peer: SocketAddr) {
    tracing::info!(
        target: "strongroom::request",
        request_id = %super::middleware::new_request_id(),
        method = "-",
        route = "<unparsed>",
        status = 408u16,
        peer = %peer,
        error = "request head not complete within the header timeout",
        "request refused by the HTTP parser"
    );
}

/// A request the HTTP parser refused before any of our code saw it. hyper
/// answers these itself (a bare status line: 400, 431, ...); the log line
/// is ours, so every refused request is on record.
fn refused_by_parser(peer: SocketAddr, e: &hyper::Error) {
    let status = if e.is_parse_too_large() {
        431
    } else if e.is_parse() {
        400
    } else if e.is_timeout() {
        408
    } else {
        tracing::debug!(peer = %peer, error = %e, "connection ended with error");
        return;
    };
    tracing::info!(
        target: "strongroom::request",
        request_id = %super::middleware::new_request_id(),
        method = "-",
        route = "<unparsed>",
        status,
        peer = %peer,
        error = %e,
        "request refused by the HTTP parser"
    );
}
