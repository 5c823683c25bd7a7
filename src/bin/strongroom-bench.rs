//! `strongroom-bench`: durable commits per second through a firm's
//! group-commit writer, against a one-row-per-transaction baseline on the
//! same disk. Prints figures; asserts nothing.
// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_methods)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

/// The daemon's allocator, so the store's figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use strongroom::audit::Entry;
use strongroom::crypto::keyring::SqlcipherKey;
use strongroom::crypto::secret::SecretKey;
use strongroom::store::firm::{ApiKeyRow, FirmDb};

#[derive(Parser)]
#[command(about = "Measure durable commits/s: group-commit writer vs one row per transaction")]
struct Args {
    /// Directory on the disk to measure (default: target/bench-tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Submitter counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    submitters: Vec<usize>,
    /// How submitters run: `tasks` (async tasks on a tokio runtime with one
    /// worker per core, as the daemon's request handlers do) or `threads`
    /// (one OS thread per submitter, blocking on each commit).
    #[arg(long, default_value = "tasks")]
    mode: Mode,
    /// Submitters for the audited-write measurement (0 skips it).
    #[arg(long, default_value_t = 64)]
    audited_submitters: usize,
    /// Entries in the log whose verification is timed (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    verify_entries: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Tasks,
    Threads,
}

impl Mode {
    fn noun(self) -> &'static str {
        match self {
            Mode::Tasks => "async submitters",
            Mode::Threads => "thread submitters",
        }
    }
}

struct Counters {
    done: AtomicU64,
    failed: AtomicU64,
    seq: AtomicU64,
}

impl Counters {
    /// Ascending ids, as in the baseline, so both append to the same index shape.
    fn next_row(&self) -> ApiKeyRow {
        row(format!("k{:012}", self.seq.fetch_add(1, Ordering::Relaxed)))
    }

