//! Signed webhooks through the real daemon, to a real local HTTPS receiver
//! that checks every delivery with the official `standardwebhooks` library.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::audit::{call, entries, entries_of};
use crate::client::Response;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options};

/// The pinned library the Makefile installs (`TEST_PY_DEPS`).
const STANDARDWEBHOOKS: &str = "standardwebhooks==1.1.0";

/// The tests' Python, with `standardwebhooks` (installed here if missing).
fn python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let py = crate::people::test_python();
        let has = Command::new(&py)
            .args(["-c", "import standardwebhooks"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if !has.success() {
            let ok = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    STANDARDWEBHOOKS,
                ])
                .status()
                .unwrap();
            assert!(ok.success(), "pip install {STANDARDWEBHOOKS} failed");
        }
        py
    })
    .clone()
}

/// The receiver: HTTPS on 127.0.0.1, one JSON line per request (headers,
/// body, the verification result under each configured secret). Answers
/// 204, or what `mode` says (`fail`: 503; `redirect URL`: 302 to URL).
const RECEIVER: &str = r#"
import json, os, ssl, sys
from http.server import HTTPServer, BaseHTTPRequestHandler
from standardwebhooks.webhooks import Webhook

port, cert, key, secrets_path, log_path, mode_path = sys.argv[1:]

