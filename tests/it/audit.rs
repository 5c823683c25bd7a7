//! The audit log through the real daemon: one entry per mutation, in the
//! same transaction; denials, refusals and failed authentications recorded;
//! the log verifies.

use serde_json::{Value, json};

use crate::client::Response;
use crate::firms::{Firm, create_firm};
use crate::harness::Daemon;

fn call(d: &Daemon, method: &str, path: &str, token: &str, body: Option<&Value>) -> Response {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    let body = body.map(|b| b.to_string());
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    d.client()
        .request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

fn entries(d: &Daemon, f: &Firm) -> Vec<Value> {
    let r = call(
        d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", f.id),
        &f.token,
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        v["tree_size"].as_u64().unwrap() as usize,
        v["entries"].as_array().unwrap().len()
    );
    v["entries"].as_array().unwrap().clone()
}

fn mint(d: &Daemon, f: &Firm, role: &str) -> (String, String) {
    let r = call(
        d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        &f.token,
        Some(&json!({"name": role, "role": role})),
    );
    assert_eq!(r.status, 201);
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// The action each mutation route records, keyed like the route table.
fn action_of(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("PATCH", "/api/v1/firms/{firm_id}") => "firm.update",
        ("POST", "/api/v1/keys/{firm_id}") => "keys.create",
        ("POST", "/api/v1/keys/{firm_id}/{key_id}/rotate") => "keys.rotate",
        ("DELETE", "/api/v1/keys/{firm_id}/{key_id}") => "keys.revoke",
        other => panic!("mutation route {other:?} has no expected audit action: add it here"),
    }
}

#[test]
fn every_mutation_route_leaves_exactly_one_entry() {
    let d = Daemon::start();
    let f = create_firm(&d, "Audit Trail LLP");
    entries(&d, &f); // the first read is audited (then coalesced for a minute)
    let mutations: Vec<_> = strongroom::http::route_table()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(mutations.len() >= 4);
    for route in mutations {
        let method = route.method.as_str().to_owned();
        let action = action_of(&method, route.path);
        let (target, _) = mint(&d, &f, "viewer");
        let before = entries(&d, &f).len();
        let path = route
            .path
            .replace("{firm_id}", &f.id)
            .replace("{key_id}", &target);
        let body = match action {
            "firm.update" => Some(json!({"display_name": "Audited"})),
            "keys.create" => Some(json!({"name": "n", "role": "viewer"})),
            _ => None,
        };
        let r = call(&d, &method, &path, &f.token, body.as_ref());
        assert!(
            r.status == 200 || r.status == 201,
            "{method} {path}: {}",
            r.status
        );
        let after = entries(&d, &f);
        assert_eq!(after.len(), before + 1, "{method} {path}");
        let e = after.last().unwrap();
        assert_eq!(e["action"], action);
        assert_eq!(e["outcome"], "success");
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["rule"], "role:owner");
        assert_eq!(e["request_id"], r.header("x-request-id").unwrap());
        assert_eq!(e["source_ip"], "127.0.0.1");
        assert!(e["actor"].as_str().unwrap().starts_with("key_"));
        assert!(e["details"].is_object(), "details decrypted: {e}");
    }
    let v = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/verify", f.id),
        &f.token,
        None,
    )
    .json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["first_bad_seq"], Value::Null);
    assert_eq!(v["root_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn denials_refusals_and_failed_logins_are_recorded_and_change_nothing() {
    let d = Daemon::start();
    let f = create_firm(&d, "Refusals Inc");
    entries(&d, &f);
    let (_, viewer) = mint(&d, &f, "viewer");
    let (admin_id, admin) = mint(&d, &f, "admin");

    // A policy denial: the viewer may not patch; the profile stays empty.
    let before = entries(&d, &f).len();
    let r = call(
        &d,
        "PATCH",
        &format!("/api/v1/firms/{}", f.id),
        &viewer,
        Some(&json!({"display_name": "no"})),
    );
    assert_eq!(r.status, 403);
    let all = entries(&d, &f);
    assert_eq!(all.len(), before + 1);
    let e = all.last().unwrap();
    assert_eq!(
        (
            e["outcome"].as_str(),
            e["decision"].as_str(),
            e["rule"].as_str()
        ),
        (Some("denied"), Some("deny"), Some("no_grant:viewer"))
    );
    assert_eq!(e["action"], "firm:update");
    let firm = call(
        &d,
        "GET",
        &format!("/api/v1/firms/{}", f.id),
        &f.token,
        None,
    )
    .json();
    assert!(firm["profile"].as_object().unwrap().is_empty());

    // A refused mutation (escalation): recorded, no key created.
    let keys_before =
        call(&d, "GET", &format!("/api/v1/keys/{}", f.id), &f.token, None).json()["keys"]
            .as_array()
            .unwrap()
            .len();
    let r = call(
        &d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        &admin,
        Some(&json!({"name": "up", "role": "owner"})),
    );
    assert_eq!(r.status, 403);
    let e = entries(&d, &f).last().unwrap().clone();
    assert_eq!(
        (
            e["action"].as_str(),
            e["outcome"].as_str(),
            e["rule"].as_str()
        ),
        (Some("keys.create"), Some("denied"), Some("escalation"))
    );
    assert_eq!(e["actor"], admin_id.as_str());
    let keys_after =
        call(&d, "GET", &format!("/api/v1/keys/{}", f.id), &f.token, None).json()["keys"]
            .as_array()
            .unwrap()
            .len();
    assert_eq!(keys_after, keys_before);

    // A failed authentication with a revoked key of this firm.
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{admin_id}", f.id),
        &f.token,
        None,
    );
    assert_eq!(r.status, 200);
    let before = entries(&d, &f).len();
    let r = call(&d, "GET", &format!("/api/v1/firms/{}", f.id), &admin, None);
    assert_eq!(r.status, 401);
    let all = entries(&d, &f);
    assert_eq!(all.len(), before + 1);
    let e = all.last().unwrap();
    assert_eq!(
        (
            e["action"].as_str(),
            e["outcome"].as_str(),
            e["actor"].as_str()
        ),
        (
            Some("auth.authenticate"),
            Some("denied"),
            Some(admin_id.as_str())
        )
    );
    assert_eq!(e["request_id"], r.header("x-request-id").unwrap());
    // The secret itself is nowhere in the log.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(admin.rsplit('_').next().unwrap()));

    // Reading the log is audited, once a minute per reader.
    assert_eq!(
        all.iter().filter(|e| e["action"] == "audit.read").count(),
        1
    );
    let v = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/verify", f.id),
        &f.token,
        None,
    )
    .json();
    assert_eq!(v["ok"], true, "{v}");
}
