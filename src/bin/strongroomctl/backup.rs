//! `strongroomctl backup ...`: every command but `restore` runs in the
//! daemon (it holds the writers and the keys); `restore` runs here, with the
//! service stopped, given the master key.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use strongroom::admin::client;
use strongroom::backup::Progress;

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Take an online snapshot of the registry and every firm into the
    /// repository (the config's [backup] repository unless --to is given).
    Create {
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// The repository's snapshots, oldest first (signatures checked).
    List {
        #[arg(long, value_name = "DIR")]
        repository: Option<PathBuf>,
    },
    /// Check snapshots (all, one id, or `latest`): the manifest signature and
    /// every chunk. --deep also restores each into scratch, opens every firm
    /// and verifies its audit log against the tree the snapshot recorded.
    Verify {
        snapshot: Option<String>,
        #[arg(long)]
        deep: bool,
        #[arg(long, value_name = "DIR")]
        repository: Option<PathBuf>,
    },
    /// Remove snapshots outside the policy (the configured one unless given;
    /// giving one is for root only), then every chunk no kept snapshot uses.
    Prune {
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        #[arg(long, value_name = "DIR")]
        repository: Option<PathBuf>,
    },
    /// Restore the newest snapshot into scratch, verify every firm, and
    /// print the recovery point and recovery time.
    Drill {
        #[arg(long, value_name = "DIR")]
        repository: Option<PathBuf>,
    },
    /// Offline, with the service stopped: restore SNAPSHOT (or `latest`)
    /// into a new or empty state directory, given the master key. Every
    /// firm is opened and verified before the directory takes its name.
    Restore {
        snapshot: String,
        #[arg(long, value_name = "STATE_DIR")]
        to: PathBuf,
        #[arg(long, value_name = "DIR")]
        repository: PathBuf,
        /// The (escrowed) master key: 32 bytes or 64 hex characters.
        #[arg(long, value_name = "FILE")]
        master_key_file: PathBuf,
    },
}

/// Backups of large states take a while; the daemon answers when done.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

fn absolute(p: &Option<PathBuf>) -> Option<PathBuf> {
    p.as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}

fn request(cmd: &BackupCmd) -> (&'static str, Value) {
    match cmd {
        BackupCmd::Create { to } => ("backup.create", json!({ "to": absolute(to) })),
        BackupCmd::List { repository } => {
            ("backup.list", json!({ "repository": absolute(repository) }))
        }
        BackupCmd::Verify {
            snapshot,
            deep,
            repository,
        } => (
            "backup.verify",
            json!({ "snapshot": snapshot, "deep": deep, "repository": absolute(repository) }),
        ),
        BackupCmd::Prune {
            keep_last,
            keep_daily,
            repository,
        } => (
            "backup.prune",
            json!({ "keep_last": keep_last, "keep_daily": keep_daily, "repository": absolute(repository) }),
        ),
        BackupCmd::Drill { repository } => (
            "backup.drill",
            json!({ "repository": absolute(repository) }),
        ),
        BackupCmd::Restore { .. } => ("backup.restore", json!({})),
    }
}

/// A spinner while the daemon works, on a terminal only.
fn spinner(what: &str) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    Some(pb)
}

