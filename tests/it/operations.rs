//! Operations through the real daemon: the Prometheus metrics listener
//! (checked with promtool), the shipped alert rules, and rate limits (per
//! firm and class, per source, on failed authentication) with their
//! headers, overrides and bounded memory.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, Response};
use crate::firms::create_firm;
use crate::harness::{Daemon, Options, ctl, ctl_json};

fn with_config(text: &str) -> Options {
    let text = text.to_owned();
    Options {
        config: Some(Box::new(move |_| format!("version = 1\n{text}"))),
        ..Options::default()
    }
}

fn metrics_addr(d: &Daemon) -> SocketAddr {
    let v = ctl_json(&d.admin_socket, &["status"]);
    v["metrics_listen"].as_str().unwrap().parse().unwrap()
}

/// A plain-HTTP scrape of a loopback metrics listener.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// A sample's value: `name{labels} value` (labels as written, or none).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// promtool, required where `make test` runs (it installs it).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Some("promtool")
    } else if std::env::var_os("STRONGROOM_REQUIRE_PROMTOOL").is_some() {
        panic!("promtool required (apt-get install prometheus)")
    } else {
        eprintln!("skipped promtool checks: `make test` installs it");
        None
    }
}

fn get(d: &Daemon, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    d.client()
        .request("GET", path, &[("Authorization", &auth)], None)
}

fn get_from(d: &Daemon, src: Ipv4Addr, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    d.client()
        .connect_from(src)
        .unwrap()
        .request("GET", path, &headers, None)
        .unwrap()
}

#[test]
fn a_live_scrape_is_promtool_clean_and_counts_what_happened() {
    let d = Daemon::start();
    let f = create_firm(&d, "Metrics Firm");
    let firm = format!("/api/v1/firms/{}", f.id);
    assert_eq!(get(&d, &firm, &f.token).status, 200);
    assert_eq!(get(&d, &firm, "sr_bogus").status, 401);
    let r = d.client().request(
        "POST",
        &format!("/api/v1/sessions/{}", f.id),
        &[("Content-Type", "application/json")],
        Some(br#"{"login":"nobody@example.test","password":"wrong password here"}"#),
    );
    assert_eq!(r.status, 401);
    let text = scrape(metrics_addr(&d));
    let route = |class: &str| {
        format!(
            "strongroom_http_request_duration_seconds_count{{route=\"/api/v1/firms/{{firm_id}}\",method=\"GET\",status_class=\"{class}\"}}"
        )
    };
    assert_eq!(sample(&text, &route("2xx")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &route("4xx")), Some(1.0));
    assert_eq!(sample(&text, "strongroom_fips_mode"), Some(1.0));
    assert_eq!(
        sample(&text, "strongroom_firms{state=\"active\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "strongroom_firms_open"), Some(1.0));
    assert!(sample(&text, "strongroom_audit_entries_appended_total").unwrap() >= 1.0);
    assert!(sample(&text, "strongroom_signin_failures_total").unwrap() >= 1.0);
    assert!(sample(&text, "strongroom_writer_batch_commands_count").unwrap() >= 1.0);
    assert!(sample(&text, "strongroom_storage_size_bytes").unwrap() > 0.0);
    assert!(text.contains("strongroom_build_info{version=\""));
    // No series is labelled with a firm: the series count cannot grow with the firms.
    assert!(!text.contains(&f.id) && !text.contains("frm_"));
    // Only /metrics, only GET.
    let mut s = TcpStream::connect(metrics_addr(&d)).unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");

    if let Some(p) = promtool() {
        let mut child = Command::new(p)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/observability/strongroom-alerts.yml"
        );
        let out = Command::new(p)
            .args(["check", "rules", rules])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn metrics_off_loopback_need_tls_and_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (code, logs) = Daemon::expect_startup_failure(
        dir.path(),
        with_config("[metrics]\nlisten = \"0.0.0.0:0\"\n"),
    );
    assert_eq!(code, Some(78));
    assert!(logs.contains("token_file"), "{logs}");

    let token = "a-scrape-token-of-some-length";
    let d = Daemon::start_with(Options {
        config: Some(Box::new(move |dir| {
            let path = dir.join("metrics.token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            format!(
                "version = 1\n[metrics]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n",
                path.display()
            )
        })),
        ..Options::default()
    });
    let port = metrics_addr(&d).port();
    let c = Client::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &d.state_dir.join("tls/cert.pem"),
    );
    let r = c.get("/metrics");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = c.request(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer not-the-token-at-all")],
        None,
    );
    assert_eq!(wrong.status, 401);
    let auth = format!("Bearer {token}");
    let ok = c.request("GET", "/metrics", &[("Authorization", &auth)], None);
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("strongroom_fips_mode 1"));
    // Plain HTTP is not spoken there.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200"));
}

#[test]
fn a_firm_over_its_class_limit_gets_429_others_do_not_and_overrides_apply_at_once() {
    let d = Daemon::start_with(with_config("[limits]\nread_per_second = 5\n"));
    let a = create_firm(&d, "Busy Firm");
    let b = create_firm(&d, "Quiet Firm");
    let path = format!("/api/v1/firms/{}", a.id);
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = get(&d, &path, &a.token);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"read\";q=5;w=1"));
        remaining.push(r.header("ratelimit").unwrap().to_owned());
    }
    assert!(remaining[0].starts_with("\"read\";r=4;"), "{remaining:?}");
    assert!(remaining[4].starts_with("\"read\";r=0;"), "{remaining:?}");
    let r = get(&d, &path, &a.token);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    assert!(r.header("ratelimit").unwrap().contains("r=0"));
    // Another firm has its own buckets; writes are another class.
    assert_eq!(
        get(&d, &format!("/api/v1/firms/{}", b.id), &b.token).status,
        200
    );
    // Time refills the bucket.
    d.advance_clock(1);
    assert_eq!(get(&d, &path, &a.token).status, 200);
    // An operator's override applies at once, is in the system log, and outlives a restart.
    let v = ctl_json(
        &d.admin_socket,
        &["firm", "rate-limit", &a.id, "read", "50"],
    );
    assert_eq!(v["limits"]["read"], 50);
    for _ in 0..20 {
        assert_eq!(get(&d, &path, &a.token).status, 200);
    }
    let log = ctl_json(
        &d.admin_socket,
        &["audit", "system", "list", "--limit", "1000"],
    );
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "firm.set_rate_limit")
    );
    let d = d.restart(with_config("[limits]\nread_per_second = 5\n"));
    let v = ctl_json(&d.admin_socket, &["firm", "rate-limit", &a.id]);
    assert_eq!(v["limits"]["read"], 50);
    assert_eq!(v["limits"]["write"], 20000);
    let v = ctl_json(
        &d.admin_socket,
        &["firm", "rate-limit", &a.id, "read", "default"],
    );
    assert_eq!(v["limits"]["read"], 5);
    let out = ctl(
        &d.admin_socket,
        &["firm", "rate-limit", &a.id, "bogus", "5"],
    );
    assert!(!out.status.success());
}

