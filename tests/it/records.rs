//! Records through the real daemon: schemas, idempotent creates, ETags,
//! sensitive fields sealed and masked, PII flag / redact / reject.

use serde_json::{Value, json};

use crate::client::Response;
use crate::firms::{
    Firm, contains, create_firm, firm_db, read_all_db_files, stock_sqlcipher_python,
};
use crate::harness::{Daemon, ctl_json};

const SSN: &str = "219-09-9999";

pub fn req(
    d: &Daemon,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> Response {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    let body = body.map(|b| b.to_string());
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    headers.extend_from_slice(extra);
    d.client()
        .request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

pub fn collection(d: &Daemon, f: &Firm, name: &str, pii: &str) {
    let r = req(
        d,
        "PUT",
        &format!("/api/v1/collections/{}/{name}", f.id),
        &f.token,
        Some(&json!({
            "fields": {
                "name": {"type": "string", "indexed": true, "required": true, "subject": true},
                "ssn": {"type": "string", "sensitive": true},
                "notes": {"type": "string"},
                "visits": {"type": "integer"}
            },
            "pii": pii
        })),
        &[],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

fn mint(d: &Daemon, f: &Firm, role: &str) -> String {
    let r = req(
        d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        &f.token,
        Some(&json!({"name": role, "role": role})),
        &[],
    );
    r.json()["secret"].as_str().unwrap().to_owned()
}

#[test]
fn records_are_idempotent_versioned_and_keep_sensitive_fields_sealed() {
    let d = Daemon::start();
    let f = create_firm(&d, "Records LLP");
    collection(&d, &f, "clients", "flag");
    let base = format!("/api/v1/records/{}/clients", f.id);
    let body = json!({"name": "Ann Archer", "ssn": SSN, "visits": 1});

    // Idempotency: the same key and body give the same record; another body 409.
    let first = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&body),
        &[("Idempotency-Key", "create-ann-1")],
    );
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(first.header("etag"), Some("\"1\""));
    assert_eq!(
        first.json()["data"]["ssn"],
        "[MASKED]",
        "write responses never echo sensitive fields"
    );
    let again = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&body),
        &[("Idempotency-Key", "create-ann-1")],
    );
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&json!({"name": "Bob"})),
        &[("Idempotency-Key", "create-ann-1")],
    );
    assert_eq!(
        (other.status, other.json()["code"].clone()),
        (409, json!("idempotency_conflict"))
    );
    let list = req(&d, "GET", &base, &f.token, None, &[]).json();
    assert_eq!(
        list["records"].as_array().unwrap().len(),
        1,
        "no duplicate record"
    );

    // Reads: the owner sees the sensitive field (audited); a viewer sees it masked.
    let path = format!("{base}/{id}");
    let owner_view = req(&d, "GET", &path, &f.token, None, &[]);
    assert_eq!(owner_view.json()["data"]["ssn"], SSN);
    let viewer = mint(&d, &f, "viewer");
    let masked = req(&d, "GET", &path, &viewer, None, &[]);
    assert_eq!(masked.status, 200);
    assert_eq!(masked.json()["data"]["ssn"], "[MASKED]");
    assert_eq!(masked.json()["data"]["name"], "Ann Archer");
    let listed = req(&d, "GET", &base, &viewer, None, &[]).json();
    assert_eq!(listed["records"][0]["data"]["ssn"], "[MASKED]");

    // ETag / If-Match: missing is 428, stale is 412, current works.
    let replace = json!({"name": "Ann Archer", "ssn": SSN, "visits": 2});
    let r = req(&d, "PUT", &path, &f.token, Some(&replace), &[]);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (428, json!("precondition_required"))
    );
    let r = req(
        &d,
        "PUT",
        &path,
        &f.token,
        Some(&replace),
        &[("If-Match", "\"1\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"2\""));
    let r = req(
        &d,
        "PUT",
        &path,
        &f.token,
        Some(&replace),
        &[("If-Match", "\"1\"")],
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (412, json!("precondition_failed"))
    );
    // A merge patch keeps what it does not name, the sensitive field included.
    let r = d.client().request(
        "PATCH",
        &path,
        &[
            ("Authorization", &format!("Bearer {}", f.token)),
            ("Content-Type", "application/merge-patch+json"),
            ("If-Match", "\"2\""),
        ],
        Some(br#"{"visits": 3, "notes": null}"#),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let now = req(&d, "GET", &path, &f.token, None, &[]).json();
    assert_eq!(
        (
            now["version"].clone(),
            now["data"]["visits"].clone(),
            now["data"]["ssn"].clone()
        ),
        (json!(3), json!(3), json!(SSN))
    );

    // Filters on indexed fields only.
    let hit = req(
        &d,
        "GET",
        &format!("{base}?name=Ann%20Archer"),
        &viewer,
        None,
        &[],
    )
    .json();
    assert_eq!(hit["records"].as_array().unwrap().len(), 1);
    let miss = req(
        &d,
        "GET",
        &format!("{base}?name=Nobody"),
        &viewer,
        None,
        &[],
    )
    .json();
    assert_eq!(miss["records"], json!([]));
    let r = req(&d, "GET", &format!("{base}?ssn={SSN}"), &f.token, None, &[]);
    // Every query-string problem is one code: 400 invalid_query.
    assert_eq!(r.status, 400, "sensitive fields are never filterable");
    assert_eq!(r.json()["code"], "invalid_query");

    // Bad input: clear errors, nothing stored.
    for (b, code) in [
        (json!({"ssn": SSN}), "invalid_record"),
        (json!({"name": "x", "colour": "red"}), "invalid_record"),
        (json!({"name": "x", "visits": "many"}), "invalid_record"),
    ] {
        let r = req(&d, "POST", &base, &f.token, Some(&b), &[]);
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (422, json!(code)),
            "{b}"
        );
    }
    let r = req(
        &d,
        "POST",
        &format!("/api/v1/records/{}/nosuch", f.id),
        &f.token,
        Some(&body),
        &[],
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("collection_not_found"))
    );
    let r = req(&d, "POST", &base, &viewer, Some(&body), &[]);
    assert_eq!(r.status, 403);
    assert_eq!(
        req(&d, "GET", &base, &f.token, None, &[]).json()["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The audit log has the writes and the sensitive read, never the SSN.
    let log = req(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "collections.put",
        "records.create",
        "records.replace",
        "records.patch",
        "records.read_sensitive",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(!log.to_string().contains(SSN));

    // The sensitive value is nowhere in the database files in clear, and
    // with the raw key the stored row holds it only as ciphertext.
    let db = firm_db(&d, &f.id);
    assert!(!contains(&read_all_db_files(&db), SSN.as_bytes()));
    let export = ctl_json(&d.admin_socket, &["firm", "export-key", &f.id]);
    assert!(!d.logs().contains(SSN));
    let mut d = d;
    assert_eq!(d.stop().code(), Some(0));
    let Some(py) = stock_sqlcipher_python() else {
        return;
    };
    let connect = crate::firms::stock_connect(&db, &export);
    let script = format!(
        "import sqlcipher3\n\
         {connect}\
         clear, sealed = c.execute('SELECT clear, sealed FROM records').fetchone()\n\
         print({ssn:?} in clear, {ssn:?}.encode() in sealed, len(sealed) > 0, 'Ann Archer' in clear)\n",
        ssn = SSN
    );
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "False False True True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pii_is_flagged_redacted_or_rejected_per_collection() {
    let d = Daemon::start();
    let f = create_firm(&d, "PII Policy LLP");
    for p in ["flag", "redact", "reject"] {
        collection(&d, &f, p, p);
    }
    let post = |c: &str, notes: &str| {
        req(
            &d,
            "POST",
            &format!("/api/v1/records/{}/{c}", f.id),
            &f.token,
            Some(&json!({"name": "N", "notes": notes})),
            &[],
        )
    };
    let positives = [
        ("write to jo@example.com", "email"),
        ("card 4111 1111 1111 1111", "payment_card"),
        ("ssn 123-45-6789", "us_ssn"),
        ("call +44 20 7946 0958", "phone"),
        ("iban GB82WEST12345698765432", "iban"),
        ("from 10.1.2.3", "ip_address"),
    ];
    for (text, kind) in positives {
        let flagged = post("flag", text);
        assert_eq!(flagged.status, 201);
        let v = flagged.json();
        assert_eq!(v["data"]["notes"], text, "flag stores as sent");
        assert_eq!(
            v["warnings"][0],
            json!({"field": "notes", "kind": kind}),
            "{text}"
        );
        let redacted = post("redact", text).json();
        let stored = redacted["data"]["notes"].as_str().unwrap();
        assert!(stored.contains(&format!("[REDACTED:{kind}]")), "{stored}");
        let rejected = post("reject", text);
        assert_eq!(
            (rejected.status, rejected.json()["code"].clone()),
            (422, json!("pii_detected")),
            "{text}"
        );
        let detail = rejected.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("notes") && detail.contains(kind),
            "{detail}"
        );
    }
    // Known negatives pass even the rejecting collection.
    for text in [
        "4111 1111 1111 1112",
        "invoice 20261123",
        "meeting on 2026-11-23",
        "release 1.2.3",
        "room 666-12-3456",
    ] {
        let r = post("reject", text);
        assert_eq!(
            r.status,
            201,
            "{text}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json().get("warnings").is_none());
    }
    // A flagged write records the finding in its audit entry.
    let log = req(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?action=records.create&limit=500", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["pii"][0]["kind"] == "payment_card")
    );
    let refused = req(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?action=records.create&limit=500", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    assert!(
        refused["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "failure")
    );
}