pub fn run(cmd: &BackupCmd, socket: &Path, json_out: bool) -> ExitCode {
    if let BackupCmd::Restore {
        snapshot,
        to,
        repository,
        master_key_file,
    } = cmd
    {
        return restore(snapshot, to, repository, master_key_file, json_out);
    }
    let (name, args) = request(cmd);
    let pb = spinner(&format!("strongroomd: {name}"));
    let resp = client::call(socket, name, args, BACKUP_TIMEOUT);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strongroomctl: {e}");
            return ExitCode::from(super::EX_UNAVAILABLE);
        }
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).unwrap_or_default()
        );
    }
    if let Some(err) = &resp.error {
        if !json_out {
            eprintln!("strongroomctl: {} ({})", err.message, err.code);
        }
        return ExitCode::from(if err.code == "permission_denied" {
            super::EX_NOPERM
        } else {
            1
        });
    }
    let v = resp.result.unwrap_or_default();
    if !json_out {
        print_human(cmd, &v);
    }
    if matches!(cmd, BackupCmd::Verify { .. }) && v["ok"] != true {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn mb(v: &Value) -> String {
    format!("{:.1} MB", v.as_f64().unwrap_or(0.0) / 1e6)
}

fn print_human(cmd: &BackupCmd, v: &Value) {
    let d = super::display;
    match cmd {
        BackupCmd::Create { .. } => {
            println!(
                "snapshot {} in {}: {} firms ({} read only where changed), {}, {} new ({} chunks) in {:.2}s; longest writer pause {} us, registry held {} us",
                d(&v["snapshot"]),
                d(&v["repository"]),
                d(&v["firms"]),
                d(&v["firms_read_changed"]),
                mb(&v["bytes"]),
                mb(&v["added_bytes"]),
                d(&v["added_chunks"]),
                v["seconds"].as_f64().unwrap_or(0.0),
                d(&v["max_writer_pause_us"]),
                d(&v["registry_pause_us"]),
            );
        }
        BackupCmd::List { .. } => {
            println!(
                "{:<30} {:<22} {:>6} {:>12}",
                "SNAPSHOT", "TAKEN", "FIRMS", "SIZE"
            );
            for s in v["snapshots"].as_array().into_iter().flatten() {
                println!(
                    "{:<30} {:<22} {:>6} {:>12}",
                    d(&s["id"]),
                    d(&s["finished_at"]),
                    d(&s["firms"]),
                    mb(&s["bytes"])
                );
            }
        }
        BackupCmd::Verify { .. } => {
            for s in v["snapshots"].as_array().into_iter().flatten() {
                if s["ok"] == true {
                    let deep = if s["deep"].is_object() {
                        format!(
                            "; restored and verified {} firms, {} audit entries",
                            d(&s["deep"]["firms"]),
                            d(&s["deep"]["entries"])
                        )
                    } else {
                        String::new()
                    };
                    println!("OK      {}: {} chunks{deep}", d(&s["id"]), d(&s["chunks"]));
                } else {
                    println!("FAILED  {}: {}", d(&s["id"]), d(&s["problem"]));
                }
            }
        }
        BackupCmd::Prune { .. } => {
            println!(
                "kept {} snapshots, removed {}; {} packs deleted, {} rewritten, {} chunks removed, {} freed",
                v["kept"].as_array().map_or(0, Vec::len),
                v["removed"].as_array().map_or(0, Vec::len),
                d(&v["packs_deleted"]),
                d(&v["packs_rewritten"]),
                d(&v["chunks_removed"]),
                mb(&v["bytes_freed"]),
            );
        }
        BackupCmd::Drill { .. } => {
            println!(
                "recovery drill: snapshot {} (taken {})",
                d(&v["snapshot"]),
                d(&v["snapshot_taken_at"])
            );
            println!(
                "  recovery point (snapshot age): {} s",
                d(&v["recovery_point_secs"])
            );
            println!(
                "  recovery time (restore + verify): {:.2} s (chunks checked in {:.2} s, restored, opened and audit-verified in {:.2} s)",
                v["recovery_time_secs"].as_f64().unwrap_or(0.0),
                v["chunks_checked_secs"].as_f64().unwrap_or(0.0),
                v["restore_verify_secs"].as_f64().unwrap_or(0.0),
            );
            println!(
                "  checked: {} firms, {} audit entries, {}",
                d(&v["firms"]),
                d(&v["entries"]),
                mb(&v["bytes"])
            );
        }
        BackupCmd::Restore { .. } => {}
    }
}

/// Restore progress: a bar on a terminal, a line per phase otherwise.
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        match &self.0 {
            Some(pb) => {
                pb.set_length(total);
                pb.set_message(what.to_owned());
            }
            None => println!("{what}: {:.1} MB", total as f64 / 1e6),
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(bytes);
        }
    }
    fn done(&self) {
        match &self.0 {
            Some(pb) => pb.finish_and_clear(),
            None => println!("files restored; opening and verifying every firm"),
        }
    }
}

fn restore(snapshot: &str, to: &Path, repo: &Path, key_file: &Path, json_out: bool) -> ExitCode {
    use strongroom::crypto::keyring::MasterKey;
    if let Err(e) = strongroom::crypto::fips::require_fips_mode() {
        eprintln!("strongroomctl: {e}");
        return ExitCode::FAILURE;
    }
    strongroom::store::quiet_sqlcipher_log();
    let ring = match MasterKey::read(key_file, false).and_then(|k| k.derive()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("strongroomctl: {}: {e}", key_file.display());
            return ExitCode::from(super::EX_USAGE);
        }
    };
    let bar = Bar((std::io::stdout().is_terminal() && !json_out).then(|| {
        let pb = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    }));
    let quiet = strongroom::backup::Quiet;
    let progress: &dyn Progress = if json_out { &quiet } else { &bar };
    let uid = nix::unistd::getuid().as_raw();
    let by = strongroom::audit::AdminActor {
        uid,
        name: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| "?".to_owned(), |u| u.name),
        request_id: format!(
            "adm_{}",
            strongroom::crypto::hex(&strongroom::crypto::random_array::<8>().unwrap_or_default())
        ),
    };
    let to = std::path::absolute(to).unwrap_or_else(|_| to.to_owned());
    let clock = Arc::new(strongroom::clock::SystemClock::new());
    match strongroom::backup::restore::restore(repo, snapshot, &to, ring, clock, &by, progress) {
        Ok(r) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!(
                    "restored snapshot {} into {} in {:.2}s: {} firms opened, {} audit entries verified",
                    r.snapshot, r.to, r.seconds, r.checked.firms, r.checked.entries
                );
                println!(
                    "next: chown -R strongroom: {} (if restored as root), then start strongroomd on it",
                    r.to
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json_out {
                println!(
                    "{}",
                    json!({ "ok": false, "code": e.code(), "message": e.to_string() })
                );
            } else {
                eprintln!(
                    "strongroomctl: restore failed, nothing was written to {}: {e}",
                    to.display()
                );
            }
            ExitCode::FAILURE
        }
    }
}
