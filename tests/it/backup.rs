//! Backups through the real daemon: a snapshot under write load restores to
//! exactly what was acknowledged before it, onto a fresh root that then
//! serves the API; incremental snapshots; damage detected by verify; a wrong
//! master key writes nothing; prune, drill, and the system log.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::Client;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options, ctl, ctl_json, prod_config};
use crate::records::{collection, req};

const SSN: &str = "219-09-9999";

fn create_record(c: &Client, f: &Firm, n: usize) -> Option<String> {
    let auth = format!("Bearer {}", f.token);
    let body = json!({"name": format!("Client {n}"), "ssn": SSN, "visits": n}).to_string();
    let r = c.request(
        "POST",
        &format!("/api/v1/records/{}/clients", f.id),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    );
    (r.status == 201).then(|| r.json()["id"].as_str().unwrap().to_owned())
}

fn backup(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    ctl_json(&d.admin_socket, &all)
}

/// Restores `snapshot` from `repo` into `<dir>/state` (offline, no daemon),
/// with the master key file `key`; the command's output.
pub fn restore(repo: &Path, snapshot: &str, to: &Path, key: &Path) -> std::process::Output {
    ctl(
        Path::new("/nonexistent"),
        &[
            "--json",
            "backup",
            "restore",
            snapshot,
            "--to",
            to.to_str().unwrap(),
            "--repository",
            repo.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
        ],
    )
}

/// The system log's entries as `action outcome`.
pub fn system_actions(socket: &Path) -> Vec<String> {
    let v = ctl_json(socket, &["audit", "system", "list", "--limit", "1000"]);
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_snapshot_under_write_load_restores_every_acknowledged_write_and_serves_the_api() {
    let d = Daemon::start();
    let f = create_firm(&d, "Backup LLP");
    let other = create_firm(&d, "Other LLP");
    collection(&d, &f, "clients", "flag");
    collection(&d, &other, "clients", "flag");
    let repo = d.dir.path().join("repo");

    // Four clients write continuously; each acknowledged create is noted
    // with the moment its answer arrived.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let client = d.client();
            let f = Firm {
                id: f.id.clone(),
                token: f.token.clone(),
            };
            std::thread::spawn(move || {
                let mut n = w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Some(id) = create_record(&client, &f, n) {
                        acked.lock().unwrap().push((Instant::now(), id));
                    }
                }
            })
        })
        .collect();
    let count = |a: &Arc<Mutex<Vec<(Instant, String)>>>| a.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&acked) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut snaps = Vec::new();
    for round in 0..2 {
        let began = Instant::now();
        let snap = backup(&d, &["create", "--to", repo.to_str().unwrap()]);
        let ended = Instant::now();
        // Enough writes after each snapshot that the writer checkpoints
        // (1,000 WAL frames) before the next: the second snapshot reads only
        // the pages those checkpoints changed.
        let at_end = count(&acked);
        while count(&acked) < at_end + 600 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(snap["firms"], 2);
        assert!(snap["added_bytes"].as_u64().unwrap() > 0);
        // The writers were paused only while the image was taken.
        assert!(
            snap["max_writer_pause_us"].as_u64().unwrap() < 1_000_000,
            "{snap}"
        );
        if round == 1 {
            // Read only where checkpoints changed the main files since the first.
            assert_eq!(snap["firms_read_changed"], 2, "{snap}");
            assert!(snap["changed_pages_read"].as_u64().unwrap() > 0, "{snap}");
        }
        snaps.push((began, ended, snap["snapshot"].as_str().unwrap().to_owned()));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for (began, ended, id) in &snaps {
        check_restore(&d, &repo, id, &acked, *began, *ended, &f, &other);
    }
}

