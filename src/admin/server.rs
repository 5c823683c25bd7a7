//! Server side of the admin socket.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::AdminState;
use super::{MAX_LINE, PROTOCOL_VERSION, Request, Response, commands};

/// Who is on the other end of an admin connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Who may use the socket, resolved once at startup.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    own_uid: u32,
    admin_gid: Option<Gid>,
}

impl AccessPolicy {
    pub fn new(admin_group: &str) -> Self {
        let admin_gid = if admin_group.is_empty() {
            None
        } else {
            Group::from_name(admin_group).ok().flatten().map(|g| g.gid)
        };
        Self {
            own_uid: Uid::effective().as_raw(),
            admin_gid,
        }
    }

    pub fn admin_gid(&self) -> Option<Gid> {
        self.admin_gid
    }

    /// Security invariant: the admin socket's whole security rests on this
    /// check of the kernel-reported peer uid (SO_PEERCRED): root, the daemon's
    /// own user, or a member of the admin group; everyone else is refused
    /// before any command is read.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(admin) = self.admin_gid else {
            return false;
        };
        if gid == admin.as_raw() {
            return true;
        }
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => {
                let Ok(name) = std::ffi::CString::new(user.name) else {
                    return false;
                };
                nix::unistd::getgrouplist(&name, user.gid)
                    .map(|groups| groups.contains(&admin))
                    .unwrap_or(false)
            }
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("admin socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    #[error("cannot create admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the admin socket with mode 0660 (group: the admin group when it exists).
pub fn bind(path: &Path, policy: &AccessPolicy) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            fs::remove_file(path).map_err(io)?;
        } else {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            )));
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    if let Some(gid) = policy.admin_gid() {
        if let Err(e) = nix::unistd::chown(path, None, Some(gid)) {
            tracing::warn!(error = %e, "cannot give the admin socket to the admin group");
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    shared: Arc<AdminState>,
    policy: AccessPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, shared, policy).await {
                tracing::debug!(error = %e, "admin connection ended with error");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    shared: Arc<AdminState>,
    policy: AccessPolicy,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    if !policy.allows(cred.uid(), cred.gid()) {
        tracing::warn!(uid = caller.uid, pid = ?caller.pid, "admin socket: peer refused");
        let firms = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let by = super::commands::actor(caller);
            if let Err(e) = firms.trail.system_audit_refused_peer(&by) {
                tracing::error!(error = %e, "system audit entry not written");
            }
        })
        .await;
        let resp = Response::err(
            "permission_denied",
            "this user may not use the admin socket (root, the service user or the admin group only)",
        );
        write_response(&mut write, &resp).await?;
        return Ok(());
    }
    let idle = shared.idle_timeout;
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        // The whole line must arrive within the idle timeout: a silent or
        // trickling peer is disconnected.
        let n = match tokio::time::timeout(idle, reader.read_until(b'\n', &mut line)).await {
            Ok(r) => r?,
            Err(_) => {
                let resp = Response::err("timeout", "no complete request within the idle timeout");
                let _ = write_response(&mut write, &resp).await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let complete = line.ends_with(b"\n");
        if n > MAX_LINE {
            let resp = Response::err("request_too_large", "request line too long");
            write_response(&mut write, &resp).await?;
            return Ok(());
        }
        // A last request without its newline (the peer closed its side) is
        // still a request: answer it, then close.
        reader.set_limit(MAX_LINE as u64 + 1);
        let resp = match parse_request(&line) {
            Err(resp) => resp,
            Ok(req) => dispatch(&shared, caller, req).await,
        };
        write_response(&mut write, &resp).await?;
        if !complete {
            return Ok(());
        }
    }
}

/// One request line (its newline optional) as a [`Request`] this daemon
/// speaks, or the error response to send back.
pub(crate) fn parse_request(line: &[u8]) -> Result<Request, Response> {
    let text = std::str::from_utf8(line)
        .map_err(|_| Response::err("bad_request", "the request line is not UTF-8"))?;
    let req = serde_json::from_str::<Request>(text)
        .map_err(|e| Response::err("bad_request", format!("malformed request: {e}")))?;
    if req.v != PROTOCOL_VERSION {
        return Err(Response::err(
            "unsupported_version",
            format!(
                "protocol version {} is not supported (this daemon speaks {PROTOCOL_VERSION})",
                req.v
            ),
        ));
    }
    Ok(req)
}

async fn write_response(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

async fn dispatch(shared: &Arc<AdminState>, caller: Caller, req: Request) -> Response {
    if req.cmd == "status" {
        return Response::ok(status(shared));
    }
    let shared = shared.clone();
    // Commands touch SQLite and the disk: never on the async worker threads.
    match tokio::task::spawn_blocking(move || commands::run(&shared, caller, &req.cmd, &req.args))
        .await
    {
        Ok(Ok(v)) => Response::ok(v),
        Ok(Err(e)) => Response::err(e.code, e.message),
        Err(_) => Response::err("internal", "the command failed unexpectedly"),
    }
}

fn status(shared: &AdminState) -> serde_json::Value {
    let rt = &shared.runtime;
    serde_json::json!({
        "version": crate::VERSION,
        "commit": crate::BUILD_COMMIT,
        "pid": std::process::id(),
        "uptime_seconds": rt.uptime_seconds(),
        "fips": rt.module.fips,
        "crypto_module": rt.module.module,
        "listen": format!("https://{}", rt.listen),
        "metrics_listen": rt.metrics_listen.map(|a| a.to_string()),
        "state_dir": rt.state_dir,
        "tls_fingerprint_sha256": rt.certs.fingerprint(),
        "dev_mode": rt.dev,
        "master_key_source": rt.key_source,
        "master_key_generation": shared.lifecycle.generation(),
        "appliance_id": shared.lifecycle.appliance_id(),
        "firms_open": shared.lifecycle.open_count(),
        "sqlcipher": crate::store::sqlcipher_version(),
    })
}
