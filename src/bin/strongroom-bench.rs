//! `strongroom-bench`: durable commits per second through a firm's
//! group-commit writer, against a one-row-per-transaction baseline on the
//! same disk. Prints figures; asserts nothing.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
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
        let start = Instant::now();
        let deadline = start + run_for;
        match args.mode {
            Mode::Threads => {
                let threads: Vec<_> = (0..submitters)
                    .map(|_| {
                        let (db, c) = (db.clone(), counters.clone());
                        std::thread::spawn(move || {
                            while Instant::now() < deadline {
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
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
