//! The `backup.*` admin commands: one `Backups` call each. The service
//! records each in the system log itself (successes and failures).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::commands::{CmdError, args, bad};
use super::server::Caller;
use crate::audit::AdminActor;
use crate::backup::BackupError;

impl From<BackupError> for CmdError {
    fn from(e: BackupError) -> Self {
        if matches!(e, BackupError::Store(_) | BackupError::Io { .. }) {
            tracing::error!(error = %e, "backup command failed");
        }
        CmdError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    to: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoArgs {
    repository: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyArgs {
    repository: Option<PathBuf>,
    snapshot: Option<String>,
    #[serde(default)]
    deep: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneArgs {
    repository: Option<PathBuf>,
    keep_last: Option<u32>,
    keep_daily: Option<u32>,
}

fn absolute(p: Option<PathBuf>) -> Result<Option<PathBuf>, CmdError> {
    match p {
        Some(p) if !p.is_absolute() => Err(bad(format!(
            "{} is relative: the daemon needs an absolute path",
            p.display()
        ))),
        p => Ok(p),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

pub(super) fn run(
    shared: &AdminState,
    by: &AdminActor,
    caller: Caller,
    cmd: &str,
    raw: &Value,
) -> Result<Value, CmdError> {
    let b = &shared.backups;
    match cmd {
        "backup.create" => {
            let a: CreateArgs = args(raw)?;
            Ok(to_value(&b.create(absolute(a.to)?.as_deref(), by)?))
        }
        "backup.list" => {
            let a: RepoArgs = args(raw)?;
            Ok(json!({ "snapshots": b.list(absolute(a.repository)?.as_deref())? }))
        }
        "backup.verify" => {
            let a: VerifyArgs = args(raw)?;
            let repo = absolute(a.repository)?;
            Ok(to_value(&b.verify(
                repo.as_deref(),
                a.snapshot.as_deref(),
                a.deep,
                by,
            )?))
        }
        "backup.prune" => {
            let a: PruneArgs = args(raw)?;
            // Security invariant: only root may prune by a policy other than the configured one (it can destroy backup history).
            if (a.keep_last.is_some() || a.keep_daily.is_some()) && !caller.is_root() {
                return Err(CmdError {
                    code: "permission_denied",
                    message: "prune with --keep-last/--keep-daily is for root only; others prune by the configured policy".to_owned(),
                });
            }
            let repo = absolute(a.repository)?;
            Ok(to_value(&b.prune(
                repo.as_deref(),
                a.keep_last,
                a.keep_daily,
                by,
            )?))
        }
        "backup.drill" => {
            let a: RepoArgs = args(raw)?;
            Ok(to_value(&b.drill(absolute(a.repository)?.as_deref(), by)?))
        }
        other => Err(CmdError {
            code: "unknown_command",
            message: format!("unknown command {other:?}"),
        }),
    }
}
