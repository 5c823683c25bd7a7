//! Firms: per-firm SQLCipher storage, lifecycle through strongroomctl, the
//! first authenticated API, master-key rotation and disaster recovery.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{Client, Response};
use crate::harness::{Daemon, Options, ctl, ctl_json, prod_config, write_key_file};

pub struct Firm {
    pub id: String,
    pub token: String,
}

pub fn create_firm(d: &Daemon, name: &str) -> Firm {
    let v = ctl_json(&d.admin_socket, &["firm", "create", name]);
    assert_eq!(v["firm"]["name"], name);
    assert_eq!(v["firm"]["state"], "active");
    assert_eq!(v["api_key"]["role"], "owner");
    Firm {
        id: v["firm"]["id"].as_str().unwrap().to_owned(),
        token: v["api_key"]["secret"].as_str().unwrap().to_owned(),
    }
}

pub fn get(c: &Client, firm: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    c.request("GET", &format!("/api/v1/firms/{firm}"), &headers, None)
}

pub fn patch(c: &Client, firm: &str, token: &str, body: &str) -> Response {
    let auth = format!("Bearer {token}");
    c.request(
        "PATCH",
        &format!("/api/v1/firms/{firm}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
}

pub fn firm_db(d: &Daemon, id: &str) -> PathBuf {
    d.state_dir.join("firms").join(format!("{id}.db"))
}

/// The body with the per-request id removed, to compare two answers.
fn without_request_id(r: &Response) -> serde_json::Value {
    let mut v = r.json();
    v.as_object_mut().unwrap().remove("request_id");
    v
}

#[test]
fn two_firms_their_keys_and_tenant_isolation_survive_a_restart() {
    let d = Daemon::start();
    let a = create_firm(&d, "Alpha LLP");
    let b = create_firm(&d, "Beta Health");
    assert_ne!(a.id, b.id);
    let c = d.client();

    let r = get(&c, &a.id, Some(&a.token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "Alpha LLP");
    assert_eq!(r.json()["id"], a.id.as_str());
    assert_eq!(get(&c, &b.id, Some(&b.token)).json()["name"], "Beta Health");

    // No key, malformed key, wrong secret: 401 with a Bearer challenge.
    for token in [
        None,
        Some("nope"),
        Some(&a.token[..a.token.len() - 1]),
        Some(&format!("{}0", &a.token[..a.token.len() - 1]).replace(
            &a.token[a.token.len() - 1..],
            if a.token.ends_with('0') { "1" } else { "0" },
        )),
    ] {
        let r = get(&c, &a.id, token);
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.json()["code"], "unauthenticated");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }

    // Another firm's key: 403. An unknown firm id: the same 403, same body.
    let foreign = get(&c, &a.id, Some(&b.token));
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.json()["code"], "forbidden_firm");
    let unknown = get(&c, "frm_000000000000000000000000", Some(&b.token));
    let garbage = get(&c, "not-a-firm", Some(&b.token));
    assert_eq!(unknown.status, 403);
    assert_eq!(garbage.status, 403);
    assert_eq!(without_request_id(&foreign), without_request_id(&unknown));
    assert_eq!(without_request_id(&foreign), without_request_id(&garbage));

    let r = patch(
        &c,
        &a.id,
        &a.token,
        r#"{"display_name":"Alpha & Partners"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["profile"]["display_name"], "Alpha & Partners");
    // Writing into another firm is refused the same way.
    assert_eq!(
        patch(&c, &a.id, &b.token, r#"{"display_name":"x"}"#).status,
        403
    );

    let d = d.restart(Options::default());
    let c = d.client();
    let r = get(&c, &a.id, Some(&a.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["profile"]["display_name"], "Alpha & Partners");
    assert_eq!(get(&c, &b.id, Some(&b.token)).status, 200);
    assert_eq!(get(&c, &a.id, Some(&b.token)).status, 403);

    let list = ctl_json(&d.admin_socket, &["firm", "list"]);
    assert_eq!(list["firms"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_bodies_get_problem_answers_and_change_nothing() {
    let d = Daemon::start();
    let a = create_firm(&d, "Gamma");
    let c = d.client();
    let auth = format!("Bearer {}", a.token);
    let path = format!("/api/v1/firms/{}", a.id);
    for (ct, body, status, code) in [
        (
            "application/json",
            r#"{"display_name": 5}"#,
            400,
            "invalid_body",
        ),
        (
            "application/json",
            r#"{"nickname":"x"}"#,
            400,
            "invalid_body",
        ),
        ("application/json", "{", 400, "invalid_body"),
        (
            "text/plain",
            r#"{"display_name":"x"}"#,
            415,
            "unsupported_media_type",
        ),
    ] {
        let r = c.request(
            "PATCH",
            &path,
            &[("Authorization", &auth), ("Content-Type", ct)],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, status, "{body}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json()["code"], code, "{body}");
    }
    let big = format!(r#"{{"display_name":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let r = c.request(
        "PATCH",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(big.as_bytes()),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "body_too_large");
    let v = get(&c, &a.id, Some(&a.token)).json();
    assert!(v["profile"].as_object().unwrap().is_empty(), "{v}");
}

#[test]
fn frozen_firms_refuse_writes_with_423_and_still_read() {
    let d = Daemon::start();
    let a = create_firm(&d, "Delta");
    let c = d.client();
    let v = ctl_json(&d.admin_socket, &["firm", "freeze", &a.id]);
    assert_eq!(v["firm"]["state"], "frozen");
    let r = patch(&c, &a.id, &a.token, r#"{"display_name":"nope"}"#);
    assert_eq!(r.status, 423);
    assert_eq!(r.json()["code"], "firm_frozen");
    let r = get(&c, &a.id, Some(&a.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "frozen");
    assert!(r.json()["profile"].as_object().unwrap().is_empty());

    ctl_json(&d.admin_socket, &["firm", "unfreeze", &a.id]);
    assert_eq!(
        patch(&c, &a.id, &a.token, r#"{"display_name":"back"}"#).status,
        200
    );
}

#[test]
fn delete_crypto_shreds_the_firm_for_good() {
    let d = Daemon::start();
    let a = create_firm(&d, "Epsilon");
    let b = create_firm(&d, "Zeta");
    let c = d.client();
    assert_eq!(
        patch(&c, &a.id, &a.token, r#"{"display_name":"gone soon"}"#).status,
        200
    );
    assert!(firm_db(&d, &a.id).exists());

    // The confirmation must repeat the id.
    let out = ctl(
        &d.admin_socket,
        &["firm", "delete", &a.id, "--confirm", &b.id],
    );
    assert!(!out.status.success());
    assert_eq!(get(&c, &a.id, Some(&a.token)).status, 200);

    let v = ctl_json(
        &d.admin_socket,
        &["firm", "delete", &a.id, "--confirm", &a.id],
    );
    assert_eq!(v["firm"]["state"], "deleted");
    assert!(!firm_db(&d, &a.id).exists());
    assert_eq!(get(&c, &a.id, Some(&a.token)).status, 401);
    assert_eq!(get(&c, &a.id, Some(&b.token)).status, 403);
    // The break-glass export has nothing left to give.
    let out = ctl(&d.admin_socket, &["--json", "firm", "export-key", &a.id]);
    assert!(!out.status.success());
    // The id stays listed as deleted and is never reused.
    let list = ctl_json(&d.admin_socket, &["firm", "list"]);
    let row = list["firms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == a.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["state"], "deleted");
    let d = d.restart(Options::default());
    assert_eq!(get(&d.client(), &a.id, Some(&a.token)).status, 401);
    assert_eq!(get(&d.client(), &b.id, Some(&b.token)).status, 200);
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn read_all_db_files(path: &Path) -> Vec<u8> {
    let mut all = std::fs::read(path).unwrap();
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(p)) {
            all.extend(b);
        }
    }
    all
}

#[test]
fn firm_database_holds_no_plaintext_and_opens_with_stock_sqlcipher() {
    let d = Daemon::start();
    let a = create_firm(&d, "Eta Bank");
    let marker = "PLAINTEXT-MARKER-7f3c9e";
    let body = format!(r#"{{"display_name":"{marker}"}}"#);
    assert_eq!(patch(&d.client(), &a.id, &a.token, &body).status, 200);
    let db = firm_db(&d, &a.id);
    // While open (data in the WAL) and after a clean stop (checkpointed).
    assert!(!contains(&read_all_db_files(&db), marker.as_bytes()));
    let key = ctl_json(&d.admin_socket, &["firm", "export-key", &a.id]);
    // New firms use the HMAC-SHA256 page format; export-key names its PRAGMAs.
    assert_eq!(key["page_format"], "hmac-sha256");
    let raw = key["sqlcipher_key"].as_str().unwrap();
    assert!(raw.starts_with("x'") && raw.len() == 67, "{raw}");
    let mut d = d;
    assert_eq!(d.stop().code(), Some(0));
    let bytes = read_all_db_files(&db);
    assert!(bytes.len() > 4096);
    assert!(!contains(&bytes, marker.as_bytes()));
    assert!(!contains(&bytes, b"SQLite format 3"));
    assert!(!contains(
        &read_all_db_files(&d.state_dir.join("registry.db")),
        b"Eta Bank"
    ));

    // Disaster recovery: stock SQLCipher 4 (built on OpenSSL) reads the file.
    let Some(stdout) = stock_script(
        &db,
        &key,
        "print(c.execute(\"SELECT v FROM profile WHERE k = 'display_name'\").fetchone()[0])\n\
         print(c.execute('PRAGMA cipher_provider').fetchone()[0])\n",
        &[],
    ) else {
        return;
    };
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(marker));
    assert_ne!(
        lines.next(),
        Some("aws-lc-rs-fips"),
        "stock client, not ours"
    );
}

/// Python lines that open `db` as `c` with stock SQLCipher 4, as `firm
/// export-key`'s answer `export` says: the raw key, then its page format's PRAGMAs.
pub fn stock_connect(db: &Path, export: &serde_json::Value) -> String {
    let key = export["sqlcipher_key"].as_str().unwrap();
    let pragmas = export["open_with"]
        .as_str()
        .unwrap()
        .split_once("; ")
        .unwrap()
        .1;
    format!(
        "c = sqlcipher3.connect({db:?})\n\
         c.execute('PRAGMA key = \"' + {key:?} + '\"')\n\
         for p in {pragmas:?}.split(';'):\n\
         \x20   p.strip() and c.execute(p)\n",
        db = db.display().to_string()
    )
}

/// Runs Python `body` with stock SQLCipher 4 after the lines that open `db`
/// as `c` (see [`stock_connect`]), with `args` as `sys.argv[1:]`; asserts it
/// succeeded and returns its output, trimmed. None without the stock client.
pub fn stock_script(
    db: &Path,
    export: &serde_json::Value,
    body: &str,
    args: &[&str],
) -> Option<String> {
    let py = stock_sqlcipher_python()?;
    let script = format!(
        "import json, sqlcipher3, sys\n{}{body}",
        stock_connect(db, export)
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Python interpreter with stock SQLCipher 4 (`make test` provides it).
pub fn stock_sqlcipher_python() -> Option<String> {
    match std::env::var("STRONGROOM_STOCK_SQLCIPHER_PY") {
        Ok(p) if Path::new(&p).exists() => Some(p),
        _ if std::env::var_os("STRONGROOM_REQUIRE_STOCK_SQLCIPHER").is_some() => {
            panic!("stock SQLCipher client required but STRONGROOM_STOCK_SQLCIPHER_PY is not set")
        }
        _ => {
            eprintln!("skipped the stock-SQLCipher check: run `make test` to provide the client");
            None
        }
    }
}

#[test]
fn rekey_changes_the_database_key_and_keeps_the_data() {
    let d = Daemon::start();
    let a = create_firm(&d, "Theta");
    let c = d.client();
    assert_eq!(
        patch(&c, &a.id, &a.token, r#"{"display_name":"kept"}"#).status,
        200
    );
    let before = ctl_json(&d.admin_socket, &["firm", "export-key", &a.id]);
    let v = ctl_json(&d.admin_socket, &["firm", "rekey", &a.id]);
    assert_eq!(v["db_key_version"], 2);
    let after = ctl_json(&d.admin_socket, &["firm", "export-key", &a.id]);
    assert_ne!(before["sqlcipher_key"], after["sqlcipher_key"]);
    let r = get(&c, &a.id, Some(&a.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["profile"]["display_name"], "kept");
    let show = ctl_json(&d.admin_socket, &["firm", "show", &a.id]);
    assert_eq!(show["key_versions"]["db"], 2);
    let d = d.restart(Options::default());
    assert_eq!(
        get(&d.client(), &a.id, Some(&a.token)).json()["profile"]["display_name"],
        "kept"
    );
}

#[test]
fn master_key_rotation_new_key_works_old_key_exits_78() {
    let opts = || Options {
        dev: false,
        config: Some(Box::new(|dir: &Path| prod_config(dir, ""))),
        ..Options::default()
    };
    let d = Daemon::start_with(opts());
    let a = create_firm(&d, "Iota");
    assert_eq!(
        patch(
            &d.client(),
            &a.id,
            &a.token,
            r#"{"display_name":"rotated"}"#
        )
        .status,
        200
    );

    let dir = d.dir.path().to_owned();
    let new_key = dir.join("master-new.key");
    write_key_file(&new_key, &[0x77; 32]);
    let v = ctl_json(
        &d.admin_socket,
        &[
            "keys",
            "rotate-master",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    );
    assert_eq!(v["master_key_generation"], 2);
    // The running daemon keeps serving with the new keyring.
    assert_eq!(get(&d.client(), &a.id, Some(&a.token)).status, 200);

    // Restart with the old key: refused, exit 78, no data touched.
    let mut d = d;
    assert_eq!(d.stop().code(), Some(0));
    let (code, logs) = Daemon::expect_startup_failure(&dir, opts());
    assert_eq!(code, Some(78), "{logs}");
    assert!(logs.contains("does not open with this key"), "{logs}");

    // Install the new key and restart: everything is there.
    std::fs::rename(&new_key, dir.join("master.key")).unwrap();
    let d = d.restart(opts());
    let r = get(&d.client(), &a.id, Some(&a.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["profile"]["display_name"], "rotated");
}

#[test]
fn master_key_problems_exit_78_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Missing key file.
    let cfg = prod_config(p, "");
    std::fs::remove_file(p.join("master.key")).unwrap();
    let (code, out) = Daemon::expect_startup_failure(
        p,
        Options {
            dev: false,
            config: Some(Box::new(move |_: &Path| cfg.clone())),
            ..Options::default()
        },
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("master.key") && out.contains("no such file"),
        "{out}"
    );

    // Short key.
    std::fs::write(p.join("master.key"), "abcd\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.join("master.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = prod_config(p, "");
    let (code, out) = Daemon::expect_startup_failure(
        p,
        Options {
            dev: false,
            config: Some(Box::new(move |_: &Path| cfg.clone())),
            ..Options::default()
        },
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("32 bytes or 64 hex"), "{out}");

    // Group- or world-readable key file.
    write_key_file(&p.join("master.key"), &[1; 32]);
    std::fs::set_permissions(p.join("master.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = prod_config(p, "");
    let (code, out) = Daemon::expect_startup_failure(
        p,
        Options {
            dev: false,
            config: Some(Box::new(move |_: &Path| cfg.clone())),
            ..Options::default()
        },
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("0644"), "{out}");
    assert!(
        !p.join("state/registry.db").exists(),
        "nothing created on a refused start"
    );
}

#[test]
fn master_key_from_systemd_credential() {
    let creds = tempfile::tempdir().unwrap();
    write_key_file(&creds.path().join("master-key"), &[0x42; 32]);
    let creds_path = creds.path().display().to_string();
    let d = Daemon::start_with(Options {
        dev: false,
        config: Some(Box::new(|dir: &Path| {
            prod_config(dir, "").replace("master_key_file", "#master_key_file")
        })),
        env: vec![("CREDENTIALS_DIRECTORY".into(), creds_path)],
        ..Options::default()
    });
    let status = ctl_json(&d.admin_socket, &["status"]);
    assert!(
        status["master_key_source"]
            .as_str()
            .unwrap()
            .starts_with("systemd credential"),
        "{status}"
    );
    let a = create_firm(&d, "Kappa");
    assert_eq!(get(&d.client(), &a.id, Some(&a.token)).status, 200);
}

#[test]
fn export_key_is_root_only_and_logged() {
    let d = Daemon::start();
    let a = create_firm(&d, "Lambda");
    let v = ctl_json(&d.admin_socket, &["firm", "export-key", &a.id]);
    assert!(v["sqlcipher_key"].as_str().unwrap().starts_with("x'"));
    let key_hex = v["sqlcipher_key"].as_str().unwrap()[2..66].to_owned();
    std::thread::sleep(Duration::from_millis(50));
    let logs = d.stderr();
    assert!(logs.contains("break-glass"), "{logs}");
    assert!(
        !logs.contains(&key_hex),
        "the key itself never reaches the log"
    );
    assert!(!logs.contains(&a.token), "API secrets never reach the log");
}

#[test]
fn generate_master_prints_a_fresh_key_without_a_daemon() {
    let generate = || {
        let out = std::process::Command::new(crate::harness::CTL)
            .args(["keys", "generate-master"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (generate(), generate());
    for k in [&a, &b] {
        let hex = k.strip_suffix('\n').unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
    }
    assert_ne!(a, b);
    // The printed form is one the daemon accepts as a master key file.
    let d = Daemon::start_with(Options {
        dev: false,
        config: Some(Box::new(move |dir: &Path| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join("master.key"))
                .unwrap();
            f.write_all(a.as_bytes()).unwrap();
            prod_config(dir, "")
        })),
        ..Options::default()
    });
    assert_eq!(d.client().get("/healthz").status, 200);
}
