//! The console: its files and headers, its cookie session and CSRF check
//! over plain HTTPS, and the whole of it end to end in headless Chromium
//! (Debian's `chromium`, driven by playwright-core from
//! `tests/console/e2e.mjs`) against the real daemon.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::client::Response;
use crate::firms::{Firm, create_firm, firm_db, stock_sqlcipher_python};
use crate::harness::{Daemon, ctl_json};
use crate::people::{PASSWORD, api, person, pyotp_code, set_mfa_policy, unthrottled};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn console_files_are_served_with_a_strict_policy() {
    let d = Daemon::start();
    let c = d.client();
    for (path, ctype) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/verify.js", "text/javascript; charset=utf-8"),
        ("/console/pages/audit.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    let r = c.get("/console");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/console/"));
    let r = c.get("/console/nothing.js");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    // The API keeps its own policy, which allows nothing at all.
    let r = c.get("/status");
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    );
}

fn cookie_of(r: &Response) -> String {
    let set = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no Set-Cookie: {}", text(r)));
    let (pair, attrs) = set.split_once(';').unwrap();
    for a in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(a), "{set} lacks {a}");
    }
    assert!(!attrs.contains("Domain"), "{set}");
    assert!(pair.starts_with("__Host-strongroom-session=srs_"), "{set}");
    pair.to_owned()
}

