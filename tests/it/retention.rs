//! Audit retention with signed purge receipts, and the system audit log of
//! admin-socket actions, through the real daemon.

use serde_json::Value;
use strongroom::audit::note;

use crate::audit::{call, mint, rfc9162, unhex};
use crate::firms::create_firm;
use crate::harness::{CTL, Daemon, Options, ctl, ctl_json};

/// Checks an export file offline with `strongroomctl audit verify-export`.
fn verify_export(text: &str, vkey: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.ndjson");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(CTL)
        .args(["audit", "verify-export"])
        .arg(&path)
        .args(["--verifier-key", vkey])
        .output()
        .unwrap()
}

fn short_retention() -> Options {
    Options {
        config: Some(Box::new(|_| {
            "version = 1\n[audit]\nretention = \"2s\"\npurge_interval = \"1h\"\n".to_owned()
        })),
        ..Options::default()
    }
}

#[test]
fn retention_purges_old_entries_with_a_signed_receipt_and_proofs_still_verify() {
    let d = Daemon::start_with(short_retention());
    let kept = create_firm(&d, "Keeps Everything LLP");
    let f = create_firm(&d, "Short Memory LLP");
    // One firm keeps its entries for ten years whatever the default says.
    let v = ctl_json(&d.admin_socket, &["firm", "retention", &kept.id, "3650d"]);
    assert_eq!(v["firm"]["audit_retention"], "3650d");
    let bad = ctl(&d.admin_socket, &["firm", "retention", &kept.id, "7 years"]);
    assert!(!bad.status.success());
    for role in ["viewer", "operator", "admin"] {
        mint(&d, &f, role);
        mint(&d, &kept, role);
    }
    let vkey = String::from_utf8(
        call(
            &d,
            "GET",
            &format!("/api/v1/audit/{}/verifier-key", f.id),
            &f.token,
            None,
        )
        .body,
    )
    .unwrap()
    .trim()
    .to_owned();
    let v = note::parse_verifier_key(&vkey).unwrap();
    // A checkpoint from before the purge, to prove consistency across it.
    let before = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/checkpoint", f.id),
        &f.token,
        None,
    );
    let body = note::open(std::str::from_utf8(&before.body).unwrap(), &v)
        .unwrap()
        .to_owned();
    let (_, old_size, old_root) = note::parse_checkpoint(&body).unwrap();
    assert!(old_size >= 3);

    // Entries are stamped to the second: move the daemon's clock past 2 s,
    // then write one young entry that must survive.
    d.advance_clock(4);
    mint(&d, &f, "viewer");
    let out = ctl_json(&d.admin_socket, &["audit", "purge-expired"]);
    assert!(out["purged_entries"].as_u64().unwrap() >= old_size, "{out}");

    let list = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", f.id),
        &f.token,
        None,
    )
    .json();
    let entries = list["entries"].as_array().unwrap();
    let first = entries[0]["seq"].as_u64().unwrap();
    assert!(first >= old_size, "old entries gone: {list}");
    assert!(
        entries.iter().any(|e| e["action"] == "keys.create"),
        "the young entry is kept: {list}"
    );
    // The receipt is an entry of the log itself, signed by the appliance key.
    let purge = entries
        .iter()
        .find(|e| e["action"] == "audit.purge")
        .unwrap();
    assert_eq!(purge["actor"], "system:retention");
    assert_eq!(purge["rule"], "retention:2s");
    let receipt_body = note::open(purge["resource"].as_str().unwrap(), &v).unwrap();
    let receipt = note::parse_purge_receipt(receipt_body).unwrap();
    assert_eq!(receipt.before, first);
    assert!(receipt.origin.ends_with(&f.id));
    assert!(
        note::parse_checkpoint(receipt_body).is_err(),
        "a receipt is no checkpoint"
    );

    // The other firm kept everything.
    let kept_list = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", kept.id),
        &kept.token,
        None,
    )
    .json();
    assert_eq!(kept_list["entries"][0]["seq"], 0);

    // verify: clean, and says where the retained log starts.
    let ver = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/verify", f.id),
        &f.token,
        None,
    )
    .json();
    assert_eq!(ver["ok"], true, "{ver}");
    assert_eq!(ver["first_retained"], first);

    // Proofs still verify, for a retained entry and for a purged one, and
    // the log is consistent with the checkpoint signed before the purge.
    let size = list["tree_size"].as_u64().unwrap();
    for seq in [first, 0] {
        let p = call(
            &d,
            "GET",
            &format!(
                "/api/v1/audit/{}/proof/inclusion?seq={seq}&size={size}",
                f.id
            ),
            &f.token,
            None,
        )
        .json();
        let hashes: Vec<[u8; 32]> = p["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| unhex(h.as_str().unwrap()))
            .collect();
        let root = rfc9162::root_from_inclusion(
            seq,
            size,
            &unhex(p["leaf_hash"].as_str().unwrap()),
            &hashes,
        );
        assert_eq!(
            root,
            Some(unhex(p["root_hash"].as_str().unwrap())),
            "seq {seq}"
        );
    }
    let c = call(
        &d,
        "GET",
        &format!(
            "/api/v1/audit/{}/proof/consistency?from={old_size}&to={size}",
            f.id
        ),
        &f.token,
        None,
    )
    .json();
    assert_eq!(unhex(c["from_root"].as_str().unwrap()), old_root);

    // The export starts with the purge anchor and verifies offline; an edited
    // anchor does not.
    let export = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}/export", f.id),
        &f.token,
        None,
    );
    let ndjson = String::from_utf8(export.body).unwrap();
    let head: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(head["type"], "dev.strongroom.audit.purge");
    let ok = verify_export(&ndjson, &vkey);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let moved = ndjson.replacen(
        &format!("\"before\":{first}"),
        &format!("\"before\":{}", first - 1),
        1,
    );
    assert!(!verify_export(&moved, &vkey).status.success());
    let dropped: Vec<&str> = ndjson.lines().skip(1).collect();
    assert!(!verify_export(&dropped.join("\n"), &vkey).status.success());

    // Survives a restart, and a second purge with nothing old is a no-op.
    let d = d.restart(short_retention());
    let again = ctl_json(&d.admin_socket, &["audit", "verify", "--firm", &f.id]);
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["first_retained"], first);
}

