//! `strongroom-httpbench`: drives the real `strongroomd` over HTTPS with
//! keep-alive clients (audited record creates with one sensitive field on one
//! firm and on many, then authenticated GETs), and, as this machine's
//! ceiling, nginx (the Debian package) serving a small static JSON file over
//! TLS 1.3 to the same load generator. Prints requests/s, latency
//! percentiles and CPU per request; asserts nothing. People workloads (in
//! `people.rs`): GETs with a session token against the same with an API key,
//! the cost of a sign-in, and wrong-password against unknown-name timing.
// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_methods)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod backup;
mod firms;
mod overhead;
mod people;
mod servers;
mod webhooks;

use servers::{BenchFirm, Daemon, Nginx};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "HTTPS load against strongroomd, with nginx over TLS 1.3 as the ceiling")]
struct Args {
    /// Working directory (default: target/bench-tmp/http).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds measured per workload (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds per workload (not measured).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Firms for the many-firm create workload.
    #[arg(long, default_value_t = 100)]
    firms: usize,
    /// Load-generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The nginx binary (skipped, with a note, if absent).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Alternating rounds (API-key against session-token GETs; limits and
    /// metrics on against off).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Only these workloads (comma-separated: nginx, create1, create-subject,
    /// createN, get, get-session, signin, overhead; and `backup`, `webhooks`
    /// and `firms`, which run only when named).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The backup workload's data size, in MB (spread over --firms firms).
    #[arg(long, default_value_t = 1000)]
    backup_mb: u64,
    /// The page format of the firms the main daemon creates (`[storage]
    /// page_format`: hmac-sha256 or hmac-sha512), to measure one against the other.
    #[arg(long)]
    page_format: Option<String>,
    /// Firms the `firms` workload provisions and opens at once.
    #[arg(long, default_value_t = 10_000)]
    open_firms: usize,
}

/// One request to send, again and again, on every connection.
#[derive(Clone)]
struct Workload {
    name: String,
    addr: SocketAddr,
    /// Full request bytes per firm; connection `c` sends `requests[(c + n) % len]`.
    requests: Arc<Vec<Vec<u8>>>,
    expect: u16,
}

