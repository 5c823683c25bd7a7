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
/// Firms first opened one at a time (a lone cold open's latency).
const LONE: usize = 200;
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

/// One authenticated GET to each of `firms[from..to]`, on `openers`
/// connections: the latency of each answered 200, and the first of the
/// other answers with their count.
fn open_each(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    firms: &Arc<Vec<Firm>>,
    from: usize,
    to: usize,
    openers: usize,
) -> Result<(Vec<Duration>, usize), BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(Mutex::new((0usize, String::new())));
    let lat = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..openers {
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

/// The process's CPU time so far (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th and stime the 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Waits (at most five minutes) until start-up jobs (retention visits
/// every firm) are done: the daemon idle, under 3% of a core for a second.
/// Returns how long that took.
fn settle(d: &Daemon) -> Duration {
    let t0 = Instant::now(); // clock: benchmark timing
    let mut last = cpu_ticks(d.pid());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_ticks(d.pid());
        // 100 ticks a second on Linux: 3 ticks is 3% of a core.
        if now.saturating_sub(last) < 3 || t0.elapsed() > Duration::from_secs(300) {
            return t0.elapsed();
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
    // Start-up jobs (retention visits every firm): let them finish first.
    let took = settle(&d);
    println!(
        "start-up jobs done {:.1} s after start-up (the daemon idle)",
        took.as_secs_f64()
    );
    let (base, _) = rss_and_threads(d.pid());
    print_memory("settled:", &d, 0, base);
    let lone = n.min(LONE);
    let (mut alone, lone_errors) = open_each(rt, &d, &firms, 0, lone, 1)?;
    alone.sort_unstable();
    println!(
        "first request to each of {lone} firms, one at a time ({} answered 200, {lone_errors} failed): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        alone.len(),
        ms(pct(&alone, 0.50)),
        ms(pct(&alone, 0.99)),
        ms(alone.last().copied().unwrap_or_default())
    );
    let first = n.min(1000);
    let (cpu0, t0) = (cpu_ticks(d.pid()), Instant::now()); // clock: benchmark timing
    let (mut lat, mut errors) = open_each(rt, &d, &firms, lone, first, OPENERS)?;
    print_memory(&format!("{first} firms requested:"), &d, first, base);
    if n > first {
        let (more, e) = open_each(rt, &d, &firms, first, n, OPENERS)?;
        lat.extend(more);
        errors += e;
        print_memory(&format!("{n} firms requested:"), &d, n, base);
    }
    let (cpu, wall) = (cpu_ticks(d.pid()) - cpu0, t0.elapsed());
    // Periodic jobs (checkpoint signing, webhook discovery) must not cost
    // in proportion to the open firms while nothing happens.
    let idle0 = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "idle with {n} firms open: {:.1}% of a core over 5 s",
        (cpu_ticks(d.pid()) - idle0) as f64 / 5.0
    );
    lat.sort_unstable();
    let counted = (n - lone).max(1) as f64;
    println!(
        "first requests {OPENERS} at a time: {:.0}/s, daemon CPU {:.2} ms per first request",
        counted / wall.as_secs_f64().max(1e-9),
        cpu as f64 * 10.0 / counted
    );
    println!(
        "first request to each other firm ({} answered 200, {errors} failed, {OPENERS} connections): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lat.len(),
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    d.stop();
    Ok(())
}
