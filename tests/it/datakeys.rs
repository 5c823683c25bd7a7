//! Data-key rotation through the real daemon: new writes use the new
//! version at once, what the old version sealed stays readable while a
//! background job re-encrypts it, and the old version is destroyed after.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::firms::{Firm, create_firm, firm_db};
use crate::harness::{Daemon, Options, ctl_json};
use crate::records::{collection, req};

const SSN: &str = "219-09-9999";
const SECRET: &str = "smtp-password-8f2c";

fn paced(pause_ms: u64) -> Options {
    Options {
        config: Some(Box::new(move |_| {
            format!("version = 1\n[keys]\nreencrypt_batch = 1\nreencrypt_pause_ms = {pause_ms}\n")
        })),
        ..Options::default()
    }
}

fn show(d: &Daemon, f: &Firm) -> Value {
    ctl_json(&d.admin_socket, &["firm", "show", &f.id])
}

fn wait_done(d: &Daemon, f: &Firm) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = show(d, f);
        if s["data_key"]["reencryption"]["state"] == "done" {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "re-encryption did not finish: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ssn_of(d: &Daemon, f: &Firm, id: &str) -> Value {
    let r = req(
        d,
        "GET",
        &format!("/api/v1/records/{}/clients/{id}", f.id),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"]["ssn"].clone()
}

fn verify_secret(d: &Daemon, f: &Firm) -> Value {
    let r = req(
        d,
        "POST",
        &format!("/api/v1/secrets/{}/smtp/verify", f.id),
        &f.token,
        Some(&json!({ "value": SECRET })),
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["match"].clone()
}

/// Seeds a firm with three records holding an SSN and one secret, all
/// sealed under data-key version 1.
fn seed(d: &Daemon, name: &str) -> (Firm, Vec<String>) {
    let f = create_firm(d, name);
    collection(d, &f, "clients", "flag");
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = req(
            d,
            "POST",
            &format!("/api/v1/records/{}/clients", f.id),
            &f.token,
            Some(&json!({"name": format!("Client {n}"), "ssn": SSN})),
            &[],
        );
        assert_eq!(r.status, 201);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let r = req(
        d,
        "PUT",
        &format!("/api/v1/secrets/{}/smtp", f.id),
        &f.token,
        Some(&json!({ "value": SECRET })),
        &[],
    );
    assert_eq!(r.status, 201);
    (f, ids)
}

/// Every envelope under the data key (records not sealed under subject
/// keys, secrets, subject keys): their key versions, read with stock
/// SQLCipher and the break-glass key (None when the stock client is not
/// installed).
fn envelope_versions(d: &Daemon, f: &Firm) -> Option<String> {
    let export = ctl_json(&d.admin_socket, &["firm", "export-key", &f.id]);
    crate::firms::stock_script(
        &firm_db(d, &f.id),
        &export,
        "rows = [r[0] for r in c.execute('SELECT sealed FROM records WHERE sealed IS NOT NULL AND subjects IS NULL')]\n\
         rows += [r[0] for r in c.execute('SELECT ciphertext FROM secrets')]\n\
         rows += [r[0] for r in c.execute('SELECT wrapped FROM subject_keys')]\n\
         print(sorted(set(int.from_bytes(r[1:5], 'big') for r in rows)), len(rows))\n",
        &[],
    )
}

#[test]
fn data_key_rotation_reencrypts_in_background_and_old_ciphertext_stays_readable() {
    // One item per transaction, 1.5 s apart: the job is still running while
    // the test reads what the old version sealed.
    let d = Daemon::start_with(paced(1500));
    let (f, ids) = seed(&d, "Rotation LLP");
    assert_eq!(show(&d, &f)["data_key"]["active"], 1);

    let v = ctl_json(&d.admin_socket, &["firm", "rotate-data-key", &f.id]);
    assert_eq!(v["data_key_version"], 2);
    assert_eq!(v["retiring"], json!([1]));

    // At once: version 2 is active, version 1 retired but kept, the job runs.
    let s = show(&d, &f);
    assert_eq!(s["data_key"]["active"], 2, "{s}");
    assert_eq!(s["key_versions"]["data"], 2, "{s}");
    assert_eq!(s["data_key"]["retiring"], json!([1]), "{s}");
    let job = &s["data_key"]["reencryption"];
    assert_eq!(job["state"], "running", "{s}");
    assert_eq!(job["to_version"], 2, "{s}");
    assert_eq!(job["total"], 4, "{s}");
    assert!(job["done"].as_u64().unwrap() < 4, "{s}");

    // New writes use version 2 at once; old ciphertext still reads.
    let r = req(
        &d,
        "POST",
        &format!("/api/v1/records/{}/clients", f.id),
        &f.token,
        Some(&json!({"name": "After Rotation", "ssn": SSN})),
        &[],
    );
    assert_eq!(r.status, 201);
    let fresh = r.json()["id"].as_str().unwrap().to_owned();
    for id in &ids {
        assert_eq!(ssn_of(&d, &f, id), SSN);
    }
    assert_eq!(verify_secret(&d, &f), true);
    if let Some(mid) = envelope_versions(&d, &f) {
        // Mid-job both versions are on disk: the fresh record under 2, old ones under 1.
        assert!(mid.starts_with("[1, 2] 5"), "{mid}");
    }

    // The job finishes, then destroys version 1.
    let s = wait_done(&d, &f);
    let job = &s["data_key"]["reencryption"];
    assert_eq!(job["done"], 4, "{s}");
    assert_eq!(job["destroyed"], json!([1]), "{s}");
    assert_eq!(s["data_key"]["retiring"], json!([]), "{s}");
    for id in ids.iter().chain([&fresh]) {
        assert_eq!(ssn_of(&d, &f, id), SSN);
    }
    assert_eq!(verify_secret(&d, &f), true);
    if let Some(after) = envelope_versions(&d, &f) {
        assert_eq!(after, "[2] 5");
    }
    // A re-encryption is not an edit: the ETag (version) is unchanged.
    let r = req(
        &d,
        "GET",
        &format!("/api/v1/records/{}/clients/{}", f.id, ids[0]),
        &f.token,
        None,
        &[],
    );
    assert_eq!(r.json()["version"], 1);

    // Both logs say what happened; the system log also records the destruction.
    let sys = ctl_json(&d.admin_socket, &["audit", "system", "list"]).to_string();
    assert!(sys.contains("firm.rotate_data_key"), "{sys}");
    assert!(sys.contains("firm.data_keys_destroyed"), "{sys}");
    let log = req(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?action=keys.rotate_data_key", f.id),
        &f.token,
        None,
        &[],
    )
    .json();
    assert_eq!(log["entries"].as_array().unwrap().len(), 1, "{log}");
    assert!(!d.logs().contains(SSN) && !d.logs().contains(SECRET));

    // After a restart only version 2 exists, and everything still reads.
    let d = d.restart(Options::default());
    let s = show(&d, &f);
    assert_eq!(s["data_key"]["active"], 2);
    assert_eq!(s["data_key"]["retiring"], json!([]));
    assert_eq!(ssn_of(&d, &f, &ids[2]), SSN);
    assert_eq!(verify_secret(&d, &f), true);
}

#[test]
fn an_interrupted_reencryption_resumes_at_the_next_start() {
    // A minute between items: the job cannot finish before the stop.
    let d = Daemon::start_with(paced(60_000));
    let (f, ids) = seed(&d, "Interrupted LLP");
    ctl_json(&d.admin_socket, &["firm", "rotate-data-key", &f.id]);
    let v = ctl_json(&d.admin_socket, &["firm", "rotate-data-key", &f.id]);
    assert_eq!(v["data_key_version"], 3);
    assert_eq!(v["retiring"], json!([1, 2]));
    assert_eq!(show(&d, &f)["data_key"]["retiring"], json!([1, 2]));
    assert_eq!(ssn_of(&d, &f, &ids[1]), SSN);

    // The stop does not wait for the job; the retired keys survive it.
    let d = d.restart(paced(0));
    let s = wait_done(&d, &f);
    assert_eq!(s["data_key"]["active"], 3, "{s}");
    assert_eq!(s["data_key"]["retiring"], json!([]), "{s}");
    assert_eq!(s["data_key"]["reencryption"]["destroyed"], json!([1, 2]));
    for id in &ids {
        assert_eq!(ssn_of(&d, &f, id), SSN);
    }
    assert_eq!(verify_secret(&d, &f), true);
    if let Some(after) = envelope_versions(&d, &f) {
        assert_eq!(after, "[3] 4");
    }
}