/// Restores snapshot `id` onto a fresh root and serves it: every write
/// acknowledged before `began` is there, none acknowledged after `ended`.
#[allow(clippy::too_many_arguments)]
fn check_restore(
    d: &Daemon,
    repo: &Path,
    id: &str,
    acked: &[(Instant, String)],
    began: Instant,
    ended: Instant,
    f: &Firm,
    other: &Firm,
) {
    let before: Vec<&String> = acked
        .iter()
        .filter(|(t, _)| *t < began)
        .map(|(_, id)| id)
        .collect();
    let after: Vec<&String> = acked
        .iter()
        .filter(|(t, _)| *t > ended)
        .map(|(_, id)| id)
        .collect();
    assert!(
        before.len() >= 100 && after.len() >= 50,
        "{} / {}",
        before.len(),
        after.len()
    );

    // Restore onto a fresh root, offline, with the master key (dev mode keeps it in the state dir).
    let dir2 = tempfile::Builder::new().prefix("sr-it-").tempdir().unwrap();
    let key = dir2.path().join("master.key");
    fs::copy(d.state_dir.join("master.key"), &key).unwrap();
    let out = restore(repo, id, &dir2.path().join("state"), &key);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["snapshot"], id);
    assert_eq!(r["firms"], 2);

    // The restored root serves the API: the old API key works, every write
    // acknowledged before the snapshot began is there with its sensitive
    // field, and nothing acknowledged after it ended is.
    let d2 = Daemon::start_in(
        dir2,
        Options {
            dev: false,
            config: Some(Box::new(|dir| prod_config(dir, ""))),
            ..Options::default()
        },
    );
    let record = |rid: &str| {
        req(
            &d2,
            "GET",
            &format!("/api/v1/records/{}/clients/{rid}", f.id),
            &f.token,
            None,
            &[],
        )
    };
    for rid in &before {
        let r = record(rid);
        assert_eq!(r.status, 200, "{rid} was acknowledged before the snapshot");
        assert_eq!(r.json()["data"]["ssn"], SSN);
    }
    for rid in &after {
        let r = record(rid);
        assert_eq!(
            r.status, 404,
            "{rid} was acknowledged after the snapshot ended"
        );
    }
    // Every audit log verifies after the restore; the other firm serves too.
    for firm in [f, other] {
        let v = ctl_json(&d2.admin_socket, &["audit", "verify", "--firm", &firm.id]);
        assert_eq!(v["ok"], true, "{v}");
        let r = req(
            &d2,
            "GET",
            &format!("/api/v1/firms/{}", firm.id),
            &firm.token,
            None,
            &[],
        );
        assert_eq!(r.status, 200);
    }
    let sys = ctl_json(&d2.admin_socket, &["audit", "system", "verify"]);
    assert_eq!(sys["ok"], true, "{sys}");
    // The restore is in the restored system log.
    assert!(system_actions(&d2.admin_socket).contains(&"backup.restore success".to_owned()));
}

