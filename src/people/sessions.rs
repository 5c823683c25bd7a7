//! Sessions: a signed-in user's bearer token, checked on every request
//! against its absolute lifetime, its inactivity timeout and its user's
//! state. Revocation clears the firm's session cache after the commit, so
//! it takes effect on the very next request.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::{OneTime, People, SESSION_PREFIX, grants_of, new_token, parse_token};
use crate::auth::policy::{Authorized, perm};
use crate::auth::{Actor, AuthError, Principal};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::crypto::keyring;
use crate::firms::FirmError;
use crate::firms::pool::FirmHandle;
use crate::ids::{SessionId, UserId};
use crate::store::firm::{SessionAuth, SessionRow};

/// How stale a session's stored last use may get (the cached one is exact).
const SEEN_GRANULARITY_SECS: i64 = 60;

/// A session as the API shows it (never its token or MAC).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    pub user_id: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_seen_at: String,
    pub source_ip: String,
    /// Signed in without a second factor the firm requires: may only enrol one.
    pub enrolment_only: bool,
    /// The session making this request.
    pub current: bool,
}

pub(crate) fn view(s: &SessionRow, current: Option<&SessionId>) -> SessionView {
    SessionView {
        id: s.id.clone(),
        user_id: s.user_id.clone(),
        created_at: s.created_at.clone(),
        expires_at: s.expires_at.clone(),
        last_seen_at: s.last_seen_at.clone(),
        source_ip: s.source_ip.clone(),
        enrolment_only: s.enrolment_only,
        current: current.is_some_and(|c| c.as_str() == s.id),
    }
}

fn unix(s: &str) -> i64 {
    parse_rfc3339(s).map_or(0, |t| t.unix_timestamp())
}

/// The session-owning user of a principal (a key has none; the policy
/// already refused keys on `account:self`).
fn me(p: &Principal) -> Result<(&UserId, &SessionId), FirmError> {
    match &p.actor {
        Actor::User { user, session } => Ok((user, session)),
        Actor::Key(_) => Err(FirmError::Internal("account route reached with a key")),
    }
}

impl People {
    /// A new session row for `user` and its token (shown once).
    pub(crate) fn new_session(
        &self,
        h: &FirmHandle,
        user: &str,
        source_ip: &str,
        enrolment_only: bool,
        expires_at: Option<String>,
    ) -> Result<(SessionRow, OneTime), FirmError> {
        let id = SessionId::generate()?;
        let (secret, token) = new_token(SESSION_PREFIX, &h.id, id.hex())?;
        let now = self.pool.clock.now();
        let row = SessionRow {
            id: id.to_string(),
            user_id: user.to_owned(),
            mac: keyring::credential_mac(
                &h.auth_key,
                "session",
                id.as_str(),
                secret.reveal().as_bytes(),
            )
            .to_vec(),
            created_at: rfc3339(now),
            expires_at: expires_at.unwrap_or_else(|| rfc3339(now + self.cfg.session_lifetime)),
            last_seen_at: rfc3339(now),
            revoked_at: None,
            source_ip: source_ip.to_owned(),
            enrolment_only,
        };
        Ok((row, token))
    }

