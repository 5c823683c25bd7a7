//! `strongroomctl evidence ...`: export runs in the daemon; verify runs
//! here, offline, with the appliance's pinned verifier key.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use strongroom::admin::client;

#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Write a firm's evidence bundle (a tar file) for its auditors.
    Export {
        #[arg(long)]
        firm: String,
        /// The log size of the previous bundle's checkpoint: the bundle
        /// proves the log grew from it, and covers the entries since.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Where to write it (`-`: standard output, never a terminal).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a bundle offline: signatures, every artefact's SHA-256, the
    /// Merkle root, the checkpoint and the consistency proof (with
    /// --previous, against that earlier bundle's checkpoint).
    Verify {
        file: PathBuf,
        #[arg(long)]
        verifier_key: String,
        #[arg(long, value_name = "FILE")]
        previous: Option<PathBuf>,
    },
}

pub fn run(cmd: &EvidenceCmd, socket: &Path, json_out: bool) -> ExitCode {
    match cmd {
        EvidenceCmd::Export { firm, since, out } => export(socket, firm, *since, out, json_out),
        EvidenceCmd::Verify {
            file,
            verifier_key,
            previous,
        } => verify(file, verifier_key, previous.as_deref(), json_out),
    }
}

fn export(socket: &Path, firm: &str, since: u64, out: &Path, json_out: bool) -> ExitCode {
    let resp = match client::call(
        socket,
        "evidence.export",
        json!({ "firm": firm, "since": since }),
        Duration::from_secs(3600),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strongroomctl: {e}");
            return ExitCode::from(super::EX_UNAVAILABLE);
        }
    };
    if let Some(err) = &resp.error {
        eprintln!("strongroomctl: {} ({})", err.message, err.code);
        return ExitCode::from(if err.code == "permission_denied" {
            super::EX_NOPERM
        } else {
            1
        });
    }
    let v = resp.result.unwrap_or_default();
    let Some(bytes) = v["bundle_base64"]
        .as_str()
        .and_then(strongroom::crypto::sign::unbase64)
    else {
        eprintln!("strongroomctl: malformed reply from the daemon");
        return ExitCode::FAILURE;
    };
    let written = if out == Path::new("-") {
        let mut o = std::io::stdout();
        if o.is_terminal() {
            eprintln!("strongroomctl: refusing to write a tar file to a terminal; use --out FILE");
            return ExitCode::from(super::EX_USAGE);
        }
        o.write_all(&bytes).and_then(|()| o.flush())
    } else {
        std::fs::write(out, &bytes)
    };
    if let Err(e) = written {
        eprintln!("strongroomctl: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if out != Path::new("-") {
        if json_out {
            println!(
                "{}",
                json!({ "firm_id": v["firm_id"], "file": out, "bytes": bytes.len() })
            );
        } else {
            println!(
                "evidence bundle for {} written to {} ({} bytes)",
                super::display(&v["firm_id"]),
                out.display(),
                bytes.len()
            );
        }
    }
    ExitCode::SUCCESS
}

fn verify(file: &Path, key: &str, previous: Option<&Path>, json_out: bool) -> ExitCode {
    let check = |p: &Path| -> Result<strongroom::evidence::verify::Verified, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        strongroom::evidence::verify::verify(&bytes, key)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let result = check(file).and_then(|v| {
        if let Some(prev) = previous {
            let old = check(prev)?;
            // The new bundle's proof must start at the old bundle's checkpoint.
            if old.firm != v.firm
                || v.consistent_from != old.log_size
                || v.consistent_from_root != old.log_root
            {
                return Err(format!(
                    "{} does not continue from {} (its proof starts at {} entries, that bundle's log has {})",
                    file.display(),
                    prev.display(),
                    v.consistent_from,
                    old.log_size
                ));
            }
        }
        Ok(v)
    });
    match result {
        Ok(v) => {
            if json_out {
                println!("{}", json!({ "ok": true, "bundle": v }));
            } else {
                println!(
                    "OK: firm {}, {} artefacts, log of {} entries (root {}), created {}{}",
                    v.firm,
                    v.artefacts,
                    v.log_size,
                    v.log_root,
                    v.created,
                    if v.consistent_from > 0 {
                        format!("; consistent with the log of {} entries", v.consistent_from)
                    } else {
                        String::new()
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json_out {
                println!("{}", json!({ "ok": false, "error": e }));
            } else {
                eprintln!("strongroomctl: bundle does NOT verify: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
