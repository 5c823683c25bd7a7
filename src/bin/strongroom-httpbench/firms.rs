//! `--only firms`: many firms open at once. Provisions `--open-firms` firms
//! (concurrently, over the admin socket), restarts the daemon and times its
//! start-up (process start to an HTTPS answer), then sends one authenticated
//! request to each firm (the request that opens it) and reports that first
//! request's latency, and the daemon's resident memory and thread count
//! after 1,000 firms and with all of them open.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::servers::Daemon;
use super::{Args, BoxError, Conn, get_request, ms, tls};

/// Connections that open firms at once.
const OPENERS: usize = 4;
/// Admin connections that create firms at once.
const PROVISIONERS: usize = 4;

/// While provisioning, firms close again a second after their creation, so
/// the daemon never holds thousands open before the measurement.
const PROVISION_CONFIG: &str = "[storage]\nfirm_idle_secs = 1\n";
/// While measuring, nothing closes for idleness.
const MEASURE_CONFIG: &str = "[storage]\nfirm_idle_secs = 86400\n";

struct Firm {
    id: String,
    token: String,
}

/// `VmRSS` (kB) and `Threads` of a process, from `/proc/<pid>/status`.
pub(super) fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

fn provision(d: &Daemon, n: usize) -> Result<Vec<Firm>, BoxError> {
    let socket = d.state.join("admin.sock");
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut threads = Vec::new();
    for _ in 0..PROVISIONERS {
        let (socket, next, out) = (socket.clone(), next.clone(), out.clone());
        threads.push(std::thread::spawn(move || -> Result<(), BoxError> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                let r = strongroom::admin::client::call(
                    &socket,
                    "firm.create",
                    serde_json::json!({ "name": format!("Open Firm {i}") }),
                    Duration::from_secs(120),
                )?;
                let v = r
                    .result
                    .ok_or_else(|| format!("firm.create: {:?}", r.error.map(|e| e.message)))?;
                let id = v["firm"]["id"].as_str().ok_or("no firm id")?.to_owned();
                let token = v["api_key"]["secret"]
                    .as_str()
                    .ok_or("no api key")?
                    .to_owned();
                out.lock().map_err(|_| "poisoned")?.push(Firm { id, token });
            }
        }));
    }
    for t in threads {
        t.join().map_err(|_| "provisioning thread panicked")??;
    }
    let firms = std::mem::take(&mut *out.lock().map_err(|_| "poisoned")?);
    Ok(firms)
}

/// One authenticated GET to each of `firms[from..to]`, on [`OPENERS`]
/// connections: the latency of each answered 200, and the first of the
/// other answers with their count.
fn open_each(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    firms: &Arc<Vec<Firm>>,
    from: usize,
    to: usize,
) -> Result<(Vec<Duration>, usize), BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(Mutex::new((0usize, String::new())));
    let lat = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..OPENERS {
            let (tls, next, firms, addr, failed) = (
                tls.clone(),
                next.clone(),
                firms.clone(),
                d.addr,
                failed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(&tls, addr).await?;
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return Ok::<_, BoxError>(lat);
                    }
                    let f = &firms[i];
                    let req = get_request(&format!("/api/v1/firms/{}", f.id), Some(&f.token));
                    let t0 = Instant::now(); // clock: benchmark timing
                    let (s, body) = c.exchange(&req).await?;
                    if s == 200 {
                        lat.push(t0.elapsed());
                    } else if let Ok(mut e) = failed.lock() {
                        e.0 += 1;
                        if e.1.is_empty() {
                            e.1 = format!("{s} {}", String::from_utf8_lossy(&body));
                        }
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok::<_, BoxError>(all)
    })?;
    let (errors, first) = std::mem::take(&mut *failed.lock().map_err(|_| "poisoned")?);
    if errors > 0 {
        println!("{errors} of firms {from}..{to} failed; the first: {first}");
    }
    Ok((lat, errors))
}

/// Starts the daemon on an existing state directory: the time from process
/// start to its first HTTPS answer.
fn timed_start(rt: &tokio::runtime::Runtime, dir: &Path) -> Result<(Daemon, Duration), BoxError> {
    let t0 = Instant::now(); // clock: benchmark timing
    let d = Daemon::start(dir, MEASURE_CONFIG)?;
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    rt.block_on(async {
        let mut c = Conn::open(&tls, d.addr).await?;
        let (s, _) = c.exchange(&get_request("/healthz", None)).await?;
        if s != 200 {
            return Err(format!("healthz: {s}").into());
        }
        Ok::<_, BoxError>(())
    })?;
    Ok((d, t0.elapsed()))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The daemon's count of open firms (`status` over the admin socket).
fn firms_open(d: &Daemon) -> u64 {
    strongroom::admin::client::call(
        &d.state.join("admin.sock"),
        "status",
        serde_json::json!({}),
        Duration::from_secs(30),
    )
    .ok()
    .and_then(|r| r.result?["firms_open"].as_u64())
    .unwrap_or(0)
}

/// Waits (at most two minutes) until start-up jobs stop opening firms:
/// the open count unchanged for two seconds.
fn settle(d: &Daemon) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120); // clock: benchmark timing
    let mut last = firms_open(d);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = firms_open(d);
        if now == last || Instant::now() > deadline {
            // clock: benchmark timing
            return now;
        }
        last = now;
    }
}

fn print_memory(label: &str, d: &Daemon, open: usize, base_kb: u64) {
    let pid = d.pid();
    let (rss, threads) = rss_and_threads(pid);
    let per = if open > 0 {
        rss.saturating_sub(base_kb) as f64 / open as f64
    } else {
        0.0
    };
    println!(
        "{label:<28} RSS {:>8.1} MB  threads {threads:>6}  firms open {:>6}  ({per:.0} kB per firm requested, over the settled daemon)",
        rss as f64 / 1024.0,
        firms_open(d)
    );
}

pub(super) fn run(args: &Args, rt: &tokio::runtime::Runtime, dir: &Path) -> Result<(), BoxError> {
    let n = args.open_firms.max(1);
    let dir = dir.join("firms");
    let mut d = Daemon::start(&dir, PROVISION_CONFIG)?;
    let t = Instant::now(); // clock: benchmark timing
    let firms = Arc::new(provision(&d, n)?);
    let took = t.elapsed();
    println!(
        "provisioned {n} firms in {:.1} s ({:.0} firms/s, {PROVISIONERS} admin connections)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64().max(1e-9)
    );
    d.stop();

    let (mut d, startup) = timed_start(rt, &dir)?;
    println!(
        "start-up with {n} firms provisioned: {:.0} ms (process start to an HTTPS answer)",
        ms(startup)
    );
    // Start-up jobs (retention) may open firms: let them finish first.
    let opened = settle(&d);
    let (base, _) = rss_and_threads(d.pid());
    print_memory(&format!("settled ({opened} open):"), &d, 0, base);
    let first = n.min(1000);
    let (mut lat, mut errors) = open_each(rt, &d, &firms, 0, first)?;
    print_memory(&format!("{first} firms requested:"), &d, first, base);
    if n > first {
        let (more, e) = open_each(rt, &d, &firms, first, n)?;
        lat.extend(more);
        errors += e;
        print_memory(&format!("{n} firms requested:"), &d, n, base);
    }
    lat.sort_unstable();
    println!(
        "first request to each firm ({} answered 200, {errors} failed, {OPENERS} connections): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lat.len(),
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    d.stop();
    Ok(())
}
