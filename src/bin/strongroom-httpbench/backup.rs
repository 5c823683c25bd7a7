//! `make bench-backup`: 100 firms holding about 1 GB in all; a full online
//! snapshot against `cp` of the same files, an incremental one after 1% of
//! the records changed, a restore, and the API's create latency while
//! snapshots run against the same load without them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::servers::{BenchFirm, Daemon};
use super::{Args, BoxError, Conn, Outcome, Workload, measure, post_request, tls};

const DOCS_SCHEMA: &str = r#"{"fields":{"title":{"type":"string","required":true},"body":{"type":"string"},"ssn":{"type":"string","sensitive":true}},"pii":"flag"}"#;

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// The bytes a backup reads: the registry and every firm file.
fn state_bytes(state: &Path) -> u64 {
    fs::metadata(state.join("registry.db")).map_or(0, |m| m.len()) + dir_bytes(&state.join("firms"))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// A document body of about `n` bytes of words (no digits: not PII).
fn text(seed: usize, n: usize) -> String {
    const WORDS: [&str; 8] = [
        "ledger",
        "matter",
        "counsel",
        "brief",
        "exhibit",
        "filing",
        "deposition",
        "retainer",
    ];
    let mut s = String::with_capacity(n + 16);
    let mut i = seed;
    while s.len() < n {
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(' ');
        i = i.wrapping_mul(2_654_435_761).wrapping_add(1);
    }
    s
}

/// Runs `jobs` requests on `clients` connections; `make(n)` builds request
/// `n`; returns the bodies of those answered with `want`, by `n`.
fn drive(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    clients: usize,
    jobs: usize,
    want: u16,
    make: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
) -> Result<Vec<(usize, Vec<u8>)>, BoxError> {
    let tls = tls(&d.state.join("tls/cert.pem"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(jobs)));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (tls, next, out, make, addr) =
                (tls.clone(), next.clone(), out.clone(), make.clone(), d.addr);
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(&tls, addr).await?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= jobs {
                        return Ok::<_, BoxError>(());
                    }
                    let (s, body) = c.exchange(&make(n)).await?;
                    if s != want {
                        return Err(
                            format!("request {n}: {s} {}", String::from_utf8_lossy(&body)).into(),
                        );
                    }
                    if let Ok(mut o) = out.lock() {
                        o.push((n, body));
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<_, BoxError>(())
    })?;
    let mut v = std::mem::take(&mut *out.lock().map_err(|_| "poisoned")?);
    v.sort_by_key(|(n, _)| *n);
    Ok(v)
}

fn timed_ctl(d: &Daemon, args: &[&str]) -> Result<(serde_json::Value, f64), BoxError> {
    let t = Instant::now(); // clock: benchmark timing
    let v = d.ctl(args)?;
    Ok((v, t.elapsed().as_secs_f64()))
}

