//! Signing in: a login name, a password and a second factor (a TOTP code
//! or a recovery code) give a session.
//!
//! Security invariants, all enforced here:
//! - every failure answers alike (`invalid_credentials`), whether the name
//!   is unknown, the account locked or disabled, or a factor wrong, and
//!   after the same work: a PBKDF2 check (against a dummy hash if there is
//!   no real one) and one durable write;
//! - `lockout_threshold` failures in a row lock the account, for
//!   `lockout_duration` doubled at each further lockout, up to `lockout_max`;
//! - each TOTP code works once (the last accepted time step is stored, and
//!   checked again inside the write); each recovery code works once;
//! - each source address gets `sign_in_per_minute` attempts a minute.

use std::sync::Arc;

use serde_json::json;
use zeroize::Zeroizing;

use super::{MfaPolicy, OneTime, People, UserView, grants_of, locked_until, open_totp, users};
use crate::audit::trail::Outcome;
use crate::auth::Origin;
use crate::auth::failures::Verdict;
use crate::clock::rfc3339;
use crate::crypto::{keyring, password, totp};
use crate::firms::pool::FirmHandle;
use crate::firms::{FirmError, blocking, lock};
use crate::ids::FirmId;
use crate::store::firm::UserRow;

/// A sign-in request.
pub struct SignIn {
    pub login: String,
    pub password: Zeroizing<String>,
    /// A TOTP code or a recovery code.
    pub code: Option<Zeroizing<String>>,
}

/// A new session: its token (shown once) and who it is for.
#[derive(Debug)]
pub struct SignedIn {
    pub session: super::SessionView,
    pub token: OneTime,
    pub user: UserView,
    /// The session may only enrol a second factor (the firm requires one).
    pub mfa_enrolment_required: bool,
}

/// Which second factor a sign-in used.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Factor {
    Totp(i64),
    Recovery(String),
    None,
}

/// The time step whose code `code` is, among now ±1 step and after
/// `last_step`; `None` if it is none of them.
pub(crate) fn match_totp(
    secret: &totp::TotpSecret,
    code: &str,
    unix_now: i64,
    last_step: i64,
) -> Option<i64> {
    let now = totp::step_of(unix_now);
    // Security invariant: ±1 step, and never a step at or before the last accepted one.
    (now - 1..=now + 1)
        .filter(|s| *s > last_step)
        .find(|s| keyring::ct_eq(secret.code_at(*s).as_bytes(), code.as_bytes()))
}

/// A recovery code as compared: lower case, without separators.
pub(crate) fn recovery_mac(h: &FirmHandle, user: &str, code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    crate::crypto::hex(&keyring::credential_mac(
        &h.auth_key,
        "recovery-code",
        user,
        norm.as_bytes(),
    ))
}

impl People {
    /// Signs in to `firm`; every failure is `InvalidCredentials`.
    pub async fn sign_in(
        self: Arc<Self>,
        firm: FirmId,
        req: SignIn,
        origin: Origin,
    ) -> Result<SignedIn, FirmError> {
        self.throttle(&origin)?;
        let login = super::normalise_login(req.login.trim()).unwrap_or_default();
        let me = self.clone();
        let found = blocking(move || me.lookup(&firm, &login)).await?;
        let row = found.as_ref().and_then(|(_, r, _)| r.clone());
        let checked = self.check_password_opt(row.as_ref(), &req.password).await?;
        let Some((h, row, policy)) = found else {
            // No such firm: nothing to write, the same answer.
            return Err(FirmError::InvalidCredentials);
        };
        let me = self.clone();
        let h2 = h.clone();
        let signed =
            blocking(move || me.finish(&h2, row, policy, checked, req.code, &origin)).await?;
        // Only a sign-in that succeeded pays for a rehash, so the extra work
        // says nothing about an account that cannot sign in.
        if checked.needs_rehash {
            let (pw, n) = (
                super::password::normalise(&req.password),
                self.cfg.iterations,
            );
            let hash = super::hashing(move || password::hash(pw.as_bytes(), n)).await??;
            let me = self.clone();
            let user = signed.user.id.clone();
            blocking(move || me.store_rehash(&h, &user, hash)).await?;
        }
        Ok(signed)
    }

