//! Admin commands (blocking; run off the async runtime).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AdminState;
use super::server::Caller;
use crate::audit::{AdminActor, Outcome};
use crate::crypto::keyring::MasterKey;
use crate::firms::FirmError;
use crate::ids::FirmId;

/// An admin error: a stable code and a message for the operator.
pub struct CmdError {
    pub code: &'static str,
    pub message: String,
}

impl From<FirmError> for CmdError {
    fn from(e: FirmError) -> Self {
        let message = match &e {
            // Internal detail stays in the log.
            FirmError::Store(_) | FirmError::Crypto(_) => {
                tracing::error!(error = %e, "admin command failed");
                "storage or crypto failure; see the daemon log".to_owned()
            }
            other => other.to_string(),
        };
        CmdError {
            code: e.code(),
            message,
        }
    }
}

pub(super) fn bad(message: impl Into<String>) -> CmdError {
    CmdError {
        code: "bad_request",
        message: message.into(),
    }
}

pub(super) fn args<T: DeserializeOwned>(v: &Value) -> Result<T, CmdError> {
    let v = if v.is_null() { json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| bad(format!("bad arguments: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArgs {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArgs {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteArgs {
    id: String,
    confirm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateArgs {
    new_key_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn firm_id(s: &str) -> Result<FirmId, CmdError> {
    FirmId::parse(s).ok_or_else(|| CmdError {
        code: "firm_not_found",
        message: format!("{s:?} is not a firm id (frm_ + 24 hex)"),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitArgs {
    id: String,
    class: String,
    /// None: back to the configured default.
    per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirmArgs {
    firm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserArgs {
    firm: String,
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionArgs {
    id: String,
    /// None: back to the configured default.
    retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageArgs {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: u64,
}

fn default_limit() -> u64 {
    100
}

/// Commands recorded in the system audit log: every change, and the reads
/// of sensitive data. Their failures and refusals are recorded too.
const AUDITED: &[&str] = &[
    "firm.create",
    "firm.freeze",
    "firm.unfreeze",
    "firm.delete",
    "firm.rekey",
    "firm.rotate_data_key",
    "firm.export_key",
    "firm.set_retention",
    "keys.rotate_master",
    "audit.shred_payloads",
    "audit.verify",
    "audit.purge_expired",
    "records.purge_expired",
    "evidence.export",
    "firm.set_rate_limit",
    "user.unlock",
    "user.disable",
    "user.reset_mfa",
];

/// The uid's user name ("?" if it has none).
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| "?".to_owned(), |u| u.name)
}

/// The admin actor for a peer, with a fresh request id.
pub fn actor(caller: Caller) -> AdminActor {
    AdminActor {
        uid: caller.uid,
        name: user_name(caller.uid),
        request_id: format!(
            "adm_{}",
            crate::crypto::hex(&crate::crypto::random_array::<8>().unwrap_or_default())
        ),
    }
}

pub fn run(shared: &AdminState, caller: Caller, cmd: &str, raw: &Value) -> Result<Value, CmdError> {
    let by = actor(caller);
    tracing::info!(target: "strongroom::admin", uid = by.uid, user = %by.name, request_id = %by.request_id, cmd, "admin command");
    let result = run_as(shared, &by, caller, cmd, raw);
    // Changes record their success in the same registry transaction; here
    // go the reads' successes and everything's failures.
    if AUDITED.contains(&cmd) {
        let resource = raw
            .get("id")
            .or_else(|| raw.get("firm"))
            .and_then(Value::as_str)
            .and_then(FirmId::parse)
            .map_or_else(|| "appliance".to_owned(), |id| id.to_string());
        let recorded = match &result {
            // export_key records itself before the key leaves (see below).
            Ok(_)
                if matches!(
                    cmd,
                    "audit.verify"
                        | "audit.purge_expired"
                        | "records.purge_expired"
                        | "evidence.export"
                ) =>
            {
                shared.trail.system_audit(
                    &by,
                    cmd,
                    &resource,
                    Outcome::Success,
                    "admin_socket",
                    Value::Null,
                )
            }
            Ok(_) => Ok(()),
            Err(e) => shared.trail.system_audit(
                &by,
                cmd,
                &resource,
                if e.code == "permission_denied" {
                    Outcome::Denied
                } else {
                    Outcome::Failure
                },
                "admin_socket",
                json!({ "code": e.code }),
            ),
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, cmd, "system audit entry not written");
        }
    }
    result
}

fn run_as(
    shared: &AdminState,
    by: &AdminActor,
    caller: Caller,
    cmd: &str,
    raw: &Value,
) -> Result<Value, CmdError> {
    let (life, log, trail) = (&shared.lifecycle, &shared.audit, &shared.trail);
    match cmd {
        "audit.system.list" => {
            let a: PageArgs = args(raw)?;
            Ok(
                serde_json::to_value(log.system_audit_page(by, a.from, a.limit)?)
                    .unwrap_or_default(),
            )
        }
        "audit.system.verify" => {
            let _: Empty = args(raw)?;
            Ok(serde_json::to_value(log.system_audit_verify(by)?).unwrap_or_default())
        }
        "audit.system.checkpoint" => {
            let _: Empty = args(raw)?;
            Ok(json!({ "checkpoint": log.system_checkpoint()? }))
        }
        "audit.system.export" => {
            let _: Empty = args(raw)?;
            Ok(json!({ "events": log.system_audit_export(by)? }))
        }
        "audit.purge_expired" => {
            let _: Empty = args(raw)?;
            Ok(json!({ "purged_entries": log.purge_expired() }))
        }
        "evidence.export" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ExportArgs {
                firm: String,
                #[serde(default)]
                since: u64,
            }
            let a: ExportArgs = args(raw)?;
            let id = firm_id(&a.firm)?;
            let bundle = shared.evidence.bundle(&id, a.since)?;
            // The firm's auditors see the export in the firm's own log too.
            trail.audit_admin(
                &id,
                by,
                "evidence.export",
                json!({ "since": a.since, "bytes": bundle.len() }),
            )?;
            Ok(json!({ "firm_id": id, "bundle_base64": crate::crypto::sign::base64(&bundle) }))
        }
        "records.purge_expired" => {
            let _: Empty = args(raw)?;
            Ok(serde_json::to_value(shared.records.purge_expired()).unwrap_or_default())
        }
        "firm.set_retention" => {
            let a: RetentionArgs = args(raw)?;
            // Security invariant: shortening retention can destroy evidence, so it is for root only.
            if !caller.is_root() {
                return Err(CmdError {
                    code: "permission_denied",
                    message: "firm retention is for root only".to_owned(),
                });
            }
            let row = log.set_retention(&firm_id(&a.id)?, a.retention.as_deref(), by)?;
            tracing::info!(firm = %row.id, retention = ?row.audit_retention, uid = by.uid, "firm audit retention set");
            Ok(json!({ "firm": row }))
        }
        "audit.verifier_key" => Ok(json!({ "verifier_key": trail.verifier_key() })),
        c if c.starts_with("backup.") => super::backup::run(shared, by, caller, c, raw),
        "firm.set_rate_limit" => {
            let a: RateLimitArgs = args(raw)?;
            let class = crate::limits::Class::parse(&a.class)
                .ok_or_else(|| bad("class must be one of read, write, auth, admin"))?;
            let id = firm_id(&a.id)?;
            let overrides = shared.limits.set_override(&id, class, a.per_second, by)?;
            tracing::info!(firm = %id, class = class.as_str(), per_second = ?a.per_second, uid = caller.uid, "firm rate limit set");
            Ok(
                json!({ "firm_id": id, "overrides": overrides, "limits": shared.limits.firm_limits(&id) }),
            )
        }
        "firm.rate_limits" => {
            let a: IdArgs = args(raw)?;
            let id = firm_id(&a.id)?;
            life.show(&id)?;
            Ok(json!({ "firm_id": id, "limits": shared.limits.firm_limits(&id) }))
        }
        "user.list" => {
            let a: FirmArgs = args(raw)?;
            Ok(json!({ "users": shared.people.admin_list(&firm_id(&a.firm)?)? }))
        }
        "user.show" => {
            let a: UserArgs = args(raw)?;
            Ok(shared.people.admin_show(&firm_id(&a.firm)?, &a.user)?)
        }
        "user.unlock" | "user.disable" | "user.reset_mfa" => {
            use crate::people::users::StateOp;
            let a: UserArgs = args(raw)?;
            let op = match cmd {
                "user.unlock" => StateOp::Unlock,
                "user.disable" => StateOp::Disable,
                _ => StateOp::ResetMfa,
            };
            let firm = firm_id(&a.firm)?;
            let user = shared.people.admin_set_state(&firm, &a.user, op, by)?;
            // The firm's log has its entry (same transaction); the system log gets one too.
            trail.system_audit(
                by,
                cmd,
                firm.as_str(),
                Outcome::Success,
                "admin_socket",
                json!({ "user": user.id }),
            )?;
            tracing::warn!(firm = %firm, user = %user.id, uid = caller.uid, cmd, "break-glass user action");
            Ok(json!({ "user": user }))
        }
        // Test builds only (feature `test-clock`), dev mode only: moves the
        // daemon's clock forward so tests never sleep to let time pass.
        #[cfg(feature = "test-clock")]
        "debug.clock_advance" if shared.runtime.dev => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Secs {
                secs: u64,
            }
            let a: Secs = args(raw)?;
            shared.clock.advance(std::time::Duration::from_secs(a.secs));
            tracing::warn!(secs = a.secs, uid = caller.uid, "test clock moved forward");
            Ok(json!({ "advanced_secs": a.secs }))
        }
        "audit.verify" => {
            let a: IdArgs = args(raw)?;
            let v = log.audit_verify_admin(&firm_id(&a.id)?)?;
            Ok(serde_json::to_value(v).unwrap_or_default())
        }
        "audit.shred_payloads" => {
            let a: DeleteArgs = args(raw)?;
            let id = firm_id(&a.id)?;
            let version = life.shred_audit_payloads(&id, &a.confirm, by)?;
            tracing::warn!(firm = %id, uid = caller.uid, version, "audit payloads crypto-shredded");
            trail.audit_admin(
                &id,
                by,
                "audit.shred_payloads",
                json!({ "new_audit_key_version": version }),
            )?;
            Ok(json!({ "firm_id": id, "audit_key_version": version }))
        }
        "firm.create" => {
            let a: NameArgs = args(raw)?;
            let (row, key) = life.create(&a.name, by)?;
            tracing::info!(firm = %row.id, uid = caller.uid, "firm created");
            Ok(json!({
                "firm": row,
                "api_key": {
                    "id": key.id,
                    "role": key.role,
                    "secret": key.token.reveal(),
                },
            }))
        }
        "firm.list" => {
            let _: Empty = args(raw)?;
            Ok(json!({ "firms": life.list()? }))
        }
        "firm.show" => {
            let a: IdArgs = args(raw)?;
            Ok(json!(life.show(&firm_id(&a.id)?)?))
        }
        "firm.freeze" | "firm.unfreeze" => {
            let a: IdArgs = args(raw)?;
            let row = life.set_frozen(&firm_id(&a.id)?, cmd == "firm.freeze", by)?;
            tracing::info!(firm = %row.id, state = %row.state, uid = caller.uid, "firm state changed");
            Ok(json!({ "firm": row }))
        }
        "firm.delete" => {
            let a: DeleteArgs = args(raw)?;
            let row = life.delete(&firm_id(&a.id)?, &a.confirm, by)?;
            tracing::warn!(firm = %row.id, uid = caller.uid, "firm deleted: keys destroyed (crypto-shred)");
            Ok(json!({ "firm": row }))
        }
        "firm.export_key" => {
            let a: IdArgs = args(raw)?;
            // Security invariant: the break-glass key export is for root only.
            if !caller.is_root() {
                return Err(CmdError {
                    code: "permission_denied",
                    message: "firm export-key is for root only".to_owned(),
                });
            }
            let id = firm_id(&a.id)?;
            let (key, format) = life.export_key(&id)?;
            // Security invariant: the break-glass key leaves only once its export is in the system log.
            trail.system_audit(
                by,
                "firm.export_key",
                id.as_str(),
                Outcome::Success,
                "root_only",
                Value::Null,
            )?;
            tracing::warn!(firm = %id, uid = caller.uid, pid = ?caller.pid, "break-glass: raw SQLCipher key exported");
            Ok(json!({
                "firm_id": id,
                "sqlcipher_key": key.as_pragma_value(),
                "page_format": format.name(),
                "open_with": format!("PRAGMA key = \"<sqlcipher_key>\"; {}", format.recovery_pragmas()),
            }))
        }
        "firm.rekey" => {
            let a: IdArgs = args(raw)?;
            let id = firm_id(&a.id)?;
            let version = life.rekey(&id, by)?;
            tracing::info!(firm = %id, version, uid = caller.uid, "firm database rekeyed");
            Ok(json!({ "firm_id": id, "db_key_version": version }))
        }
        "firm.rotate_data_key" => {
            let a: IdArgs = args(raw)?;
            let id = firm_id(&a.id)?;
            let (version, retiring) = life.rotate_data_key(&id, by)?;
            tracing::info!(firm = %id, version, ?retiring, uid = caller.uid, "data key rotated; re-encryption starting");
            trail.audit_admin(
                &id,
                by,
                "keys.rotate_data_key",
                json!({ "data_key_version": version, "retiring": retiring }),
            )?;
            // Recorded before the answer, so `firm show` shows the job at once.
            crate::firms::Lifecycle::start_reencryption(&shared.lifecycle, &id).map_err(|e| {
                CmdError {
                    code: "internal",
                    message: format!("cannot start the re-encryption job: {e}"),
                }
            })?;
            Ok(json!({ "firm_id": id, "data_key_version": version, "retiring": retiring }))
        }
        "keys.rotate_master" => {
            let a: RotateArgs = args(raw)?;
            let new_master =
                MasterKey::read(std::path::Path::new(&a.new_key_file), true).map_err(|e| {
                    CmdError {
                        code: "key_error",
                        message: e.to_string(),
                    }
                })?;
            let generation = life.rotate_master(&new_master, by)?;
            tracing::warn!(
                generation,
                uid = caller.uid,
                "master key rotated; install the new key before the next restart"
            );
            Ok(json!({
                "master_key_generation": generation,
                "next": "replace the master key (credential or key file) with the new one before the daemon restarts; the old key no longer opens the registry",
            }))
        }
        other => Err(CmdError {
            code: "unknown_command",
            message: format!("unknown command {other:?}"),
        }),
    }
}
