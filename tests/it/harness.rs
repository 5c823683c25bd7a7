//! Spawns the real daemon on a temp dir and port 0, learns readiness and the
//! bound address from a notify socket the test owns, stops it with SIGTERM.

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::Client;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_strongroomd");
pub const CTL: &str = env!("CARGO_BIN_EXE_strongroomctl");
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub addr: SocketAddr,
    pub admin_socket: PathBuf,
    notify: UnixDatagram,
    /// A tmpfs mounted on the state directory, unmounted on drop.
    mounted: Option<PathBuf>,
    /// Notify messages received so far, oldest first.
    pub messages: Vec<String>,
    stopped: bool,
    /// How far the tests moved the daemon's clock (seconds).
    offset: std::cell::Cell<u64>,
}

/// Builds config file text from the test's temp dir.
pub type ConfigFn = Box<dyn Fn(&Path) -> String>;

pub struct Options {
    pub dev: bool,
    /// Config file text, given the test's temp dir.
    pub config: Option<ConfigFn>,
    pub env: Vec<(String, String)>,
    /// The daemon's open-file limit (soft and hard), if lowered.
    pub nofile: Option<u64>,
    /// Put the state directory on a tmpfs of this many bytes (root only).
    pub tmpfs_state: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dev: true,
            config: None,
            env: Vec::new(),
            nofile: None,
            tmpfs_state: None,
        }
    }
}

impl Daemon {
    /// A dev-mode daemon on 127.0.0.1:0.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        let dir = tempfile::Builder::new().prefix("sr-it-").tempdir().unwrap();
        Self::spawn_in(dir, opts)
    }

    /// A daemon on an existing temp dir (its `state/` may hold a restored state).
    pub fn start_in(dir: tempfile::TempDir, opts: Options) -> Self {
        Self::spawn_in(dir, opts)
    }

    /// Stops this daemon (asserting exit 0) and starts a new one on the same
    /// state directory with `opts`.
    pub fn restart(mut self, opts: Options) -> Self {
        if !self.stopped {
            let status = self.stop();
            assert_eq!(status.code(), Some(0), "{}", self.logs());
        }
        let dir = self.take_dir();
        Self::spawn_in(dir, opts)
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        // The next daemon on this directory keeps the mount (if any).
        self.mounted = None;
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Starts the daemon on an existing temp dir and expects it to exit with a
    /// startup failure; returns (exit code, logs).
    pub fn expect_startup_failure(dir: &Path, opts: Options) -> (Option<i32>, String) {
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log-target".into(),
            "stderr".into(),
        ];
        if opts.dev {
            args.push("--dev".into());
        }
        if let Some(cfg) = &opts.config {
            let path = dir.join("strongroom-fail.toml");
            fs::write(&path, cfg(dir)).unwrap();
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_daemon(&refs, Duration::from_secs(60))
    }

    fn spawn_in(dir: tempfile::TempDir, opts: Options) -> Self {
        let state_dir = dir.path().join("state");
        let notify_path = dir.path().join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut args: Vec<OsString> = vec![
            "--state-dir".into(),
            state_dir.clone().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log-target".into(),
            "stderr".into(),
        ];
        if opts.dev {
            args.push("--dev".into());
        }
        if let Some(cfg) = &opts.config {
            let path = dir.path().join("strongroom.toml");
            fs::write(&path, cfg(dir.path())).unwrap();
            args.push("--config".into());
            args.push(path.into());
        }
        let mut cmd = Command::new(DAEMON);
        cmd.args(&args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STRONGROOM_ADMIN_SOCKET")
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "stdout.log"))
            .stderr(log_file(dir.path(), "stderr.log"));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::other)
                });
            }
        }
        let mut mounted = None;
        if let Some(bytes) = opts.tmpfs_state {
            if !state_dir.exists() {
                fs::create_dir_all(&state_dir).unwrap();
                let ok = Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={bytes},mode=0700"),
                        "tmpfs",
                    ])
                    .arg(&state_dir)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "mounting a tmpfs on {}", state_dir.display());
            }
            mounted = Some(state_dir.clone());
        }
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child: Some(child),
            admin_socket: state_dir.join("admin.sock"),
            state_dir,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            notify,
            mounted,
            messages: Vec::new(),
            stopped: false,
            offset: std::cell::Cell::new(0),
        };
        let ready = d.wait_for(|m| m.lines().any(|l| l == "READY=1"), START_TIMEOUT);
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=serving https://"))
            .unwrap_or_else(|| panic!("READY without address: {ready:?}"));
        let (addr, rest) = status.split_once(';').unwrap();
        d.addr = addr.parse().unwrap();
        if let Some(sock) = rest.trim().strip_prefix("admin socket ") {
            d.admin_socket = PathBuf::from(sock);
        }
        d
    }

    /// Waits for a notify message matching `pred`; panics (with the daemon's
    /// logs) if the daemon exits or the timeout passes first.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.messages.push(msg.clone());
                    if pred(&msg) {
                        return msg;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.stopped = true;
                panic!(
                    "daemon exited ({status}) before the awaited notify message\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for a notify message\n{}", self.logs());
            }
        }
    }

    /// After exit: reads what is left on the notify socket and asserts `needle` is there.
    pub fn wait_for_buffered(&mut self, needle: &str) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.messages
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            self.messages.iter().any(|m| m.contains(needle)),
            "{needle} never sent: {:?}",
            self.messages
        );
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30));
        self.stopped = true;
        status
    }

    /// SIGKILL: no drain, no clean close (crash tests).
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        let status = self.wait_exit(Duration::from_secs(30));
        self.stopped = true;
        status
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit in time\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HTTPS client trusting the daemon's generated certificate.
    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.state_dir.join("tls/cert.pem"))
    }

    /// Moves the daemon's clock forward (a test build's dev-mode control;
    /// `make test` builds with the `test-clock` feature).
    /// The daemon's idea of now, in Unix seconds.
    pub fn now_unix(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (real + self.offset.get()) as i64
    }

    pub fn advance_clock(&self, secs: u64) {
        self.offset.set(self.offset.get() + secs);
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.admin_socket).unwrap();
        writeln!(
            s,
            "{}",
            serde_json::json!({"v": 1, "cmd": "debug.clock_advance", "args": {"secs": secs}})
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["ok"], true,
            "moving the clock needs a test build: cargo test --features test-clock ({v})"
        );
    }

    /// Runs `strongroomctl --socket <admin socket> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.admin_socket, args)
    }
}