#[test]
fn admin_actions_are_in_a_verifiable_system_log() {
    let d = Daemon::start();
    let f = create_firm(&d, "System Log LLP");
    ctl_json(&d.admin_socket, &["firm", "freeze", &f.id]);
    ctl_json(&d.admin_socket, &["firm", "unfreeze", &f.id]);
    ctl_json(&d.admin_socket, &["firm", "rekey", &f.id]);
    ctl_json(&d.admin_socket, &["firm", "export-key", &f.id]);
    ctl_json(&d.admin_socket, &["firm", "retention", &f.id, "90d"]);
    // A failed command is recorded as a failure and changes nothing.
    let wrong = ctl(
        &d.admin_socket,
        &["firm", "delete", &f.id, "--confirm", "frm_wrong"],
    );
    assert!(!wrong.status.success());
    assert_eq!(
        ctl_json(&d.admin_socket, &["firm", "show", &f.id])["state"],
        "active"
    );

    let log = ctl_json(&d.admin_socket, &["audit", "system", "list"]);
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for want in [
        ("firm.create", "success"),
        ("firm.freeze", "success"),
        ("firm.unfreeze", "success"),
        ("firm.rekey", "success"),
        ("firm.export_key", "success"),
        ("firm.set_retention", "success"),
        ("firm.delete", "failure"),
    ] {
        assert_eq!(
            actions.iter().filter(|a| **a == want).count(),
            1,
            "{want:?} in {actions:?}"
        );
    }
    for e in entries {
        assert_eq!(e["actor"], "uid:0(root)");
        assert!(e["request_id"].as_str().unwrap().starts_with("adm_"));
        if e["action"] != "audit.read" {
            assert_eq!(e["resource"], f.id.as_str());
        }
    }
    let create = entries
        .iter()
        .find(|e| e["action"] == "firm.create")
        .unwrap();
    assert_eq!(create["details"]["name"], "System Log LLP");
    // Reading the system log is itself recorded (once a minute per reader).
    ctl_json(&d.admin_socket, &["audit", "system", "list"]);
    let log = ctl_json(&d.admin_socket, &["audit", "system", "list"]);
    let reads = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "audit.read")
        .count();
    assert_eq!(reads, 1);

    let ver = ctl_json(&d.admin_socket, &["audit", "system", "verify"]);
    assert_eq!(ver["ok"], true, "{ver}");
    let vkey = ctl_json(&d.admin_socket, &["audit", "verifier-key"])["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let cp = ctl(&d.admin_socket, &["audit", "system", "checkpoint"]);
    let text = String::from_utf8(cp.stdout).unwrap();
    let body = note::open(&text, &note::parse_verifier_key(&vkey).unwrap()).unwrap();
    let (origin, size, _) = note::parse_checkpoint(body).unwrap();
    assert!(origin.ends_with("/system"), "{origin}");
    assert!(size >= 8);
    let export = ctl(&d.admin_socket, &["audit", "system", "export"]);
    assert!(export.status.success());
    let ndjson = String::from_utf8(export.stdout).unwrap();
    let ok = verify_export(&ndjson, &vkey);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let edited = ndjson.replacen("\"outcome\":\"failure\"", "\"outcome\":\"success\"", 1);
    assert!(!verify_export(&edited, &vkey).status.success());

    // The log, its key and its signatures survive a master-key rotation,
    // and the rotation itself is recorded.
    let newkey = d.dir.path().join("new-master.key");
    crate::harness::write_key_file(&newkey, &[0x42; 32]);
    ctl_json(
        &d.admin_socket,
        &[
            "keys",
            "rotate-master",
            "--new-key-file",
            newkey.to_str().unwrap(),
        ],
    );
    let log = ctl_json(
        &d.admin_socket,
        &["audit", "system", "list", "--limit", "500"],
    );
    let last = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] != "audit.read")
        .unwrap()
        .clone();
    assert_eq!(last["action"], "keys.rotate_master");
    assert_eq!(last["details"]["generation"], 2);
    let ver = ctl_json(&d.admin_socket, &["audit", "system", "verify"]);
    assert_eq!(ver["ok"], true, "{ver}");
}