    fn record(&self, r: Result<(), strongroom::store::StoreError>) {
        match r {
            Ok(()) => self.done.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn entry(i: u64) -> Entry {
    Entry {
        seq: 0,
        at: "2026-11-22T10:00:00Z".to_owned(),
        firm: "frm_bench".to_owned(),
        actor: "key_0123456789abcdef".to_owned(),
        source_ip: "127.0.0.1".to_owned(),
        request_id: format!("{i:032x}"),
        action: "keys.create".to_owned(),
        resource: format!("k{i:012}"),
        outcome: "success".to_owned(),
        decision: "allow".to_owned(),
        rule: "role:owner".to_owned(),
        // The size of a sealed details envelope (header, nonce, ~40 B, tag).
        payload: vec![0xa5; 5 + 12 + 40 + 16],
    }
}

fn row(id: String) -> ApiKeyRow {
    ApiKeyRow {
        id,
        name: "bench".to_owned(),
        role: "viewer".to_owned(),
        mac: vec![7u8; 32],
        allow: "[]".to_owned(),
        deny: "[]".to_owned(),
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        created_by: None,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strongroom-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    strongroom::crypto::fips::require_fips_mode()?;
    let dir = args
        .dir
        .unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let secret = SecretKey::random()?;
    let key = || SqlcipherKey::from_secret(&secret);
    let run_for = Duration::from_secs(args.seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // Baseline: same schema, same pragmas, one row per durable transaction.
    let base_path = dir.join("baseline.db");
    FirmDb::open("frm_bench_baseline", &base_path, key(), true)?.close();
    let (n, took) =
        strongroom::store::bench::baseline_one_row_per_commit(&base_path, &key(), run_for)?;
    let baseline = n as f64 / took.as_secs_f64();
    println!("disk: {}", dir.display());
    println!(
        "{:<44} {:>12.0} commits/s",
        "baseline (1 row per txn, synchronous=FULL)", baseline
    );

    for &submitters in &args.submitters {
        let path = dir.join(format!("writer-{submitters}.db"));
        let db = Arc::new(FirmDb::open("frm_bench_writer", &path, key(), true)?);
        let counters = Arc::new(Counters {
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        });
        let start = Instant::now(); // clock: benchmark timing
        let deadline = start + run_for;
        match args.mode {
            Mode::Threads => {
                let threads: Vec<_> = (0..submitters)
                    .map(|_| {
                        let (db, c) = (db.clone(), counters.clone());
                        std::thread::spawn(move || {
                            while Instant::now() < deadline {
                                // clock: benchmark timing
                                let r = c.next_row();
                                c.record(db.write_blocking(move |tx| tx.insert_api_key(&r)));
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    let _ = t.join();
                }
            }
            Mode::Tasks => runtime.block_on(async {
                let tasks: Vec<_> = (0..submitters)
                    .map(|_| {
                        let (db, c) = (db.clone(), counters.clone());
                        tokio::spawn(async move {
                            while Instant::now() < deadline {
                                // clock: benchmark timing
                                let r = c.next_row();
                                c.record(db.write(move |tx| tx.insert_api_key(&r)).await);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            }),
        }
        let took = start.elapsed().as_secs_f64();
        let rate = counters.done.load(Ordering::Relaxed) as f64 / took;
        println!(
            "{:<44} {:>12.0} commits/s  ({:.2}x baseline, {} failed)",
            format!("group-commit writer, {submitters} {}", args.mode.noun()),
            rate,
            rate / baseline,
            counters.failed.load(Ordering::Relaxed)
        );
        if let Ok(db) = Arc::try_unwrap(db) {
            db.close();
        }
    }
    if args.audited_submitters > 0 {
        audited_writes(
            &runtime,
            &dir,
            key(),
            run_for,
            args.audited_submitters,
            baseline,
        )?;
    }
    if args.verify_entries > 0 {
        verify_speed(&dir, key(), args.verify_entries)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Audited writes: the change and its audit entry in one transaction.
fn audited_writes(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    key: SqlcipherKey,
    run_for: Duration,
    submitters: usize,
    baseline: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = Arc::new(FirmDb::open(
        "frm_bench_audit",
        &dir.join("audited.db"),
        key,
        true,
    )?);
    let counters = Arc::new(Counters {
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        seq: AtomicU64::new(0),
    });
    let start = Instant::now(); // clock: benchmark timing
    let deadline = start + run_for;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..submitters)
            .map(|_| {
                let (db, c) = (db.clone(), counters.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        // clock: benchmark timing
                        let i = c.seq.load(Ordering::Relaxed);
                        let r = c.next_row();
                        let e = entry(i);
                        let res = db
                            .write(move |tx| {
                                tx.insert_api_key(&r)?;
                                tx.append_audit(e.clone())?;
                                Ok(())
                            })
                            .await;
                        c.record(res);
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let rate = counters.done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>12.0} commits/s  ({:.2}x baseline, {} failed)",
        format!("audited writes (change + entry), {submitters} async"),
        rate,
        rate / baseline,
        counters.failed.load(Ordering::Relaxed)
    );
    if let Ok(db) = Arc::try_unwrap(db) {
        db.close();
    }
    Ok(())
}

/// Verifying an n-entry log (leaves, chain, tree, from the encrypted
/// database) against plain SHA-256 over the same canonical bytes.
fn verify_speed(
    dir: &std::path::Path,
    key: SqlcipherKey,
    n: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = FirmDb::open("frm_bench_verify", &dir.join("verify.db"), key, true)?;
    let build = Instant::now(); // clock: benchmark timing
    let chunk = 20_000;
    let mut done = 0;
    while done < n {
        let (from, to) = (done, (done + chunk).min(n));
        db.write_blocking(move |tx| {
            for i in from..to {
                tx.append_audit(entry(i))?;
            }
            Ok(())
        })?;
        done = to;
    }
    println!(
        "built a {n}-entry log in {:.1} s",
        build.elapsed().as_secs_f64()
    );
    let t = Instant::now(); // clock: benchmark timing
    let v = db.audit_verify()?;
    let verify = t.elapsed().as_secs_f64();
    if v.first_bad.is_some() || v.size != n {
        return Err(format!("verify failed: {:?}", v.first_bad).into());
    }
    // The same bytes through SHA-256 alone: one pass over every canonical entry.
    let rows = db.read_blocking(|r| r.audit_entries(0, n))?;
    let canon: Vec<Vec<u8>> = rows.iter().map(|r| r.entry.canonical()).collect();
    let bytes: usize = canon.iter().map(Vec::len).sum();
    let t = Instant::now(); // clock: benchmark timing
    let parts: Vec<&[u8]> = canon.iter().map(Vec::as_slice).collect();
    let digest = strongroom::crypto::sha256_parts(&parts);
    let raw = t.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    println!(
        "{:<44} {:>12.0} entries/s  ({:.1} s)",
        format!("audit verify, {n} entries"),
        n as f64 / verify,
        verify
    );
    println!(
        "{:<44} {:>12.0} entries/s  ({:.2} s, {:.0} MB/s over {} MB)",
        "raw SHA-256 over the same canonical bytes",
        n as f64 / raw,
        raw,
        bytes as f64 / raw / 1e6,
        bytes / 1_000_000
    );
    println!("verify / raw SHA-256: {:.0}%", 100.0 * raw / verify);
    db.close();
    Ok(())
}
