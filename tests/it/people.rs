//! People through the real daemon: invitation, enrolment with an
//! independent TOTP implementation (Python's pyotp), sign-in, sessions,
//! lockout, throttling, break-glass over the admin socket, and that no
//! credential leaks after it is issued.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::client::Response;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options, ctl_json};

pub const PASSWORD: &str = "Tr0ub4dor&3 staple-horse";

pub fn api(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let body = body.map(|b| b.to_string());
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    d.client()
        .request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

fn code_of(r: &Response) -> String {
    r.json()["code"].as_str().unwrap_or("").to_owned()
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The tests' Python, with pyotp (`make test` makes it; made here if missing).
pub fn test_python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("STRONGROOM_TEST_PY") {
            return p;
        }
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-py");
        let py = venv.join("bin/python");
        if !py.exists() {
            let ok = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .unwrap();
            assert!(ok.success(), "python3 -m venv failed");
        }
        let has = Command::new(&py)
            .args(["-c", "import pyotp"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        if !has.success() {
            let ok = Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "pyotp==2.9.0",
                ])
                .status()
                .unwrap();
            assert!(ok.success(), "pip install pyotp failed");
        }
        py.to_string_lossy().into_owned()
    })
    .clone()
}

/// The TOTP code for `secret` at Unix time `at`, by pyotp (RFC 6238).
pub fn pyotp_code(secret: &str, at: i64) -> String {
    let out = Command::new(test_python())
        .args([
            "-c",
            "import pyotp, sys; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
            secret,
            &at.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A person who enrolled, and what they hold.
pub struct Person {
    pub id: String,
    pub login: String,
    pub totp: Option<String>,
    #[allow(dead_code)]
    pub recovery: Vec<String>,
    last_step: Cell<i64>,
}

impl Person {
    /// A fresh TOTP code on the daemon's clock (moving it on a step if
    /// this step's code was already used: each code works once).
    pub fn code(&self, d: &Daemon) -> String {
        let secret = self.totp.as_deref().expect("no TOTP enrolled");
        if d.now_unix() / 30 <= self.last_step.get() {
            d.advance_clock(30);
        }
        self.last_step.set(d.now_unix() / 30);
        pyotp_code(secret, d.now_unix())
    }
}

pub fn set_mfa_policy(d: &Daemon, f: &Firm, policy: &str) {
    let r = api(
        d,
        "PATCH",
        &format!("/api/v1/firms/{}", f.id),
        Some(&f.token),
        Some(&json!({"mfa_policy": policy})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["profile"]["mfa_policy"], policy);
}

/// Invites `login` with `role`: (user id, enrolment token).
pub fn invite(d: &Daemon, f: &Firm, role: &str, login: &str) -> (String, String) {
    let r = api(
        d,
        "POST",
        &format!("/api/v1/users/{}", f.id),
        Some(&f.token),
        Some(&json!({"login": login, "display_name": login, "role": role})),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["user"]["state"], "invited");
    (
        v["user"]["id"].as_str().unwrap().to_owned(),
        v["enrolment_token"].as_str().unwrap().to_owned(),
    )
}

/// Invites and enrols a person (with TOTP through pyotp, or without).
pub fn person(d: &Daemon, f: &Firm, role: &str, login: &str, with_totp: bool) -> Person {
    let (id, token) = invite(d, f, role, login);
    let r = api(
        d,
        "POST",
        &format!("/api/v1/enrolment/{}", f.id),
        None,
        Some(&json!({"token": token, "password": PASSWORD})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let p = Person {
        id,
        login: login.to_owned(),
        totp: with_totp.then_some(secret),
        recovery: Vec::new(),
        last_step: Cell::new(0),
    };
    let body = if with_totp {
        json!({"token": token, "code": p.code(d)})
    } else {
        json!({"token": token})
    };
    let r = api(
        d,
        "POST",
        &format!("/api/v1/enrolment/{}/confirm", f.id),
        None,
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["user"]["state"], "active");
    Person {
        recovery: v["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
        ..p
    }
}

pub fn sign_in(d: &Daemon, f: &Firm, login: &str, password: &str, code: Option<&str>) -> Response {
    let mut body = json!({"login": login, "password": password});
    if let Some(c) = code {
        body["code"] = json!(c);
    }
    api(
        d,
        "POST",
        &format!("/api/v1/sessions/{}", f.id),
        None,
        Some(&body),
    )
}

/// A session token for `p` (password, and a fresh code if they have TOTP).
pub fn session(d: &Daemon, f: &Firm, p: &Person) -> String {
    let code = p.totp.as_ref().map(|_| p.code(d));
    let r = sign_in(d, f, &p.login, PASSWORD, code.as_deref());
    assert_eq!(r.status, 201, "{}", text(&r));
    let t = r.json()["token"].as_str().unwrap().to_owned();
    assert!(t.starts_with("srs_"));
    t
}

/// A daemon whose sign-in throttle does not get in the way of a test
/// (the throttle has its own test).
pub fn unthrottled(extra: &str) -> Daemon {
    let extra = extra.to_owned();
    Daemon::start_with(Options {
        config: Some(Box::new(move |_| {
            format!(
                "version = 1\n[limits]\nfailed_auth_per_minute = 1000000\n[people]\nsign_in_per_minute = 100000\n{extra}"
            )
        })),
        ..Options::default()
    })
}

fn get_firm(d: &Daemon, f: &Firm, token: &str) -> Response {
    api(
        d,
        "GET",
        &format!("/api/v1/firms/{}", f.id),
        Some(token),
        None,
    )
}

fn audit(d: &Daemon, f: &Firm) -> Vec<Value> {
    let r = api(
        d,
        "GET",
        &format!("/api/v1/audit/{}?limit=1000", f.id),
        Some(&f.token),
        None,
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()["entries"].as_array().unwrap().clone()
}

#[test]
fn invitation_to_first_sign_in_with_an_independent_totp_and_no_credential_leaks() {
    let d = unthrottled("");
    let f = create_firm(&d, "People Firm");
    let (uid, token) = invite(&d, &f, "admin", "Alice@Example.test");
    assert!(token.starts_with("sre_"));
    let mut issued: Vec<String> = vec![token.clone(), PASSWORD.to_owned()];
    let enrol = format!("/api/v1/enrolment/{}", f.id);

    // The password policy, before anything is stored.
    for (pw, why) in [
        ("short-pw", "at least 12"),
        ("1q2w3e4r5t6y", "commonly used"),
        ("my-alice-password-42", "login name"),
    ] {
        let r = api(
            &d,
            "POST",
            &enrol,
            None,
            Some(&json!({"token": token, "password": pw})),
        );
        assert_eq!(
            (r.status, code_of(&r).as_str()),
            (422, "weak_password"),
            "{pw}"
        );
        assert!(
            r.json()["detail"].as_str().unwrap().contains(why),
            "{}",
            text(&r)
        );
    }
    // A made-up token, or another firm's, is refused alike.
    let other = create_firm(&d, "Other Firm");
    let foreign = api(
        &d,
        "POST",
        &format!("/api/v1/enrolment/{}", other.id),
        None,
        Some(&json!({"token": token, "password": PASSWORD})),
    );
    assert_eq!(
        (foreign.status, code_of(&foreign).as_str()),
        (401, "invalid_enrolment_token")
    );

    let r = api(
        &d,
        "POST",
        &enrol,
        None,
        Some(&json!({"token": token, "password": PASSWORD})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let t = r.json();
    let secret = t["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "160-bit secret in base32");
    let uri = t["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(&format!("secret={secret}")),
        "{uri}"
    );
    assert!(uri.contains("algorithm=SHA1&digits=6&period=30"));
    assert!(t["qr_svg"].as_str().unwrap().contains("<svg"));
    issued.push(secret.clone());

    // Not active until a code confirms the secret.
    let early = sign_in(&d, &f, "alice@example.test", PASSWORD, None);
    assert_eq!(
        (early.status, code_of(&early).as_str()),
        (401, "invalid_credentials")
    );
    let confirm = format!("/api/v1/enrolment/{}/confirm", f.id);
    let wrong = api(
        &d,
        "POST",
        &confirm,
        None,
        Some(&json!({"token": token, "code": "000000"})),
    );
    let wrong_ok = pyotp_code(&secret, d.now_unix()) == "000000";
    if !wrong_ok {
        assert_eq!(
            (wrong.status, code_of(&wrong).as_str()),
            (422, "invalid_code")
        );
    }
    // An admin must have MFA (the default policy): no code, no enrolment.
    let none = api(&d, "POST", &confirm, None, Some(&json!({"token": token})));
    assert_eq!(none.status, 422, "{}", text(&none));
    let alice = Person {
        id: uid.clone(),
        login: "alice@example.test".into(),
        totp: Some(secret.clone()),
        recovery: vec![],
        last_step: Cell::new(0),
    };
    let r = api(
        &d,
        "POST",
        &confirm,
        None,
        Some(&json!({"token": token, "code": alice.code(&d)})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["user"]["state"], "active");
    assert_eq!(v["user"]["mfa_enrolled"], true);
    let recovery: Vec<String> = v["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    issued.extend(recovery.iter().cloned());
    // The token worked once.
    let again = api(
        &d,
        "POST",
        &enrol,
        None,
        Some(&json!({"token": token, "password": PASSWORD})),
    );
    assert_eq!(
        (again.status, code_of(&again).as_str()),
        (401, "invalid_enrolment_token")
    );

    // The confirming code's step is used: the same code cannot sign in.
    let used = pyotp_code(&secret, d.now_unix());
    let replay = sign_in(&d, &f, "ALICE@example.test", PASSWORD, Some(&used));
    assert_eq!(
        (replay.status, code_of(&replay).as_str()),
        (401, "invalid_credentials")
    );

    // A fresh pyotp code signs in (the login in any case), once.
    let code = alice.code(&d);
    let r = sign_in(&d, &f, "ALICE@Example.TEST", PASSWORD, Some(&code));
    assert_eq!(r.status, 201, "{}", text(&r));
    let s = r.json();
    let tok = s["token"].as_str().unwrap().to_owned();
    assert!(tok.starts_with("srs_"));
    assert_eq!(s["mfa_enrolment_required"], false);
    issued.push(tok.clone());
    let r = sign_in(&d, &f, "alice@example.test", PASSWORD, Some(&code));
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (401, "invalid_credentials"),
        "the same code replayed"
    );

    // The session works like a key, under the user's own role.
    assert_eq!(get_firm(&d, &f, &tok).status, 200);
    let put = api(
        &d,
        "PUT",
        &format!("/api/v1/secrets/{}/door", f.id),
        Some(&tok),
        Some(&json!({"value": "s3cret-door"})),
    );
    assert_eq!(put.status, 201, "{}", text(&put));
    issued.push("s3cret-door".into());
    let me = api(&d, "GET", &format!("/api/v1/me/{}", f.id), Some(&tok), None);
    assert_eq!(me.json()["id"], uid);
    assert_eq!(me.json()["recovery_codes_left"], 10);

    // A recovery code works once in place of a code.
    let r = sign_in(
        &d,
        &f,
        "alice@example.test",
        PASSWORD,
        Some(&recovery[0].to_uppercase()),
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    issued.push(r.json()["token"].as_str().unwrap().to_owned());
    let r = sign_in(&d, &f, "alice@example.test", PASSWORD, Some(&recovery[0]));
    assert_eq!(r.status, 401);
    let me = api(&d, "GET", &format!("/api/v1/me/{}", f.id), Some(&tok), None);
    assert_eq!(me.json()["recovery_codes_left"], 9);

    // The audit log names the person and the session.
    let entries = audit(&d, &f);
    let write = entries
        .iter()
        .find(|e| e["action"] == "secrets.write")
        .unwrap();
    assert_eq!(write["actor"], format!("user:{uid}"));
    assert!(
        write["details"]["session"]
            .as_str()
            .unwrap()
            .starts_with("ses_")
    );
    for action in [
        "users.invite",
        "users.enrol_start",
        "users.enrol",
        "sessions.create",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == "success"),
            "{action}"
        );
    }
    let factors: Vec<&str> = entries
        .iter()
        .filter(|e| e["action"] == "sessions.create" && e["outcome"] == "success")
        .map(|e| e["details"]["factor"].as_str().unwrap())
        .collect();
    assert_eq!(factors, ["totp", "recovery_code"]);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "sessions.create" && e["outcome"] == "denied")
    );
    // ...and so does the request's log line.
    let logs = d.logs();
    assert!(
        logs.lines().any(|l| l.contains("user:usr_")
            && l.contains("ses_")
            && l.contains("/api/v1/secrets/")),
        "no request line names the user and session"
    );

    // No credential appears anywhere after it was issued: responses,
    // the log, audit payloads.
    let mut seen = String::new();
    for path in [
        format!("/api/v1/users/{}", f.id),
        format!("/api/v1/users/{}/{uid}", f.id),
        format!("/api/v1/users/{}/{uid}/sessions", f.id),
        format!("/api/v1/audit/{}?limit=1000", f.id),
        format!("/api/v1/audit/{}/export", f.id),
    ] {
        let r = api(&d, "GET", &path, Some(&f.token), None);
        assert_eq!(r.status, 200, "{path}");
        seen.push_str(&text(&r));
    }
    for path in [
        format!("/api/v1/me/{}", f.id),
        format!("/api/v1/sessions/{}", f.id),
    ] {
        seen.push_str(&text(&api(&d, "GET", &path, Some(&tok), None)));
    }
    seen.push_str(&d.logs());
    for secret in &issued {
        // Tokens also must not show their secret part alone.
        let needle = secret.rsplit('_').next().unwrap();
        assert!(
            !seen.contains(needle),
            "a credential leaked: {}…",
            &needle[..4]
        );
        assert!(
            !seen.to_lowercase().contains(&needle.to_lowercase()),
            "a credential leaked (any case)"
        );
    }
}

#[test]
fn lockout_after_eight_failures_doubles_expires_and_an_admin_unlocks() {
    let d = unthrottled("");
    let f = create_firm(&d, "Lockout Firm");
    set_mfa_policy(&d, &f, "optional");
    let bob = person(&d, &f, "viewer", "bob@example.test", false);
    let wrong = |n: usize| {
        for _ in 0..n {
            let r = sign_in(&d, &f, &bob.login, "not the password at all", None);
            assert_eq!(
                (r.status, code_of(&r).as_str()),
                (401, "invalid_credentials")
            );
        }
    };
    // Seven wrong, then right: the count starts over.
    wrong(7);
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);
    wrong(7);
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);
    // Eight in a row lock the account: the right password now answers
    // exactly like a wrong one, and like a name that does not exist.
    wrong(8);
    let locked = sign_in(&d, &f, &bob.login, PASSWORD, None);
    let unknown = sign_in(&d, &f, "nobody@example.test", PASSWORD, None);
    let bad = sign_in(&d, &f, &bob.login, "not the password at all", None);
    let strip = |r: &Response| {
        let mut v = r.json();
        v.as_object_mut().unwrap().remove("request_id");
        (r.status, v)
    };
    assert_eq!(strip(&locked), strip(&unknown));
    assert_eq!(strip(&locked), strip(&bad));
    assert_eq!(locked.status, 401);
    let user = api(
        &d,
        "GET",
        &format!("/api/v1/users/{}/{}", f.id, bob.id),
        Some(&f.token),
        None,
    )
    .json();
    assert_eq!(user["state"], "locked");
    // Fifteen minutes later it opens again.
    d.advance_clock(14 * 60);
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 401);
    d.advance_clock(61);
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);
    // A success resets the doubling; lock twice in a row to see it double.
    wrong(8);
    d.advance_clock(15 * 60 + 1);
    wrong(8);
    d.advance_clock(16 * 60);
    assert_eq!(
        sign_in(&d, &f, &bob.login, PASSWORD, None).status,
        401,
        "the second lockout lasts 30 minutes"
    );
    d.advance_clock(15 * 60);
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);
    // An admin unlocks at once.
    wrong(8);
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}/{}/unlock", f.id, bob.id),
        Some(&f.token),
        None,
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "active");
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);
    // The operator can too, over the admin socket (break-glass).
    wrong(8);
    let v = ctl_json(
        &d.admin_socket,
        &["user", "unlock", "--firm", &f.id, &bob.id],
    );
    assert_eq!(v["user"]["state"], "active");
    assert_eq!(sign_in(&d, &f, &bob.login, PASSWORD, None).status, 201);

    // Re-entering a password while locked is refused, the right one too
    // (a stolen session cannot keep guessing through the lockout).
    let s = session(&d, &f, &bob);
    wrong(8);
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/password", f.id),
        Some(&s),
        Some(&json!({"current_password": PASSWORD, "new_password": "another fine passphrase"})),
    );
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (401, "invalid_credentials")
    );
    ctl_json(
        &d.admin_socket,
        &["user", "unlock", "--firm", &f.id, &bob.id],
    );

    let entries = audit(&d, &f);
    let locks = entries
        .iter()
        .filter(|e| e["action"] == "users.locked")
        .count();
    assert_eq!(locks, 6);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "users.unlock"
                && e["actor"].as_str().unwrap().starts_with("uid:"))
    );
    let system = ctl_json(
        &d.admin_socket,
        &["audit", "system", "list", "--limit", "1000"],
    );
    assert!(
        system["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.unlock")
    );
    // Failures are audited, coalesced per source: far fewer entries than failures.
    let denied = entries
        .iter()
        .filter(|e| e["action"] == "sessions.create" && e["outcome"] == "denied")
        .count();
    assert!(
        (1..10).contains(&denied),
        "{denied} denied sign-in entries for 50 failures"
    );
}