#[test]
fn a_source_failing_to_authenticate_is_refused_before_its_credentials_are_checked() {
    let d = Daemon::start_with(with_config("[limits]\nfailed_auth_per_minute = 5\n"));
    let f = create_firm(&d, "Guarded Firm");
    let path = format!("/api/v1/firms/{}", f.id);
    let bad = format!("{}x", f.token);
    let me = Ipv4Addr::new(127, 0, 0, 7);
    let statuses: Vec<u16> = (0..7)
        .map(|_| get_from(&d, me, &path, Some(&bad)).status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 429]);
    // Now even a valid key from that source is refused unchecked...
    let r = get_from(&d, me, &path, Some(&f.token));
    assert_eq!(r.status, 429);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("failed authentications")
    );
    // ...while another source is served.
    assert_eq!(
        get_from(&d, Ipv4Addr::new(127, 0, 0, 8), &path, Some(&f.token)).status,
        200
    );
    d.advance_clock(61);
    assert_eq!(get_from(&d, me, &path, Some(&f.token)).status, 200);
}

#[test]
fn routes_anyone_may_call_are_limited_per_source_and_memory_stays_bounded() {
    let d = Daemon::start_with(with_config(
        "[limits]\nunauthenticated_per_minute = 3\nmax_tracked_sources = 64\n",
    ));
    let me = Ipv4Addr::new(127, 0, 1, 1);
    for _ in 0..3 {
        let r = get_from(&d, me, "/healthz", None);
        assert_eq!(r.status, 200);
        assert!(
            r.header("ratelimit-policy")
                .unwrap()
                .starts_with("\"unauthenticated\";q=3;w=60")
        );
    }
    let r = get_from(&d, me, "/healthz", None);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        get_from(&d, Ipv4Addr::new(127, 0, 1, 2), "/status", None).status,
        200
    );

    // An address-spraying client: 300 sources, one request each.
    for i in 0..300u32 {
        let src = Ipv4Addr::from(0x7f02_0000 + i);
        let r = get_from(&d, src, "/healthz", None);
        assert!(r.status == 200 || r.status == 429);
    }
    let m = metrics_addr(&d);
    let held = sample(&scrape(m), "strongroom_rate_limit_tracked_keys").unwrap();
    assert!(held <= 66.0, "{held} buckets held");
    // A minute later every bucket is full again, and the sweep drops them.
    d.advance_clock(61);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = sample(&scrape(m), "strongroom_rate_limit_tracked_keys").unwrap();
        if held <= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} buckets still held");
        std::thread::sleep(Duration::from_millis(200));
    }
}
