//! Evidence bundles through the real daemon, checked offline by our own
//! verifier and by standard tools alone: `tar`, `sha256sum -c`, and an
//! independent C2SP signed-note verifier (Python, pyca/cryptography).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::audit::entries_of;
use crate::backup::system_actions;
use crate::firms::create_firm;
use crate::harness::{Daemon, ctl_json};
use crate::people::test_python;
use crate::records::{collection, req};

/// Verifies a signed note with a verifier key, independently of our code.
const NOTE_VERIFIER: &str = r#"
import base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
note, vkey = open(sys.argv[1]).read(), sys.argv[2]
name, khash, kb64 = vkey.split("+", 2)
key = base64.b64decode(kb64)
assert key[0] == 1, "not an Ed25519 verifier key"
assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == khash, "key hash"
text, sigs = note[:note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2:]
for line in sigs.splitlines():
    assert line.startswith("\u2014 "), "signature line"
    n, s = line[2:].split(" ", 1)
    blob = base64.b64decode(s)
    if n == name and blob[:4].hex() == khash:
        Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], text.encode())
        print("OK")
        sys.exit(0)
sys.exit("no signature by that key")
"#;

pub fn note_verifies(note: &Path, vkey: &str) -> bool {
    let o = Command::new(test_python())
        .args(["-c", NOTE_VERIFIER])
        .arg(note)
        .arg(vkey)
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!("note verifier: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

fn export(d: &Daemon, firm: &str, since: u64, out: &Path) {
    let o = d.ctl(&[
        "evidence",
        "export",
        "--firm",
        firm,
        "--since",
        &since.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn verify(d: &Daemon, file: &Path, vkey: &str, previous: Option<&Path>) -> (bool, Value) {
    let mut args = vec![
        "--json",
        "evidence",
        "verify",
        file.to_str().unwrap(),
        "--verifier-key",
        vkey,
    ];
    if let Some(p) = previous {
        args.extend(["--previous", p.to_str().unwrap()]);
    }
    let o = d.ctl(&args);
    (
        o.status.success(),
        serde_json::from_slice(&o.stdout).unwrap(),
    )
}

fn sh(dir: &Path, cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn evidence_bundles_verify_offline_with_standard_tools_and_name_any_changed_artefact() {
    let d = Daemon::start();
    let f = create_firm(&d, "Evidence LLP");
    collection(&d, &f, "clients", "flag");
    let base = format!("/api/v1/records/{}/clients", f.id);
    let mut ids = Vec::new();
    for (i, notes) in [
        "call ann@example.com",
        "no pii here",
        "mail bob@example.org",
    ]
    .iter()
    .enumerate()
    {
        let r = req(
            &d,
            "POST",
            &base,
            &f.token,
            Some(&json!({"name": format!("C{i}"), "notes": notes})),
            &[],
        );
        assert_eq!(r.status, 201);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let r = req(
        &d,
        "DELETE",
        &format!("{base}/{}", ids[1]),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.status, 204);
    let vkey = ctl_json(&d.admin_socket, &["audit", "verifier-key"])["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let work = d.dir.path().join("evidence");
    fs::create_dir_all(&work).unwrap();
    let b1 = work.join("b1.tar");
    export(&d, &f.id, 0, &b1);
    let (ok, v) = verify(&d, &b1, &vkey, None);
    assert!(ok, "{v}");
    let size1 = v["bundle"]["log_size"].as_u64().unwrap();
    assert_eq!(v["bundle"]["firm"], f.id.as_str());

    // Standard tools alone: tar, sha256sum, a signed-note verifier.
    let x = work.join("x");
    fs::create_dir_all(&x).unwrap();
    assert!(sh(&x, "tar", &["-xf", b1.to_str().unwrap()]));
    assert!(sh(
        &x,
        "sha256sum",
        &["--check", "--strict", "--quiet", "MANIFEST.sha256"]
    ));
    assert!(note_verifies(&x.join("MANIFEST.note"), &vkey));
    assert!(note_verifies(&x.join("checkpoint.note"), &vkey));
    let manifest_sha = {
        let o = Command::new("sha256sum")
            .arg("MANIFEST.sha256")
            .current_dir(&x)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()[..64].to_owned()
    };
    assert!(
        fs::read_to_string(x.join("MANIFEST.note"))
            .unwrap()
            .contains(&format!("manifest-sha256 {manifest_sha}"))
    );

    // What it says: keys by fingerprint only, PII counts, the deletion.
    let keys = fs::read_to_string(x.join("keys.json")).unwrap();
    let kv: Value = serde_json::from_str(&keys).unwrap();
    let purposes: Vec<&str> = kv["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["purpose"].as_str().unwrap())
        .collect();
    for p in ["db", "data", "audit", "auth"] {
        assert!(purposes.contains(&p), "{keys}");
    }
    assert!(
        kv["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["fingerprint_sha256"].as_str().unwrap().len() == 64)
    );
    assert!(!keys.contains(&f.token) && !keys.contains("wrapped"));
    let privacy: Value =
        serde_json::from_slice(&fs::read(x.join("privacy.json")).unwrap()).unwrap();
    assert_eq!(privacy["pii_findings"]["clients"]["email"], 2, "{privacy}");
    let receipts = fs::read_to_string(x.join("receipts.json")).unwrap();
    assert!(
        receipts.contains("records.delete") && receipts.contains(&ids[1]),
        "{receipts}"
    );
    let policy: Value = serde_json::from_slice(&fs::read(x.join("policy.json")).unwrap()).unwrap();
    assert!(
        policy["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let appliance: Value =
        serde_json::from_slice(&fs::read(x.join("appliance.json")).unwrap()).unwrap();
    assert!(appliance["fips_module"].as_str().unwrap().contains("FIPS"));

    // A later bundle proves the log grew from the first one's checkpoint.
    let r = req(
        &d,
        "POST",
        &base,
        &f.token,
        Some(&json!({"name": "Later"})),
        &[],
    );
    assert_eq!(r.status, 201);
    let b2 = work.join("b2.tar");
    export(&d, &f.id, size1, &b2);
    let (ok, v) = verify(&d, &b2, &vkey, Some(&b1));
    assert!(ok, "{v}");
    assert_eq!(v["bundle"]["consistent_from"], size1);
    assert!(v["bundle"]["log_size"].as_u64().unwrap() > size1);
    // The firm's auditors fetch the same over the API with audit:read.
    let r = d.client().request(
        "GET",
        &format!("/api/v1/evidence/{}?since={size1}", f.id),
        &[("Authorization", &format!("Bearer {}", f.token))],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-tar"));
    let b3 = work.join("b3.tar");
    fs::write(&b3, &r.body).unwrap();
    let (ok, v) = verify(&d, &b3, &vkey, Some(&b1));
    assert!(ok, "{v}");
    let r = d
        .client()
        .request("GET", &format!("/api/v1/evidence/{}", f.id), &[], None);
    assert_eq!(r.status, 401);
    let r = d.client().request(
        "GET",
        &format!("/api/v1/evidence/{}?since=999999", f.id),
        &[("Authorization", &format!("Bearer {}", f.token))],
        None,
    );
    assert_eq!(r.status, 422);
    // Not a continuation of itself.
    let (ok, _) = verify(&d, &b1, &vkey, Some(&b2));
    assert!(!ok);

    // Any changed byte is found, and the file named.
    let members: Vec<String> = fs::read_dir(&x)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &members {
        let y = work.join(format!("t-{name}"));
        fs::create_dir_all(&y).unwrap();
        for m in &members {
            fs::copy(x.join(m), y.join(m)).unwrap();
        }
        let mut bytes = fs::read(y.join(name)).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        fs::write(y.join(name), bytes).unwrap();
        let t = work.join(format!("t-{name}.tar"));
        let mut args = vec!["-cf".to_owned(), t.to_string_lossy().into_owned()];
        args.extend(members.iter().cloned());
        assert!(sh(
            &y,
            "tar",
            &args.iter().map(String::as_str).collect::<Vec<_>>()
        ));
        let (ok, v) = verify(&d, &t, &vkey, None);
        assert!(!ok, "{name} changed and still verified");
        assert!(
            v["error"].as_str().unwrap().contains(name.as_str()),
            "{name}: {v}"
        );
    }
    // A wrong key verifies nothing.
    let other = "strongroom/0000000000000000+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(!verify(&d, &b1, other, None).0);

    // The exports are in the system log and the firm's own log.
    assert!(system_actions(&d.admin_socket).contains(&"evidence.export success".to_owned()));
    assert_eq!(entries_of(&d, &f, "evidence.export").len(), 3);
}