struct Outcome {
    name: String,
    rps: f64,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    errors: u64,
    /// Server CPU time per request (user + system).
    cpu_per_req: Duration,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("strongroom-httpbench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BoxError> {
    let args = Args::parse();
    let want = |w: &str| args.only.is_empty() || args.only.iter().any(|o| o == w);
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench-tmp/http"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    println!(
        "{} keep-alive clients, TLS 1.3, {} s measured after {} s warm-up, {} load-generator threads, {} CPUs",
        args.clients,
        args.seconds,
        args.warmup,
        args.threads,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut results = Vec::new();

    if want("nginx") {
        if args.nginx.exists() {
            let mut nginx = Nginx::start(&args.nginx, &dir.join("nginx"))?;
            let w = Workload {
                name: "nginx static JSON (ceiling)".into(),
                addr: nginx.addr,
                requests: Arc::new(vec![get_request("/record.json", None)]),
                expect: 200,
            };
            let r = rt.block_on(measure(&args, &w, &nginx.cert, &nginx.pids()));
            nginx.stop();
            results.push(r?);
        } else {
            println!(
                "nginx not found at {}: `make bench-http` installs it (apt-get install nginx)",
                args.nginx.display()
            );
        }
    }

    if want("create1")
        || want("create-subject")
        || want("createN")
        || want("get")
        || want("get-session")
        || want("signin")
    {
        let extra = args
            .page_format
            .as_ref()
            .map(|f| format!("[storage]\npage_format = \"{f}\"\n"))
            .unwrap_or_default();
        let mut d = Daemon::start(&dir.join("strongroom"), &extra)?;
        let firms = d.setup_firms(&rt, args.firms.max(1))?;
        let cert = d.state.join("tls/cert.pem");
        let pids = vec![d.pid()];
        let create = |f: &BenchFirm, n: usize| {
            let body = format!(r#"{{"name":"Client {n}","ssn":"219-09-9999","visits":3}}"#);
            post_request(
                &format!("/api/v1/records/{}/clients", f.id),
                &f.token,
                &body,
            )
        };
        if want("create1") {
            let w = Workload {
                name: "create (audited, 1 sensitive field), 1 firm".into(),
                addr: d.addr,
                requests: Arc::new((0..64).map(|n| create(&firms[0], n)).collect()),
                expect: 201,
            };
            results.push(rt.block_on(measure(&args, &w, &cert, &pids))?);
        }
        if want("create-subject") {
            // 64 subjects, one per connection: each create after a subject's
            // first finds its key and adds one AES-GCM layer.
            let w = Workload {
                name: "create naming a data subject (sealed twice), 1 firm".into(),
                addr: d.addr,
                requests: Arc::new(
                    (0..64)
                        .map(|n| {
                            post_request(
                                &format!("/api/v1/records/{}/cases", firms[0].id),
                                &firms[0].token,
                                &format!(r#"{{"client":"Client {n}","matter":"M-{n}"}}"#),
                            )
                        })
                        .collect(),
                ),
                expect: 201,
            };
            results.push(rt.block_on(measure(&args, &w, &cert, &pids))?);
        }
        if want("createN") {
            let w = Workload {
                name: format!("create (audited, 1 sensitive field), {} firms", firms.len()),
                addr: d.addr,
                requests: Arc::new(
                    firms
                        .iter()
                        .enumerate()
                        .map(|(n, f)| create(f, n))
                        .collect(),
                ),
                expect: 201,
            };
            results.push(rt.block_on(measure(&args, &w, &cert, &pids))?);
        }
        let record = format!(
            "/api/v1/records/{}/clients/{}",
            firms[0].id, firms[0].record
        );
        let key_get = Workload {
            name: "authenticated GET of a record (sensitive field in clear)".into(),
            addr: d.addr,
            requests: Arc::new(vec![get_request(&record, Some(&firms[0].token))]),
            expect: 200,
        };
        let logins = if want("get-session") || want("signin") {
            people::setup(&d, &rt, &firms[0], 30)?
        } else {
            Vec::new()
        };
        if want("get-session") {
            // Key and session GETs alternate, so both see the same machine;
            // the ratio is the median of the rounds'.
            let token = people::sign_in(&d, &rt, &firms[0], &logins[0])?;
            let session_get = Workload {
                name: "the same GET with a person's session token".into(),
                addr: d.addr,
                requests: Arc::new(vec![get_request(&record, Some(&token))]),
                expect: 200,
            };
            let mut ratios = Vec::new();
            for _ in 0..args.rounds.max(1) {
                let k = rt.block_on(measure(&args, &key_get, &cert, &pids))?;
                let s = rt.block_on(measure(&args, &session_get, &cert, &pids))?;
                ratios.push(s.rps / k.rps);
                results.push(k);
                results.push(s);
            }
            ratios.sort_by(f64::total_cmp);
            println!(
                "session-token GETs at {:.1}% of API-key GETs, median of {} alternating rounds (target >= 95%)",
                100.0 * ratios[ratios.len() / 2],
                ratios.len()
            );
        } else if want("get") {
            results.push(rt.block_on(measure(&args, &key_get, &cert, &pids))?);
        }
        if want("signin") {
            people::sign_in_costs(&d, &rt, &firms[0], &logins)?;
        }
        d.stop();
    }

    if args.only.iter().any(|o| o == "backup") {
        backup::run(&args, &rt, &dir, &mut results)?;
    }

    if args.only.iter().any(|o| o == "webhooks") {
        webhooks::run(&args, &rt, &dir, &mut results)?;
    }

    if args.only.iter().any(|o| o == "firms") {
        firms::run(&args, &rt, &dir)?;
    }

    if want("overhead") && !args.only.iter().any(|o| o == "backup") {
        overhead::run(&args, &rt, &dir, &mut results)?;
    }

    report(&results);
    Ok(())
}

fn report(results: &[Outcome]) {
    let ceiling = results
        .iter()
        .find(|r| r.name.starts_with("nginx"))
        .map(|r| r.rps);
    println!();
    println!(
        "{:<58} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>7}",
        "workload", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "cpu us/req", "%nginx"
    );
    for r in results {
        let pct = ceiling.map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", 100.0 * r.rps / c));
        println!(
            "{:<58} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10.0} {:>7}",
            r.name,
            r.rps,
            ms(r.p50),
            ms(r.p95),
            ms(r.p99),
            r.errors,
            r.cpu_per_req.as_secs_f64() * 1e6,
            pct
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn get_request(path: &str, token: Option<&str>) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(t) = token {
        let _ = write!(r, "Authorization: Bearer {t}\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn post_request(path: &str, token: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn tls(cert: &Path) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::default_fips_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A keep-alive TLS connection speaking just enough HTTP/1.1: requests with
/// a body length, responses with `Content-Length`.
struct Conn {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(tls: &TlsConnector, addr: SocketAddr) -> Result<Self, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its response; returns status and body.
    async fn exchange(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>), BoxError> {
        self.stream.write_all(req).await?;
        self.stream.flush().await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head.split(' ').nth(1).ok_or("no status line")?.parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or("response without Content-Length")?;
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<(), BoxError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Runs a workload: every client loops over its requests on one
/// connection; latencies of requests that complete inside the measured
/// window are kept.
async fn measure(
    args: &Args,
    w: &Workload,
    cert: &Path,
    server_pids: &[u32],
) -> Result<Outcome, BoxError> {
    let tls = tls(cert)?;
    let start = Instant::now(); // clock: benchmark timing
    let measure_from = start + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (tls, w) = (tls.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut conn = Conn::open(&tls, w.addr).await?;
            let mut n = c;
            loop {
                let t0 = Instant::now(); // clock: benchmark timing
                if t0 >= until {
                    break;
                }
                let req = &w.requests[n % w.requests.len()];
                n += 1;
                let ok = match conn.exchange(req).await {
                    Ok((s, _)) => s == w.expect,
                    Err(_) => {
                        conn = Conn::open(&tls, w.addr).await?;
                        false
                    }
                };
                let t1 = Instant::now(); // clock: benchmark timing
                if t0 >= measure_from && t1 <= until {
                    if ok {
                        lat.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
            }
            Ok::<_, BoxError>((lat, errors))
        }));
    }
    // CPU of the server across the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_ticks(server_pids);
    tokio::time::sleep_until(until.into()).await;
    let cpu1 = cpu_ticks(server_pids);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)))
    };
    let count = all.len() as f64;
    let tck = clock_ticks_per_sec();
    let cpu_secs = cpu1.saturating_sub(cpu0) as f64 / tck;
    let out = Outcome {
        name: w.name.clone(),
        rps: count / args.seconds as f64,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        errors,
        cpu_per_req: if count > 0.0 {
            Duration::from_secs_f64(cpu_secs / count)
        } else {
            Duration::ZERO
        },
    };
    println!(
        "{:<58} {:>8.0} req/s  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  errors {}",
        out.name,
        out.rps,
        ms(out.p50),
        ms(out.p95),
        ms(out.p99),
        out.errors
    );
    Ok(out)
}

/// User + system clock ticks of these processes (and their threads).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn clock_ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}
