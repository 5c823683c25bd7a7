//! The API document (`GET /api/v1/openapi.json`) against the live daemon:
//! it names exactly the routes served, and schemathesis, driving the daemon
//! from it with every check, finds no failure.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::firms::create_firm;
use crate::harness::{Daemon, Options};
use crate::people::{PASSWORD, api, invite, set_mfa_policy};

/// A value of the right shape for each path parameter.
fn sample(param: &str, firm: &str) -> String {
    match param {
        "firm_id" => firm.to_owned(),
        "key_id" => "key_0000000000000000".into(),
        "user_id" => "usr_0000000000000000".into(),
        "session_id" => "ses_0000000000000000".into(),
        "record_id" => "rec_000000000000000000000000".into(),
        "collection" => "nothing_here".into(),
        "name" => "nothing-here".into(),
        "endpoint_id" => "whk_0000000000000000".into(),
        "message_id" => "msg_000000000000000000000000".into(),
        other => panic!("no sample for path parameter {other}"),
    }
}

#[test]
fn the_document_names_exactly_the_routes_the_daemon_serves() {
    let d = Daemon::start();
    let f = create_firm(&d, "Document Firm");
    let r = api(&d, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Every documented operation reaches a handler: the router's own
    // answers for an unknown path (404 `not_found`) or method (405) never
    // come back. Resource 404s carry their own codes.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(p) => sample(p, &f.id),
                    None => seg.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            documented.insert((method.clone(), path.clone()));
            let body = op.get("requestBody").map(|_| json!({}));
            let r = api(&d, &method, &concrete, Some(&f.token), body.as_ref());
            let code = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            assert!(
                !(r.status == 404 && code == "not_found") && r.status != 405,
                "{method} {path} is documented but not served: {} {code}",
                r.status
            );
            // Firm routes declare the bearer scheme; the rest declare none.
            let secured = op["security"] != json!([]);
            assert_eq!(
                secured,
                path.contains("{firm_id}") && !is_sign_in(&method, path)
            );
        }
    }

    // And nothing is served that the document leaves out: the daemon's own
    // route table is the document's, as the unit test shows; here a path
    // next to a documented one is the router's 404.
    assert!(documented.contains(&("GET".to_owned(), "/api/v1/keys/{firm_id}".to_owned())));
    let r = api(
        &d,
        "GET",
        &format!("/api/v1/keys/{}/x/y/z", f.id),
        Some(&f.token),
        None,
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("not_found"))
    );
    // A method the document does not list for a path: 405 with Allow.
    let r = api(
        &d,
        "PUT",
        &format!("/api/v1/keys/{}", f.id),
        Some(&f.token),
        Some(&json!({})),
    );
    assert_eq!(r.status, 405);
    let allow = r.header("allow").unwrap_or("").to_owned();
    for m in ["GET", "POST"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }
}

fn is_sign_in(method: &str, path: &str) -> bool {
    method == "POST"
        && [
            "/api/v1/sessions/{firm_id}",
            "/api/v1/enrolment/{firm_id}",
            "/api/v1/enrolment/{firm_id}/confirm",
        ]
        .contains(&path)
}

/// schemathesis (pinned), in the tests' Python environment; installed
/// there if missing.
fn schemathesis() -> PathBuf {
    let py = PathBuf::from(crate::people::test_python());
    let bin = py.with_file_name("schemathesis");
    let version = Command::new(&bin).arg("--version").output();
    if !version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("4.32.5")) {
        let ok = Command::new(py.with_file_name("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "schemathesis==4.32.5",
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install schemathesis failed");
    }
    bin
}

/// Runs schemathesis with every check; returns its report on failure.
fn run(
    d: &Daemon,
    firm: &str,
    token: &str,
    spare_key: &str,
    extra: &[&str],
) -> Result<String, String> {
    let url = format!("https://{}/api/v1/openapi.json", d.addr);
    let base = format!("https://{}", d.addr);
    let cert = d.state_dir.join("tls/cert.pem");
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let report = d.dir.path().join("schemathesis");
    let out = Command::new(schemathesis())
        .args(["--config-file"])
        .arg(&config)
        .args(["run", &url, "--url", &base, "--checks", "all", "--no-color"])
        .args(["--tls-verify", cert.to_str().unwrap()])
        // Deterministic: the same cases on every run (deeper runs: see README).
        .args([
            "--seed",
            "20261201",
            "--max-examples",
            "50",
            "--workers",
            "1",
        ])
        .args(["--generation-database", "none", "--report-dir"])
        .arg(&report)
        .args(extra)
        // Its caches go to the test's directory, not the checkout.
        .current_dir(d.dir.path())
        .env("STRONGROOM_FIRM", firm)
        .env("STRONGROOM_TOKEN", token)
        .env("STRONGROOM_SPARE_KEY", spare_key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn schemathesis_with_every_check_finds_nothing() {
    // Limits high enough that the run is never throttled into testing only
    // 429s (the limits have their own tests).
    let d = Daemon::start_with(Options {
        config: Some(Box::new(|_| {
            "version = 1\n[limits]\nunauthenticated_per_minute = 1000000\nfailed_auth_per_minute = 1000000\n[people]\nsign_in_per_minute = 100000\n".to_owned()
        })),
        ..Options::default()
    });
    let f = create_firm(&d, "Schemathesis Firm");
    let spare = api(
        &d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        Some(&f.token),
        Some(&json!({"name": "spare", "role": "viewer"})),
    );
    assert_eq!(spare.status, 201);
    let spare: Value = spare.json();
    let spare_key = spare["id"].as_str().unwrap();

    // Everything, with the owner's API key.
    let report = run(&d, &f.id, &f.token, spare_key, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("Tested: "), "{report}");

    // A person's own routes, with a session (an API key is refused there).
    // Signing out and refreshing end the session the run uses: left out.
    set_mfa_policy(&d, &f, "optional");
    let (_, token) = invite(&d, &f, "admin", "person@example.test");
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/enrolment/{}", f.id),
        None,
        Some(&json!({"token": token, "password": PASSWORD})),
    );
    assert_eq!(r.status, 200);
    let r = api(
        &d,
        "POST",
        &format!("/api/v1/enrolment/{}/confirm", f.id),
        None,
        Some(&json!({"token": token})),
    );
    assert_eq!(r.status, 200);
    let r = crate::people::sign_in(&d, &f, "person@example.test", PASSWORD, None);
    assert_eq!(r.status, 201);
    let session = r.json()["token"].as_str().unwrap().to_owned();
    let report = run(
        &d,
        &f.id,
        &session,
        spare_key,
        &[
            "--include-path-regex",
            "^/api/v1/(sessions|me)/",
            "--exclude-operation-id",
            "refreshSession",
            "--exclude-operation-id",
            "signOutEverywhere",
            "--exclude-operation-id",
            "signOut",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("Tested: "), "{report}");
}
