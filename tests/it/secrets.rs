//! The write-only secret vault through the real daemon.

use serde_json::{Value, json};

use crate::audit::{call, mint};
use crate::client::Response;
use crate::firms::create_firm;
use crate::harness::{Daemon, ctl_json};

const VALUE: &str = "hunter2-Vault-Value-7f3a9c";
const OTHER: &str = "correct-horse-battery-staple-51e0";

#[test]
fn a_secret_goes_in_and_is_checked_but_never_comes_out() {
    let d = Daemon::start();
    let f = create_firm(&d, "Vault & Partners");
    let base = format!("/api/v1/secrets/{}", f.id);
    let mut seen: Vec<Response> = Vec::new();
    let mut go = |method: &str, path: &str, token: &str, body: Option<Value>| {
        let r = call(&d, method, path, token, body.as_ref());
        seen.push(Response {
            status: r.status,
            headers: r.headers.clone(),
            body: r.body.clone(),
        });
        r
    };

    let r = go(
        "PUT",
        &format!("{base}/db-password"),
        &f.token,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v1 = r.json();
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["rotated_at"], Value::Null);
    assert!(
        v1["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    assert!(v1.get("value").is_none());

    // Rotation: a new version, a new fingerprint; the same value again gives
    // the first fingerprint back (it identifies values, keyed).
    let r = go(
        "PUT",
        &format!("{base}/db-password"),
        &f.token,
        Some(json!({"value": OTHER})),
    );
    assert_eq!(r.status, 200);
    let v2 = r.json();
    assert_eq!(v2["version"], 2);
    assert!(v2["rotated_at"].is_string());
    assert_ne!(v2["fingerprint"], v1["fingerprint"]);
    let r = go(
        "PUT",
        &format!("{base}/db-password"),
        &f.token,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(r.json()["version"], 3);
    assert_eq!(r.json()["fingerprint"], v1["fingerprint"]);

    let meta = go("GET", &format!("{base}/db-password"), &f.token, None);
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["version"], 3);
    let list = go("GET", &base, &f.token, None);
    assert_eq!(list.json()["secrets"][0]["name"], "db-password");

    // Verification answers yes or no.
    let yes = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &f.token,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(yes.json(), json!({"match": true}));
    let no = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &f.token,
        Some(json!({"value": OTHER})),
    );
    assert_eq!(no.json(), json!({"match": false}));

    // Roles: a viewer sees metadata only; an operator may verify.
    let (_, viewer) = mint(&d, &f, "viewer");
    let (_, operator) = mint(&d, &f, "operator");
    assert_eq!(
        go("GET", &format!("{base}/db-password"), &viewer, None).status,
        200
    );
    let r = go(
        "PUT",
        &format!("{base}/db-password"),
        &viewer,
        Some(json!({"value": "x"})),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("forbidden_role"))
    );
    let r = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &viewer,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(r.status, 403);
    let r = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &operator,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(r.json(), json!({"match": true}));

    // Bad input: clear errors, nothing changed.
    for (path, body, status, code) in [
        (
            format!("{base}/.hidden"),
            json!({"value": "x"}),
            422,
            "invalid_field",
        ),
        (
            format!("{base}/empty"),
            json!({"value": ""}),
            422,
            "invalid_field",
        ),
        (
            format!("{base}/extra"),
            json!({"value": "x", "show": true}),
            400,
            "invalid_body",
        ),
    ] {
        let r = go("PUT", &path, &f.token, Some(body));
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (status, json!(code)),
            "{path}"
        );
    }
    assert_eq!(
        go("GET", &base, &f.token, None).json()["secrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Missing at use time: a hard 404, never a fallback.
    let r = go(
        "POST",
        &format!("{base}/nope/verify"),
        &f.token,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("secret_not_found"))
    );

    // Rate limit: ten attempts a minute per key and secret, then 429.
    let (_, guesser) = mint(&d, &f, "operator");
    for i in 0..10 {
        let r = go(
            "POST",
            &format!("{base}/db-password/verify"),
            &guesser,
            Some(json!({"value": format!("guess{i}")})),
        );
        assert_eq!(r.status, 200, "attempt {i}");
    }
    let r = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &guesser,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (429, json!("rate_limited"))
    );
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Another key is not slowed down by the guesser.
    let r = go(
        "POST",
        &format!("{base}/db-password/verify"),
        &operator,
        Some(json!({"value": VALUE})),
    );
    assert_eq!(r.status, 200);

    // A frozen firm refuses writes.
    ctl_json(&d.admin_socket, &["firm", "freeze", &f.id]);
    let r = go(
        "PUT",
        &format!("{base}/db-password"),
        &f.token,
        Some(json!({"value": "z"})),
    );
    assert_eq!(r.status, 423);
    ctl_json(&d.admin_socket, &["firm", "unfreeze", &f.id]);

    // Destroy.
    assert_eq!(
        go("DELETE", &format!("{base}/db-password"), &f.token, None).status,
        204
    );
    let r = go("GET", &format!("{base}/db-password"), &f.token, None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("secret_not_found"))
    );
    assert_eq!(
        go("DELETE", &format!("{base}/db-password"), &f.token, None).status,
        404
    );

    // The audit log recorded the story without the value.
    let log = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", f.id),
        &f.token,
        None,
    )
    .json();
    let entries = log["entries"].as_array().unwrap();
    let count = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("secrets.write", "success"), 3);
    assert_eq!(count("secrets.delete", "success"), 1);
    assert_eq!(count("secrets.delete", "failure"), 1);
    assert_eq!(
        count("secrets.verify", "denied"),
        1,
        "one rate-limit refusal a minute"
    );
    assert!(count("secrets.verify", "success") >= 14);
    let matched: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "secrets.verify" && e["outcome"] == "success")
        .map(|e| &e["details"]["match"])
        .collect();
    assert!(matched.contains(&&json!(true)) && matched.contains(&&json!(false)));
    let export = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/export", f.id),
        &f.token,
        None,
    );

    // The value is in no response, no log line, no audit entry, and not in
    // clear in the database files.
    let logs = d.logs();
    let mut haystacks: Vec<(String, Vec<u8>)> = seen
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("response {i}"), r.body.clone()))
        .collect();
    haystacks.push(("daemon log".into(), logs.into_bytes()));
    haystacks.push(("audit entries".into(), log.to_string().into_bytes()));
    haystacks.push(("audit export".into(), export.body.clone()));
    for entry in std::fs::read_dir(d.state_dir.join("firms")).unwrap() {
        let p = entry.unwrap().path();
        haystacks.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    for secret in [VALUE, OTHER] {
        for (what, hay) in &haystacks {
            assert!(
                !hay.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {what}"
            );
        }
    }
}
