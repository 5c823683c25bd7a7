//! Enrolment: an invitee turns their one-time token into a password and a
//! TOTP second factor; a signed-in user enrols (or replaces) TOTP and
//! regenerates recovery codes.
//!
//! A TOTP secret counts only once a code made from it has been shown back
//! (it sits in `totp_pending` until then). Recovery codes are shown once
//! and stored as HMACs; each works once.

use std::sync::Arc;

use serde_json::json;
use zeroize::Zeroizing;

use super::signin::match_totp;
use super::{OneTime, People, RECOVERY_CODES, UserView, grants_of, open_totp, seal_totp, users};
use crate::audit::trail::Outcome;
use crate::auth::Origin;
use crate::auth::policy::{Authorized, perm};
use crate::crypto::totp::{self, TotpSecret};
use crate::crypto::{self, keyring};
use crate::firms::pool::FirmHandle;
use crate::firms::{FirmError, blocking};
use crate::ids::{FirmId, UserId};
use crate::store::firm::UserRow;

/// A TOTP secret to enrol, shown once: as text, as an `otpauth://` URI,
/// and as that URI in a QR code (SVG).
#[derive(Debug)]
pub struct TotpEnrolment {
    pub secret: OneTime,
    pub otpauth_uri: OneTime,
    pub qr_svg: OneTime,
}

/// A finished enrolment: the user, and their recovery codes (shown once).
#[derive(Debug)]
pub struct Enrolled {
    pub user: UserView,
    pub recovery_codes: Vec<OneTime>,
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ten new recovery codes (`xxxxx-xxxxx`, 50 bits each) and their HMACs.
fn new_recovery_codes(h: &FirmHandle, user: &str) -> Result<(Vec<OneTime>, String), FirmError> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    let mut macs = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let b: [u8; 7] = crypto::random_array()?;
        let s = totp::base32(&b).to_ascii_lowercase();
        let code = OneTime(format!("{}-{}", &s[..5], &s[5..10]));
        macs.push(super::signin::recovery_mac(h, user, code.reveal()));
        codes.push(code);
    }
    Ok((codes, serde_json::to_string(&macs).unwrap_or_default()))
}