    /// Checks a session token (`srs_…`); the result names the session's firm.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let parsed = parse_token(SESSION_PREFIX, token).ok_or(AuthError::Malformed)?;
        let h = match self.pool.handle(&parsed.firm) {
            Ok(h) => h,
            Err(FirmError::NotFound) => return Err(AuthError::UnknownFirm),
            Err(e) => return Err(e.into()),
        };
        let id = format!("{}{}", SessionId::PREFIX, parsed.id_hex);
        let entry = match h.sessions.get(&id) {
            Some(e) => e,
            None => {
                let generation = h.sessions.generation();
                let (session, user) =
                    h.db.read_short(|r| {
                        let Some(s) = r.session(&id)? else {
                            return Ok(None);
                        };
                        Ok(r.user(&s.user_id)?.map(|u| (s, u)))
                    })
                    .map_err(FirmError::from)?
                    .ok_or(AuthError::UnknownSession)?;
                let seen = unix(&session.last_seen_at);
                // The policy as it is now: tightening it reaches open sessions
                // (a profile change clears this cache).
                let mfa_missing = user.totp.is_none()
                    && grants_of(&user)
                        .is_ok_and(|(role, _)| self.mfa_policy(&h).is_ok_and(|p| p.requires(role)));
                let e = Arc::new(SessionAuth {
                    expires_unix: unix(&session.expires_at),
                    mfa_missing,
                    seen_unix: seen.into(),
                    stored_seen_unix: seen.into(),
                    session,
                    user,
                });
                h.sessions.fill(generation, &id, e.clone());
                e
            }
        };
        self.check_session(&h, parsed, &entry)
    }

    /// `authenticate` without blocking: `None` when it would need the disk.
    pub fn authenticate_cached(&self, token: &str) -> Option<Result<Principal, AuthError>> {
        let Some(parsed) = parse_token(SESSION_PREFIX, token) else {
            return Some(Err(AuthError::Malformed));
        };
        let h = self.pool.cached_handle(&parsed.firm)?;
        let id = format!("{}{}", SessionId::PREFIX, parsed.id_hex);
        let entry = h.sessions.get(&id)?;
        Some(self.check_session(&h, parsed, &entry))
    }

    fn check_session(
        &self,
        h: &FirmHandle,
        parsed: super::ParsedToken,
        e: &SessionAuth,
    ) -> Result<Principal, AuthError> {
        let s = &e.session;
        let mac = keyring::credential_mac(
            &h.auth_key,
            "session",
            &s.id,
            parsed.secret.reveal().as_bytes(),
        );
        // Security invariant: session tokens are compared as HMACs, in constant time.
        if !keyring::ct_eq(&mac, &s.mac) {
            return Err(AuthError::BadSecret);
        }
        if s.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let now = self.pool.clock.now().unix_timestamp();
        let idle = self.cfg.idle_timeout.as_secs() as i64;
        // Security invariant: a session ends at its absolute lifetime, after
        // its idle timeout, and when its user is disabled or deleted.
        if now >= e.expires_unix
            || now - e.seen_unix.load(Ordering::Relaxed) >= idle
            || e.user.state != "active"
        {
            return Err(AuthError::SessionEnded);
        }
        let (role, overrides) = grants_of(&e.user)?;
        e.seen_unix.fetch_max(now, Ordering::Relaxed);
        let stored = e.stored_seen_unix.load(Ordering::Relaxed);
        if now - stored >= SEEN_GRANULARITY_SECS
            && self.pool.require_writable(&h.id).is_ok()
            && e.stored_seen_unix
                .compare_exchange(stored, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (id, at) = (s.id.clone(), rfc3339(self.pool.clock.now()));
            h.db.write_detached(move |tx| tx.touch_session(&id, &at));
        }
        let user = UserId::parse(&e.user.id).ok_or(AuthError::UnknownSession)?;
        let session = SessionId::parse(&s.id).ok_or(AuthError::UnknownSession)?;
        Ok(Principal {
            firm: parsed.firm,
            actor: Actor::User { user, session },
            role,
            overrides,
            expires_at: None,
            enrolment_only: s.enrolment_only || e.mfa_missing,
            origin: Default::default(),
        })
    }

    pub(crate) fn session_views(
        &self,
        h: &FirmHandle,
        user: &str,
        current: Option<&SessionId>,
    ) -> Result<Vec<SessionView>, FirmError> {
        let now = self.pool.clock.now().unix_timestamp();
        let idle = self.cfg.idle_timeout.as_secs() as i64;
        let rows = h.db.read_blocking(|r| r.sessions_of(user))?;
        let cached = |id: &str| {
            h.sessions
                .get(id)
                .map(|e| e.seen_unix.load(Ordering::Relaxed))
        };
        Ok(rows
            .iter()
            .filter(|s| {
                let seen = cached(&s.id).unwrap_or_else(|| unix(&s.last_seen_at));
                unix(&s.expires_at) > now && now - seen < idle
            })
            .map(|s| view(s, current))
            .collect())
    }

    /// The caller's own live sessions.
    pub fn my_sessions(
        &self,
        auth: &Authorized<perm::Account>,
    ) -> Result<Vec<SessionView>, FirmError> {
        let (user, session) = me(auth.principal())?;
        let h = self.pool.handle(auth.firm())?;
        self.session_views(&h, user.as_str(), Some(session))
    }

    /// Revokes one of the caller's sessions (`current` for this one).
    pub fn revoke_my_session(
        &self,
        auth: &Authorized<perm::Account>,
        which: &str,
    ) -> Result<(), FirmError> {
        let (user, session) = me(auth.principal())?;
        let target = if which == "current" {
            session.clone()
        } else {
            SessionId::parse(which).ok_or(FirmError::SessionNotFound)?
        };
        let user = user.to_string();
        self.trail
            .change(auth, "sessions.revoke", target.as_str(), json!({}), |c| {
                let id = target.to_string();
                let now = self.pool.now();
                let done = c.commit(&id.clone(), json!({}), move |tx| {
                    match tx.read().session(&id)? {
                        Some(s) if s.user_id == user => {}
                        _ => return Err(FirmError::SessionNotFound),
                    }
                    tx.revoke_session(&id, &now)?;
                    Ok(())
                });
                c.h.sessions.invalidate();
                done
            })
    }

    /// Revokes every session of the caller, this one included.
    pub fn revoke_my_sessions(&self, auth: &Authorized<perm::Account>) -> Result<u64, FirmError> {
        let (user, _) = me(auth.principal())?;
        let user = user.to_string();
        self.trail
            .change(auth, "sessions.revoke_all", &user.clone(), json!({}), |c| {
                let now = self.pool.now();
                let u = user.clone();
                let done = c.commit(&user, json!({}), move |tx| {
                    Ok(tx.revoke_sessions_of(&u, None, &now)?)
                });
                c.h.sessions.invalidate();
                done
            })
    }

    /// A new token for the caller's session; the old one stops working.
    /// The absolute lifetime stays the original sign-in's.
    pub fn refresh(
        &self,
        auth: &Authorized<perm::Account>,
    ) -> Result<(SessionView, OneTime), FirmError> {
        let (user, session) = me(auth.principal())?;
        let (user, old) = (user.to_string(), session.to_string());
        self.trail
            .change(auth, "sessions.refresh", &old.clone(), json!({}), |c| {
                let current =
                    c.h.db
                        .read_blocking(|r| r.session(&old))?
                        .ok_or(FirmError::SessionNotFound)?;
                let (row, token) = self.new_session(
                    &c.h,
                    &user,
                    &auth.principal().origin.source_ip,
                    current.enrolment_only,
                    Some(current.expires_at.clone()),
                )?;
                let now = self.pool.now();
                let (stored, old_id) = (row.clone(), old.clone());
                let done = c.commit(&old, json!({ "replaced_by": row.id }), move |tx| {
                    if !tx.revoke_session(&old_id, &now)? {
                        return Err(FirmError::SessionNotFound);
                    }
                    Ok(tx.insert_session(&stored)?)
                });
                c.h.sessions.invalidate();
                done?;
                let id = SessionId::parse(&row.id);
                Ok((view(&row, id.as_ref()), token))
            })
    }

    /// Changes the caller's password, given the current one; every other
    /// session of theirs is revoked in the same transaction.
    pub async fn change_password(
        self: Arc<Self>,
        auth: Authorized<perm::Account>,
        current: Zeroizing<String>,
        new: Zeroizing<String>,
    ) -> Result<(), FirmError> {
        let (user, session) = me(auth.principal())?;
        let (user, session) = (user.to_string(), session.to_string());
        let (_, row) = self.reauthenticate(&auth, Some(current), true).await?;
        let normalised = super::password::check(&new, &row.login)?;
        let iterations = self.cfg.iterations;
        let hash = super::hashing(move || {
            crate::crypto::password::hash(normalised.as_bytes(), iterations)
        })
        .await??;
        let me2 = self.clone();
        crate::firms::blocking(move || {
            me2.trail
                .change(&auth, "account.password", &user.clone(), json!({}), |c| {
                    let now = me2.pool.now();
                    let (u, keep, hash) = (user.clone(), session.clone(), hash.clone());
                    let done = c.commit(
                        &user,
                        json!({ "other_sessions_revoked": true }),
                        move |tx| {
                            tx.revoke_sessions_of(&u, Some(&keep), &now)?;
                            super::users::mutate(tx, &u, |row| {
                                row.password = Some(hash.clone());
                                row.updated_at = now.clone();
                                Ok(())
                            })?;
                            Ok(())
                        },
                    );
                    c.h.sessions.invalidate();
                    done
                })
        })
        .await
    }

    /// A user's live sessions, for an admin.
    pub fn user_sessions(
        &self,
        auth: &Authorized<perm::UsersRead>,
        user: &str,
    ) -> Result<Vec<SessionView>, FirmError> {
        let id = UserId::parse(user).ok_or(FirmError::UserNotFound)?;
        let h = self.pool.handle(auth.firm())?;
        h.db.read_blocking(|r| r.user(id.as_str()))?
            .ok_or(FirmError::UserNotFound)?;
        self.session_views(&h, id.as_str(), auth.principal().actor.session())
    }

    /// Revokes every session of a user (an admin's action).
    pub fn revoke_user_sessions(
        &self,
        auth: &Authorized<perm::UsersUpdate>,
        user: &str,
    ) -> Result<u64, FirmError> {
        let resource = super::users::audit_resource(user);
        self.trail
            .change(auth, "users.revoke_sessions", &resource, json!({}), |c| {
                let id = UserId::parse(user).ok_or(FirmError::UserNotFound)?;
                let row =
                    c.h.db
                        .read_blocking(|r| r.user(id.as_str()))?
                        .ok_or(FirmError::UserNotFound)?;
                let (role, overrides) = grants_of(&row)?;
                crate::auth::keys::escalation_check(auth.principal(), role, &overrides)?;
                let now = self.pool.now();
                let u = row.id.clone();
                let done = c.commit(&row.id, json!({}), move |tx| {
                    Ok(tx.revoke_sessions_of(&u, None, &now)?)
                });
                c.h.sessions.invalidate();
                done
            })
    }
}
