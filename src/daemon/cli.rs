//! `strongroomd` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::LogTarget;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STRONGROOM_BUILD_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "strongroomd",
    version = LONG_VERSION,
    about = "Strongroom appliance daemon: per-firm encrypted storage and tamper-evident audit over HTTPS"
)]
pub struct Args {
    /// Configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Run the real startup checks (config, FIPS, TLS) and exit 0, or 78 on a problem.
    #[arg(long)]
    pub check_config: bool,

    /// Development mode: creates --state-dir with a master key, a self-signed
    /// certificate and the admin socket inside it. Everything else (FIPS too)
    /// behaves as in production.
    #[arg(long, requires = "state_dir")]
    pub dev: bool,

    /// State directory (overrides storage.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// API listen address (overrides server.listen; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Log destination (overrides log.target).
    #[arg(long, value_name = "TARGET", value_parser = parse_target)]
    pub log_target: Option<LogTarget>,
}

fn parse_target(s: &str) -> Result<LogTarget, String> {
    match s {
        "auto" => Ok(LogTarget::Auto),
        "journald" => Ok(LogTarget::Journald),
        "stderr" => Ok(LogTarget::Stderr),
        _ => Err("expected auto, journald or stderr".to_owned()),
    }
}