def read(path, default):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified = []
        for s in json.loads(read(secrets_path, "[]")):
            try:
                Webhook(s).verify(body, headers)
                verified.append(True)
            except Exception as e:
                verified.append(str(e))
        mode = read(mode_path, "ok").strip()
        rec = {"path": self.path, "headers": headers, "body": body.decode(), "verified": verified}
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if mode.startswith("redirect "):
            self.send_response(302)
            self.send_header("Location", mode.split(" ", 1)[1])
        elif mode == "fail":
            self.send_response(503)
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer.allow_reuse_address = True
srv = HTTPServer(("127.0.0.1", int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Checks one captured delivery with the library, its clock moved by
/// `shift` seconds: prints `ok` or the library's reason.
const CHECK_AT: &str = r#"
import json, sys
from datetime import datetime, timedelta, timezone
import standardwebhooks.webhooks as w

secret, rec, shift = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
real = datetime
class Shifted(real):
    @classmethod
    def now(cls, tz=None):
        return real.now(tz) + timedelta(seconds=shift)
w.datetime = Shifted
try:
    w.Webhook(secret).verify(rec["body"].encode(), rec["headers"])
    print("ok")
except Exception as e:
    print(e)
"#;

/// A receiver's certificate (for 127.0.0.1 and localhost), which the
/// daemon is told to trust through `[webhooks] ca_file`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), c.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("receiver.py"), RECEIVER).unwrap();
        Self { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Daemon options allowing `allow` (TOML array items) and trusting
    /// the receiver's certificate.
    fn options(&self, allow: &str) -> Options {
        let text = format!(
            "version = 1\n[webhooks]\nallow = [{allow}]\nca_file = \"{}\"\ntimeout_secs = 5\n",
            self.cert().display()
        );
        Options {
            config: Some(Box::new(move |_| text.clone())),
            ..Options::default()
        }
    }
}

struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    mode: PathBuf,
    secrets: PathBuf,
}

impl Receiver {
    /// Starts on `port` (0: any) with files under `certs`' directory.
    fn start(certs: &Certs, port: u16) -> Self {
        let d = certs.dir.path();
        let (log, mode, secrets) = (d.join("log.jsonl"), d.join("mode"), d.join("secrets.json"));
        let mut child = Command::new(python())
            .arg(d.join("receiver.py"))
            .arg(port.to_string())
            .arg(d.join("cert.pem"))
            .arg(d.join("key.pem"))
            .arg(&secrets)
            .arg(&log)
            .arg(&mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("receiver did not start: {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            port,
            log,
            mode,
            secrets,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.port)
    }

    fn set_secrets(&self, s: &[&str]) {
        std::fs::write(&self.secrets, json!(s).to_string()).unwrap();
    }

    fn set_mode(&self, m: &str) {
        std::fs::write(&self.mode, m).unwrap();
    }

    fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (bounded, real time) for `n` deliveries in all.
    fn wait_for(&self, d: &Daemon, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.deliveries();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries arrived\n{}",
                got.len(),
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn hooks(f: &Firm) -> String {
    format!("/api/v1/webhooks/{}", f.id)
}

/// Registers an endpoint; (its id, its secret).
fn register(d: &Daemon, f: &Firm, url: &str, events: Value) -> (String, String) {
    let r = call(
        d,
        "POST",
        &hooks(f),
        &f.token,
        Some(&json!({ "url": url, "events": events, "description": "case system" })),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let v = r.json();
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (v["id"].as_str().unwrap().to_owned(), secret)
}

fn collection(d: &Daemon, f: &Firm) {
    let r = call(
        d,
        "PUT",
        &format!("/api/v1/collections/{}/cases", f.id),
        &f.token,
        Some(&json!({ "fields": { "title": { "type": "string" } } })),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
}

fn create_record(d: &Daemon, f: &Firm, title: &str) -> String {
    let r = call(
        d,
        "POST",
        &format!("/api/v1/records/{}/cases", f.id),
        &f.token,
        Some(&json!({ "title": title })),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    r.json()["id"].as_str().unwrap().to_owned()
}

fn attempts(d: &Daemon, f: &Firm, endpoint: &str) -> Vec<Value> {
    let r = call(
        d,
        "GET",
        &format!("{}/{endpoint}/attempts", hooks(f)),
        &f.token,
        None,
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()["attempts"].as_array().unwrap().clone()
}

/// Waits (bounded) until the endpoint has an attempt matching `pred`.
fn wait_attempt(d: &Daemon, f: &Firm, endpoint: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = attempts(d, f, endpoint).into_iter().find(&pred) {
            return a;
        }
        assert!(Instant::now() < deadline, "no such attempt\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn body_of(delivery: &Value) -> Value {
    serde_json::from_str(delivery["body"].as_str().unwrap()).unwrap()
}

#[test]
fn deliveries_verify_with_standardwebhooks_old_ones_do_not_and_the_secret_never_shows_again() {
    let certs = Certs::new();
    let d = Daemon::start_with(certs.options(r#""127.0.0.1/32""#));
    let rx = Receiver::start(&certs, 0);
    let f = create_firm(&d, "Hooks & Partners");
    collection(&d, &f);
    let (id, secret) = register(&d, &f, &rx.url(), json!(["record.*", "key.revoked"]));
    rx.set_secrets(&[&secret]);

    // A record's creation reaches the receiver, signed as the library expects.
    let rec = create_record(&d, &f, "first");
    let got = rx.wait_for(&d, 1);
    assert_eq!(got[0]["verified"], json!([true]), "{}", got[0]);
    let body = body_of(&got[0]);
    assert_eq!(body["type"], "record.created");
    assert_eq!(body["data"]["record_id"], rec.as_str());
    assert_eq!(got[0]["path"], "/hook");
    let sig = got[0]["headers"]["webhook-signature"].as_str().unwrap();
    assert!(sig.starts_with("v1,") && !sig.contains(' '), "{sig}");
    assert!(
        got[0]["headers"]["webhook-id"]
            .as_str()
            .unwrap()
            .starts_with("msg_")
    );

    // Replayed later than the library's 5-minute tolerance: refused; at
    // its own time: accepted.
    let check = |shift: &str| {
        let out = Command::new(python())
            .args(["-c", CHECK_AT, &secret, &got[0].to_string(), shift])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(check("0"), "ok");
    assert_eq!(check("360"), "Message timestamp too old");
    // A tampered body is refused too.
    let mut forged = got[0].clone();
    forged["body"] = json!(
        got[0]["body"]
            .as_str()
            .unwrap()
            .replace("record.created", "record.deleted")
    );
    let out = Command::new(python())
        .args(["-c", CHECK_AT, &secret, &forged.to_string(), "0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "No matching signature found"
    );

    // A revoked key is an event; a minted one is not subscribed here.
    let (key_id, _) = crate::audit::mint(&d, &f, "viewer");
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{key_id}", f.id),
        &f.token,
        None,
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_for(&d, 2);
    let body = body_of(&got[1]);
    assert_eq!(
        (body["type"].as_str(), body["data"]["key_id"].as_str()),
        (Some("key.revoked"), Some(key_id.as_str()))
    );
    assert_eq!(got[1]["verified"], json!([true]));

    // The attempt is listed and audited.
    let a = wait_attempt(&d, &f, &id, |a| a["outcome"] == "delivered");
    assert_eq!(a["status_code"], 204);
    assert!(a["latency_ms"].is_u64());
    assert_eq!(a["message_status"], "delivered");
    assert_eq!(a["next_attempt_at"], Value::Null);
    let delivered = entries_of(&d, &f, "webhooks.delivered");
    assert!(delivered.len() >= 2, "{delivered:?}");
    assert_eq!(delivered[0]["actor"], "system:webhooks");
    assert_eq!(delivered[0]["resource"], id.as_str());

    // Rotation: two signatures during the overlap, each verifying alone.
    let r = call(
        &d,
        "POST",
        &format!("{}/{id}/rotate", hooks(&f)),
        &f.token,
        Some(&json!({ "overlap_secs": 3600 })),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(r.json()["previous_secret_until"].is_string());
    rx.set_secrets(&[&secret, &new_secret]);
    let r = call(
        &d,
        "POST",
        &format!("{}/{id}/test", hooks(&f)),
        &f.token,
        None,
    );
    assert_eq!(r.status, 202, "{}", text(&r));
    let test_id = r.json()["message_id"].as_str().unwrap().to_owned();
    let got = rx.wait_for(&d, 3);
    assert_eq!(got[2]["headers"]["webhook-id"], test_id.as_str());
    assert_eq!(body_of(&got[2])["type"], "webhook.test");
    let sigs = got[2]["headers"]["webhook-signature"].as_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    assert_eq!(got[2]["verified"], json!([true, true]), "{}", got[2]);

    // Subscribing to failed authentications too (by PATCH): a wrong secret
    // for a key of this firm is an `auth.failed` event.
    let r = call(
        &d,
        "PATCH",
        &format!("{}/{id}", hooks(&f)),
        &f.token,
        Some(&json!({ "events": ["record.*", "key.revoked", "auth.failed"] })),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 3);
    let mut wrong = f.token.clone();
    let last = if wrong.ends_with('a') { "b" } else { "a" };
    wrong.replace_range(wrong.len() - 1.., last);
    let r = call(&d, "GET", &format!("/api/v1/firms/{}", f.id), &wrong, None);
    assert_eq!(r.status, 401);
    let got = rx.wait_for(&d, 4);
    let body = body_of(&got[3]);
    assert_eq!(body["type"], "auth.failed", "{body}");
    assert!(body["data"]["key_id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(body["data"]["source"], "127.0.0.1");

    // Bad input: a clear problem with a stable code, and nothing changes.
    for (body, status, code) in [
        (
            json!({"url": "ftp://x/", "events": ["*"]}),
            422,
            "invalid_field",
        ),
        (
            json!({"url": rx.url(), "events": ["nope.*"]}),
            422,
            "invalid_field",
        ),
        (json!({"url": rx.url(), "events": []}), 422, "invalid_field"),
        (
            json!({"url": "https://203.0.113.9/", "events": ["*"]}),
            422,
            "destination_not_allowed",
        ),
        (
            json!({"url": rx.url(), "events": ["*"], "secret": "mine"}),
            400,
            "invalid_body",
        ),
    ] {
        let r = call(&d, "POST", &hooks(&f), &f.token, Some(&body));
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    let r = call(
        &d,
        "GET",
        &format!("{}/whk_0000000000000000", hooks(&f)),
        &f.token,
        None,
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("webhook_not_found"))
    );
    let r = call(&d, "GET", &hooks(&f), &f.token, None);
    assert_eq!(r.json()["endpoints"].as_array().unwrap().len(), 1);

    // The vault API never shows or touches the reserved secret rows.
    let r = call(
        &d,
        "GET",
        &format!("/api/v1/secrets/{}", f.id),
        &f.token,
        None,
    );
    assert_eq!(r.json()["secrets"], json!([]));

    // Neither secret appears in any later response, the log or the audit log.
    let mut seen = String::new();
    for path in [
        hooks(&f),
        format!("{}/{id}", hooks(&f)),
        format!("{}/{id}/attempts", hooks(&f)),
        format!("/api/v1/audit/{}?limit=500", f.id),
        format!("/api/v1/audit/{}/export", f.id),
    ] {
        let r = call(&d, "GET", &path, &f.token, None);
        assert_eq!(r.status, 200, "{path}");
        seen.push_str(&text(&r));
    }
    seen.push_str(&d.logs());
    seen.push_str(
        &entries(&d, &f)
            .iter()
            .map(|e| e.to_string())
            .collect::<String>(),
    );
    for s in [&secret, &new_secret] {
        let raw = s.trim_start_matches("whsec_");
        assert!(!seen.contains(raw), "a signing secret leaked");
    }
    assert!(!seen.contains("whsec_"));
}

#[test]
fn a_receiver_that_is_down_gets_every_event_once_in_order_when_it_is_back() {
    let certs = Certs::new();
    let d = Daemon::start_with(certs.options(r#""127.0.0.1/32""#));
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = create_firm(&d, "Patient Receivers");
    collection(&d, &f);
    let url = format!("https://127.0.0.1:{port}/hook");
    let (id, secret) = register(&d, &f, &url, json!(["record.created"]));
    let ids: Vec<String> = (0..3)
        .map(|i| create_record(&d, &f, &format!("r{i}")))
        .collect();

    // The first message fails and waits; the others wait behind it.
    let a = wait_attempt(&d, &f, &id, |a| a["outcome"] == "retry");
    assert!(a["error"].as_str().unwrap().contains("connect"), "{a}");
    assert!(a["next_attempt_at"].is_string());
    assert_eq!(a["status_code"], Value::Null);
    let failed = entries_of(&d, &f, "webhooks.attempt_failed");
    assert_eq!(failed[0]["outcome"], "failure");

    // Back: the retry schedule (moved through with the clock) delivers all
    // three, in order, each once.
    let rx = Receiver::start(&certs, port);
    rx.set_secrets(&[&secret]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.deliveries().len() < 3 {
        assert!(Instant::now() < deadline, "not delivered\n{}", d.logs());
        d.advance_clock(40);
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = rx.deliveries();
    let order: Vec<String> = got
        .iter()
        .map(|g| body_of(g)["data"]["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ids);
    let mut msg_ids: Vec<&str> = got
        .iter()
        .map(|g| g["headers"]["webhook-id"].as_str().unwrap())
        .collect();
    msg_ids.dedup();
    assert_eq!(msg_ids.len(), 3, "each message once");
    // Signed at the attempt's time, which the daemon's moved clock set:
    // the library accepts it only if within its tolerance, so verify by
    // the signature alone here.
    for g in &got {
        assert!(
            g["headers"]["webhook-signature"]
                .as_str()
                .unwrap()
                .starts_with("v1,")
        );
    }
    assert!(entries_of(&d, &f, "webhooks.delivered").len() >= 3);

    // A message the receiver refused until the schedule ran out is failed
    // (dead letter); redelivery sends it again with the same id.
    rx.set_mode("fail");
    let r = call(
        &d,
        "POST",
        &format!("{}/{id}/test", hooks(&f)),
        &f.token,
        None,
    );
    let test_id = r.json()["message_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dead = attempts(&d, &f, &id)
            .into_iter()
            .any(|a| a["message_id"] == test_id.as_str() && a["outcome"] == "failed");
        if dead {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered\n{}",
            d.logs()
        );
        d.advance_clock(5 * 3600);
        std::thread::sleep(Duration::from_millis(300));
    }
    let tries = attempts(&d, &f, &id)
        .into_iter()
        .filter(|a| a["message_id"] == test_id.as_str())
        .count();
    assert_eq!(tries, 9, "one attempt and eight retries");
    assert_eq!(entries_of(&d, &f, "webhooks.dead_lettered").len(), 1);
    rx.set_mode("ok");
    // Counted before the request: the redelivery may arrive before the
    // 202 is read (the dead letter has no attempt left to add meanwhile).
    let before = rx.deliveries().len();
    let r = call(
        &d,
        "POST",
        &format!("{}/{id}/messages/{test_id}/redeliver", hooks(&f)),
        &f.token,
        None,
    );
    assert_eq!(r.status, 202, "{}", text(&r));
    let got = rx.wait_for(&d, before + 1);
    assert_eq!(got[before]["headers"]["webhook-id"], test_id.as_str());
    // Nothing failed is left to redeliver.
    let r = call(
        &d,
        "POST",
        &format!("{}/{id}/redeliver", hooks(&f)),
        &f.token,
        Some(&json!({ "since": "2000-01-01T00:00:00Z" })),
    );
    assert_eq!((r.status, r.json()["requeued"].clone()), (200, json!(0)));
}

#[test]
fn an_event_committed_before_kill_9_is_delivered_after_restart() {
    let certs = Certs::new();
    let mut d = Daemon::start_with(certs.options(r#""127.0.0.1/32""#));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = create_firm(&d, "Crash Partners");
    collection(&d, &f);
    let url = format!("https://127.0.0.1:{port}/hook");
    let (_, secret) = register(&d, &f, &url, json!(["*"]));
    // Acknowledged, then the daemon dies before any delivery succeeds.
    let rec = create_record(&d, &f, "survives");
    d.kill9();

    let rx = Receiver::start(&certs, port);
    rx.set_secrets(&[&secret]);
    let d = d.restart(certs.options(r#""127.0.0.1/32""#));
    // No request touches the firm: the worker finds its outbox itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.deliveries().is_empty() {
        assert!(Instant::now() < deadline, "not delivered\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(500));
        // A pre-crash attempt may have scheduled a retry.
        d.advance_clock(10);
    }
    let got = rx.deliveries();
    let body = body_of(&got[0]);
    assert_eq!(body["type"], "record.created");
    assert_eq!(body["data"]["record_id"], rec.as_str());
}

#[test]
fn destinations_outside_the_allow_list_loopback_names_and_redirects_are_refused_and_audited() {
    let certs = Certs::new();
    let rx = Receiver::start(&certs, 0);
    // Only this receiver's exact origin, and `localhost` on its port by name.
    let allow = format!(
        r#""https://127.0.0.1:{p}", "https://localhost:{p}""#,
        p = rx.port
    );
    let d = Daemon::start_with(certs.options(&allow));
    let f = create_firm(&d, "Egress Partners");
    rx.set_secrets(&[]);

    // Outside the list, and loopback on another port (no entry names it).
    for url in [
        "https://203.0.113.9/hook".to_owned(),
        format!("https://127.0.0.1:{}/hook", rx.port + 1),
        format!("http://127.0.0.1:{}/hook", rx.port),
    ] {
        let r = call(
            &d,
            "POST",
            &hooks(&f),
            &f.token,
            Some(&json!({ "url": url, "events": ["*"] })),
        );
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (422, Some("destination_not_allowed")),
            "{url}"
        );
    }
    let refused = entries_of(&d, &f, "webhooks.create");
    assert_eq!(refused.len(), 3);
    assert!(
        refused.iter().all(
            |e| e["outcome"] == "failure" && e["details"]["error"] == "destination_not_allowed"
        )
    );

    // A name whose origin is allowed but that resolves to loopback: saved,
    // then every attempt is refused after resolution, and audited.
    let (by_name, _) = register(
        &d,
        &f,
        &format!("https://localhost:{}/hook", rx.port),
        json!(["webhook.test"]),
    );
    let r = call(
        &d,
        "POST",
        &format!("{}/{by_name}/test", hooks(&f)),
        &f.token,
        None,
    );
    assert_eq!(r.status, 202);
    let a = wait_attempt(&d, &f, &by_name, |a| a["outcome"] == "retry");
    let err = a["error"].as_str().unwrap();
    assert!(
        err.starts_with("egress_refused:") && err.contains("loopback"),
        "{err}"
    );
    let audited = entries_of(&d, &f, "webhooks.attempt_failed");
    assert!(audited.iter().any(|e| {
        e["resource"] == by_name.as_str()
            && e["details"]["error"]
                .as_str()
                .unwrap()
                .starts_with("egress_refused")
    }));

    // A redirect (here to loopback elsewhere) is not followed: the 302 is
    // the attempt's answer, recorded and audited.
    rx.set_mode(&format!(
        "redirect https://127.0.0.1:{}/elsewhere",
        rx.port + 1
    ));
    let (direct, _) = register(&d, &f, &rx.url(), json!(["webhook.test"]));
    let r = call(
        &d,
        "POST",
        &format!("{}/{direct}/test", hooks(&f)),
        &f.token,
        None,
    );
    assert_eq!(r.status, 202);
    let a = wait_attempt(&d, &f, &direct, |a| a["outcome"] == "retry");
    assert_eq!(a["status_code"], 302);
    assert_eq!(a["error"], "redirect_not_followed");
    assert!(
        entries_of(&d, &f, "webhooks.attempt_failed")
            .iter()
            .any(|e| e["resource"] == direct.as_str() && e["details"]["status_code"] == 302)
    );
    // Only the one request reached the receiver: nothing went to localhost.
    let got = rx.deliveries();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["path"], "/hook");
}

#[test]
fn an_erasure_is_delivered_with_the_erased_record_ids_and_no_identifier() {
    let certs = Certs::new();
    let d = Daemon::start_with(certs.options(r#""127.0.0.1/32""#));
    let rx = Receiver::start(&certs, 0);
    let f = create_firm(&d, "Erasure Hooks LLP");
    crate::records::collection(&d, &f, "clients", "flag");
    let (_, secret) = register(&d, &f, &rx.url(), json!(["subject.*"]));
    rx.set_secrets(&[&secret]);
    let r = call(
        &d,
        "POST",
        &format!("/api/v1/records/{}/clients", f.id),
        &f.token,
        Some(&json!({"name": "Ann Archer", "ssn": "219-09-9999"})),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let rec = r.json()["id"].as_str().unwrap().to_owned();
    let r = call(
        &d,
        "POST",
        &format!("/api/v1/erasure/{}", f.id),
        &f.token,
        Some(&json!({"values": ["Ann Archer"]})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let erasure = r.json()["statement"]["id"].as_str().unwrap().to_owned();
    // Only the erasure (the create was not subscribed), verified, naming
    // the record ids and never the person.
    let got = rx.wait_for(&d, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["verified"], json!([true]), "{}", got[0]);
    let body = body_of(&got[0]);
    assert_eq!(body["type"], "subject.erased");
    assert_eq!(body["data"]["erasure_id"], erasure.as_str());
    assert_eq!(body["data"]["records"], json!({ "clients": [rec] }));
    assert_eq!(body["data"]["records_deleted"], 1);
    assert!(!got[0].to_string().contains("Ann Archer"));
}
