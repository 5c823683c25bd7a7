//! `strongroomctl`: the sysadmin's CLI, talking to strongroomd over the admin socket.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strongroom::admin::client;

mod backup;
mod evidence;

#[derive(Debug, Parser)]
#[command(
    name = "strongroomctl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("STRONGROOM_BUILD_COMMIT"), ")"),
    about = "Administer a running strongroomd over its admin socket"
)]
struct Cli {
    /// The daemon's admin socket.
    #[arg(
        long,
        global = true,
        env = "STRONGROOM_ADMIN_SOCKET",
        default_value = "/run/strongroom/admin.sock"
    )]
    socket: PathBuf,
    /// Print the daemon's JSON reply (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Daemon status: version, uptime, FIPS mode, listeners.
    Status,
    /// Firm (tenant) lifecycle.
    #[command(subcommand)]
    Firm(FirmCmd),
    /// Master key management.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// A firm's people (break-glass: when a firm's last admin is locked out
    /// or has lost their authenticator). Recorded in the system log and the
    /// firm's own log.
    #[command(subcommand)]
    User(UserCmd),
    /// Backups: online snapshots into a repository, verify, prune, a
    /// recovery drill, and (offline) restore.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Records.
    #[command(subcommand)]
    Records(RecordsCmd),
    /// Evidence bundles for a firm's auditors: export, and verify offline.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCmd),
}

