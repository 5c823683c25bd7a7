//! Regression tests for the outside security review, each through the real
//! daemon: connection limits and timeouts, ambiguous requests, the admin
//! socket protocol, failed-authentication flooding, late sensitive fields,
//! inexact numbers and strict queries, key lifetimes and a full disk.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Conn, Response, tcp_from};
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options, ctl_json};
use crate::records::req;

fn config(text: &'static str) -> Option<crate::harness::ConfigFn> {
    Some(Box::new(move |_| format!("version = 1\n{text}")))
}

fn problem(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["code"], code, "{v}");
    assert!(v["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("strict-transport-security").is_some());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

fn raw(d: &Daemon, request: &str) -> Response {
    let mut c = d.client().connect().unwrap();
    c.exchange_raw(request.as_bytes()).unwrap()
}

fn audit_entries(d: &Daemon, f: &Firm) -> Vec<Value> {
    let r = req(
        d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", f.id),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["entries"].as_array().unwrap().clone()
}

fn verify(d: &Daemon, f: &Firm) {
    let r = req(
        d,
        "GET",
        &format!("/api/v1/audit/{}/verify", f.id),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.json()["ok"], true, "{}", String::from_utf8_lossy(&r.body));
}

/// Item 2: idle and slow connections up to the cap, under a low open-file
/// limit, never keep a new client out, and the admin socket keeps working.
#[test]
fn idle_connections_never_lock_out_a_new_client() {
    let d = Daemon::start_with(Options {
        nofile: Some(256),
        config: config(
            "[server]\nmax_connections = 1000\nmax_connections_per_source = 20\nidle_timeout_secs = 300\nheader_timeout_secs = 300\n",
        ),
        ..Options::default()
    });
    // 256 descriptors: the connection cap is lowered to 128 and says so.
    assert!(
        d.stderr()
            .contains("connection cap lowered to fit the open-file limit"),
        "{}",
        d.logs()
    );
    let client = d.client();
    let mut held: Vec<Conn> = Vec::new();
    let mut raw_held: Vec<TcpStream> = Vec::new();
    // Ten sources: completed TLS handshakes that send nothing, bare TCP
    // connections, and requests stopped halfway through their headers.
    for s in 0..10u8 {
        let src = Ipv4Addr::new(127, 0, 1, s + 1);
        for i in 0..20 {
            match i % 3 {
                0 => held.push(client.connect_from(src).unwrap()),
                1 => raw_held.push(tcp_from(src, d.addr).unwrap()),
                _ => {
                    let mut c = client.connect_from(src).unwrap();
                    c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .unwrap();
                    held.push(c);
                }
            }
        }
    }
    // 200 connections were opened against a cap of 128: a new client is
    // still served, at once, because the idlest connection makes room.
    let started = Instant::now();
    let r = client.get("/healthz");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = ctl_json(&d.admin_socket, &["status"]);
    assert_eq!(status["fips"], true);
    // The daemon never ran out of descriptors.
    assert!(!d.stderr().contains("Too many open files"), "{}", d.logs());

    // One source may hold at most 20: the 21st from it closes its idlest.
    let src = Ipv4Addr::new(127, 0, 2, 1);
    let mut mine: Vec<Conn> = (0..21).map(|_| client.connect_from(src).unwrap()).collect();
    let last = mine.last_mut().unwrap();
    assert_eq!(
        last.request("GET", "/healthz", &[], None).unwrap().status,
        200
    );
    assert!(
        mine[0].closed_within(Duration::from_secs(5)),
        "the idlest connection of a full source is closed"
    );
    drop(held);
    drop(raw_held);
}

/// Item 2: every stage of a connection has a deadline.
/// The header timeout runs from a request head's first byte: an idle
/// keep-alive connection is the idle timeout's (found by schemathesis: it
/// used to be closed, with an unasked-for 408, at the header timeout).
#[test]
fn keep_alive_connections_wait_for_the_idle_timeout_not_the_header_timeout() {
    let d = Daemon::start_with(Options {
        config: config("[server]\nheader_timeout_secs = 1\nidle_timeout_secs = 60\n"),
        ..Options::default()
    });
    let client = d.client();
    let mut kept = client.connect().unwrap();
    let r = kept.request("GET", "/healthz", &[], None).unwrap();
    assert_eq!(r.status, 200);
    // Three header timeouts pass with nothing sent: still open, and nothing
    // was written to it.
    assert!(!kept.closed_within(Duration::from_secs(3)));
    let r = kept.request("GET", "/healthz", &[], None).unwrap();
    assert_eq!(r.status, 200);

    // Headers that never end are still cut off at the header timeout, long
    // before the idle timeout.
    let mut partial = client.connect().unwrap();
    partial
        .send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(partial.closed_within(Duration::from_secs(10)));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A head begun on a kept-alive connection after a request, likewise.
    let mut again = client.connect().unwrap();
    assert_eq!(
        again.request("GET", "/healthz", &[], None).unwrap().status,
        200
    );
    again.send_raw(b"GET /healthz HTTP/1.1\r\n").unwrap();
    assert!(again.closed_within(Duration::from_secs(10)));
}

#[test]
fn silent_slow_and_oversized_requests_are_cut_off() {
    let d = Daemon::start_with(Options {
        config: config(
            "[server]\nhandshake_timeout_secs = 1\nheader_timeout_secs = 1\nidle_timeout_secs = 1\nbody_timeout_secs = 1\nbody_min_bytes_per_sec = 1024\n",
        ),
        ..Options::default()
    });
    let f = create_firm(&d, "Slow Clients LLP");
    let client = d.client();

    // A TCP connection that never starts TLS.
    let mut tcp = TcpStream::connect(d.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    assert_eq!(tcp.read(&mut [0u8; 1]).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(8));

    // A TLS connection that sends nothing, and one idle after a request.
    let mut idle = client.connect().unwrap();
    assert!(idle.closed_within(Duration::from_secs(8)));
    let mut kept = client.connect().unwrap();
    assert_eq!(
        kept.request("GET", "/healthz", &[], None).unwrap().status,
        200
    );
    assert!(kept.closed_within(Duration::from_secs(8)));

    // Headers that never end.
    let mut partial = client.connect().unwrap();
    partial
        .send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(partial.closed_within(Duration::from_secs(8)));

    // A body that stops: 408 with the house format.
    let mut slow = client.connect().unwrap();
    let head = format!(
        "POST /api/v1/keys/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        f.id, f.token
    );
    slow.send_raw(head.as_bytes()).unwrap();
    let r = slow.read_response().unwrap();
    problem(&r, 408, "request_timeout");

    // A declared length over the limit: 413 before any body, and never an
    // invitation to send it.
    for expect in ["", "Expect: 100-continue\r\n"] {
        let r = raw(
            &d,
            &format!(
                "POST /api/v1/keys/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{expect}Content-Length: 999999999999\r\n\r\n",
                f.id, f.token
            ),
        );
        problem(&r, 413, "body_too_large");
    }
    // Nothing was created by any of it.
    let keys = req(
        &d,
        "GET",
        &format!("/api/v1/keys/{}", f.id),
        &f.token,
        None,
        &[],
    );
    assert_eq!(keys.json()["keys"].as_array().unwrap().len(), 1);
}

/// Items 4 and 6: requests the daemon would have to guess about are refused
/// in the house format; what the parser itself refuses is logged.
#[test]
fn ambiguous_requests_are_refused_and_parser_refusals_logged() {
    let d = Daemon::start();
    let f = create_firm(&d, "Ambiguity LLP");
    let auth = format!("Authorization: Bearer {}\r\n", f.token);
    let path = format!("/api/v1/firms/{}", f.id);
    for (what, request) in [
        (
            "gzip, chunked",
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "two Authorization headers",
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Authorization: Bearer sr_x\r\n\r\n"),
        ),
        ("no Host", format!("GET {path} HTTP/1.1\r\n{auth}\r\n")),
        (
            "two Host headers",
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}\r\n"),
        ),
    ] {
        let r = raw(&d, &request);
        assert_eq!(r.status, 400, "{what}");
        problem(&r, 400, "invalid_header");
    }
    // The parser's own refusals: a bare status, but a log line each.
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n".to_owned(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200_000)
        ),
    ] {
        let mut c = d.client().connect().unwrap();
        let r = c.exchange_raw(request.as_bytes()).unwrap();
        assert!(
            matches!(r.status, 400 | 431),
            "{} for {}",
            r.status,
            &request[..40]
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .stderr()
        .matches("request refused by the HTTP parser")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", d.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin_exchange(sock: &std::path::Path, bytes: &[u8], close_write: bool) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Item 5: every admin request gets an answer with the right code, and a
/// silent admin connection is closed.
#[test]
fn admin_socket_answers_every_request_and_times_out() {
    let d = Daemon::start_with(Options {
        config: config("[admin]\nidle_timeout_secs = 1\n"),
        ..Options::default()
    });
    // No newline before EOF: still a request.
    let r = admin_exchange(&d.admin_socket, br#"{"v":1,"cmd":"status"}"#, true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    // Not UTF-8: answered, and the connection goes on.
    let r = admin_exchange(
        &d.admin_socket,
        b"\xff\xfe{\"v\":1}\n{\"v\":1,\"cmd\":\"status\"}\n",
        true,
    );
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0]["error"]["code"], "bad_request");
    assert_eq!(r[1]["ok"], true);
    // Too long: request_too_large.
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let r = admin_exchange(&d.admin_socket, &long, false);
    assert_eq!(r[0]["error"]["code"], "request_too_large");
    // Silent: told so and closed after the idle timeout.
    let started = Instant::now();
    let r = admin_exchange(&d.admin_socket, b"", false);
    assert_eq!(r[0]["error"]["code"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// Item 3: random key ids from one source add one entry now and one
/// summary when the window closes (here: at shutdown), not one each.
#[test]
fn a_flood_of_random_key_ids_adds_a_bounded_number_of_entries() {
    // The failed-authentication rate limit would stop the flood early (see
    // `operations`); here the audit log's own bound is what is tested.
    let opts = || Options {
        config: Some(Box::new(|_| {
            "version = 1\n[limits]\nfailed_auth_per_minute = 1000000\n".to_owned()
        })),
        ..Options::default()
    };
    let d = Daemon::start_with(opts());
    let a = create_firm(&d, "Attacker LLP");
    let b = create_firm(&d, "Target LLP");
    // Reading the log is itself audited (once per reader per minute):
    // count everything else.
    let others = |l: &[Value]| l.iter().filter(|e| e["action"] != "audit.read").count();
    let before = others(&audit_entries(&d, &b));
    let parts: Vec<&str> = b.token.split('_').collect();
    let key_hex_len = parts[2].len();
    let mut c = d.client().connect().unwrap();
    const FLOOD: usize = 1000;
    for i in 0..FLOOD {
        let forged = format!(
            "sr_{}_{:0width$x}_{}",
            parts[1],
            i + 1,
            parts[3],
            width = key_hex_len
        );
        let auth = format!("Bearer {forged}");
        let r = c
            .request(
                "GET",
                &format!("/api/v1/firms/{}", b.id),
                &[("Authorization", &auth)],
                None,
            )
            .unwrap();
        assert_eq!(r.status, 401);
    }
    let after = audit_entries(&d, &b);
    let fails: Vec<&Value> = after
        .iter()
        .filter(|e| e["action"] == "auth.authenticate")
        .collect();
    assert_eq!(others(&after), before + 1, "one entry for the flood so far");
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0]["source_ip"], "127.0.0.1");
    // Firm A's log is untouched.
    assert!(
        audit_entries(&d, &a)
            .iter()
            .all(|e| e["action"] != "auth.authenticate")
    );
    // The window closes at shutdown: one summary with the count.
    let d = d.restart(opts());
    let log = audit_entries(&d, &b);
    let summary: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "auth.failures")
        .collect();
    assert_eq!(summary.len(), 1, "{log:?}");
    assert_eq!(summary[0]["resource"], "127.0.0.1");
    assert_eq!(summary[0]["details"]["further_failures"], FLOOD as u64 - 1);
    assert_eq!(summary[0]["details"]["distinct_key_ids"], FLOOD as u64);
    assert_eq!(others(&log), before + 2);
    verify(&d, &b);
}

/// Item 1: a field that records already hold undeclared cannot be declared
/// sensitive afterwards (it would stay in clear).
#[test]
fn a_field_held_in_clear_cannot_be_declared_sensitive_later() {
    let d = Daemon::start();
    let f = create_firm(&d, "Late Declarations LLP");
    let coll = format!("/api/v1/collections/{}/patients", f.id);
    let schema = |dob: Option<Value>| {
        let mut fields = json!({"name": {"type": "string"}});
        if let Some(x) = dob {
            fields["dob"] = x;
        }
        json!({"fields": fields, "allow_unknown": true})
    };
    let r = req(&d, "PUT", &coll, &f.token, Some(&schema(None)), &[]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let rec = req(
        &d,
        "POST",
        &format!("/api/v1/records/{}/patients", f.id),
        &f.token,
        Some(&json!({"name": "Ann", "dob": "1970-01-01"})),
        &[],
    );
    assert_eq!(rec.status, 201);
    let r = req(
        &d,
        "PUT",
        &coll,
        &f.token,
        Some(&schema(Some(json!({"type": "string", "sensitive": true})))),
        &[],
    );
    problem(&r, 409, "schema_conflict");
    assert!(r.json()["detail"].as_str().unwrap().contains("dob"));
    let now = req(&d, "GET", &coll, &f.token, None, &[]).json();
    assert_eq!(now["version"], 1, "the schema did not change");
    // A field no record holds may still be added as sensitive.
    let mut s = schema(None);
    s["fields"]["ssn"] = json!({"type": "string", "sensitive": true});
    let r = req(&d, "PUT", &coll, &f.token, Some(&s), &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    verify(&d, &f);
}

/// Item 7: numbers that cannot be stored exactly, opaque ETags, and one
/// code for every query-string problem.
#[test]
fn numbers_etags_and_query_strings_are_strict() {
    let d = Daemon::start();
    let f = create_firm(&d, "Strict Parsing LLP");
    let coll = format!("/api/v1/collections/{}/c", f.id);
    let r = req(
        &d,
        "PUT",
        &coll,
        &f.token,
        Some(
            &json!({"fields": {"name": {"type": "string", "indexed": true}}, "allow_unknown": true}),
        ),
        &[],
    );
    assert_eq!(r.status, 201);
    let base = format!("/api/v1/records/{}/c", f.id);
    let auth = format!("Bearer {}", f.token);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for body in [
        r#"{"name":"a","n":123456789012345678901234567890}"#,
        r#"{"name":"a","n":1e-400}"#,
        r#"{"name":"a","n":[1, 0.1000000000000000000001]}"#,
    ] {
        let r = d
            .client()
            .request("POST", &base, &headers, Some(body.as_bytes()));
        problem(&r, 422, "invalid_number");
    }
    let ok = d.client().request(
        "POST",
        &base,
        &headers,
        Some(br#"{"name":"a","n":18446744073709551615,"x":0.1}"#),
    );
    assert_eq!(ok.status, 201, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json()["data"]["n"], json!(18446744073709551615u64));
    let id = ok.json()["id"].as_str().unwrap().to_owned();
    let list = req(&d, "GET", &base, &f.token, None, &[]).json();
    assert_eq!(list["records"].as_array().unwrap().len(), 1);

    // ETags are opaque: "01" is not "1".
    let r = req(
        &d,
        "PUT",
        &format!("{base}/{id}"),
        &f.token,
        Some(&json!({"name": "b"})),
        &[("If-Match", "\"01\"")],
    );
    problem(&r, 412, "precondition_failed");

    for q in [
        "?name=a&name=b",
        "?limit=0",
        "?bogus=1",
        "?bogus=1&name=a",
        "?limit=x",
    ] {
        let r = req(&d, "GET", &format!("{base}{q}"), &f.token, None, &[]);
        problem(&r, 400, "invalid_query");
    }
    for q in ["?limit=0", "?from=1&from=2", "?bogus=1"] {
        let r = req(
            &d,
            "GET",
            &format!("/api/v1/audit/{}{q}", f.id),
            &f.token,
            None,
            &[],
        );
        problem(&r, 400, "invalid_query");
    }
    let after = req(&d, "GET", &base, &f.token, None, &[]).json();
    assert_eq!(
        after["records"].as_array().unwrap().len(),
        1,
        "nothing else stored"
    );
}

fn mint(d: &Daemon, f: &Firm, token: &str, body: Value) -> Response {
    req(
        d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        token,
        Some(&body),
        &[],
    )
}

/// Item 8: a key cannot outlive its minter; idempotency keys belong to
/// one credential; names cannot hide bidirectional overrides.
#[test]
fn key_lifetimes_idempotency_scope_and_invisible_characters() {
    let d = Daemon::start();
    let f = create_firm(&d, "Decisions LLP");
    let soon = "2099-01-01T00:00:00Z";
    let r = mint(
        &d,
        &f,
        &f.token,
        json!({"name": "temp", "role": "admin", "expires_at": soon}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let temp = r.json()["secret"].as_str().unwrap().to_owned();
    for body in [
        json!({"name": "forever", "role": "viewer"}),
        json!({"name": "later", "role": "viewer", "expires_at": "2100-01-01T00:00:00Z"}),
    ] {
        problem(&mint(&d, &f, &temp, body), 403, "forbidden_escalation");
    }
    let r = mint(
        &d,
        &f,
        &temp,
        json!({"name": "shorter", "role": "viewer", "expires_at": "2098-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 201);

    // Trojan-source names are refused.
    let r = mint(
        &d,
        &f,
        &f.token,
        json!({"name": "admin\u{202e}txt.exe", "role": "viewer"}),
    );
    problem(&r, 422, "invalid_name");

    // Idempotency keys are per credential.
    let coll = format!("/api/v1/collections/{}/c", f.id);
    let r = req(
        &d,
        "PUT",
        &coll,
        &f.token,
        Some(&json!({"fields": {"name": {"type": "string"}}})),
        &[],
    );
    assert_eq!(r.status, 201);
    let op = mint(&d, &f, &f.token, json!({"name": "op", "role": "operator"}));
    let op = op.json()["secret"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/records/{}/c", f.id);
    let body = json!({"name": "same"});
    let first = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&body),
        &[("Idempotency-Key", "k1")],
    );
    let replay = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&body),
        &[("Idempotency-Key", "k1")],
    );
    let other = req(
        &d,
        "POST",
        &base,
        &op,
        Some(&body),
        &[("Idempotency-Key", "k1")],
    );
    assert_eq!(first.status, 201);
    assert_eq!(replay.json()["id"], first.json()["id"]);
    assert_eq!(other.status, 201);
    assert_ne!(other.json()["id"], first.json()["id"]);
    assert!(other.header("idempotent-replayed").is_none());
}

/// Item 10: a full disk answers 507 `storage_full` to writes and to reads
/// that must be audited, keeps serving other reads, logs once, recovers by
/// itself and loses nothing acknowledged.
#[test]
fn a_full_disk_is_507_and_loses_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let d = Daemon::start_with(Options {
        tmpfs_state: Some(24 * 1024 * 1024),
        ..Options::default()
    });
    let f = create_firm(&d, "Full Disk LLP");
    let coll = format!("/api/v1/collections/{}/c", f.id);
    let r = req(
        &d,
        "PUT",
        &coll,
        &f.token,
        Some(
            &json!({"fields": {"name": {"type": "string"}, "ssn": {"type": "string", "sensitive": true}}}),
        ),
        &[],
    );
    assert_eq!(r.status, 201);
    let base = format!("/api/v1/records/{}/c", f.id);
    let body = json!({"name": "x".repeat(2000), "ssn": "219-09-9999"});
    let first = req(&d, "POST", &base, &f.token, Some(&body), &[]);
    assert_eq!(first.status, 201);
    let first_id = first.json()["id"].as_str().unwrap().to_owned();
    let reader = mint(&d, &f, &f.token, json!({"name": "reader", "role": "admin"}));
    let reader = reader.json()["secret"].as_str().unwrap().to_owned();
    let viewer = mint(
        &d,
        &f,
        &f.token,
        json!({"name": "viewer", "role": "viewer"}),
    );
    let viewer = viewer.json()["secret"].as_str().unwrap().to_owned();

    // Fill the filesystem but for a little room.
    let filler = d.state_dir.join("filler");
    let st = nix::sys::statvfs::statvfs(&d.state_dir).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    std::fs::write(
        &filler,
        vec![0u8; (free.saturating_sub(1_500_000)) as usize],
    )
    .unwrap();

    let mut acked = vec![first_id.clone()];
    let mut conn = d.client().connect().unwrap();
    let auth = format!("Bearer {}", f.token);
    let text = body.to_string();
    let mut full = None;
    for _ in 0..5000 {
        let r = conn
            .request(
                "POST",
                &base,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                Some(text.as_bytes()),
            )
            .unwrap();
        match r.status {
            201 => acked.push(r.json()["id"].as_str().unwrap().to_owned()),
            _ => {
                full = Some(r);
                break;
            }
        }
    }
    let full = full.expect("the disk never filled");
    problem(&full, 507, "storage_full");
    assert!(full.header("retry-after").is_some());
    // A read that must be audited (the reader's first clear read) fails closed.
    let r = req(&d, "GET", &format!("{base}/{first_id}"), &reader, None, &[]);
    problem(&r, 507, "storage_full");
    // A read that needs no entry is served, and so is /status.
    let r = req(&d, "GET", &format!("{base}/{first_id}"), &viewer, None, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"]["ssn"], "[MASKED]");
    assert_eq!(d.client().get("/status").status, 200);
    // More writes: still 507, still one log line for the episode.
    for _ in 0..3 {
        let r = req(&d, "POST", &base, &f.token, Some(&body), &[]);
        assert_eq!(r.status, 507);
    }
    assert_eq!(
        d.stderr().matches("storage full").count(),
        1,
        "{}",
        d.logs()
    );
    assert_eq!(
        d.stderr().matches("\"level\":\"ERROR\"").count(),
        1,
        "the episode is one error line, not one per refused write"
    );

    // Space returns: writes resume by themselves.
    std::fs::remove_file(&filler).unwrap();
    let r = req(&d, "POST", &base, &f.token, Some(&body), &[]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    acked.push(r.json()["id"].as_str().unwrap().to_owned());
    assert!(d.stderr().contains("storage available again"));

    // Nothing acknowledged was lost, across a restart, and the log verifies.
    let d = d.restart(Options {
        tmpfs_state: Some(24 * 1024 * 1024),
        ..Options::default()
    });
    for id in &acked {
        let r = req(&d, "GET", &format!("{base}/{id}"), &viewer, None, &[]);
        assert_eq!(r.status, 200, "{id} lost");
    }
    verify(&d, &f);
}