pub(super) fn run(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    results: &mut Vec<Outcome>,
) -> Result<(), BoxError> {
    let d = Daemon::start(&dir.join("backup"), "")?;
    let firms: Arc<Vec<BenchFirm>> = Arc::new(d.setup_firms(rt, args.firms.max(1))?);
    for f in firms.iter() {
        let put = format!(
            "PUT /api/v1/collections/{}/docs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{DOCS_SCHEMA}",
            f.id,
            f.token,
            DOCS_SCHEMA.len()
        );
        drive(
            rt,
            &d,
            1,
            1,
            201,
            Arc::new(move |_| put.clone().into_bytes()),
        )?;
    }
    // Fill to about --backup-mb: documents of ~8 KB, spread over every firm.
    let target = args.backup_mb * 1_000_000;
    let doc = 8_000;
    // About 13 KB of files per document (page slack, indexes, audit, WAL).
    let jobs = (target / 13_000) as usize;
    let t = Instant::now(); // clock: benchmark timing
    let fs2 = firms.clone();
    let created = drive(
        rt,
        &d,
        args.clients,
        jobs,
        201,
        Arc::new(move |n| {
            let f = &fs2[n % fs2.len()];
            let body = format!(
                r#"{{"title":"Document {n}","body":"{}","ssn":"219-09-9999"}}"#,
                text(n, doc)
            );
            post_request(&format!("/api/v1/records/{}/docs", f.id), &f.token, &body)
        }),
    )?;
    let ids: Vec<(usize, String)> = created
        .iter()
        .filter_map(|(n, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            Some((n % firms.len(), v["id"].as_str()?.to_owned()))
        })
        .collect();
    sync();
    let bytes = state_bytes(&d.state);
    println!(
        "filled {} firms with {} documents of ~{} KB in {:.1} s: {:.0} MB of registry and firm files",
        firms.len(),
        ids.len(),
        doc / 1000,
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );

    // cp of the same files (then sync, as the backup fsyncs what it writes).
    let copy = dir.join("cp-copy");
    let t = Instant::now(); // clock: benchmark timing
    let ok = Command::new("cp")
        .arg("-r")
        .arg(d.state.join("firms"))
        .arg(&copy)
        .status()?
        .success()
        && Command::new("cp")
            .arg(d.state.join("registry.db"))
            .arg(&copy)
            .status()?
            .success();
    sync();
    let cp_secs = t.elapsed().as_secs_f64();
    if !ok {
        return Err("cp failed".into());
    }
    let _ = fs::remove_dir_all(&copy);
    sync();
    println!(
        "cp -r + sync:             {cp_secs:>7.2} s  {:>7.0} MB/s",
        mbps(bytes, cp_secs)
    );

    let repo: PathBuf = dir.join("repo");
    let r = repo.to_string_lossy().into_owned();
    let (full, full_secs) = timed_ctl(&d, &["backup", "create", "--to", &r])?;
    println!(
        "full snapshot:            {full_secs:>7.2} s  {:>7.0} MB/s  ({:.0}% of cp), {:.0} MB stored; longest writer pause {} us, registry held {} us",
        mbps(bytes, full_secs),
        100.0 * cp_secs / full_secs,
        full["added_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        full["max_writer_pause_us"],
        full["registry_pause_us"],
    );

    // Change 1% of the documents, spread over the firms.
    let step = 100;
    let changed: Vec<(usize, String)> = ids.iter().step_by(step).cloned().collect();
    let fs3 = firms.clone();
    let ch = Arc::new(changed);
    let ch2 = ch.clone();
    drive(
        rt,
        &d,
        args.clients,
        ch.len(),
        200,
        Arc::new(move |n| {
            let (fi, id) = &ch2[n];
            let f = &fs3[*fi];
            let body = r#"{"title":"Changed"}"#;
            format!(
                "PATCH /api/v1/records/{}/docs/{id} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/merge-patch+json\r\nIf-Match: \"1\"\r\nContent-Length: {}\r\n\r\n{body}",
                f.id,
                f.token,
                body.len()
            )
            .into_bytes()
        }),
    )?;
    sync();
    let (inc, inc_secs) = timed_ctl(&d, &["backup", "create", "--to", &r])?;
    println!(
        "incremental (1% changed): {inc_secs:>7.2} s  ({:.1}% of the full time), {:.1} MB stored ({} records changed); longest writer pause {} us",
        100.0 * inc_secs / full_secs,
        inc["added_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        ch.len(),
        inc["max_writer_pause_us"],
    );

    let restored = dir.join("restored");
    let t = Instant::now(); // clock: benchmark timing
    let out = Command::new(&d.ctl)
        .args(["--json", "backup", "restore", "latest", "--to"])
        .arg(&restored)
        .arg("--repository")
        .arg(&repo)
        .arg("--master-key-file")
        .arg(d.state.join("master.key"))
        .output()?;
    let restore_secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("restore: {}", String::from_utf8_lossy(&out.stdout)).into());
    }
    println!(
        "restore + verify:         {restore_secs:>7.2} s  {:>7.0} MB/s (every firm opened, every audit log verified)",
        mbps(bytes, restore_secs)
    );
    let _ = fs::remove_dir_all(&restored);

    // Create latency with snapshots running back to back, against without.
    let cert = d.state.join("tls/cert.pem");
    let pids = vec![d.pid()];
    let create = Workload {
        name: format!("create, {} firms, no snapshot", firms.len()),
        addr: d.addr,
        requests: Arc::new(
            firms
                .iter()
                .enumerate()
                .map(|(n, f)| {
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
    let quiet = rt.block_on(measure(args, &create, &cert, &pids))?;
    println!(
        "create p99 without snapshots: {:.2} ms",
        super::ms(quiet.p99)
    );
    for full in [true, false] {
        let kind = if full { "full" } else { "incremental" };
        let running = Arc::new(AtomicBool::new(true));
        let snaps = Arc::new(AtomicUsize::new(0));
        let looper = {
            let (running, snaps) = (running.clone(), snaps.clone());
            let (ctl, sock, repo2) = (
                d.ctl.clone(),
                d.state.join("admin.sock"),
                dir.join("repo-load"),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    if full {
                        let _ = fs::remove_dir_all(&repo2);
                    }
                    let ok = Command::new(&ctl)
                        .arg("--socket")
                        .arg(&sock)
                        .args(["backup", "create", "--to"])
                        .arg(&repo2)
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if ok {
                        snaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let mut during = create.clone();
        during.name = format!("create, {} firms, {kind} snapshots running", firms.len());
        let busy = rt.block_on(measure(args, &during, &cert, &pids));
        running.store(false, Ordering::Relaxed);
        let _ = looper.join();
        let busy = busy?;
        println!(
            "create p99 with {kind} snapshots running back to back ({} taken): {:.2} ms against {:.2} ms without ({:.2}x); throughput {:.0}% of without",
            snaps.load(Ordering::Relaxed),
            super::ms(busy.p99),
            super::ms(quiet.p99),
            busy.p99.as_secs_f64() / quiet.p99.as_secs_f64().max(1e-9),
            100.0 * busy.rps / quiet.rps.max(1e-9),
        );
        results.push(busy);
    }
    results.insert(results.len() - 2, quiet);
    let _ = fs::remove_dir_all(dir.join("repo-load"));
    Ok(())
}
