//! Subject access through the real daemon: every collection with subject
//! fields searched (sensitive ones too), sensitive fields in clear for a key
//! that may read them, audited by a keyed hash, the identifier in no log.

use serde_json::json;

use crate::audit::{entries, entries_of};
use crate::firms::{Firm, create_firm};
use crate::harness::Daemon;
use crate::records::{collection, req};

const SSN: &str = "219-09-9999";

/// A `cases` collection naming its subject in a sensitive `client` field.
pub fn cases_collection(d: &Daemon, f: &Firm) {
    let r = req(
        d,
        "PUT",
        &format!("/api/v1/collections/{}/cases", f.id),
        &f.token,
        Some(&json!({"fields": {
            "client": {"type": "string", "subject": true, "sensitive": true},
            "matter": {"type": "string"}}})),
        &[],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// Creates a record in `coll` (asserting 201); its id.
pub fn post_record(d: &Daemon, f: &Firm, coll: &str, body: &serde_json::Value) -> String {
    let r = req(
        d,
        "POST",
        &format!("/api/v1/records/{}/{coll}", f.id),
        &f.token,
        Some(body),
        &[],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_subject_access_returns_every_record_naming_them_and_logs_only_a_keyed_hash() {
    let d = Daemon::start();
    let f = create_firm(&d, "Subjects LLP");
    collection(&d, &f, "clients", "flag");
    cases_collection(&d, &f);
    let post = |coll: &str, body: serde_json::Value| {
        post_record(&d, &f, coll, &body);
    };
    post("clients", json!({"name": "Ann Archer", "ssn": SSN}));
    post(
        "clients",
        json!({"name": "Bob Baker", "ssn": "078-05-1120"}),
    );
    post(
        "cases",
        json!({"client": "Ann Archer", "matter": "Last will"}),
    );
    post("cases", json!({"client": "Bob Baker", "matter": "Lease"}));

    let path = format!("/api/v1/subjects/{}?value=Ann%20Archer", f.id);
    let r = req(&d, "GET", &path, &f.token, None, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let doc = r.json();
    assert_eq!(doc["records"], 2, "{doc}");
    assert_eq!(doc["collections"]["clients"][0]["data"]["ssn"], SSN);
    assert_eq!(
        doc["collections"]["cases"][0]["data"]["matter"],
        "Last will"
    );
    assert!(!doc.to_string().contains("Bob"));
    let hash = doc["subject"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 32);
    // The same subject, the same hash; nobody else's.
    let again = req(&d, "GET", &path, &f.token, None, &[]).json();
    assert_eq!(again["subject"], hash.as_str());
    let none = req(
        &d,
        "GET",
        &format!("/api/v1/subjects/{}?value=Nobody", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    assert_eq!(none["records"], 0);
    assert_ne!(none["subject"], hash.as_str());
    // An empty identifier is refused.
    let r = req(
        &d,
        "GET",
        &format!("/api/v1/subjects/{}?value=", f.id),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // A key that may not read sensitive fields may not ask.
    let r = req(
        &d,
        "POST",
        &format!("/api/v1/keys/{}", f.id),
        &f.token,
        Some(&json!({"name": "viewer", "role": "viewer"})),
        &[],
    );
    let viewer = r.json()["secret"].as_str().unwrap().to_owned();
    let r = req(&d, "GET", &path, &viewer, None, &[]);
    assert_eq!(r.status, 403);

    // Audited by the keyed hash; the identifier is in no audit entry and no log line.
    let access = entries_of(&d, &f, "subjects.access");
    assert_eq!(access.len(), 3);
    assert_eq!(access[0]["resource"], format!("subject:{hash}"));
    assert_eq!(access[0]["details"]["records"], 2);
    assert!(
        !serde_json::to_string(&entries(&d, &f))
            .unwrap()
            .contains("Ann Archer")
    );
    assert!(
        !d.logs().contains("Ann Archer"),
        "the identifier reached a log line"
    );
}
