//! The benchmark's baseline: what a durable commit costs without group
//! commit (one row per transaction, `synchronous=FULL`, WAL, same SQLCipher
//! setup and schema as a firm database).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{OpenFlags, params};

use super::{StoreError, open_firm};
use crate::crypto::keyring::SqlcipherKey;

/// Inserts one api_keys-shaped row per transaction for `run_for`; returns
/// (rows committed, elapsed). The database must already have the firm schema.
pub fn baseline_one_row_per_commit(
    path: &Path,
    key: &SqlcipherKey,
    run_for: Duration,
) -> Result<(u64, Duration), StoreError> {
    let conn = open_firm(path, key, OpenFlags::default())?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA secure_delete = ON;")?;
    // clock: a benchmark measures real elapsed time.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now(); // clock: benchmark timing
    let mut n = 0u64;
    let mac = [7u8; 32];
    while start.elapsed() < run_for {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute(
            "INSERT INTO api_keys (id, name, role, mac, created_at) VALUES (?1, 'bench', 'viewer', ?2, '2026-01-01T00:00:00Z')",
            params![format!("k{n:012}"), &mac[..]],
        )?;
        conn.execute_batch("COMMIT")?;
        n += 1;
    }
    Ok((n, start.elapsed()))
}
