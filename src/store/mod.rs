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
mod vfs;
mod warm;
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

/// The page format of a SQLCipher file: the page MAC and the KDF that derives
/// its key from the raw key. Both use 4096-byte pages, AES-256-CBC and 1000
/// PBKDF2 iterations for the MAC key; a file does not say which it is, so an
/// open tries [`PageFormat::CURRENT`] first and then the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFormat {
    /// SQLCipher 4's defaults: HMAC-SHA512 page MAC, PBKDF2-HMAC-SHA512.
    /// The registry, and firm databases created before `hmac-sha256`.
    HmacSha512,
    /// HMAC-SHA256 page MAC and PBKDF2-HMAC-SHA256 (both FIPS-approved, and on
    /// the CPU's SHA extensions where SHA-512 has none): new firm databases.
    HmacSha256,
}

impl PageFormat {
    /// What a new firm database gets unless `[storage] page_format` says otherwise.
    pub const CURRENT: PageFormat = PageFormat::HmacSha256;

    /// The name in configuration, `strongroomctl` output and the README.
    pub fn name(self) -> &'static str {
        match self {
            PageFormat::HmacSha512 => "hmac-sha512",
            PageFormat::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PageFormat::HmacSha512, PageFormat::HmacSha256]
            .into_iter()
            .find(|f| f.name() == s)
    }

    /// The PRAGMAs a stock SQLCipher 4 client needs after `PRAGMA key`
    /// (`fast_kdf_iter`: our build's MAC-key derivation, see the README).
    pub fn recovery_pragmas(self) -> &'static str {
        match self {
            PageFormat::HmacSha512 => "PRAGMA fast_kdf_iter = 1000;",
            PageFormat::HmacSha256 => {
                "PRAGMA fast_kdf_iter = 1000; PRAGMA cipher_hmac_algorithm = HMAC_SHA256; PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA256;"
            }
        }
    }

    /// Sets this format on `schema` of `conn` (after its key, before its first read).
    fn apply(self, conn: &Connection, schema: &str) -> Result<(), StoreError> {
        if self == PageFormat::HmacSha256 {
            conn.execute_batch(&format!(
                "PRAGMA {schema}.cipher_hmac_algorithm = HMAC_SHA256;
                 PRAGMA {schema}.cipher_kdf_algorithm = PBKDF2_HMAC_SHA256;"
            ))?;
        }
        Ok(())
    }

    fn other(self) -> Self {
        match self {
            PageFormat::HmacSha512 => PageFormat::HmacSha256,
            PageFormat::HmacSha256 => PageFormat::HmacSha512,
        }
    }
}

/// Page 1 of `conn`'s main file as stored (ciphertext), read through
/// SQLite's own file handle (see `vfs`). None if the file holds no full page
/// 1 yet (it is still only in the WAL).
fn raw_page_one(conn: &Connection) -> Option<Vec<u8>> {
    let mut page = vec![0u8; 4096];
    vfs::MainFile::of(conn)?.read_exact_at(&mut page, 0).ok()?;
    Some(page)
}

/// The page format `key` made `conn`'s file in, from its page 1's MAC (None:
/// page 1 is not in the main file yet, or `key` made it in neither format).
fn format_of_page_one(conn: &Connection, key: &SqlcipherKey) -> Option<PageFormat> {
    key.page_mac_of(&raw_page_one(conn)?).map(|m| match m {
        sqlcipher::PageMac::Sha256 => PageFormat::HmacSha256,
        sqlcipher::PageMac::Sha512 => PageFormat::HmacSha512,
    })
}

/// Opens a firm database, finding its page format: `known`, else from page
/// 1's MAC (no failed open, which SQLCipher would log as an error), else by
/// trying [`PageFormat::CURRENT`] and then the other (page 1 still only in
/// the WAL). A file that does not exist yet is created in `create_as`'s format.
pub(crate) fn open_firm_file(
    path: &Path,
    key: &SqlcipherKey,
    flags: OpenFlags,
    known: Option<PageFormat>,
    create_as: PageFormat,
) -> Result<(Connection, PageFormat), StoreError> {
    let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
        || std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > 0);
    let conn = connect(path, key, flags)?;
    let found = match known {
        Some(f) => Some(f),
        None if !exists => Some(create_as),
        None => format_of_page_one(&conn, key),
    };
    if let Some(f) = found {
        return Ok((prove(conn, path, f)?, f));
    }
    match prove(conn, path, PageFormat::CURRENT) {
        Err(StoreError::WrongKey { .. }) => {
            let other = PageFormat::CURRENT.other();
            Ok((prove(connect(path, key, flags)?, path, other)?, other))
        }
        other => other.map(|c| (c, PageFormat::CURRENT)),
    }
}

/// [`format_of_page_one`] for the file at `path` (tests).
#[cfg(test)]
pub(crate) fn format_from_page_one(path: &Path, key: &SqlcipherKey) -> Option<PageFormat> {
    format_of_page_one(
        &connect(path, key, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?,
        key,
    )
}

fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    std::path::PathBuf::from(p)
}

/// [`open_firm_file`] for a file that exists or is new in the current format.
pub(crate) fn open_firm(
    path: &Path,
    key: &SqlcipherKey,
    flags: OpenFlags,
) -> Result<Connection, StoreError> {
    open_firm_file(path, key, flags, None, PageFormat::CURRENT).map(|(c, _)| c)
}

/// Opens a SQLCipher database in SQLCipher 4's default page format (the
/// registry) and proves, before any other use, that it decrypts and runs on
/// our FIPS provider.
pub(crate) fn open_encrypted(
    path: &Path,
    key: &SqlcipherKey,
    flags: OpenFlags,
) -> Result<Connection, StoreError> {
    open_with_format(path, key, flags, PageFormat::HmacSha512)
}

pub(crate) fn open_with_format(
    path: &Path,
    key: &SqlcipherKey,
    flags: OpenFlags,
    format: PageFormat,
) -> Result<Connection, StoreError> {
    prove(connect(path, key, flags)?, path, format)
}

/// A connection to `path` with `key` set, before any read.
fn connect(path: &Path, key: &SqlcipherKey, flags: OpenFlags) -> Result<Connection, StoreError> {
    sqlcipher::ensure_linked();
    let conn = Connection::open_with_flags(path, flags)?;
    // The first read may meet a writer's checkpoint: wait, not fail.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "key", key.as_pragma_value())?;
    Ok(conn)
}

/// Sets `format` on a fresh [`connect`]ion and proves it decrypts, on our
/// FIPS provider.
fn prove(conn: Connection, path: &Path, format: PageFormat) -> Result<Connection, StoreError> {
    let display = path.display().to_string();
    format.apply(&conn, "main")?;
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
