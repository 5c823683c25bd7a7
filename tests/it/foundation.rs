//! The daemon skeleton: FIPS TLS, endpoints, headers, errors, signals, config.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::client::Client;
use crate::harness::{Daemon, Options, ctl, prod_config, run_daemon};
use crate::raw_tls::{self, Answer};

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age="),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'"),
    ("cache-control", "no-store"),
];

#[test]
fn status_reports_fips_over_tls13_with_post_quantum_kx() {
    let d = Daemon::start();
    let mut conn = d.client().connect().unwrap();
    assert_eq!(conn.protocol(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.kx_group(), Some(rustls::NamedGroup::X25519MLKEM768));
    let r = conn.request("GET", "/status", &[], None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["fips"], true);
    assert!(
        v["crypto_module"]
            .as_str()
            .unwrap()
            .starts_with("AWS-LC FIPS ")
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert!(v["commit"].is_string());
    assert!(v["policy_version"].as_str().unwrap().starts_with("sha256:"));
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys.len(),
        6,
        "status says nothing beyond its documented fields: {keys:?}"
    );

    let h = d.client().get("/healthz");
    assert_eq!(h.status, 200);
}

#[test]
fn security_headers_and_request_id_on_every_response() {
    let d = Daemon::start();
    let c = d.client();
    for (method, path, status) in [
        ("GET", "/status", 200),
        ("GET", "/no/such/thing", 404),
        ("DELETE", "/healthz", 405),
    ] {
        let r = c.request(method, path, &[], None);
        assert_eq!(r.status, status, "{method} {path}");
        for (name, want) in SECURITY_HEADERS {
            let got = r
                .header(name)
                .unwrap_or_else(|| panic!("{name} missing on {method} {path}"));
            assert!(got.contains(want), "{name}: {got}");
        }
        let id = r.header("x-request-id").unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[test]
fn unknown_route_and_wrong_method_are_problem_json() {
    let d = Daemon::start();
    let c = d.client();

    let r = c.get("/api/v1/nothing-here");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["code"], "not_found");
    assert_eq!(v["status"], 404);
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap());

    let r = c.request("POST", "/status", &[], Some(b"{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let allow = r.header("allow").unwrap();
    assert!(allow.contains("GET"), "Allow: {allow}");
    let v = r.json();
    assert_eq!(v["code"], "method_not_allowed");
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap());
}

#[test]
fn tls_1_1_is_refused() {
    let d = Daemon::start();
    let hello = raw_tls::client_hello(raw_tls::TLS1_1, raw_tls::CBC_SUITES, &[0x0017]);
    match raw_tls::offer(d.addr, &hello) {
        Answer::ServerHello { .. } => panic!("server accepted TLS 1.1"),
        Answer::Alert(code) => assert_eq!(code, 70, "protocol_version alert"),
        Answer::Closed => {}
    }
}

#[test]
fn tls_1_2_accepts_only_forward_secret_aead_suites() {
    let d = Daemon::start();
    // Positive control: the same hand-built hello with ECDHE-GCM suites works,
    // so the refusal below is about the suites, not the hello.
    let ok = raw_tls::client_hello(raw_tls::TLS1_2, raw_tls::GCM_SUITES, &[0x0017]);
    match raw_tls::offer(d.addr, &ok) {
        Answer::ServerHello { version, suite } => {
            assert_eq!(version, raw_tls::TLS1_2);
            assert!(raw_tls::GCM_SUITES.contains(&suite), "{suite:#06x}");
        }
        other => panic!("TLS 1.2 with ECDHE-GCM refused: {other:?}"),
    }
    let cbc = raw_tls::client_hello(raw_tls::TLS1_2, raw_tls::CBC_SUITES, &[0x0017]);
    match raw_tls::offer(d.addr, &cbc) {
        Answer::ServerHello { suite, .. } => panic!("server chose CBC suite {suite:#06x}"),
        Answer::Alert(code) => assert_eq!(code, 40, "handshake_failure alert"),
        Answer::Closed => {}
    }
}

#[test]
fn client_offering_only_x25519_is_refused() {
    let d = Daemon::start();
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let c = Client::with_provider(d.addr, &d.state_dir.join("tls/cert.pem"), Arc::new(p));
    let err = c.connect().err().expect("X25519-only handshake must fail");
    assert!(
        err.to_string().contains("HandshakeFailure") || err.to_string().contains("alert"),
        "{err}"
    );
}

#[test]
fn every_request_is_logged_as_one_structured_line() {
    let d = Daemon::start();
    let r = d.client().get("/status");
    let id = r.header("x-request-id").unwrap().to_owned();
    // The line is written after the response; give it a moment to land.
    let mut line = None;
    for _ in 0..100 {
        line = d
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["request_id"] == id.as_str());
        if line.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = line.unwrap_or_else(|| panic!("no log line for {id}\n{}", d.logs()));
    assert_eq!(v["route"], "/status");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert!(v["latency_us"].is_u64());
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn every_access_log_line_is_written_before_the_daemon_exits() {
    // Lines are written by a background thread; a stop right after a burst
    // of requests must still leave one line for each.
    let mut d = Daemon::start();
    let c = d.client();
    let ids: Vec<String> = (0..300)
        .map(|_| {
            let r = c.get("/status");
            assert_eq!(r.status, 200);
            r.header("x-request-id").unwrap().to_owned()
        })
        .collect();
    assert_eq!(d.stop().code(), Some(0));
    let logged: std::collections::HashSet<String> = d
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of 300 lines missing", missing.len());
}

#[test]
fn sighup_serves_a_replaced_certificate_without_dropping_connections() {
    let mut d = Daemon::start();
    let client = d.client();
    let mut old_conn = client.connect().unwrap();
    let old_cert = old_conn.peer_cert();
    assert_eq!(
        old_conn
            .request("GET", "/healthz", &[], None)
            .unwrap()
            .status,
        200
    );

    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = d.state_dir.join("tls");
    std::fs::write(tls.join("key.pem"), new.signing_key.serialize_pem()).unwrap();
    std::fs::write(tls.join("cert.pem"), new.cert.pem()).unwrap();

    d.signal(Signal::SIGHUP);
    d.wait_for(|m| m.contains("RELOADING=1"), Duration::from_secs(20));
    d.wait_for(|m| m.contains("READY=1"), Duration::from_secs(20));

    // The next connection gets the new certificate (and trusts only it).
    let mut new_conn = d.client().connect().unwrap();
    assert_eq!(new_conn.peer_cert(), new.cert.der().to_vec());
    assert_ne!(new_conn.peer_cert(), old_cert);
    assert_eq!(
        new_conn
            .request("GET", "/status", &[], None)
            .unwrap()
            .status,
        200
    );
    // The connection opened before the reload still works.
    assert_eq!(
        old_conn
            .request("GET", "/healthz", &[], None)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn sighup_with_a_broken_certificate_keeps_the_old_one() {
    let mut d = Daemon::start();
    let client = d.client();
    let before = client.connect().unwrap().peer_cert();
    std::fs::write(d.state_dir.join("tls/cert.pem"), "garbage").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for(|m| m.contains("READY=1"), Duration::from_secs(20));
    let mut c = client.connect().unwrap();
    assert_eq!(c.peer_cert(), before);
    assert_eq!(c.request("GET", "/healthz", &[], None).unwrap().status, 200);
    assert!(d.stderr().contains("TLS reload failed"));
}

#[test]
fn sigterm_sends_stopping_and_exits_zero() {
    let mut d = Daemon::start();
    assert_eq!(d.client().get("/healthz").status, 200);
    let sock = d.admin_socket.clone();
    assert!(sock.exists());
    let status = d.stop();
    assert_eq!(status.code(), Some(0), "{}", d.logs());
    let got_stopping = d.messages.iter().any(|m| m.contains("STOPPING=1"));
    if !got_stopping {
        // Drain the socket: the message may not have been read yet.
        d.wait_for_buffered("STOPPING=1");
    }
    assert!(!sock.exists(), "admin socket removed on exit");
}

#[test]
fn watchdog_pings_when_systemd_asks_for_them() {
    let mut d = Daemon::start_with(Options {
        env: vec![("WATCHDOG_USEC".into(), "200000".into())],
        ..Options::default()
    });
    d.wait_for(|m| m.contains("WATCHDOG=1"), Duration::from_secs(10));
}

#[test]
fn strongroomctl_status_over_the_admin_socket() {
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let out = d.ctl(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FIPS mode:    true"), "{text}");
    assert!(text.contains(&d.addr.to_string()), "{text}");

    let out = d.ctl(&["--json", "status"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["result"]["fips"], true);
    assert_eq!(v["result"]["listen"], format!("https://{}", d.addr));
}

#[test]
fn admin_socket_refuses_other_users() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let d = Daemon::start();
    // Open every path permission so only the daemon's SO_PEERCRED check stands
    // between user `nobody` and the socket.
    let mut p = d.admin_socket.clone();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    while let Some(parent) = p.parent() {
        if parent == std::path::Path::new("/") || parent == std::env::temp_dir() {
            break;
        }
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        p = parent.to_owned();
    }
    use std::os::unix::process::CommandExt;
    // `nobody` may not reach the build tree (a clone under /root is mode
    // 0700): run a copy of strongroomctl from a directory it can reach.
    let ctl_dir = tempfile::Builder::new()
        .prefix("sr-ctl-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(ctl_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctl_copy = ctl_dir.path().join("strongroomctl");
    std::fs::copy(crate::harness::CTL, &ctl_copy).unwrap();
    std::fs::set_permissions(&ctl_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&ctl_copy)
        .arg("--socket")
        .arg(&d.admin_socket)
        .args(["--json", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "permission_denied");
    // The refusal is in the system audit log, once a minute per uid however
    // often it is tried.
    let again = std::process::Command::new(&ctl_copy)
        .arg("--socket")
        .arg(&d.admin_socket)
        .args(["--json", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(77));
    let log = crate::harness::ctl_json(&d.admin_socket, &["audit", "system", "list"]);
    let refusals: Vec<&serde_json::Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "admin.connect")
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert_eq!(refusals[0]["outcome"], "denied");
    assert!(
        refusals[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("uid:65534("),
        "{log}"
    );
}

#[test]
fn strongroomctl_without_a_daemon_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl(&dir.path().join("none.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn unknown_config_key_exits_78_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        prod_config(dir.path(), "[server]\nlisten_adress = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out) = run_daemon(&["--check-config", "--config", p], Duration::from_secs(30));
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("listen_adress"), "{out}");
    let (code, out) = run_daemon(&["--config", p], Duration::from_secs(30));
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("listen_adress"), "{out}");
}

#[test]
fn unreadable_certificate_exits_78_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let cfg = prod_config(
        dir.path(),
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            missing.display(),
            key.display()
        ),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    for args in [
        vec!["--check-config", "--config", path.to_str().unwrap()],
        vec!["--config", path.to_str().unwrap()],
    ] {
        let (code, out) = run_daemon(&args, Duration::from_secs(30));
        assert_eq!(code, Some(78), "{out}");
        assert!(out.contains("missing-cert.pem"), "{out}");
    }
    // A present but garbled certificate is named too.
    std::fs::write(&missing, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let (code, out) = run_daemon(
        &["--check-config", "--config", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("missing-cert.pem"), "{out}");
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/strongroom.toml");
    let (code, out) = run_daemon(
        &["--check-config", "--config", shipped],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn refuses_root_unless_allowed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the root check only applies to root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = prod_config(dir.path(), "").replace("allow_root = true", "allow_root = false");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    let (code, out) = run_daemon(
        &["--config", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("refusing to run as root"), "{out}");
}

#[test]
fn production_config_serves_and_stops_cleanly() {
    let d = Daemon::start_with(Options {
        dev: false,
        config: Some(Box::new(|dir| prod_config(dir, ""))),
        ..Options::default()
    });
    assert_eq!(d.client().get("/status").json()["fips"], true);
    assert!(d.ctl(&["status"]).status.success());
}

#[test]
fn version_flag() {
    let (code, out) = run_daemon(&["--version"], Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}
