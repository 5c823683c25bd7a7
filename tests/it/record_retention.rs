//! Record retention through the real daemon: classes from the config, by
//! creation time or a declared date field, deleted in batches with the
//! daemon's clock moved (never slept), each batch audited with its count.

use serde_json::{Value, json};

use crate::audit::entries_of;
use crate::backup::system_actions;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options, ctl_json};
use crate::records::req;

fn put(d: &Daemon, f: &Firm, name: &str, schema: Value) -> crate::client::Response {
    req(
        d,
        "PUT",
        &format!("/api/v1/collections/{}/{name}", f.id),
        &f.token,
        Some(&schema),
        &[],
    )
}

fn create(d: &Daemon, f: &Firm, coll: &str, body: Value) -> String {
    let r = req(
        d,
        "POST",
        &format!("/api/v1/records/{}/{coll}", f.id),
        &f.token,
        Some(&body),
        &[],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

fn status(d: &Daemon, f: &Firm, coll: &str, id: &str) -> u16 {
    req(
        d,
        "GET",
        &format!("/api/v1/records/{}/{coll}/{id}", f.id),
        &f.token,
        None,
        &[],
    )
    .status
}

#[test]
fn expired_records_are_deleted_by_class_or_date_field_and_each_batch_is_audited() {
    let d = Daemon::start_with(Options {
        config: Some(Box::new(|_| {
            "version = 1\n[retention]\nclasses = { \"short\" = \"30d\", \"long\" = \"3650d\" }\nbatch = 2\n".to_owned()
        })),
        ..Options::default()
    });
    let f = create_firm(&d, "Retention LLP");
    let fields = json!({"title": {"type": "string"}, "closed_on": {"type": "string"},
                        "ssn": {"type": "string", "sensitive": true}});
    // A class the config does not define, or a date field that is sealed, is refused.
    let r = put(
        &d,
        &f,
        "bad",
        json!({"fields": fields, "retention_class": "forever"}),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    assert!(
        r.json().to_string().contains("not configured"),
        "{}",
        r.json()
    );
    let r = put(
        &d,
        &f,
        "bad",
        json!({"fields": fields, "retention_class": "short", "retention_from": "ssn"}),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    for (name, schema) in [
        (
            "notes",
            json!({"fields": fields, "retention_class": "short"}),
        ),
        ("kept", json!({"fields": fields, "retention_class": "long"})),
        ("plain", json!({"fields": fields})),
        (
            "cases",
            json!({"fields": fields, "retention_class": "short", "retention_from": "closed_on"}),
        ),
    ] {
        let r = put(&d, &f, name, schema);
        assert_eq!(r.status, 201, "{name}: {}", r.json());
    }
    let old: Vec<String> = (0..5)
        .map(|i| {
            create(
                &d,
                &f,
                "notes",
                json!({"title": format!("n{i}"), "ssn": "219-09-9999"}),
            )
        })
        .collect();
    let kept = create(&d, &f, "kept", json!({"title": "k"}));
    let plain = create(&d, &f, "plain", json!({"title": "p"}));
    let closed = create(
        &d,
        &f,
        "cases",
        json!({"title": "c1", "closed_on": "2020-01-31"}),
    );
    let open = create(
        &d,
        &f,
        "cases",
        json!({"title": "c2", "closed_on": "2999-01-01"}),
    );
    let undated = create(&d, &f, "cases", json!({"title": "c3"}));

    // Now: only the case closed in 2020 is past 30 days.
    let run = ctl_json(&d.admin_socket, &["records", "purge-expired"]);
    assert_eq!(run["deleted"], 1, "{run}");
    assert_eq!(status(&d, &f, "cases", &closed), 404);
    for id in [&open, &undated] {
        assert_eq!(status(&d, &f, "cases", id), 200);
    }
    for id in &old {
        assert_eq!(status(&d, &f, "notes", id), 200);
    }

    // 31 days on: the five old notes go (three batches of at most two), the
    // fresh one and every other collection's records stay.
    d.advance_clock(31 * 86_400);
    let fresh = create(&d, &f, "notes", json!({"title": "fresh"}));
    let run = ctl_json(&d.admin_socket, &["records", "purge-expired"]);
    assert_eq!(run["deleted"], 5, "{run}");
    for id in &old {
        assert_eq!(status(&d, &f, "notes", id), 404);
    }
    assert_eq!(status(&d, &f, "notes", &fresh), 200);
    assert_eq!(status(&d, &f, "kept", &kept), 200);
    assert_eq!(status(&d, &f, "plain", &plain), 200);
    // Listing no longer shows them either.
    let list = req(
        &d,
        "GET",
        &format!("/api/v1/records/{}/notes", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    assert_eq!(list["records"].as_array().map(Vec::len), Some(1), "{list}");

    // Every batch is in the firm's log, by the retention job, with its count.
    let purges = entries_of(&d, &f, "records.retention_purge");
    assert_eq!(purges.len(), 4, "1 + 3 batches: {purges:?}");
    assert!(purges.iter().all(|e| e["actor"] == "system:retention"));
    let counted: u64 = purges
        .iter()
        .map(|e| e["details"]["deleted"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 6);
    assert_eq!(purges[0]["details"]["from"], "closed_on");
    assert_eq!(purges[1]["details"]["class"], "short");
    // The log still verifies, and the run is in the system log.
    let v = ctl_json(&d.admin_socket, &["audit", "verify", "--firm", &f.id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(system_actions(&d.admin_socket).contains(&"records.purge_expired success".to_owned()));
}