impl People {
    fn totp_material(
        &self,
        h: &FirmHandle,
        login: &str,
        s: &TotpSecret,
    ) -> Result<TotpEnrolment, FirmError> {
        let firm_name = self.pool.row(&h.id).map(|r| r.name).unwrap_or_default();
        let issuer = format!("Strongroom ({firm_name})");
        let uri = format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={}&period={}",
            pct(&issuer),
            pct(login),
            s.base32(),
            pct(&issuer),
            totp::DIGITS,
            totp::STEP_SECS
        );
        let svg = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M)
            .map_err(|_| FirmError::Internal("QR code"))?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build();
        Ok(TotpEnrolment {
            secret: OneTime(s.base32()),
            otpauth_uri: OneTime(uri),
            qr_svg: OneTime(svg),
        })
    }

    /// The invited user an enrolment token names, if it is theirs, unused
    /// and unexpired (compared as HMACs, in constant time).
    fn invitation(
        &self,
        firm: &FirmId,
        token: &str,
    ) -> Result<(Arc<FirmHandle>, UserRow), FirmError> {
        let parsed = super::parse_token(super::ENROLMENT_PREFIX, token)
            .filter(|p| p.firm == *firm)
            .ok_or(FirmError::InvalidEnrolment)?;
        let h = self.pool.handle(firm).map_err(|e| match e {
            FirmError::NotFound => FirmError::InvalidEnrolment,
            other => other,
        })?;
        let id = UserId::from_hex(&parsed.id_hex).ok_or(FirmError::InvalidEnrolment)?;
        let row =
            h.db.read_blocking(|r| r.user(id.as_str()))?
                .ok_or(FirmError::InvalidEnrolment)?;
        let mac = keyring::credential_mac(
            &h.auth_key,
            "enrolment",
            &row.id,
            parsed.secret.reveal().as_bytes(),
        );
        let fresh = row
            .invite_expires_at
            .as_deref()
            .and_then(crate::clock::parse_rfc3339)
            .is_some_and(|t| t > self.pool.clock.now());
        // Security invariant: an enrolment token works only for its invited user, until used or expired.
        let ok = row.state == "invited"
            && fresh
            && row
                .invite_mac
                .as_deref()
                .is_some_and(|m| keyring::ct_eq(m, &mac));
        if ok {
            Ok((h, row))
        } else {
            Err(FirmError::InvalidEnrolment)
        }
    }

    fn entry(
        &self,
        h: &FirmHandle,
        user: &str,
        origin: &Origin,
        action: &str,
        details: serde_json::Value,
    ) -> Result<crate::audit::Entry, FirmError> {
        self.trail.sealed_entry(
            h,
            &format!("user:{user}"),
            origin,
            "allow",
            "enrolment_token".to_owned(),
            action,
            user,
            Outcome::Success,
            details,
        )
    }

    /// First step of enrolment: sets the password and returns the TOTP
    /// secret to scan. May be repeated until the enrolment is confirmed.
    pub async fn enrol_start(
        self: Arc<Self>,
        firm: FirmId,
        token: Zeroizing<String>,
        password: Zeroizing<String>,
        origin: Origin,
    ) -> Result<TotpEnrolment, FirmError> {
        self.throttle(&origin)?;
        let me = self.clone();
        let (h, row) = blocking(move || {
            me.pool.require_writable(&firm)?;
            me.invitation(&firm, &token)
        })
        .await?;
        let normalised = super::password::check(&password, &row.login)?;
        let n = self.cfg.iterations;
        let hash =
            super::hashing(move || crypto::password::hash(normalised.as_bytes(), n)).await??;
        let me = self.clone();
        blocking(move || {
            let secret = TotpSecret::generate()?;
            let sealed = seal_totp(&h, &row.id, &secret)?;
            let e = me.entry(&h, &row.id, &origin, "users.enrol_start", json!({}))?;
            let (id, mac, at) = (row.id.clone(), row.invite_mac.clone(), me.pool.now());
            h.db.write_with(move |tx| {
                users::mutate(tx, &id, |u| {
                    if u.state != "invited" || u.invite_mac != mac {
                        return Err(FirmError::InvalidEnrolment);
                    }
                    u.password = Some(hash.clone());
                    u.totp_pending = Some(sealed.clone());
                    u.updated_at = at.clone();
                    Ok(())
                })?;
                tx.append_audit(e.clone())?;
                Ok::<_, FirmError>(())
            })?;
            me.totp_material(&h, &row.login, &secret)
        })
        .await
    }

    /// Second step: a code from the authenticator confirms the secret; the
    /// user becomes active and gets their recovery codes. Without a code
    /// only where the firm's policy does not require MFA of this user.
    pub fn enrol_confirm(
        &self,
        firm: &FirmId,
        token: &str,
        code: Option<&str>,
        origin: &Origin,
    ) -> Result<Enrolled, FirmError> {
        self.throttle(origin)?;
        self.pool.require_writable(firm)?;
        let (h, row) = self.invitation(firm, token)?;
        if row.password.is_none() {
            return Err(FirmError::UserState(
                "set a password first (the enrolment's first step)".into(),
            ));
        }
        let policy = self.mfa_policy(&h)?;
        let (role, _) = grants_of(&row)?;
        let now = self.pool.clock.now();
        let (step, codes, macs) = match code {
            Some(code) => {
                let pending = row.totp_pending.as_deref().ok_or(FirmError::InvalidCode)?;
                let secret = open_totp(&h, &row.id, pending)?;
                let step = match_totp(&secret, code.trim(), now.unix_timestamp(), 0)
                    .ok_or(FirmError::InvalidCode)?;
                let (codes, macs) = new_recovery_codes(&h, &row.id)?;
                (Some(step), codes, macs)
            }
            None if policy.requires(role) => {
                return Err(FirmError::Invalid(
                    "this firm requires a TOTP code to finish enrolment".into(),
                ));
            }
            None => (None, Vec::new(), "[]".to_owned()),
        };
        let e = self.entry(
            &h,
            &row.id,
            origin,
            "users.enrol",
            json!({ "totp": step.is_some() }),
        )?;
        let (id, mac, at) = (row.id.clone(), row.invite_mac.clone(), self.pool.now());
        let user = h.db.write_with(move |tx| {
            let u = users::mutate(tx, &id, |u| {
                if u.state != "invited" || u.invite_mac != mac {
                    return Err(FirmError::InvalidEnrolment);
                }
                if let Some(step) = step {
                    u.totp = u.totp_pending.take();
                    u.totp_last_step = step;
                    u.recovery = macs.clone();
                }
                u.totp_pending = None;
                u.state = "active".to_owned();
                u.invite_mac = None;
                u.invite_expires_at = None;
                u.updated_at = at.clone();
                Ok(())
            })?;
            tx.append_audit(e.clone())?;
            Ok::<_, FirmError>(u)
        })?;
        Ok(Enrolled {
            user: self.view(&user, policy)?,
            recovery_codes: codes,
        })
    }

    fn my_row(
        &self,
        h: &FirmHandle,
        auth: &Authorized<perm::Account>,
    ) -> Result<UserRow, FirmError> {
        let user = auth
            .principal()
            .actor
            .user()
            .ok_or(FirmError::Internal("account route reached with a key"))?;
        h.db.read_blocking(|r| r.user(user.as_str()))?
            .ok_or(FirmError::UserNotFound)
    }

    /// Checks the caller's current password when `needed`; a wrong one
    /// counts towards lockout like a failed sign-in. Every route that asks
    /// for the current password goes through here.
    pub(super) async fn reauthenticate(
        self: &Arc<Self>,
        auth: &Authorized<perm::Account>,
        current: Option<Zeroizing<String>>,
        needed: bool,
    ) -> Result<(Arc<FirmHandle>, UserRow), FirmError> {
        let (me, firm) = (self.clone(), auth.firm().clone());
        let user = auth.principal().actor.user().cloned();
        let (h, row) = blocking(move || {
            let h = me.pool.handle(&firm)?;
            let id = user.ok_or(FirmError::Internal("account route reached with a key"))?;
            let row =
                h.db.read_blocking(|r| r.user(id.as_str()))?
                    .ok_or(FirmError::UserNotFound)?;
            Ok((h, row))
        })
        .await?;
        if needed {
            let pw =
                current.ok_or_else(|| FirmError::Invalid("current_password is required".into()))?;
            // Security invariant: re-entering a password is a sign-in attempt: throttled per source, refused while locked.
            self.throttle(&auth.principal().origin)?;
            if super::locked_until(&row).is_some_and(|t| t > self.pool.clock.now()) {
                return Err(FirmError::InvalidCredentials);
            }
            if !self.check_password(&row, &pw).await?.matches {
                let (me, origin, r, h2) = (
                    self.clone(),
                    auth.principal().origin.clone(),
                    row.clone(),
                    h.clone(),
                );
                return blocking(move || {
                    me.record_failure(&h2, &r, &origin, "re-authentication: wrong password")
                })
                .await;
            }
        }
        Ok((h, row))
    }

    /// Starts TOTP enrolment for the caller (replacing theirs needs the
    /// current password). The secret counts once `totp_confirm` sees a code.
    pub async fn totp_begin(
        self: Arc<Self>,
        auth: Authorized<perm::Account>,
        current_password: Option<Zeroizing<String>>,
    ) -> Result<TotpEnrolment, FirmError> {
        let enrolled = {
            let (me, firm) = (self.clone(), auth.firm().clone());
            let user = auth.principal().actor.user().cloned();
            blocking(move || {
                let h = me.pool.handle(&firm)?;
                let id = user.ok_or(FirmError::Internal("account route reached with a key"))?;
                Ok(h.db
                    .read_blocking(|r| r.user(id.as_str()))?
                    .is_some_and(|u| u.totp.is_some()))
            })
            .await?
        };
        let (_, row) = self
            .reauthenticate(&auth, current_password, enrolled)
            .await?;
        let me = self.clone();
        blocking(move || {
            me.trail.change(
                &auth,
                "account.totp_begin",
                &row.id.clone(),
                json!({}),
                |c| {
                    let secret = TotpSecret::generate()?;
                    let sealed = seal_totp(&c.h, &row.id, &secret)?;
                    let (id, at) = (row.id.clone(), me.pool.now());
                    c.commit(&row.id, json!({}), move |tx| {
                        users::mutate(tx, &id, |u| {
                            u.totp_pending = Some(sealed.clone());
                            u.updated_at = at.clone();
                            Ok(())
                        })?;
                        Ok(())
                    })?;
                    me.totp_material(&c.h, &row.login, &secret)
                },
            )
        })
        .await
    }

    /// Confirms the caller's pending TOTP secret with a code: it replaces
    /// any old one, new recovery codes are issued, and an enrolment-only
    /// session may now do what its user may.
    pub fn totp_confirm(
        &self,
        auth: &Authorized<perm::Account>,
        code: &str,
    ) -> Result<Vec<OneTime>, FirmError> {
        let session = auth.principal().actor.session().map(ToString::to_string);
        let h = self.pool.handle(auth.firm())?;
        let row = self.my_row(&h, auth)?;
        self.trail.change(
            auth,
            "account.totp_enrol",
            &row.id.clone(),
            json!({}),
            |c| {
                let pending = row.totp_pending.as_deref().ok_or(FirmError::InvalidCode)?;
                let secret = open_totp(&c.h, &row.id, pending)?;
                let step = match_totp(
                    &secret,
                    code.trim(),
                    self.pool.clock.now().unix_timestamp(),
                    0,
                )
                .ok_or(FirmError::InvalidCode)?;
                let (codes, macs) = new_recovery_codes(&c.h, &row.id)?;
                let (id, at, pending) = (row.id.clone(), self.pool.now(), pending.to_vec());
                let session = session.clone();
                let done = c.commit(
                    &row.id,
                    json!({ "recovery_codes_issued": RECOVERY_CODES }),
                    move |tx| {
                        users::mutate(tx, &id, |u| {
                            if u.totp_pending.as_deref() != Some(pending.as_slice()) {
                                return Err(FirmError::InvalidCode);
                            }
                            u.totp = u.totp_pending.take();
                            u.totp_last_step = step;
                            u.recovery = macs.clone();
                            u.updated_at = at.clone();
                            Ok(())
                        })?;
                        if let Some(s) = &session {
                            tx.upgrade_session(s)?;
                        }
                        Ok(())
                    },
                );
                c.h.sessions.invalidate();
                done?;
                Ok(codes)
            },
        )
    }

    /// New recovery codes for the caller (the old ones stop working),
    /// given their current password.
    pub async fn regenerate_recovery_codes(
        self: Arc<Self>,
        auth: Authorized<perm::Account>,
        current_password: Option<Zeroizing<String>>,
    ) -> Result<Vec<OneTime>, FirmError> {
        let (_, row) = self.reauthenticate(&auth, current_password, true).await?;
        if row.totp.is_none() {
            return Err(FirmError::UserState(
                "recovery codes back up TOTP; enrol TOTP first".into(),
            ));
        }
        let me = self.clone();
        blocking(move || {
            me.trail.change(
                &auth,
                "account.recovery_codes",
                &row.id.clone(),
                json!({}),
                |c| {
                    let (codes, macs) = new_recovery_codes(&c.h, &row.id)?;
                    let (id, at) = (row.id.clone(), me.pool.now());
                    c.commit(
                        &row.id,
                        json!({ "recovery_codes_issued": RECOVERY_CODES }),
                        move |tx| {
                            users::mutate(tx, &id, |u| {
                                u.recovery = macs.clone();
                                u.updated_at = at.clone();
                                Ok(())
                            })?;
                            Ok(())
                        },
                    )?;
                    Ok(codes)
                },
            )
        })
        .await
    }

    /// The caller as a user.
    pub fn me(&self, auth: &Authorized<perm::Account>) -> Result<UserView, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let row = self.my_row(&h, auth)?;
        self.view(&row, self.mfa_policy(&h)?)
    }
}