#[test]
fn sign_in_is_throttled_per_source_address() {
    // Three a minute: the bucket refills one attempt per 20 s of real time,
    // so a slow machine cannot refill it between the attempts below.
    let d = Daemon::start_with(Options {
        config: Some(Box::new(|_| {
            "version = 1\n[people]\nsign_in_per_minute = 3\n".to_owned()
        })),
        ..Options::default()
    });
    let f = create_firm(&d, "Throttle Firm");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(sign_in(
            &d,
            &f,
            "x@example.test",
            "wrong password here",
            None,
        ));
    }
    assert!(statuses[..3].iter().all(|r| r.status == 401));
    let r = &statuses[3];
    assert_eq!((r.status, code_of(r).as_str()), (429, "rate_limited"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    // Another address is not slowed by this one.
    let c = d.client();
    let mut conn = c
        .connect_from(std::net::Ipv4Addr::new(127, 0, 0, 9))
        .unwrap();
    let body = json!({"login": "x@example.test", "password": "wrong password here"}).to_string();
    let other = conn
        .request(
            "POST",
            &format!("/api/v1/sessions/{}", f.id),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(other.status, 401);
    // Time refills the bucket.
    d.advance_clock(wait);
    assert_eq!(
        sign_in(&d, &f, "x@example.test", "wrong password here", None).status,
        401
    );
}

#[test]
fn sessions_end_when_idle_at_their_lifetime_and_on_revocation() {
    let d = unthrottled("session_lifetime = \"1h\"\nsession_idle_timeout = \"15m\"\n");
    let f = create_firm(&d, "Session Firm");
    set_mfa_policy(&d, &f, "optional");
    let carol = person(&d, &f, "operator", "carol@example.test", false);

    // Idle: 14 minutes apart is fine, 15 is not.
    let s = session(&d, &f, &carol);
    for _ in 0..3 {
        d.advance_clock(14 * 60);
        assert_eq!(get_firm(&d, &f, &s).status, 200);
    }
    d.advance_clock(15 * 60);
    let r = get_firm(&d, &f, &s);
    assert_eq!((r.status, code_of(&r).as_str()), (401, "unauthenticated"));

    // Lifetime: kept busy, it still ends after an hour; refresh does not extend it.
    let s = session(&d, &f, &carol);
    d.advance_clock(10 * 60);
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/sessions/{}/refresh", f.id),
        Some(&s),
        None,
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let s2 = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(get_firm(&d, &f, &s).status, 401, "the refreshed-out token");
    for _ in 0..4 {
        d.advance_clock(10 * 60);
        assert_eq!(get_firm(&d, &f, &s2).status, 200);
    }
    d.advance_clock(10 * 60);
    assert_eq!(
        get_firm(&d, &f, &s2).status,
        401,
        "past the absolute lifetime"
    );

    // Revocation takes effect on the very next request.
    let a = session(&d, &f, &carol);
    let b = session(&d, &f, &carol);
    let list = api(
        &d,
        "GET",
        &format!("/api/v1/sessions/{}", f.id),
        Some(&a),
        None,
    )
    .json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["current"] == true)
            .count(),
        1
    );
    let r = api(
        &d,
        "DELETE",
        &format!("/api/v1/sessions/{}/current", f.id),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(get_firm(&d, &f, &a).status, 401);
    assert_eq!(get_firm(&d, &f, &b).status, 200);
    let r = api(
        &d,
        "DELETE",
        &format!("/api/v1/users/{}/{}/sessions", f.id, carol.id),
        Some(&f.token),
        None,
    );
    assert!(r.json()["revoked"].as_u64().unwrap() >= 1);
    assert_eq!(get_firm(&d, &f, &b).status, 401);

    // A password change keeps this session and ends the others.
    let a = session(&d, &f, &carol);
    let b = session(&d, &f, &carol);
    let new_pw = "a-brand-new passphrase 7";
    let bad = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/password", f.id),
        Some(&a),
        Some(&json!({"current_password": "wrong one entirely", "new_password": new_pw})),
    );
    assert_eq!(
        (bad.status, code_of(&bad).as_str()),
        (401, "invalid_credentials")
    );
    let weak = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/password", f.id),
        Some(&a),
        Some(&json!({"current_password": PASSWORD, "new_password": "password1234"})),
    );
    assert_eq!(
        (weak.status, code_of(&weak).as_str()),
        (422, "weak_password")
    );
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/password", f.id),
        Some(&a),
        Some(&json!({"current_password": PASSWORD, "new_password": new_pw})),
    );
    assert_eq!(r.status, 204, "{}", text(&r));
    assert_eq!(get_firm(&d, &f, &a).status, 200);
    assert_eq!(get_firm(&d, &f, &b).status, 401);
    assert_eq!(sign_in(&d, &f, &carol.login, PASSWORD, None).status, 401);
    let r = sign_in(&d, &f, &carol.login, new_pw, None);
    assert_eq!(r.status, 201);
    let c = r.json()["token"].as_str().unwrap().to_owned();

    // A role change ends every session; so does disabling.
    let r = api(
        &d,
        "PATCH",
        &format!("/api/v1/users/{}/{}", f.id, carol.id),
        Some(&f.token),
        Some(&json!({"role": "viewer"})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(get_firm(&d, &f, &a).status, 401);
    assert_eq!(get_firm(&d, &f, &c).status, 401);
    let c = sign_in(&d, &f, &carol.login, new_pw, None).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = api(
        &d,
        "PUT",
        &format!("/api/v1/secrets/{}/x", f.id),
        Some(&c),
        Some(&json!({"value": "v"})),
    );
    assert_eq!(
        (put.status, code_of(&put).as_str()),
        (403, "forbidden_role"),
        "now a viewer"
    );
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}/{}/disable", f.id, carol.id),
        Some(&f.token),
        None,
    );
    assert_eq!(r.json()["state"], "disabled");
    assert_eq!(get_firm(&d, &f, &c).status, 401);
    assert_eq!(sign_in(&d, &f, &carol.login, new_pw, None).status, 401);
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}/{}/enable", f.id, carol.id),
        Some(&f.token),
        None,
    );
    assert_eq!(r.json()["state"], "active");
    assert_eq!(sign_in(&d, &f, &carol.login, new_pw, None).status, 201);
    // Deleting removes the user and every session.
    let c = sign_in(&d, &f, &carol.login, new_pw, None).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api(
            &d,
            "DELETE",
            &format!("/api/v1/users/{}/{}", f.id, carol.id),
            Some(&f.token),
            None
        )
        .status,
        204
    );
    assert_eq!(get_firm(&d, &f, &c).status, 401);
    let r = api(
        &d,
        "GET",
        &format!("/api/v1/users/{}/{}", f.id, carol.id),
        Some(&f.token),
        None,
    );
    assert_eq!((r.status, code_of(&r).as_str()), (404, "user_not_found"));
}

