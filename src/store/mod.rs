//! The only module that imports rusqlite: the registry database, the per-firm
//! databases, migrations, the group-commit writer and the read pools.
//!
//! Every database is SQLCipher with a raw 256-bit key (no passphrase KDF) and
//! its page crypto on our AWS-LC FIPS provider; every open verifies that.

pub mod audit_log;
pub mod bench;
pub mod files;
pub mod firm;
pub mod peppers;
pub mod registry;
mod writer;

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::crypto::keyring::SqlcipherKey;
use crate::crypto::sqlcipher::{self, PROVIDER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path} does not open with this key (wrong master key, or not a Strongroom database)"
    )]
    WrongKey { path: String },
    #[error("database {path} is not on the FIPS crypto provider: {reason}")]
    NotFips { path: String, reason: String },
    #[error("database error: {0}")]
    Sql(rusqlite::Error),
    #[error("the disk holding the databases is full")]
    Full,
    #[error("database I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("the write queue is full")]
    Busy,
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("a write command panicked")]
    CommandPanicked,
    #[error("the commit failed: {0}")]
    CommitFailed(String),
    #[error("not found")]
    NotFound,
    #[error("the row changed since the version the write names")]
    Stale,
    #[error("the row already exists")]
    Exists,
    /// Sealing a value inside the transaction failed (a crypto failure).
    #[error("sealing failed")]
    SealFailed,
}

impl StoreError {
    /// A stable code for logs and replies (the cause, if any, goes to the log).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::WrongKey { .. } => "wrong_key",
            StoreError::NotFips { .. } => "not_fips",
            StoreError::Sql(_) => "storage_error",
            StoreError::Full => "storage_full",
            StoreError::Io { .. } => "storage_io",
            StoreError::Corrupt(_) => "storage_corrupt",
            StoreError::Busy => "busy",
            StoreError::WriterGone | StoreError::CommandPanicked | StoreError::CommitFailed(_) => {
                "storage_error"
            }
            StoreError::NotFound => "not_found",
            StoreError::Stale => "precondition_failed",
            StoreError::Exists => "conflict",
            StoreError::SealFailed => "crypto_error",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == ErrorCode::DiskFull
        {
            space::full();
            return StoreError::Full;
        }
        StoreError::Sql(e)
    }
}

/// A full disk, reported once per episode with the space left.
pub mod space {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    static FULL: AtomicBool = AtomicBool::new(false);
    static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

    /// Names the directory whose free space the log reports.
    pub fn watch(dir: PathBuf) {
        let _ = STATE_DIR.set(dir);
    }

    fn free_bytes() -> Option<u64> {
        let dir = STATE_DIR.get()?;
        let st = nix::sys::statvfs::statvfs(dir.as_path()).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// A write failed for lack of space.
    pub fn full() {
        if !FULL.swap(true, Ordering::Relaxed) {
            tracing::error!(
                free_bytes = free_bytes().unwrap_or(0),
                "storage full: writes are refused (507) until space is freed; nothing acknowledged is lost"
            );
        }
    }

    /// Free space that ends an episode: small writes can still fit in the
    /// WAL's reused pages on a full disk, so a commit alone does not.
    const RESUME_BYTES: u64 = 4 * 1024 * 1024;

    /// A write committed: ends an episode once space is really back.
    pub fn ok() {
        if FULL.load(Ordering::Relaxed)
            && free_bytes().is_none_or(|b| b >= RESUME_BYTES)
            && FULL.swap(false, Ordering::Relaxed)
        {
            tracing::info!(
                free_bytes = free_bytes().unwrap_or(0),
                "storage available again: writes resume"
            );
        }
    }
}

/// Opens a SQLCipher database with a raw key and proves, before any other use,
/// that it decrypts and runs on our FIPS provider.
pub(crate) fn open_encrypted(
    path: &Path,
    key: &SqlcipherKey,
    flags: OpenFlags,
) -> Result<Connection, StoreError> {
    sqlcipher::ensure_linked();
    let display = path.display().to_string();
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "key", key.as_pragma_value())?;
    // Security invariant: a database is used only through our FIPS provider, in FIPS mode.
    let provider: String = conn.query_row("PRAGMA cipher_provider", [], |r| r.get(0))?;
    if provider != PROVIDER_NAME {
        return Err(StoreError::NotFips {
            path: display,
            reason: format!("cipher_provider is {provider:?}"),
        });
    }
    let fips: String = conn.query_row("PRAGMA cipher_fips_status", [], |r| r.get(0))?;
    if fips.trim() != "1" {
        return Err(StoreError::NotFips {
            path: display,
            reason: format!("cipher_fips_status is {fips:?}"),
        });
    }
    // The first real read proves the key: SQLCipher reports SQLITE_NOTADB otherwise.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(conn),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            Err(StoreError::WrongKey { path: display })
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the migrations not yet applied (tracked in `PRAGMA user_version`).
pub(crate) fn migrate(conn: &Connection, steps: &[&str]) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in steps.iter().enumerate().skip(current.max(0) as usize) {
        let version = i + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

/// Stops SQLCipher's own log lines on stderr (a command-line tool reports
/// a wrong key itself, in one line).
pub fn quiet_sqlcipher_log() {
    sqlcipher::ensure_linked();
    if let Ok(c) = Connection::open_in_memory() {
        let _ = c.execute_batch("PRAGMA cipher_log_level = NONE;");
    }
}

/// The version string SQLCipher reports (e.g. `4.19.0 community`).
pub fn sqlcipher_version() -> String {
    Connection::open_in_memory()
        .and_then(|c| c.query_row("PRAGMA cipher_version", [], |r| r.get::<_, String>(0)))
        .unwrap_or_default()
}
