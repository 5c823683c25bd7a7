//! SQLCipher page formats: new firm databases use the HMAC-SHA256 page MAC,
//! older ones (HMAC-SHA512, SQLCipher 4's defaults) keep working and move to
//! the new format with a rekey, and a stock SQLCipher 4 opens both with the
//! PRAGMAs `firm export-key` names.

use crate::firms::{create_firm, firm_db, get, patch, stock_sqlcipher_python};
use crate::harness::{Daemon, Options, ctl, ctl_json};

fn with_format(format: &'static str) -> Options {
    Options {
        config: Some(Box::new(move |_| {
            format!("version = 1\n[storage]\npage_format = \"{format}\"\n")
        })),
        ..Options::default()
    }
}

fn wal(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

fn display_name(d: &Daemon, id: &str, token: &str) -> String {
    let r = get(&d.client(), id, Some(token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["profile"]["display_name"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Reads the firm's display name with stock SQLCipher 4 (built on OpenSSL)
/// given the key and the PRAGMAs `export-key` printed.
fn stock_read(db: &std::path::Path, key: &str, pragmas: &str) -> Result<String, String> {
    let py = stock_sqlcipher_python().ok_or("no stock client")?;
    let script = format!(
        "import sqlcipher3\n\
         c = sqlcipher3.connect({db:?})\n\
         c.execute('PRAGMA key = \"' + {key:?} + '\"')\n\
         for p in {pragmas:?}.split(';'):\n\
         \x20   p.strip() and c.execute(p)\n\
         print(c.execute(\"SELECT v FROM profile WHERE k = 'display_name'\").fetchone()[0])\n",
        db = db.display().to_string()
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The key and the PRAGMAs after it, as `export-key` gives them.
fn export(d: &Daemon, id: &str) -> (String, String, String) {
    let v = ctl_json(&d.admin_socket, &["firm", "export-key", id]);
    let key = v["sqlcipher_key"].as_str().unwrap().to_owned();
    let open_with = v["open_with"].as_str().unwrap();
    let pragmas = open_with
        .split_once("; ")
        .map(|(_, rest)| rest.to_owned())
        .unwrap();
    (v["page_format"].as_str().unwrap().to_owned(), key, pragmas)
}

#[test]
fn older_format_firms_keep_working_migrate_by_rekey_and_both_open_with_stock_sqlcipher() {
    // A firm made while the appliance wrote SQLCipher 4's default format.
    let d = Daemon::start_with(with_format("hmac-sha512"));
    let old = create_firm(&d, "Legacy Partners");
    let c = d.client();
    assert_eq!(
        patch(&c, &old.id, &old.token, r#"{"display_name":"old-format"}"#).status,
        200
    );
    let (format, old_key, old_pragmas) = export(&d, &old.id);
    assert_eq!(format, "hmac-sha512");
    assert!(!old_pragmas.contains("HMAC_SHA256"), "{old_pragmas}");

    // The default format now: the old firm still opens (its format is read
    // from the file), a new firm gets HMAC-SHA256.
    let d = d.restart(Options::default());
    assert_eq!(display_name(&d, &old.id, &old.token), "old-format");
    let new = create_firm(&d, "Current Partners");
    assert_eq!(
        patch(
            &d.client(),
            &new.id,
            &new.token,
            r#"{"display_name":"new-format"}"#
        )
        .status,
        200
    );
    let (format, new_key, new_pragmas) = export(&d, &new.id);
    assert_eq!(format, "hmac-sha256");
    assert!(new_pragmas.contains("PRAGMA cipher_hmac_algorithm = HMAC_SHA256"));
    assert!(new_pragmas.contains("PRAGMA fast_kdf_iter = 1000"));

    // Disaster recovery: a stock SQLCipher 4 reads each with its PRAGMAs,
    // and the formats really differ (the other PRAGMAs do not open it).
    let old_db = firm_db(&d, &old.id);
    let new_db = firm_db(&d, &new.id);
    if stock_sqlcipher_python().is_some() {
        assert_eq!(
            stock_read(&old_db, &old_key, &old_pragmas).unwrap(),
            "old-format"
        );
        assert_eq!(
            stock_read(&new_db, &new_key, &new_pragmas).unwrap(),
            "new-format"
        );
        assert!(stock_read(&new_db, &new_key, &old_pragmas).is_err());
        assert!(stock_read(&old_db, &old_key, &new_pragmas).is_err());
    }
    // Those readers were other processes on files the daemon holds open:
    // none may think itself the last one and fold away the WAL (finding a
    // format must not release the daemon's locks), and a write after them
    // is kept.
    assert!(wal(&new_db).exists() && wal(&old_db).exists());
    assert_eq!(
        patch(
            &d.client(),
            &new.id,
            &new.token,
            r#"{"display_name":"after-readers"}"#
        )
        .status,
        200
    );

    // A rekey moves the old firm to the current format, keeping its data and
    // an intact audit log.
    let v = ctl_json(&d.admin_socket, &["firm", "rekey", &old.id]);
    assert_eq!(v["db_key_version"], 2);
    assert_eq!(display_name(&d, &old.id, &old.token), "old-format");
    let (format, migrated_key, migrated_pragmas) = export(&d, &old.id);
    assert_eq!(format, "hmac-sha256");
    assert_ne!(migrated_key, old_key);
    assert!(!old_db.with_extension("db.migrating").exists());
    let out = ctl(&d.admin_socket, &["audit", "verify", "--firm", &old.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = d.restart(Options::default());
    assert_eq!(display_name(&d, &old.id, &old.token), "old-format");
    assert_eq!(display_name(&d, &new.id, &new.token), "after-readers");
    if stock_sqlcipher_python().is_some() {
        assert_eq!(
            stock_read(&old_db, &migrated_key, &migrated_pragmas).unwrap(),
            "old-format"
        );
        assert!(stock_read(&old_db, &old_key, &old_pragmas).is_err());
    }
}

#[test]
fn an_unknown_page_format_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, logs) = Daemon::expect_startup_failure(
        dir.path(),
        Options {
            config: Some(Box::new(|_| {
                "version = 1\n[storage]\npage_format = \"hmac-md5\"\n".to_owned()
            })),
            ..Options::default()
        },
    );
    assert_eq!(code, Some(78), "{logs}");
    assert!(logs.contains("page_format"), "{logs}");
}