#[test]
fn mfa_policy_admins_enrol_and_a_reset_leaves_only_enrolment() {
    let d = unthrottled("");
    let f = create_firm(&d, "MFA Firm");
    // Default policy: viewers may go without; admins may not.
    let vic = person(&d, &f, "viewer", "vic@example.test", false);
    let v = session(&d, &f, &vic);
    assert_eq!(get_firm(&d, &f, &v).status, 200);
    let ann = person(&d, &f, "admin", "ann@example.test", true);
    let a = session(&d, &f, &ann);
    assert_eq!(get_firm(&d, &f, &a).status, 200);
    let missing = sign_in(&d, &f, &ann.login, PASSWORD, None);
    assert_eq!(
        missing.status, 401,
        "a user with TOTP always needs the code"
    );

    // Lost device: the admin socket resets her second factor.
    let out = ctl_json(
        &d.admin_socket,
        &["user", "reset-mfa", "--firm", &f.id, &ann.id],
    );
    assert_eq!(out["user"]["mfa_enrolled"], false);
    assert_eq!(get_firm(&d, &f, &a).status, 401, "reset ends her sessions");
    let r = sign_in(&d, &f, &ann.login, PASSWORD, None);
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json()["mfa_enrolment_required"], true);
    let e = r.json()["token"].as_str().unwrap().to_owned();
    let r = get_firm(&d, &f, &e);
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (403, "mfa_enrolment_required")
    );
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/totp", f.id),
        Some(&e),
        None,
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/totp/confirm", f.id),
        Some(&e),
        Some(&json!({"code": "12345"})),
    );
    assert_eq!(r.status, 422);
    d.advance_clock(30);
    let code = pyotp_code(&secret, d.now_unix());
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/totp/confirm", f.id),
        Some(&e),
        Some(&json!({"code": code})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["recovery_codes"].as_array().unwrap().len(), 10);
    assert_eq!(
        get_firm(&d, &f, &e).status,
        200,
        "the session enrolled, so it may act"
    );
    // Replacing TOTP later needs the password; recovery codes too.
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/totp", f.id),
        Some(&e),
        None,
    );
    assert_eq!(r.status, 422, "{}", text(&r));
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/me/{}/recovery-codes", f.id),
        Some(&e),
        Some(&json!({"current_password": PASSWORD})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));

    // Policy `required`: the viewer without TOTP may now only enrol, in the
    // session already open too.
    set_mfa_policy(&d, &f, "required");
    let r = get_firm(&d, &f, &v);
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (403, "mfa_enrolment_required")
    );
    let r = sign_in(&d, &f, &vic.login, PASSWORD, None);
    assert_eq!(r.json()["mfa_enrolment_required"], true);
    let t = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(get_firm(&d, &f, &t).status, 403);
    assert_eq!(
        api(&d, "GET", &format!("/api/v1/me/{}", f.id), Some(&t), None).status,
        200
    );

    // Nobody gives more than they hold: an admin's session cannot invite an owner.
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}", f.id),
        Some(&e),
        Some(&json!({"login": "o@example.test", "display_name": "O", "role": "owner"})),
    );
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (403, "forbidden_escalation")
    );
    // A key has no account of its own.
    let r = api(
        &d,
        "GET",
        &format!("/api/v1/me/{}", f.id),
        Some(&f.token),
        None,
    );
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (403, "forbidden_credential")
    );
    // Logins are unique whatever their case.
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}", f.id),
        Some(&f.token),
        Some(&json!({"login": "VIC@example.test", "display_name": "V2", "role": "viewer"})),
    );
    assert_eq!((r.status, code_of(&r).as_str()), (409, "login_taken"));
    let users = ctl_json(&d.admin_socket, &["user", "list", "--firm", &f.id]);
    assert_eq!(users["users"].as_array().unwrap().len(), 2);

    // An invitation expires (72 h by default); a new one replaces it.
    let (late, old_token) = invite(&d, &f, "viewer", "late@example.test");
    d.advance_clock(72 * 3600 + 1);
    let enrol = format!("/api/v1/enrolment/{}", f.id);
    let r = api(
        &d,
        "POST",
        &enrol,
        None,
        Some(&json!({"token": old_token, "password": PASSWORD})),
    );
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (401, "invalid_enrolment_token")
    );
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/users/{}/{late}/invitation", f.id),
        Some(&f.token),
        None,
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    let fresh = r.json()["enrolment_token"].as_str().unwrap().to_owned();
    let r = api(
        &d,
        "POST",
        &enrol,
        None,
        Some(&json!({"token": old_token, "password": PASSWORD})),
    );
    assert_eq!(r.status, 401, "the replaced token");
    let r = api(
        &d,
        "POST",
        &enrol,
        None,
        Some(&json!({"token": fresh, "password": PASSWORD})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));

    // A frozen firm takes no sign-ins (they write); sessions still read.
    let s = session(&d, &f, &vic_after_policy(&d, &f, &vic));
    let out = crate::harness::ctl(&d.admin_socket, &["firm", "freeze", &f.id]);
    assert!(out.status.success());
    let r = sign_in(&d, &f, &vic.login, PASSWORD, None);
    assert_eq!((r.status, code_of(&r).as_str()), (423, "firm_frozen"));
    assert_eq!(
        api(&d, "GET", &format!("/api/v1/me/{}", f.id), Some(&s), None).status,
        200
    );
}