    /// Stores a password's new hash (more iterations), with its entry.
    fn store_rehash(&self, h: &FirmHandle, user: &str, hash: String) -> Result<(), FirmError> {
        let e = self.trail.sealed_entry(
            h,
            &format!("user:{user}"),
            &Origin::default(),
            "allow",
            "system".to_owned(),
            "users.password_rehashed",
            user,
            Outcome::Success,
            json!({ "iterations": self.cfg.iterations }),
        )?;
        let (id, at) = (user.to_owned(), self.pool.now());
        h.db.write_with(move |tx| {
            users::mutate(tx, &id, |u| {
                u.password = Some(hash.clone());
                u.updated_at = at.clone();
                Ok(())
            })?;
            tx.append_audit(e.clone())?;
            Ok::<_, FirmError>(())
        })
    }

    /// Takes one sign-in attempt for the request's source.
    pub(crate) fn throttle(&self, origin: &Origin) -> Result<(), FirmError> {
        let ip = origin
            .source_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        lock(&self.limiter)
            .take(ip, self.pool.clock.monotonic())
            // Rounded up: a client that waits `Retry-After` seconds is let in.
            .map_err(|wait| FirmError::RateLimited((wait.as_secs_f64().ceil() as u64).max(1)))
    }

    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        firm: &FirmId,
        login: &str,
    ) -> Result<Option<(Arc<FirmHandle>, Option<UserRow>, MfaPolicy)>, FirmError> {
        let h = match self.pool.handle(firm) {
            Ok(h) => h,
            Err(FirmError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let row = h.db.read_blocking(|r| r.user_by_login(login))?;
        let policy = self.mfa_policy(&h)?;
        Ok(Some((h, row, policy)))
    }

    /// PBKDF2 on the hashing lane: against the user's hash, or a dummy one
    /// of the same cost when there is none.
    async fn check_password_opt(
        &self,
        row: Option<&UserRow>,
        pw: &str,
    ) -> Result<password::Checked, FirmError> {
        let pw = super::password::normalise(pw);
        let n = self.cfg.iterations;
        let stored = row.and_then(|r| r.password.clone());
        super::hashing(move || match stored {
            Some(h) => password::verify(&h, pw.as_bytes(), n),
            None => {
                password::verify_dummy(pw.as_bytes(), n);
                password::Checked {
                    matches: false,
                    needs_rehash: false,
                }
            }
        })
        .await
    }

    pub(crate) async fn check_password(
        &self,
        row: &UserRow,
        pw: &str,
    ) -> Result<password::Checked, FirmError> {
        self.check_password_opt(Some(row), pw).await
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        h: &Arc<FirmHandle>,
        row: Option<UserRow>,
        policy: MfaPolicy,
        checked: password::Checked,
        code: Option<Zeroizing<String>>,
        origin: &Origin,
    ) -> Result<SignedIn, FirmError> {
        // Security invariant: a frozen firm takes no writes, sessions and failure counts included.
        self.pool.require_writable(&h.id)?;
        let now = self.pool.clock.now();
        // The row as it is now, not as it was before the password check
        // queued: a lockout that landed meanwhile counts.
        let row = match row {
            Some(r) => h.db.read_blocking(|x| x.user(&r.id))?,
            None => None,
        };
        let rehash = checked.needs_rehash;
        let Some(row) = row else {
            return self.refuse(h, None, origin, "unknown login");
        };
        if row.state != "active" {
            return self.refuse(h, Some(&row), origin, &format!("account {}", row.state));
        }
        if locked_until(&row).is_some_and(|t| t > now) {
            return self.refuse(h, Some(&row), origin, "account locked");
        }
        if !checked.matches {
            return self.record_failure(h, &row, origin, "wrong password");
        }
        let (role, _) = grants_of(&row)?;
        let factor = match (&row.totp, code.as_deref()) {
            (Some(sealed), Some(code)) => {
                let secret = open_totp(h, &row.id, sealed)?;
                let code = code.trim();
                if code.len() == totp::DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit()) {
                    match match_totp(&secret, code, now.unix_timestamp(), row.totp_last_step) {
                        Some(step) => Factor::Totp(step),
                        None => {
                            return self.record_failure(h, &row, origin, "wrong or used TOTP code");
                        }
                    }
                } else {
                    let mac = recovery_mac(h, &row.id, code);
                    let left: Vec<String> = serde_json::from_str(&row.recovery).unwrap_or_default();
                    if !left.contains(&mac) {
                        return self.record_failure(h, &row, origin, "wrong or used recovery code");
                    }
                    Factor::Recovery(mac)
                }
            }
            (Some(_), None) => {
                return self.record_failure(h, &row, origin, "second factor missing");
            }
            (None, _) => Factor::None,
        };
        let enrolment_only = factor == Factor::None && policy.requires(role);
        let (session, token) =
            self.new_session(h, &row.id, &origin.source_ip, enrolment_only, None)?;
        let factor_name = match &factor {
            Factor::Totp(_) => "totp",
            Factor::Recovery(_) => "recovery_code",
            Factor::None => "password_only",
        };
        let entry = self.trail.sealed_entry(
            h,
            &format!("user:{}", row.id),
            origin,
            "allow",
            "authentication".to_owned(),
            "sessions.create",
            &row.id,
            Outcome::Success,
            json!({
                "factor": factor_name,
                "session": session.id,
                "enrolment_only": enrolment_only,
                "password_rehashed": rehash,
            }),
        )?;
        let (id, at, stored) = (row.id.clone(), rfc3339(now), session.clone());
        let written = h.db.write_with(move |tx| {
            let u = users::mutate(tx, &id, |u| {
                // Checked again inside the write: two sign-ins racing with
                // one code cannot both use it.
                match &factor {
                    Factor::Totp(step) if *step <= u.totp_last_step => {
                        return Err(FirmError::InvalidCode);
                    }
                    Factor::Totp(step) => u.totp_last_step = *step,
                    Factor::Recovery(mac) => {
                        let mut left: Vec<String> =
                            serde_json::from_str(&u.recovery).unwrap_or_default();
                        let before = left.len();
                        left.retain(|m| m != mac);
                        if left.len() == before {
                            return Err(FirmError::InvalidCode);
                        }
                        u.recovery = serde_json::to_string(&left).unwrap_or_default();
                    }
                    Factor::None => {}
                }
                // Checked again inside the write: a lockout or a disable
                // that landed since the row was read wins.
                if u.state != "active" || locked_until(u).is_some_and(|t| t > now) {
                    return Err(FirmError::InvalidCredentials);
                }
                u.failed_signins = 0;
                u.lockouts = 0;
                u.locked_until = None;
                u.last_signin_at = Some(at.clone());
                Ok(())
            })?;
            tx.insert_session(&stored)?;
            tx.append_audit(entry.clone())?;
            Ok::<_, FirmError>(u)
        });
        let user = match written {
            Ok(u) => u,
            Err(FirmError::InvalidCode) => {
                return self.record_failure(h, &row, origin, "code used by a concurrent sign-in");
            }
            Err(FirmError::InvalidCredentials) => {
                return self.refuse(h, Some(&row), origin, "locked or disabled meanwhile");
            }
            Err(e) => return Err(e),
        };
        let sid = crate::ids::SessionId::parse(&session.id);
        Ok(SignedIn {
            session: super::sessions::view(&session, sid.as_ref()),
            token,
            user: self.view(&user, policy)?,
            mfa_enrolment_required: enrolment_only,
        })
    }

    /// Notes a failure for the audit log's coalescing; the entry to write
    /// now, if this is the first from its source in the window.
    fn failure_entry(
        &self,
        h: &FirmHandle,
        row: Option<&UserRow>,
        origin: &Origin,
        reason: &str,
    ) -> Result<Option<crate::audit::Entry>, FirmError> {
        let ip = origin
            .source_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let account = row.map_or_else(|| "unknown".to_owned(), |r| r.id.clone());
        let verdict = lock(&self.failures).note(
            h.id.as_str(),
            ip,
            &account,
            reason,
            self.pool.clock.monotonic(),
            &self.pool.now(),
        );
        let Verdict::Record { source } = verdict else {
            return Ok(None);
        };
        let actor = row.map_or_else(
            || "unauthenticated".to_owned(),
            |r| format!("user:{}", r.id),
        );
        self.trail
            .sealed_entry(
                h,
                &actor,
                origin,
                "deny",
                "authentication".to_owned(),
                "sessions.create",
                &account,
                Outcome::Denied,
                json!({
                    "reason": reason,
                    "source": source,
                    "note": "the first failed sign-in from this source in this window; later ones are counted in one sessions.failures entry",
                }),
            )
            .map(Some)
    }

    /// A sign-in that named nobody who can sign in: counted (one write, as
    /// a real failure costs), never locking anyone.
    fn refuse(
        &self,
        h: &FirmHandle,
        row: Option<&UserRow>,
        origin: &Origin,
        reason: &str,
    ) -> Result<SignedIn, FirmError> {
        crate::telemetry::metrics::metrics().signin_failures.inc();
        tracing::info!(firm = %h.id, reason, "sign-in refused");
        let entry = self.failure_entry(h, row, origin, reason)?;
        h.db.write_with(move |tx| {
            tx.count_refused_signin()?;
            if let Some(e) = &entry {
                tx.append_audit(e.clone())?;
            }
            Ok::<_, FirmError>(())
        })?;
        Err(FirmError::InvalidCredentials)
    }

    /// A wrong factor for a real account: counts towards its lockout, and
    /// locks it at the threshold (always audited). Answers
    /// `InvalidCredentials`.
    pub(crate) fn record_failure<R>(
        &self,
        h: &FirmHandle,
        row: &UserRow,
        origin: &Origin,
        reason: &str,
    ) -> Result<R, FirmError> {
        crate::telemetry::metrics::metrics().signin_failures.inc();
        tracing::info!(firm = %h.id, user = %row.id, reason, "sign-in failed");
        let entry = self.failure_entry(h, Some(row), origin, reason)?;
        let now = self.pool.clock.now();
        let (threshold, base, max) = (
            self.cfg.lockout_threshold,
            self.cfg.lockout_duration,
            self.cfg.lockout_max,
        );
        // The lockout entry, sealed now for the case the write locks the account.
        let locked_entry = |lockouts: u32, until: &str| {
            self.trail.sealed_entry(
                h,
                &format!("user:{}", row.id),
                origin,
                "deny",
                "lockout".to_owned(),
                "users.locked",
                &row.id,
                Outcome::Denied,
                json!({ "until": until, "lockout": lockouts, "after_failures": threshold }),
            )
        };
        let next = row.lockouts.saturating_add(1);
        let length = base.saturating_mul(1u32 << (next - 1).min(20)).min(max);
        let until = rfc3339(now + length);
        let lock_e = locked_entry(next, &until)?;
        let id = row.id.clone();
        let at = rfc3339(now);
        let locked = h.db.write_with(move |tx| {
            let u = users::mutate(tx, &id, |u| {
                u.failed_signins = u.failed_signins.saturating_add(1);
                if u.failed_signins >= threshold {
                    u.lockouts = u.lockouts.saturating_add(1);
                    u.failed_signins = 0;
                    u.locked_until = Some(until.clone());
                }
                u.updated_at = at.clone();
                Ok(())
            })?;
            let locked = u.failed_signins == 0 && u.locked_until.as_deref() == Some(until.as_str());
            if let Some(e) = &entry {
                tx.append_audit(e.clone())?;
            }
            if locked {
                tx.append_audit(lock_e.clone())?;
            }
            Ok::<_, FirmError>(locked)
        })?;
        if locked {
            crate::telemetry::metrics::metrics().lockouts.inc();
            tracing::warn!(firm = %h.id, user = %row.id, "account locked after failed sign-ins");
        }
        Err(FirmError::InvalidCredentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_accepted_within_one_step_and_once() {
        let s = totp::TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        let t = 1_111_111_109;
        let step = totp::step_of(t);
        let code = s.code_at(step);
        assert_eq!(match_totp(&s, &code, t, 0), Some(step));
        assert_eq!(match_totp(&s, &code, t + 30, 0), Some(step));
        assert_eq!(match_totp(&s, &code, t - 30, 0), Some(step));
        assert_eq!(match_totp(&s, &code, t + 61, 0), None);
        // Once accepted (last step = step), the same code fails.
        assert_eq!(match_totp(&s, &code, t, step), None);
        assert_eq!(
            match_totp(&s, "000000", t, 0).is_some(),
            s.code_at(step - 1) == "000000"
                || s.code_at(step) == "000000"
                || s.code_at(step + 1) == "000000"
        );
    }
}
