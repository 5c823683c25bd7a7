//! The people tables: users and their sessions. Secrets are never stored:
//! a password only as its PBKDF2 hash, the TOTP secret sealed, tokens and
//! recovery codes only as HMACs.

use rusqlite::{OptionalExtension, params};

use super::super::StoreError;
use super::{ReadTx, WriteTx};

/// A user as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    /// Normalised (NFKC, lower case): unique in the firm.
    pub login: String,
    pub display_name: String,
    pub role: String,
    pub allow: String,
    pub deny: String,
    /// `invited`, `active` or `disabled` (`locked` is `locked_until` in the future).
    pub state: String,
    pub password: Option<String>,
    /// The confirmed TOTP secret, sealed under the firm's auth key.
    pub totp: Option<Vec<u8>>,
    /// A TOTP secret awaiting its first code.
    pub totp_pending: Option<Vec<u8>>,
    /// The last time step whose code was accepted (each code works once).
    pub totp_last_step: i64,
    /// JSON list of the hex HMACs of unused recovery codes.
    pub recovery: String,
    pub invite_mac: Option<Vec<u8>>,
    pub invite_expires_at: Option<String>,
    pub failed_signins: u32,
    pub lockouts: u32,
    pub locked_until: Option<String>,
    pub created_at: String,
    pub created_by: Option<String>,
    pub updated_at: String,
    pub last_signin_at: Option<String>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A session as stored (its token only as an HMAC).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub mac: Vec<u8>,
    pub created_at: String,
    pub expires_at: String,
    pub last_seen_at: String,
    pub revoked_at: Option<String>,
    pub source_ip: String,
    /// Signed in without a second factor the firm requires: may only enrol one.
    pub enrolment_only: bool,
}

/// What authenticating a session needs, cached on the open firm: the
/// session, its user, and its times as Unix seconds (the last use kept
/// here, and written down at most once a minute).
#[derive(Debug)]
pub struct SessionAuth {
    pub session: SessionRow,
    pub user: UserRow,
    pub expires_unix: i64,
    /// The firm's MFA policy requires a second factor this user lacks (so
    /// the session may only enrol one, whenever it was opened).
    pub mfa_missing: bool,
    pub seen_unix: std::sync::atomic::AtomicI64,
    pub stored_seen_unix: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

const USER_COLUMNS: &str = "id, login, display_name, role, allow, deny, state, password, totp, \
     totp_pending, totp_last_step, recovery, invite_mac, invite_expires_at, failed_signins, \
     lockouts, locked_until, created_at, created_by, updated_at, last_signin_at";

const SESSION_COLUMNS: &str = "id, user_id, mac, created_at, expires_at, last_seen_at, revoked_at, \
     source_ip, enrolment_only";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        login: r.get(1)?,
        display_name: r.get(2)?,
        role: r.get(3)?,
        allow: r.get(4)?,
        deny: r.get(5)?,
        state: r.get(6)?,
        password: r.get(7)?,
        totp: r.get(8)?,
        totp_pending: r.get(9)?,
        totp_last_step: r.get(10)?,
        recovery: r.get(11)?,
        invite_mac: r.get(12)?,
        invite_expires_at: r.get(13)?,
        failed_signins: r.get(14)?,
        lockouts: r.get(15)?,
        locked_until: r.get(16)?,
        created_at: r.get(17)?,
        created_by: r.get(18)?,
        updated_at: r.get(19)?,
        last_signin_at: r.get(20)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        mac: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_seen_at: r.get(5)?,
        revoked_at: r.get(6)?,
        source_ip: r.get(7)?,
        enrolment_only: r.get(8)?,
    })
}

impl ReadTx<'_> {
    pub fn user(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?;
        Ok(st.query_row([id], user_row).optional()?)
    }

    pub fn user_by_login(&self, login: &str) -> Result<Option<UserRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE login = ?1"
        ))?;
        Ok(st.query_row([login], user_row).optional()?)
    }

    pub fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY login"))?;
        let rows = st.query_map([], user_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
        ))?;
        Ok(st.query_row([id], session_row).optional()?)
    }

    /// A user's sessions that are not revoked, newest first.
    pub fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL
             ORDER BY created_at DESC, id"
        ))?;
        let rows = st
            .query_map([user_id], session_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl WriteTx<'_> {
    /// Inserts or replaces a user row; a login another user holds is `Exists`.
    pub fn put_user(&self, u: &UserRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                 ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
                 ON CONFLICT (id) DO UPDATE SET login = excluded.login,
                 display_name = excluded.display_name, role = excluded.role,
                 allow = excluded.allow, deny = excluded.deny, state = excluded.state,
                 password = excluded.password, totp = excluded.totp,
                 totp_pending = excluded.totp_pending, totp_last_step = excluded.totp_last_step,
                 recovery = excluded.recovery, invite_mac = excluded.invite_mac,
                 invite_expires_at = excluded.invite_expires_at,
                 failed_signins = excluded.failed_signins, lockouts = excluded.lockouts,
                 locked_until = excluded.locked_until, updated_at = excluded.updated_at,
                 last_signin_at = excluded.last_signin_at"
            ))?
            .execute(params![
                u.id,
                u.login,
                u.display_name,
                u.role,
                u.allow,
                u.deny,
                u.state,
                u.password,
                u.totp,
                u.totp_pending,
                u.totp_last_step,
                u.recovery,
                u.invite_mac,
                u.invite_expires_at,
                u.failed_signins,
                u.lockouts,
                u.locked_until,
                u.created_at,
                u.created_by,
                u.updated_at,
                u.last_signin_at,
            ])
            .map_err(super::write::exists_on_conflict)?;
        Ok(())
    }

    /// Deletes a user and every session of theirs; false if unknown.
    pub fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
            .execute([id])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM users WHERE id = ?1")?
            .execute([id])?;
        Ok(n == 1)
    }

    pub fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                s.id,
                s.user_id,
                s.mac,
                s.created_at,
                s.expires_at,
                s.last_seen_at,
                s.revoked_at,
                s.source_ip,
                s.enrolment_only,
            ])?;
        Ok(())
    }

    /// Revokes one live session; false if it was not live.
    pub fn revoke_session(&self, id: &str, now: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, now])?;
        Ok(n == 1)
    }

    /// Revokes every live session of a user but `keep`; how many.
    pub fn revoke_sessions_of(
        &self,
        user_id: &str,
        keep: Option<&str>,
        now: &str,
    ) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET revoked_at = ?3
                 WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
            )?
            .execute(params![user_id, keep, now])?;
        Ok(n as u64)
    }

    /// The session may do everything its user may (it enrolled a second factor).
    pub fn upgrade_session(&self, id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE sessions SET enrolment_only = 0 WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    pub fn touch_session(&self, id: &str, at: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1 AND last_seen_at < ?2",
            )?
            .execute(params![id, at])?;
        Ok(())
    }

    /// Counts a sign-in that named no user who could sign in. The write is
    /// as costly as a failed sign-in's on a real account, so the answer
    /// takes as long (no existence oracle in the timing).
    pub fn count_refused_signin(&self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES ('refused_signins', '1')
                 ON CONFLICT (k) DO UPDATE SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)",
            )?
            .execute([])?;
        Ok(())
    }
}
