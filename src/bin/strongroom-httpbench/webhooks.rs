//! `--only webhooks`: record creates on one firm at `--clients` concurrency,
//! first with no webhook endpoint, then with one endpoint subscribed to
//! `record.created` that delivers to a local HTTPS receiver (in this
//! process, answering 204). Prints both creates' latency, the events
//! delivered per second while the creates ran and until the outbox drained.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::servers::Daemon;
use super::{Args, BoxError, Conn, Outcome, Workload, find, measure, post_request, tls};

/// A minimal HTTPS receiver: counts requests, answers 204, closes.
struct Receiver {
    cert: PathBuf,
    addr: SocketAddr,
    count: Arc<AtomicU64>,
}

impl Receiver {
    async fn start(dir: &Path) -> Result<Self, BoxError> {
        fs::create_dir_all(dir)?;
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let cert = dir.join("receiver.pem");
        fs::write(&cert, c.cert.pem())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![c.cert.der().clone()];
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::default_fips_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // The head, then as many body bytes as it announces.
                    let need = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break i + 4 + len;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < need {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(Self { cert, addr, count })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Waits until no delivery has arrived for 2 s (at most 10 minutes);
/// returns when the last one arrived.
fn drained(rx: &Receiver) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600); // clock: benchmark timing
    let (mut last, mut at) = (rx.count(), Instant::now()); // clock: benchmark timing
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let n = rx.count();
        let now = Instant::now(); // clock: benchmark timing
        if n != last {
            (last, at) = (n, now);
        } else if now.duration_since(at) >= Duration::from_secs(2) || now > deadline {
            return at;
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Two daemons alike, one firm each; the second firm has one endpoint
/// subscribed to `record.created`. Rounds alternate: creates on the first
/// (the outbox drained, so nothing else runs), then on the second while
/// its events are delivered.
pub(super) fn run(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    results: &mut Vec<Outcome>,
) -> Result<(), BoxError> {
    let rx = rt.block_on(Receiver::start(&dir.join("receiver")))?;
    let extra = format!(
        "[webhooks]\nallow = [\"127.0.0.1/32\"]\nca_file = \"{}\"\n",
        rx.cert.display()
    );
    let mut plain = Daemon::start(&dir.join("strongroom-no-webhooks"), &extra)?;
    let mut hooked = Daemon::start(&dir.join("strongroom-webhooks"), &extra)?;
    let creates = |d: &Daemon, name: &str| -> Result<(Workload, PathBuf, Vec<u32>), BoxError> {
        let firms = d.setup_firms(rt, 1)?;
        let f = &firms[0];
        let w = Workload {
            name: name.to_owned(),
            addr: d.addr,
            requests: Arc::new(
                (0..64)
                    .map(|n| {
                        post_request(
                            &format!("/api/v1/records/{}/clients", f.id),
                            &f.token,
                            &format!(r#"{{"name":"Client {n}","ssn":"219-09-9999","visits":3}}"#),
                        )
                    })
                    .collect(),
            ),
            expect: 201,
        };
        if name.contains("endpoint") {
            let body = format!(
                r#"{{"url":"https://{}/hook","events":["record.created"]}}"#,
                rx.addr
            );
            let cert = d.state.join("tls/cert.pem");
            rt.block_on(async {
                let mut c = Conn::open(&tls(&cert)?, d.addr).await?;
                let (s, b) = c
                    .exchange(&post_request(
                        &format!("/api/v1/webhooks/{}", f.id),
                        &f.token,
                        &body,
                    ))
                    .await?;
                if s != 201 {
                    return Err(format!("endpoint: {s} {}", String::from_utf8_lossy(&b)).into());
                }
                Ok::<_, BoxError>(())
            })?;
        }
        Ok((w, d.state.join("tls/cert.pem"), vec![d.pid()]))
    };
    let (none_w, none_cert, none_pids) = creates(&plain, "create, no webhook endpoint")?;
    let (one_w, one_cert, one_pids) = creates(&hooked, "create, 1 endpoint (record.created)")?;
    let (mut ratios, mut during, mut overall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        drained(&rx);
        let none = rt.block_on(measure(args, &none_w, &none_cert, &none_pids))?;
        let (c0, t0) = (rx.count(), Instant::now()); // clock: benchmark timing
        let one = rt.block_on(measure(args, &one_w, &one_cert, &one_pids))?;
        let window = t0.elapsed(); // clock: benchmark timing
        during.push((rx.count() - c0) as f64 / window.as_secs_f64());
        let last = drained(&rx);
        overall.push((rx.count() - c0) as f64 / last.duration_since(t0).as_secs_f64().max(1e-9));
        ratios.push(one.p99.as_secs_f64() / none.p99.as_secs_f64().max(1e-9));
        results.push(none);
        results.push(one);
    }
    let n = ratios.len();
    println!(
        "webhooks, median of {n} alternating rounds: create p99 with one subscribed endpoint at {:+.1}% of none (target within 10%); {:.0} events/s delivered while {} clients created, {:.0} events/s from the first create until the outbox drained",
        100.0 * (median(&mut ratios) - 1.0),
        median(&mut during),
        args.clients,
        median(&mut overall),
    );
    plain.stop();
    hooked.stop();
    Ok(())
}