/// Appends, so a restarted daemon's logs follow the first one's.
fn log_file(dir: &Path, name: &str) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.drop_daemon();
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
}

impl Daemon {
    fn drop_daemon(&mut self) {
        if self.stopped {
            return;
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if Instant::now() > deadline => {
                    let _ = child.kill();
                    break None;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        } else if status.and_then(|s| s.code()) != Some(0) {
            panic!(
                "daemon did not exit 0 on SIGTERM: {status:?}\n{}",
                self.logs()
            );
        }
    }
}

/// Runs the daemon to completion (for startup failures and --check-config).
pub fn run_daemon(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(DAEMON)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "daemon did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A config for a non-dev daemon in `dir` (tests run as root in CI), with a
/// master key file `dir/master.key` (created, mode 0600, if missing), and
/// its metrics listener on a free port, so such daemons run side by side.
pub fn prod_config(dir: &Path, extra: &str) -> String {
    let key = dir.join("master.key");
    if !key.exists() {
        write_key_file(&key, &[0x5a; 32]);
    }
    format!(
        "version = 1\n[storage]\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n[keys]\nmaster_key_file = \"{}\"\n[log]\ntarget = \"stderr\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[security]\nallow_root = true\n{extra}",
        dir.join("state").display(),
        dir.join("admin.sock").display(),
        key.display()
    )
}

/// Writes a master key file (hex) with mode 0600.
pub fn write_key_file(path: &Path, key: &[u8; 32]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(f, "{hex}").unwrap();
}

/// Runs `strongroomctl --json ARGS` and returns the reply's `result`,
/// panicking with the reply if the command failed.
pub fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(socket, &all);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "strongroomctl {args:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "strongroomctl {args:?} failed: {v}");
    v["result"].clone()
}