/// Vic after the firm required MFA: enrolled in TOTP so a full session works.
fn vic_after_policy(d: &Daemon, f: &Firm, vic: &Person) -> Person {
    let r = sign_in(d, f, &vic.login, PASSWORD, None);
    let t = r.json()["token"].as_str().unwrap().to_owned();
    let r = api(
        d,
        "POST",
        &format!("/api/v1/me/{}/totp", f.id),
        Some(&t),
        None,
    );
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let p = Person {
        id: vic.id.clone(),
        login: vic.login.clone(),
        totp: Some(secret),
        recovery: Vec::new(),
        last_step: Cell::new(0),
    };
    let r = api(
        d,
        "POST",
        &format!("/api/v1/me/{}/totp/confirm", f.id),
        Some(&t),
        Some(&json!({"code": p.code(d)})),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    p
}

#[test]
fn raising_the_iteration_count_rehashes_at_the_next_sign_in() {
    let cfg = |n: u32| Options {
        config: Some(Box::new(move |_| {
            format!(
                "version = 1\n[people]\nsign_in_per_minute = 100000\npassword_iterations = {n}\n"
            )
        })),
        ..Options::default()
    };
    let d = Daemon::start_with(cfg(600_000));
    let f = create_firm(&d, "Rehash Firm");
    set_mfa_policy(&d, &f, "optional");
    let dee = person(&d, &f, "viewer", "dee@example.test", false);
    let rehashed = |d: &Daemon| -> Vec<Value> {
        audit(d, &f)
            .into_iter()
            .filter(|e| e["action"] == "sessions.create" && e["outcome"] == "success")
            .map(|e| e["details"]["password_rehashed"].clone())
            .collect()
    };
    session(&d, &f, &dee);
    assert_eq!(rehashed(&d), [json!(false)]);
    // Below the floor is refused at start.
    let tmp = tempfile::tempdir().unwrap();
    let bad = Daemon::expect_startup_failure(tmp.path(), cfg(100_000));
    assert_eq!(bad.0, Some(78));
    assert!(bad.1.contains("password_iterations"), "{}", bad.1);
    let d = d.restart(cfg(650_000));
    session(&d, &f, &dee);
    session(&d, &f, &dee);
    assert_eq!(rehashed(&d), [json!(false), json!(true), json!(false)]);
}