fn repo_files(repo: &Path, kind: &str, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(repo.join(kind)).unwrap().flatten() {
        for f in fs::read_dir(sub.path()).unwrap().flatten() {
            if f.path().to_string_lossy().ends_with(ext) {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn verify_fails(d: &Daemon, repo: &Path, snapshot: &str, needle: &str) {
    let out = ctl(
        &d.admin_socket,
        &[
            "--json",
            "backup",
            "verify",
            snapshot,
            "--repository",
            repo.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !out.status.success(),
        "verify passed a damaged repository: {v}"
    );
    let r = &v["result"];
    assert_eq!(r["ok"], false, "{v}");
    let problem = r["snapshots"][0]["problem"].as_str().unwrap();
    assert!(
        problem.contains(needle),
        "{problem:?} should say {needle:?}"
    );
}

#[test]
fn incremental_snapshots_store_changes_only_and_damage_or_a_wrong_key_is_caught() {
    let d = Daemon::start();
    let f = create_firm(&d, "Incremental LLP");
    collection(&d, &f, "clients", "flag");
    let client = d.client();
    let mut ids = Vec::new();
    for n in 0..1500 {
        ids.push(create_record(&client, &f, n).unwrap());
    }
    let repo = d.dir.path().join("repo");
    let r = repo.to_str().unwrap();
    let first = backup(&d, &["create", "--to", r]);
    // One record changes; the next snapshot stores a small fraction.
    let path = format!("/api/v1/records/{}/clients/{}", f.id, ids[700]);
    let auth = format!("Bearer {}", f.token);
    let p = client.request(
        "PATCH",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/merge-patch+json"),
            ("If-Match", "\"1\""),
        ],
        Some(br#"{"visits": 99999}"#),
    );
    assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    let second = backup(&d, &["create", "--to", r]);
    let (a1, a2) = (
        first["added_bytes"].as_u64().unwrap(),
        second["added_bytes"].as_u64().unwrap(),
    );
    assert!(a1 > 1_000_000, "first snapshot stored {a1} bytes");
    assert!(
        a2 * 20 < a1,
        "one changed record stored {a2} bytes after a first snapshot of {a1}"
    );
    let (s1, s2) = (
        first["snapshot"].as_str().unwrap().to_owned(),
        second["snapshot"].as_str().unwrap().to_owned(),
    );
    // Ciphertext only: no field value, firm name or key in clear anywhere.
    let mut all = Vec::new();
    read_tree(&repo, &mut all);
    for needle in [
        SSN.as_bytes(),
        b"Client 700",
        b"Incremental LLP",
        f.token.as_bytes(),
    ] {
        assert!(
            !all.windows(needle.len()).any(|w| w == needle),
            "{:?} is readable in the repository",
            String::from_utf8_lossy(needle)
        );
    }
    let list = backup(&d, &["list", "--repository", r]);
    let listed: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [s1.as_str(), s2.as_str()]);
    let ok = backup(&d, &["verify", "--deep", "--repository", r]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["snapshots"][1]["deep"]["firms"], 1);

    // A flipped byte in a pack (the largest: the first snapshot's pages).
    let pack = repo_files(&repo, "packs", ".pack")
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let saved = fs::read(&pack).unwrap();
    let mut bad = saved.clone();
    bad[saved.len() / 2] ^= 0x01;
    fs::write(&pack, &bad).unwrap();
    verify_fails(&d, &repo, &s1, "does not match its hash");
    fs::write(&pack, &saved).unwrap();
    // A missing chunk (its pack gone).
    fs::rename(&pack, pack.with_extension("gone")).unwrap();
    verify_fails(&d, &repo, &s1, "missing");
    fs::rename(pack.with_extension("gone"), &pack).unwrap();
    // A swapped manifest: the first snapshot's, under the second's name.
    let (n1, n2) = (
        repo.join(format!("snapshots/{s1}.note")),
        repo.join(format!("snapshots/{s2}.note")),
    );
    let saved2 = fs::read(&n2).unwrap();
    fs::copy(&n1, &n2).unwrap();
    verify_fails(&d, &repo, &s2, "swapped");
    // A manifest edited after signing.
    let edited =
        String::from_utf8(saved2.clone())
            .unwrap()
            .replacen("\"firms\":[{", "\"firms\":[ {", 1);
    fs::write(&n2, edited).unwrap();
    verify_fails(&d, &repo, &s2, "signature");
    fs::write(&n2, &saved2).unwrap();
    assert_eq!(backup(&d, &["verify", "--repository", r])["ok"], true);

    // A wrong master key: a clear failure, and nothing written.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = dir2.path().join("wrong.key");
    crate::harness::write_key_file(&wrong, &[0x42; 32]);
    let target = dir2.path().join("state");
    let out = restore(&repo, "latest", &target, &wrong);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "wrong_key", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("master key does not open"),
        "{v}"
    );
    assert!(!target.exists(), "a failed restore wrote its target");
    let left: Vec<_> = fs::read_dir(dir2.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("wrong.key")],
        "nothing else was written"
    );
    // A non-empty target is refused.
    fs::create_dir(&target).unwrap();
    fs::write(target.join("registry.db"), b"live").unwrap();
    let out = restore(&repo, "latest", &target, &d.state_dir.join("master.key"));
    assert!(!out.status.success());
    assert_eq!(fs::read(target.join("registry.db")).unwrap(), b"live");

    // A repository inside the state directory is refused.
    let inside = d.state_dir.join("firms/../backups");
    let out = ctl(
        &d.admin_socket,
        &["backup", "create", "--to", inside.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the state directory"));
    assert!(!d.state_dir.join("backups").exists());

    // The drill restores the newest snapshot into scratch and reports.
    let drill = backup(&d, &["drill", "--repository", r]);
    assert_eq!(drill["snapshot"], s2.as_str());
    assert_eq!(drill["firms"], 1);
    assert!(drill["entries"].as_u64().unwrap() >= 1500, "{drill}");
    assert!(drill["recovery_point_secs"].as_i64().unwrap() >= 0);
    assert!(drill["recovery_time_secs"].as_f64().unwrap() > 0.0);
    assert!(
        fs::read_dir(d.state_dir.join("scratch"))
            .unwrap()
            .next()
            .is_none(),
        "scratch is cleaned"
    );

    // Prune to the newest: the first snapshot and the chunks only it used go.
    let before = dir_size(&repo);
    let pruned = backup(
        &d,
        &[
            "prune",
            "--keep-last",
            "1",
            "--keep-daily",
            "0",
            "--repository",
            r,
        ],
    );
    assert_eq!(pruned["removed"], json!([s1]));
    assert!(pruned["chunks_removed"].as_u64().unwrap() > 0, "{pruned}");
    assert!(dir_size(&repo) < before);
    let ok = backup(&d, &["verify", "--deep", "--repository", r]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["snapshots"].as_array().unwrap().len(), 1);

    // Every backup command is in the system log, failures included.
    let actions = system_actions(&d.admin_socket);
    for a in [
        "backup.create success",
        "backup.verify success",
        "backup.verify failure",
        "backup.drill success",
        "backup.prune success",
    ] {
        assert!(
            actions.contains(&a.to_owned()),
            "{a} missing from {actions:?}"
        );
    }
}

fn dir_size(p: &Path) -> u64 {
    fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn read_tree(p: &Path, out: &mut Vec<u8>) {
    for e in fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            read_tree(&e.path(), out);
        } else {
            out.extend(fs::read(e.path()).unwrap());
        }
    }
}

#[test]
fn another_process_on_the_live_files_after_writes_and_a_snapshot_loses_nothing() {
    // SQLite's locks are POSIX locks, which a process drops on *every* lock
    // of a file when it closes any descriptor of it. The daemon must never
    // open a database file (or its -shm) a second time: then another
    // process here would find no lock, take the files for its own and fold
    // the WAL away under the daemon.
    let d = Daemon::start();
    let f = create_firm(&d, "Locks LLP");
    collection(&d, &f, "clients", "flag");
    let c = d.client();
    let mut ids = vec![create_record(&c, &f, 0).unwrap()];
    let repo = d.dir.path().join("repo");
    backup(&d, &["create", "--to", repo.to_str().unwrap()]);
    ids.push(create_record(&c, &f, 1).unwrap());
    let db = crate::firms::firm_db(&d, &f.id);
    let export = ctl_json(&d.admin_socket, &["firm", "export-key", &f.id]);
    if let Some(out) = crate::firms::stock_script(
        &db,
        &export,
        "print(c.execute('SELECT count(*) FROM records').fetchone()[0])\nc.close()\n",
        &[],
    ) {
        assert_eq!(out, "2");
    }
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    assert!(Path::new(&wal).exists(), "the daemon's WAL was folded away");
    ids.push(create_record(&c, &f, 2).unwrap());
    let d = d.restart(Options::default());
    for id in &ids {
        let r = req(
            &d,
            "GET",
            &format!("/api/v1/records/{}/clients/{id}", f.id),
            &f.token,
            None,
            &[],
        );
        assert_eq!(r.status, 200, "{id} lost");
    }
}