fn with_cookie(
    d: &Daemon,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let mut headers = vec![("Cookie", cookie)];
    if let Some(t) = csrf {
        headers.push(("X-CSRF-Token", t));
    }
    let body = body.map(Value::to_string);
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    d.client()
        .request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

#[test]
fn a_cookie_session_changes_nothing_without_its_csrf_token_and_sign_out_revokes_it() {
    let d = unthrottled("");
    let f = create_firm(&d, "Cookie LLP");
    let p = person(&d, &f, "admin", "ada@example.test", true);
    let r = api(
        &d,
        "POST",
        &format!("/console/session/{}", f.id),
        None,
        Some(&json!({"login": p.login, "password": PASSWORD, "code": p.code(&d)})),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let cookie = cookie_of(&r);
    let v = r.json();
    // The page gets the CSRF token, never the session token.
    assert!(v.get("token").is_none(), "{v}");
    assert!(!text(&r).contains("srs_"));
    let csrf = v["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);

    let session = format!("/console/session/{}", f.id);
    let r = with_cookie(&d, "GET", &session, &cookie, None, None);
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["csrf_token"], csrf.as_str());
    assert_eq!(v["user"]["login"], "ada@example.test");
    let perms: Vec<&str> = v["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(perms.contains(&"keys:create") && perms.contains(&"audit:read"));

    // Reads need the cookie only; the policy is the API's.
    let keys = format!("/api/v1/keys/{}", f.id);
    assert_eq!(
        with_cookie(&d, "GET", &keys, &cookie, None, None).status,
        200
    );
    let mint = json!({"name": "console key", "role": "viewer"});
    // A state-changing request without the token, or with another, is refused.
    for bad in [None, Some("0".repeat(64).as_str()), Some("nonsense")] {
        let r = with_cookie(&d, "POST", &keys, &cookie, bad, Some(&mint));
        assert_eq!(r.status, 403, "{}", text(&r));
        assert_eq!(r.json()["code"], "csrf_failed");
    }
    // Another session's token is another session's.
    let p2 = person(&d, &f, "admin", "bea@example.test", true);
    let r2 = api(
        &d,
        "POST",
        &format!("/console/session/{}", f.id),
        None,
        Some(&json!({"login": p2.login, "password": PASSWORD, "code": p2.code(&d)})),
    );
    let other_csrf = r2.json()["csrf_token"].as_str().unwrap().to_owned();
    assert_ne!(other_csrf, csrf);
    let r = with_cookie(&d, "POST", &keys, &cookie, Some(&other_csrf), Some(&mint));
    assert_eq!(r.json()["code"], "csrf_failed");
    // Each refusal is in the firm's audit log, as a denial by the CSRF rule.
    let log = api(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?action=keys:create", f.id),
        Some(&f.token),
        None,
    )
    .json();
    let denials = log["entries"].as_array().unwrap();
    assert_eq!(denials.len(), 4, "{log}");
    for e in denials {
        assert_eq!(e["outcome"], "denied");
        assert_eq!(e["rule"], "csrf");
        assert_eq!(e["actor"], format!("user:{}", p.id));
    }
    // Nothing was minted by the refused requests.
    let listed = with_cookie(&d, "GET", &keys, &cookie, None, None).json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "{listed}");
    // With the token it works, as the same user.
    let r = with_cookie(&d, "POST", &keys, &cookie, Some(&csrf), Some(&mint));
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json()["created_by"], format!("user:{}", p.id));
    // An API key in a cookie is not a credential.
    let r = with_cookie(
        &d,
        "GET",
        &keys,
        &format!("__Host-strongroom-session={}", f.token),
        None,
        None,
    );
    assert_eq!(r.status, 401);

    // Sign-out needs the token too, then revokes the session and clears the cookie.
    let r = with_cookie(&d, "DELETE", &session, &cookie, None, None);
    assert_eq!(r.json()["code"], "csrf_failed");
    let r = with_cookie(&d, "DELETE", &session, &cookie, Some(&csrf), None);
    assert_eq!(r.status, 204, "{}", text(&r));
    let cleared = r.header("set-cookie").unwrap();
    assert!(cleared.starts_with("__Host-strongroom-session=;") && cleared.contains("Max-Age=0"));
    assert_eq!(
        with_cookie(&d, "GET", &keys, &cookie, None, None).status,
        401
    );
    assert_eq!(
        with_cookie(&d, "GET", &session, &cookie, None, None).status,
        401
    );
    // Neither the session token nor the CSRF token is ever logged.
    let (_, token) = cookie.split_once('=').unwrap();
    let logs = d.logs();
    assert!(
        !logs.contains(token) && !logs.contains(&csrf),
        "a token in the logs"
    );
}

/// Node.js, the test's npm packages and Debian's chromium: `make test`
/// provides them (and requires this test); elsewhere it is skipped.
fn browser_tools() -> Option<(String, PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let node = std::env::var("STRONGROOM_TEST_NODE").unwrap_or_else(|_| "node".to_owned());
    let chromium = std::env::var("STRONGROOM_TEST_CHROMIUM")
        .unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let have = dir.join("node_modules/playwright-core").exists()
        && dir.join("node_modules/axe-core").exists()
        && Path::new(&chromium).exists()
        && Command::new(&node)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if have {
        return Some((node, dir, chromium));
    }
    assert!(
        std::env::var_os("STRONGROOM_REQUIRE_CONSOLE").is_none(),
        "the console test needs node, tests/console/node_modules (npm ci) and chromium"
    );
    eprintln!(
        "skipped the browser test of the console: run `make test` to provide node and chromium"
    );
    None
}

/// The browser's verifier, under Node.js's WebCrypto, against the Merkle
/// and signed-note vectors the Rust side is tested with.
#[test]
fn the_browser_verifier_passes_the_merkle_and_signed_note_vectors() {
    let node = std::env::var("STRONGROOM_TEST_NODE").unwrap_or_else(|_| "node".to_owned());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/verify.test.mjs");
    let Ok(out) = Command::new(&node).arg(&script).output() else {
        assert!(
            std::env::var_os("STRONGROOM_REQUIRE_CONSOLE").is_none(),
            "no {node}"
        );
        eprintln!("skipped the browser verifier's vectors: no Node.js");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK "),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewrites one field of one audit entry in the firm's database, as an
/// intruder with the database key could (stock SQLCipher and the
/// break-glass key).
fn tamper(d: &Daemon, f: &Firm, seq: u64) {
    let py = stock_sqlcipher_python().expect("tampering needs the stock SQLCipher client");
    let export = ctl_json(&d.admin_socket, &["firm", "export-key", &f.id]);
    let connect = crate::firms::stock_connect(&firm_db(d, &f.id), &export);
    let script = format!(
        "import sqlcipher3\n\
         {connect}\
         n = c.execute(\"UPDATE audit_entries SET action = action || '.edited' WHERE seq = {seq}\").rowcount\n\
         c.commit()\n\
         assert n == 1, n\n"
    );
    let out = Command::new(&py).arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_console_end_to_end_in_chromium() {
    let Some((node, dir, chromium)) = browser_tools() else {
        return;
    };
    // The tampering step edits the firm's database with stock SQLCipher.
    if stock_sqlcipher_python().is_none() {
        return;
    }
    let d = unthrottled("");
    let f = create_firm(&d, "Console & Partners LLP");
    // Some history for the explorer: a key, a secret, a collection.
    let owner = |method: &str, path: &str, body: Value| {
        let r = api(&d, method, path, Some(&f.token), Some(&body));
        assert!(r.status < 300, "{path}: {}", text(&r));
        r.json()
    };
    owner(
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        json!({"name": "ledger sync", "role": "operator"}),
    );
    owner(
        "PUT",
        &format!("/api/v1/secrets/{}/smtp-password", f.id),
        json!({"value": "s3cret-smtp"}),
    );
    owner(
        "PUT",
        &format!("/api/v1/collections/{}/clients", f.id),
        json!({"fields": {
            "name": {"type": "string", "required": true},
            "ssn": {"type": "string", "sensitive": true},
        }}),
    );
    owner(
        "POST",
        &format!("/api/v1/records/{}/clients", f.id),
        json!({"name": "Ada Lovelace", "ssn": "078-05-1120"}),
    );
    // An owner who may not read sensitive fields in clear: the console masks
    // them as the API does.
    let invited = owner(
        "POST",
        &format!("/api/v1/users/{}", f.id),
        json!({"login": "olivia@example.test", "display_name": "Olivia Owen", "role": "owner",
               "deny": ["records:read_sensitive"]}),
    );
    let token = invited["enrolment_token"].as_str().unwrap().to_owned();
    // An admin who enrolled without TOTP while the firm allowed it; the
    // default policy requires it of admins again.
    set_mfa_policy(&d, &f, "optional");
    let mo = person(&d, &f, "admin", "mo@example.test", false);
    set_mfa_policy(&d, &f, "required_for_admins");
    // The README's screenshots are refreshed on request only, so a test
    // run leaves the tree as it was.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = if std::env::var_os("STRONGROOM_UPDATE_SCREENSHOTS").is_some() {
        root.join("docs/console")
    } else {
        root.join("target/console-shots")
    };
    std::fs::create_dir_all(&shots).unwrap();

    let mut child = Command::new(&node)
        .arg(dir.join("e2e.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_BASE", format!("https://{}", d.addr))
        .env("CONSOLE_FIRM", &f.id)
        .env("CONSOLE_TOKEN", &token)
        .env("CONSOLE_LOGIN", "olivia@example.test")
        .env("CONSOLE_PASSWORD", "Quartz lantern orbit 91")
        .env("CONSOLE_MFA_LOGIN", &mo.login)
        .env("CONSOLE_MFA_PASSWORD", PASSWORD)
        .env("CONSOLE_CHROMIUM", &chromium)
        .env("CONSOLE_SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut to_node = child.stdin.take().unwrap();
    let from_node = BufReader::new(child.stdout.take().unwrap());
    let mut last_step = 0;
    let mut transcript = Vec::new();
    let mut done = false;
    for line in from_node.lines() {
        let line = line.unwrap();
        eprintln!("e2e: {line}");
        transcript.push(line.clone());
        let Some(ask) = line.strip_prefix("ASK ") else {
            done |= line == "DONE";
            continue;
        };
        let answer = match ask.split_once(' ').unwrap_or((ask, "")) {
            // A fresh TOTP code on the daemon's clock (each code works once).
            ("totp", secret) => {
                if d.now_unix() / 30 <= last_step {
                    d.advance_clock(30);
                }
                last_step = d.now_unix() / 30;
                pyotp_code(secret, d.now_unix())
            }
            ("tamper", _) => {
                // An entry from before the console's session.
                let seq = 2;
                tamper(&d, &f, seq);
                seq.to_string()
            }
            other => panic!("unknown question {other:?}"),
        };
        writeln!(to_node, "{answer}").unwrap();
        to_node.flush().unwrap();
    }
    let status = child.wait().unwrap();
    assert!(
        status.success() && done,
        "the browser test failed:\n{}\n{}",
        transcript.join("\n"),
        d.logs()
    );
    // The browser's verification agreed with the server's.
    let v = api(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/verify", f.id),
        Some(&f.token),
        None,
    )
    .json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 2);
}
