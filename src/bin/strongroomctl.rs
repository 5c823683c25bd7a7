//! `strongroomctl`: the sysadmin's CLI, talking to strongroomd over the admin socket.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strongroom::admin::client;

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
}

/// sysexits.h codes so scripts can tell failures apart.
const EX_UNAVAILABLE: u8 = 69;
const EX_NOPERM: u8 = 77;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cmd, args) = match &cli.command {
        Command::Status => ("status", serde_json::json!({})),
    };
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
    if !cli.json {
        let result = resp.result.unwrap_or_default();
        print_human(&cli.command, &result);
    }
    ExitCode::SUCCESS
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
            if v.get("dev_mode").and_then(|d| d.as_bool()) == Some(true) {
                println!("  mode:         development");
            }
        }
    }
}

fn display(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
