//! The servers a benchmark drives: the real daemon, and nginx as the ceiling.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BoxError, Conn, post_request, tls};

pub(super) fn free_port() -> Result<SocketAddr, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60); // clock: benchmark timing
    while !ready() {
        if Instant::now() > deadline {
            // clock: benchmark timing
            return Err(format!("{what} did not come up in 60 s").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub(super) fn sigterm(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = child.wait();
}

/// nginx on loopback, TLS 1.3 only, one static JSON file.
pub(super) struct Nginx {
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
    pub(super) cert: PathBuf,
}

impl Nginx {
    pub(super) fn start(bin: &Path, dir: &Path) -> Result<Self, BoxError> {
        let www = dir.join("www");
        fs::create_dir_all(&www)?;
        // World-readable: nginx workers run as an unprivileged user.
        for d in [dir, &www] {
            fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        // A body the size of the daemon's record responses.
        fs::write(
            www.join("record.json"),
            r#"{"id":"rec_2b7c1d0e9f8a7b6c5d4e3f2a","collection":"clients","version":1,"created_at":"2026-11-23T10:00:00.123Z","updated_at":"2026-11-23T10:00:00.123Z","data":{"name":"Client 7","ssn":"219-09-9999","visits":3}}"#,
        )?;
        // The same certificate type as the daemon's generated one: ECDSA P-256.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&cert_path, cert.pem())?;
        fs::write(&key_path, key.serialize_pem())?;
        let addr = free_port()?;
        let user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/tmp;
    server {{
        listen {addr} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ root {d}/www; }}
    }}
}}
",
            d = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log"))?)
            .spawn()?;
        wait_for("nginx", || std::net::TcpStream::connect(addr).is_ok())?;
        Ok(Self {
            child,
            addr,
            cert: cert_path,
        })
    }

    /// The master and its workers.
    pub(super) fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u32>()
                            .ok()
                    });
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    pub(super) fn stop(&mut self) {
        sigterm(&mut self.child);
    }
}

/// The real daemon in dev mode on a fresh state directory.
pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
    pub(super) state: PathBuf,
    pub(super) ctl: PathBuf,
}

pub(super) struct BenchFirm {
    pub(super) id: String,
    pub(super) token: String,
    /// A record to GET.
    pub(super) record: String,
}

/// A collection whose records name a data subject: its sensitive field is
/// sealed under that subject's own key too (subject erasure).
pub(super) const CASES: &str = r#"{"fields":{"client":{"type":"string","subject":true,"sensitive":true},"matter":{"type":"string"}}}"#;

impl Daemon {
    /// `extra` is appended to the config file (e.g. limits and metrics off).
    pub(super) fn start(dir: &Path, extra: &str) -> Result<Self, BoxError> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .ok_or("no binary directory")?
            .to_owned();
        let state = dir.join("state");
        fs::create_dir_all(dir)?;
        let addr = free_port()?;
        // Sign-ins are throttled per source address; the benchmark is one source.
        let config = dir.join("strongroom.toml");
        fs::write(
            &config,
            format!("version = 1\n[people]\nsign_in_per_minute = 100000\n{extra}"),
        )?;
        let child = Command::new(bin_dir.join("strongroomd"))
            .arg("--dev")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--listen")
            .arg(addr.to_string())
            .args(["--log-target", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("daemon.log"))?)
            .spawn()?;
        let cert = state.join("tls/cert.pem");
        wait_for("strongroomd", || {
            cert.exists()
                && state.join("admin.sock").exists()
                && std::net::TcpStream::connect(addr).is_ok()
        })?;
        Ok(Self {
            child,
            addr,
            state,
            ctl: bin_dir.join("strongroomctl"),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn ctl(&self, args: &[&str]) -> Result<serde_json::Value, BoxError> {
        let out = Command::new(&self.ctl)
            .arg("--socket")
            .arg(self.state.join("admin.sock"))
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "strongroomctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["result"].take())
    }

    /// Creates `n` firms, each with a `clients` collection (one sensitive
    /// field) and one record, and a `cases` collection ([`CASES`]).
    pub(super) fn setup_firms(
        &self,
        rt: &tokio::runtime::Runtime,
        n: usize,
    ) -> Result<Vec<BenchFirm>, BoxError> {
        let tls = tls(&self.state.join("tls/cert.pem"))?;
        let schema = r#"{"fields":{"name":{"type":"string","indexed":true,"required":true},"ssn":{"type":"string","sensitive":true},"visits":{"type":"integer"}},"pii":"flag"}"#;
        let mut firms = Vec::with_capacity(n);
        for i in 0..n {
            let v = self.ctl(&["firm", "create", &format!("Bench Firm {i}")])?;
            let id = v["firm"]["id"].as_str().ok_or("no firm id")?.to_owned();
            let token = v["api_key"]["secret"]
                .as_str()
                .ok_or("no api key")?
                .to_owned();
            let record = rt.block_on(async {
                let mut c = Conn::open(&tls, self.addr).await?;
                let put = format!(
                    "PUT /api/v1/collections/{id}/clients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{schema}",
                    schema.len()
                );
                let (s, body) = c.exchange(put.as_bytes()).await?;
                if s != 201 {
                    return Err(format!("collection: {s} {}", String::from_utf8_lossy(&body)).into());
                }
                let put = format!(
                    "PUT /api/v1/collections/{id}/cases HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CASES}",
                    CASES.len()
                );
                let (s, body) = c.exchange(put.as_bytes()).await?;
                if s != 201 {
                    return Err(format!("cases: {s} {}", String::from_utf8_lossy(&body)).into());
                }
                let (s, body) = c
                    .exchange(&post_request(
                        &format!("/api/v1/records/{id}/clients"),
                        &token,
                        r#"{"name":"Client 0","ssn":"219-09-9999","visits":1}"#,
                    ))
                    .await?;
                if s != 201 {
                    return Err(format!("record: {s} {}", String::from_utf8_lossy(&body)).into());
                }
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                Ok::<_, BoxError>(v["id"].as_str().ok_or("no record id")?.to_owned())
            })?;
            firms.push(BenchFirm { id, token, record });
        }
        Ok(firms)
    }

    pub(super) fn stop(&mut self) {
        sigterm(&mut self.child);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sigterm(&mut self.child);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sigterm(&mut self.child);
        }
    }
}