#[derive(Debug, Subcommand)]
enum RecordsCmd {
    /// Run the record retention job now: delete, in every active firm, the
    /// records older than their collection's retention class.
    PurgeExpired,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// List the firm's users.
    List {
        #[arg(long)]
        firm: String,
    },
    /// One user and their live sessions.
    Show {
        #[arg(long)]
        firm: String,
        user: String,
    },
    /// End a lockout now.
    Unlock {
        #[arg(long)]
        firm: String,
        user: String,
    },
    /// Stop a user signing in; every session of theirs ends.
    Disable {
        #[arg(long)]
        firm: String,
        user: String,
    },
    /// Remove a user's TOTP and recovery codes (a lost device); their
    /// sessions end, and they enrol again at their next sign-in.
    ResetMfa {
        #[arg(long)]
        firm: String,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// The appliance's checkpoint verifier key (C2SP `name+hash+base64`).
    VerifierKey,
    /// Re-verify a firm's whole log in the daemon (leaves, chain, tree).
    Verify {
        #[arg(long)]
        firm: String,
    },
    /// Check an export offline (no daemon): every leaf from its fields, the
    /// chain, and the tree root against the export's signed checkpoint.
    VerifyExport {
        file: PathBuf,
        /// The appliance's verifier key, as pinned (`name+hash+base64`).
        #[arg(long)]
        verifier_key: String,
    },
    /// Crypto-shred a firm's audit payloads: its audit key is destroyed, so
    /// old entries' details are gone for good; the chain, tree and
    /// checkpoints still verify. New entries use a new key.
    ShredPayloads {
        #[arg(long)]
        firm: String,
        /// Repeat the firm id to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Run the retention job now: purge every log's entries older than its
    /// retention, each purge recorded with a signed receipt.
    PurgeExpired,
    /// The system log: admin-socket actions, kept in the registry.
    #[command(subcommand)]
    System(SystemCmd),
}

#[derive(Debug, Subcommand)]
enum SystemCmd {
    /// List entries, oldest first.
    List {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Re-verify the system log (leaves, chain, tree, purge receipt).
    Verify,
    /// The system log's latest signed checkpoint (a C2SP signed note).
    Checkpoint,
    /// Export as CloudEvents NDJSON (check it with `audit verify-export`).
    Export,
}

#[derive(Debug, Subcommand)]
enum FirmCmd {
    /// Create a firm; prints its id and a first owner API key (shown once).
    Create { name: String },
    /// List every firm, deleted ones included.
    List,
    /// Show one firm: state, key versions, data-key re-encryption progress,
    /// database size.
    Show { id: String },
    /// Freeze a firm: the API refuses writes (423); reads still work.
    Freeze { id: String },
    /// Unfreeze a firm.
    Unfreeze { id: String },
    /// Delete a firm for good: its keys are destroyed (crypto-shred) and its
    /// database removed. The id is never reused.
    Delete {
        id: String,
        /// Repeat the firm id to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Break-glass: print the firm's raw SQLCipher key (root only).
    ExportKey { id: String },
    /// Re-encrypt the firm's database under a new SQLCipher key.
    Rekey { id: String },
    /// Rotate the firm's data key (secrets and sensitive record fields): new
    /// writes use the new version at once; a background job re-encrypts the
    /// rest, then destroys the old version. Progress: `firm show`.
    RotateDataKey { id: String },
    /// Set the firm's audit retention (e.g. 3650d), or `default` for the
    /// configured one.
    Retention { id: String, retention: String },
    /// Show the firm's rate limits, or set one class's (requests a second,
    /// or `default` for the configured one): read, write, auth or admin.
    RateLimit {
        id: String,
        class: Option<String>,
        per_second: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Re-wrap every firm key under a new master key read by the daemon from
    /// FILE (32 bytes or 64 hex; mode 0400/0600, owned by the service user).
    RotateMaster {
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Print a new random master key (64 hex characters, from the FIPS DRBG)
    /// to standard output, for `systemd-creds encrypt` or a key file. Needs
    /// no daemon; refuses to print to a terminal.
    GenerateMaster,
}

/// sysexits.h codes so scripts can tell failures apart.
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_NOPERM: u8 = 77;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keys(KeysCmd::GenerateMaster) = cli.command {
        return generate_master();
    }
    if let Command::Audit(AuditCmd::VerifyExport { file, verifier_key }) = &cli.command {
        return verify_export(file, verifier_key, cli.json);
    }
    if let Command::Backup(b) = &cli.command {
        return backup::run(b, &cli.socket, cli.json);
    }
    if let Command::Evidence(e) = &cli.command {
        return evidence::run(e, &cli.socket, cli.json);
    }
    let (cmd, args) = request(&cli.command);
    let resp = match client::call(&cli.socket, cmd, args, Duration::from_secs(120)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strongroomctl: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&resp) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("strongroomctl: {e}"),
        }
    }
    if let Some(err) = &resp.error {
        if !cli.json {
            eprintln!("strongroomctl: {} ({})", err.message, err.code);
        }
        return ExitCode::from(if err.code == "permission_denied" {
            EX_NOPERM
        } else {
            1
        });
    }
    let result = resp.result.unwrap_or_default();
    if !cli.json {
        print_human(&cli.command, &result);
    }
    // A log that does not verify is a failure for scripts too.
    if matches!(
        cli.command,
        Command::Audit(AuditCmd::Verify { .. } | AuditCmd::System(SystemCmd::Verify))
    ) && result["ok"] != true
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Offline check of an export (NDJSON or a CloudEvents batch array).
fn verify_export(file: &std::path::Path, verifier_key: &str, json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("strongroomctl: {}: {e}", file.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    let events: Result<Vec<serde_json::Value>, _> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect()
    };
    let result = events
        .map_err(|e| format!("not an export: {e}"))
        .and_then(|ev| strongroom::audit::export::verify_export(&ev, verifier_key));
    match result {
        Ok(c) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "entries": c.entries, "root_hash": c.root})
                );
            } else {
                println!("OK: {} entries, root {}", c.entries, c.root);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": e}));
            } else {
                eprintln!("strongroomctl: export does NOT verify: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A new master key on stdout, never on a terminal (it would end up in
/// scrollback and screen recordings).
fn generate_master() -> ExitCode {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout();
    if out.is_terminal() {
        eprintln!(
            "strongroomctl: refusing to print a key to a terminal; pipe it (e.g. into systemd-creds encrypt)"
        );
        return ExitCode::from(EX_USAGE);
    }
    if let Err(e) = strongroom::crypto::fips::require_fips_mode() {
        eprintln!("strongroomctl: {e}");
        return ExitCode::FAILURE;
    }
    let hex = match strongroom::crypto::keyring::new_master_key_hex() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("strongroomctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match writeln!(out, "{}", hex.as_str()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strongroomctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn request(cmd: &Command) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    match cmd {
        Command::Status => ("status", json!({})),
        Command::Firm(f) => match f {
            FirmCmd::Create { name } => ("firm.create", json!({ "name": name })),
            FirmCmd::List => ("firm.list", json!({})),
            FirmCmd::Show { id } => ("firm.show", json!({ "id": id })),
            FirmCmd::Freeze { id } => ("firm.freeze", json!({ "id": id })),
            FirmCmd::Unfreeze { id } => ("firm.unfreeze", json!({ "id": id })),
            FirmCmd::Delete { id, confirm } => {
                ("firm.delete", json!({ "id": id, "confirm": confirm }))
            }
            FirmCmd::ExportKey { id } => ("firm.export_key", json!({ "id": id })),
            FirmCmd::Rekey { id } => ("firm.rekey", json!({ "id": id })),
            FirmCmd::RotateDataKey { id } => ("firm.rotate_data_key", json!({ "id": id })),
            FirmCmd::RateLimit {
                id,
                class: Some(class),
                per_second: Some(n),
            } => (
                "firm.set_rate_limit",
                json!({ "id": id, "class": class, "per_second": n.parse::<u32>().ok().filter(|_| n != "default") }),
            ),
            FirmCmd::RateLimit { id, .. } => ("firm.rate_limits", json!({ "id": id })),
            FirmCmd::Retention { id, retention } => (
                "firm.set_retention",
                json!({ "id": id, "retention": (retention != "default").then_some(retention) }),
            ),
        },
        Command::Audit(AuditCmd::PurgeExpired) => ("audit.purge_expired", json!({})),
        Command::Audit(AuditCmd::System(c)) => match c {
            SystemCmd::List { from, limit } => {
                ("audit.system.list", json!({ "from": from, "limit": limit }))
            }
            SystemCmd::Verify => ("audit.system.verify", json!({})),
            SystemCmd::Checkpoint => ("audit.system.checkpoint", json!({})),
            SystemCmd::Export => ("audit.system.export", json!({})),
        },
        Command::Keys(KeysCmd::GenerateMaster) => ("keys.generate_master", json!({})),
        Command::User(u) => match u {
            UserCmd::List { firm } => ("user.list", json!({ "firm": firm })),
            UserCmd::Show { firm, user } => ("user.show", json!({ "firm": firm, "user": user })),
            UserCmd::Unlock { firm, user } => {
                ("user.unlock", json!({ "firm": firm, "user": user }))
            }
            UserCmd::Disable { firm, user } => {
                ("user.disable", json!({ "firm": firm, "user": user }))
            }
            UserCmd::ResetMfa { firm, user } => {
                ("user.reset_mfa", json!({ "firm": firm, "user": user }))
            }
        },
        Command::Audit(AuditCmd::VerifierKey) => ("audit.verifier_key", json!({})),
        Command::Backup(_) | Command::Evidence(_) => ("backup", json!({})),
        Command::Records(RecordsCmd::PurgeExpired) => ("records.purge_expired", json!({})),
        Command::Audit(AuditCmd::Verify { firm }) => ("audit.verify", json!({ "id": firm })),
        Command::Audit(AuditCmd::VerifyExport { .. }) => ("audit.verify_export", json!({})),
        Command::Audit(AuditCmd::ShredPayloads { firm, confirm }) => (
            "audit.shred_payloads",
            json!({ "id": firm, "confirm": confirm }),
        ),
        Command::Keys(KeysCmd::RotateMaster { new_key_file }) => {
            let path = std::fs::canonicalize(new_key_file).unwrap_or_else(|_| new_key_file.clone());
            ("keys.rotate_master", json!({ "new_key_file": path }))
        }
    }
}

fn print_human(cmd: &Command, v: &serde_json::Value) {
    let s = |k: &str| v.get(k).map(display).unwrap_or_default();
    match cmd {
        Command::Status => {
            println!("strongroomd {} (commit {})", s("version"), s("commit"));
            println!("  pid:          {}", s("pid"));
            println!("  uptime:       {}s", s("uptime_seconds"));
            println!("  FIPS mode:    {} ({})", s("fips"), s("crypto_module"));
            println!("  API:          {}", s("listen"));
            println!("  TLS cert:     SHA-256 {}", s("tls_fingerprint_sha256"));
            println!("  state dir:    {}", s("state_dir"));
            println!(
                "  master key:   {} (generation {})",
                s("master_key_source"),
                s("master_key_generation")
            );
            println!("  SQLCipher:    {}", s("sqlcipher"));
            println!("  firms open:   {}", s("firms_open"));
            if v.get("dev_mode").and_then(|d| d.as_bool()) == Some(true) {
                println!("  mode:         development");
            }
        }
        Command::Firm(FirmCmd::Create { .. }) => {
            let f = &v["firm"];
            let k = &v["api_key"];
            println!(
                "firm created: {} ({})",
                display(&f["id"]),
                display(&f["name"])
            );
            println!(
                "owner API key {} (shown once; store it now):",
                display(&k["id"])
            );
            println!("{}", display(&k["secret"]));
        }
        Command::Firm(FirmCmd::List) => {
            let empty = Vec::new();
            let firms = v["firms"].as_array().unwrap_or(&empty);
            println!("{:<28} {:<8} {:<20} NAME", "ID", "STATE", "CREATED");
            for f in firms {
                println!(
                    "{:<28} {:<8} {:<20} {}",
                    display(&f["id"]),
                    display(&f["state"]),
                    display(&f["created_at"]),
                    display(&f["name"])
                );
            }
        }
        Command::Firm(FirmCmd::ExportKey { .. }) => {
            println!("{}", s("sqlcipher_key"));
            eprintln!(
                "break-glass export recorded. Page format {}; open with stock SQLCipher 4: {}",
                s("page_format"),
                s("open_with").replace("<sqlcipher_key>", "<key above>")
            );
        }
        Command::Firm(FirmCmd::Rekey { .. }) => {
            println!(
                "{}: database key is now version {}",
                s("firm_id"),
                s("db_key_version")
            );
        }
        Command::Firm(FirmCmd::RotateDataKey { .. }) => {
            println!(
                "{}: data key is now version {}; re-encrypting what older versions sealed (progress: strongroomctl firm show)",
                s("firm_id"),
                s("data_key_version")
            );
        }
        Command::Audit(AuditCmd::VerifierKey) => println!("{}", s("verifier_key")),
        Command::Audit(AuditCmd::PurgeExpired) => {
            println!("purged {} audit entries", s("purged_entries"));
        }
        Command::Audit(AuditCmd::System(SystemCmd::List { .. })) => {
            let empty = Vec::new();
            for e in v["entries"].as_array().unwrap_or(&empty) {
                println!(
                    "{:>6} {} {:<8} {:<24} {:<22} {}",
                    display(&e["seq"]),
                    display(&e["at"]),
                    display(&e["outcome"]),
                    display(&e["actor"]),
                    display(&e["action"]),
                    display(&e["resource"]).lines().next().unwrap_or_default()
                );
            }
        }
        Command::Audit(AuditCmd::System(SystemCmd::Checkpoint)) => print!("{}", s("checkpoint")),
        Command::Audit(AuditCmd::System(SystemCmd::Export)) => {
            let empty = Vec::new();
            for ev in v["events"].as_array().unwrap_or(&empty) {
                println!("{ev}");
            }
        }
        Command::Audit(AuditCmd::Verify { .. } | AuditCmd::System(SystemCmd::Verify)) => {
            if v["ok"] == true {
                println!("OK: {} entries, root {}", s("tree_size"), s("root_hash"));
                if v["first_retained"].as_u64().unwrap_or(0) > 0 {
                    println!(
                        "    entries before seq {} were purged by retention (signed receipt checked)",
                        s("first_retained")
                    );
                }
            } else {
                println!("BROKEN at seq {}: {}", s("first_bad_seq"), s("reason"));
            }
        }
        Command::Audit(AuditCmd::VerifyExport { .. }) => {}
        Command::Audit(AuditCmd::ShredPayloads { .. }) => println!(
            "audit payloads shredded; new audit key version {}",
            s("audit_key_version")
        ),
        Command::Keys(_) => {
            println!(
                "master key rotated (generation {}).",
                s("master_key_generation")
            );
            println!("{}", s("next"));
        }
        Command::User(UserCmd::List { .. }) => {
            let empty = Vec::new();
            println!(
                "{:<22} {:<9} {:<9} {:<4} LOGIN",
                "ID", "ROLE", "STATE", "MFA"
            );
            for u in v["users"].as_array().unwrap_or(&empty) {
                println!(
                    "{:<22} {:<9} {:<9} {:<4} {}",
                    display(&u["id"]),
                    display(&u["role"]),
                    display(&u["state"]),
                    if u["mfa_enrolled"] == true {
                        "yes"
                    } else {
                        "no"
                    },
                    display(&u["login"])
                );
            }
        }
        Command::User(_) => match serde_json::to_string_pretty(v) {
            Ok(t) => println!("{t}"),
            Err(_) => println!("{v}"),
        },
        Command::Firm(_) => {
            let f = if v.get("firm").is_some() {
                &v["firm"]
            } else {
                v
            };
            match serde_json::to_string_pretty(f) {
                Ok(t) => println!("{t}"),
                Err(_) => println!("{f}"),
            }
        }
        Command::Backup(_) | Command::Evidence(_) => {}
        Command::Records(RecordsCmd::PurgeExpired) => {
            println!(
                "deleted {} expired records in {} collections of {} firms",
                s("deleted"),
                s("collections"),
                s("firms")
            );
        }
    }
}

fn display(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
