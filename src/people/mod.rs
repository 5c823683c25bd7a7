//! People: a firm's staff, who sign in with a password and a TOTP second
//! factor and act through sessions, under the same policy and audit log as
//! API keys.
//!
//! - `users`: invitation and administration (role, overrides, state).
//! - `enrol`: enrolment from an invitation, TOTP and recovery codes.
//! - `signin`: password + second factor, lockout, per-source throttling.
//! - `sessions`: session tokens, their authentication, expiry, revocation.
//! - `password`: the password policy (length, common passwords, login name).
//!
//! Token formats (the secret is 32 DRBG bytes as 64 hex characters, stored
//! only as an HMAC under the firm's auth key):
//! - session: `srs_<firm hex>_<session hex>_<secret>`
//! - enrolment: `sre_<firm hex>_<user hex>_<secret>`

mod csrf;
mod enrol;
mod limiter;
pub mod password;
mod sessions;
pub mod settings;
mod signin;
pub mod users;

pub use enrol::{Enrolled, TotpEnrolment};
pub use sessions::SessionView;
pub use signin::{SignIn, SignedIn};
pub use users::{Invitation, NewUser, UserChange};

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroize;

use crate::audit::trail::AuditTrail;
use crate::auth::Role;
use crate::auth::policy::Overrides;
use crate::clock::parse_rfc3339;
use crate::config::PeopleSection;
use crate::crypto::{self, CryptoError, envelope, totp::TotpSecret};
use crate::firms::FirmError;
use crate::firms::pool::{FirmHandle, Pool};
use crate::ids::FirmId;
use crate::store::firm::UserRow;

pub const SESSION_PREFIX: &str = "srs_";
pub const ENROLMENT_PREFIX: &str = "sre_";
const SECRET_HEX: usize = 64;
/// Recovery codes issued at a time.
pub const RECOVERY_CODES: usize = 10;

/// The people settings, from `[people]`.
#[derive(Debug, Clone)]
pub struct PeopleConfig {
    pub iterations: u32,
    pub invitation_ttl: Duration,
    pub session_lifetime: Duration,
    pub idle_timeout: Duration,
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    pub lockout_max: Duration,
    pub sign_in_per_minute: u32,
}

impl From<&PeopleSection> for PeopleConfig {
    fn from(s: &PeopleSection) -> Self {
        Self {
            iterations: s.password_iterations,
            invitation_ttl: s.invitation_ttl(),
            session_lifetime: s.session_lifetime(),
            idle_timeout: s.session_idle_timeout(),
            lockout_threshold: s.lockout_threshold,
            lockout_duration: s.lockout_duration(),
            lockout_max: s.lockout_max(),
            sign_in_per_minute: s.sign_in_per_minute,
        }
    }
}

/// A firm's rule for second factors (`mfa_policy` in its profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MfaPolicy {
    /// Everyone must have TOTP.
    Required,
    /// Owners and admins must (the default).
    RequiredForAdmins,
    /// Nobody must; whoever enrolled still uses it.
    Optional,
}

impl MfaPolicy {
    pub const PROFILE_KEY: &'static str = "mfa_policy";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "required" => Some(Self::Required),
            "required_for_admins" => Some(Self::RequiredForAdmins),
            "optional" => Some(Self::Optional),
            _ => None,
        }
    }

    pub fn requires(self, role: Role) -> bool {
        match self {
            Self::Required => true,
            Self::RequiredForAdmins => matches!(role, Role::Owner | Role::Admin),
            Self::Optional => false,
        }
    }
}

/// A credential shown once (a session or enrolment token, a recovery
/// code, a TOTP secret): redacted in `Debug`, zeroized on drop.
pub struct OneTime(pub(crate) String);

impl OneTime {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OneTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTime(<redacted>)")
    }
}

impl Drop for OneTime {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A token's parts: firm, the id's hex, the secret (unverified).
pub(crate) struct ParsedToken {
    pub firm: FirmId,
    pub id_hex: String,
    pub secret: OneTime,
}

/// Parses `<prefix><firm hex>_<id hex (16)>_<secret>`; `None` if malformed.
pub(crate) fn parse_token(prefix: &str, token: &str) -> Option<ParsedToken> {
    let rest = token.strip_prefix(prefix)?;
    let mut parts = rest.split('_');
    let firm = FirmId::from_hex(parts.next()?)?;
    let id_hex = parts.next()?;
    let secret = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    if parts.next().is_some() || !hex(id_hex, 16) || !hex(secret, SECRET_HEX) {
        return None;
    }
    Some(ParsedToken {
        firm,
        id_hex: id_hex.to_owned(),
        secret: OneTime(secret.to_owned()),
    })
}

/// The firm and session id a session token names (for the audit of a
/// failed authentication; never its secret).
pub fn session_token_ids(token: &str) -> Option<(FirmId, String)> {
    let p = parse_token(SESSION_PREFIX, token)?;
    Some((
        p.firm,
        format!("{}{}", crate::ids::SessionId::PREFIX, p.id_hex),
    ))
}

/// A fresh token secret and the full token carrying it.
pub(crate) fn new_token(
    prefix: &str,
    firm: &FirmId,
    id_hex: &str,
) -> Result<(OneTime, OneTime), CryptoError> {
    let mut b: [u8; 32] = crypto::random_array()?;
    let secret = OneTime(crypto::hex(&b));
    b.zeroize();
    let token = OneTime(format!("{prefix}{}_{id_hex}_{}", firm.hex(), secret.0));
    Ok((secret, token))
}

/// Longest login name, in characters as sent.
pub const MAX_LOGIN_CHARS: usize = 254;

/// White space, control and invisible formatting characters: never in a login.
fn unseen(c: char) -> bool {
    c.is_control() || c.is_whitespace() || crate::ids::is_invisible_format(c)
}

/// A character a login may hold: neither it nor its compatibility form
/// (NFKC, as logins are compared) is white space, control or invisible.
fn login_char(c: char) -> bool {
    use unicode_normalization::UnicodeNormalization;
    !unseen(c) && !std::iter::once(c).nfkc().any(unseen)
}

/// [`normalise_login`]'s rule as a JSON Schema pattern (for the API
/// document): the characters [`login_char`] refuses, listed.
pub fn login_pattern() -> &'static str {
    static PATTERN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut class = String::new();
        let mut run: Option<(char, char)> = None;
        let esc = |c: char| {
            if (c as u32) < 0x10000 {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        };
        let flush = |r: (char, char), class: &mut String| {
            class.push_str(&esc(r.0));
            if r.1 != r.0 {
                class.push('-');
                class.push_str(&esc(r.1));
            }
        };
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if login_char(c) {
                continue;
            }
            run = match run {
                Some((a, b)) if b as u32 + 1 == c as u32 => Some((a, c)),
                Some(r) => {
                    flush(r, &mut class);
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
        if let Some(r) = run {
            flush(r, &mut class);
        }
        format!("^[^{class}]{{1,{MAX_LOGIN_CHARS}}}$")
    })
}

/// A login name as stored and compared: NFKC, lower case.
/// Security invariant: logins differing only in case or Unicode form are one login.
pub fn normalise_login(login: &str) -> Result<String, FirmError> {
    use unicode_normalization::UnicodeNormalization;
    // Checked as sent (length and characters), so the rule is the one the
    // API document states; the compared form is NFKC in lower case.
    let n: String = login.nfkc().collect::<String>().to_lowercase();
    let ok = (1..=MAX_LOGIN_CHARS).contains(&login.chars().count())
        && login.chars().all(login_char)
        && !n.is_empty()
        && !n.chars().any(unseen);
    if ok {
        Ok(n)
    } else {
        Err(FirmError::Invalid(
            "a login name is 1 to 254 characters without spaces, control or invisible characters (an email address works)".into(),
        ))
    }
}

/// How a user's state reads now (`locked` while a lockout lasts).
pub(crate) fn state_now(u: &UserRow, now: time::OffsetDateTime) -> &'static str {
    match u.state.as_str() {
        "invited" => "invited",
        "disabled" => "disabled",
        _ if locked_until(u).is_some_and(|t| t > now) => "locked",
        _ => "active",
    }
}

pub(crate) fn locked_until(u: &UserRow) -> Option<time::OffsetDateTime> {
    u.locked_until.as_deref().and_then(parse_rfc3339)
}

/// The role and overrides a user row holds.
pub(crate) fn grants_of(u: &UserRow) -> Result<(Role, Overrides), FirmError> {
    crate::auth::keys::parse_grants(&u.id, &u.role, &u.allow, &u.deny)
}

fn totp_aad(firm: &FirmId, user: &str) -> Vec<u8> {
    format!("strongroom/totp/v1|{firm}|{user}").into_bytes()
}

/// Seals a TOTP secret for storage (under the firm's auth key).
pub(crate) fn seal_totp(h: &FirmHandle, user: &str, s: &TotpSecret) -> Result<Vec<u8>, FirmError> {
    envelope::seal(&h.auth_key, 1, &totp_aad(&h.id, user), s.expose()).map_err(|_| FirmError::Seal)
}

pub(crate) fn open_totp(
    h: &FirmHandle,
    user: &str,
    sealed: &[u8],
) -> Result<TotpSecret, FirmError> {
    envelope::open(&h.auth_key, &totp_aad(&h.id, user), sealed)
        .map(TotpSecret::from_bytes)
        .map_err(|_| FirmError::Seal)
}

/// A user as the API shows them: never a password hash, TOTP secret,
/// recovery code or token.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub login: String,
    pub display_name: String,
    pub role: Role,
    pub allow: Vec<&'static str>,
    pub deny: Vec<&'static str>,
    /// `invited`, `active`, `disabled` or `locked`.
    pub state: &'static str,
    /// TOTP enrolled.
    pub mfa_enrolled: bool,
    /// The firm's policy requires this user to have TOTP.
    pub mfa_required: bool,
    pub recovery_codes_left: usize,
    pub locked_until: Option<String>,
    pub invitation_expires_at: Option<String>,
    pub created_at: String,
    pub created_by: Option<String>,
    pub updated_at: String,
    pub last_signin_at: Option<String>,
}

/// People: users, enrolment, sign-in and sessions, on the shared pool and
/// audit trail.
#[derive(Debug)]
pub struct People {
    pub(crate) pool: Arc<Pool>,
    pub(crate) trail: Arc<AuditTrail>,
    pub(crate) cfg: PeopleConfig,
    /// Sign-in attempts per source address.
    limiter: Mutex<limiter::Limiter>,
    /// Failed sign-ins being counted per firm and source (as for keys).
    failures: Mutex<crate::auth::failures::FailureCounter>,
}

impl People {
    pub fn new(pool: Arc<Pool>, trail: Arc<AuditTrail>, cfg: PeopleConfig) -> Self {
        let limiter = limiter::Limiter::new(cfg.sign_in_per_minute);
        Self {
            pool,
            trail,
            cfg,
            limiter: Mutex::new(limiter),
            failures: Default::default(),
        }
    }

    /// The firm's MFA policy (its profile's `mfa_policy`, else the default).
    pub(crate) fn mfa_policy(&self, h: &FirmHandle) -> Result<MfaPolicy, FirmError> {
        let profile = h.db.read_blocking(|r| r.profile())?;
        Ok(profile
            .iter()
            .find(|(k, _)| k == MfaPolicy::PROFILE_KEY)
            .and_then(|(_, v)| MfaPolicy::parse(v))
            .unwrap_or(MfaPolicy::RequiredForAdmins))
    }

    pub(crate) fn view(&self, u: &UserRow, policy: MfaPolicy) -> Result<UserView, FirmError> {
        let (role, overrides) = grants_of(u)?;
        let now = self.pool.clock.now();
        let recovery: Vec<String> = serde_json::from_str(&u.recovery).unwrap_or_default();
        Ok(UserView {
            id: u.id.clone(),
            login: u.login.clone(),
            display_name: u.display_name.clone(),
            role,
            allow: overrides.allow_names(),
            deny: overrides.deny_names(),
            state: state_now(u, now),
            mfa_enrolled: u.totp.is_some(),
            mfa_required: policy.requires(role),
            recovery_codes_left: recovery.len(),
            locked_until: locked_until(u)
                .filter(|t| *t > now)
                .map(|_| u.locked_until.clone().unwrap_or_default()),
            invitation_expires_at: (u.state == "invited")
                .then(|| u.invite_expires_at.clone())
                .flatten(),
            created_at: u.created_at.clone(),
            created_by: u.created_by.clone(),
            updated_at: u.updated_at.clone(),
            last_signin_at: u.last_signin_at.clone(),
        })
    }

    /// Writes the summary entries (`sessions.failures`) of closed
    /// failed-sign-in windows (all of them with `all`, at shutdown).
    pub fn flush_signin_failures(&self, all: bool) {
        let due = crate::firms::lock(&self.failures).close(self.pool.clock.monotonic(), all);
        crate::auth::authn::write_summaries(
            &self.trail,
            due,
            "sessions.failures",
            "distinct_accounts",
        );
    }
}

/// Runs a PBKDF2 hash or check on the password lane: at most two at once
/// (one per core of the reference appliance), so a burst of sign-ins
/// queues here instead of taking every blocking lane the API needs.
pub(crate) async fn hashing<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, FirmError> {
    static HASH_LANES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    // Hashes waiting at most: past it, a sign-in is told to retry (429)
    // rather than queue without bound.
    const MAX_WAITING: usize = 64;
    static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    if WAITING.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_WAITING {
        WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        return Err(FirmError::RateLimited(1));
    }
    let waiting = Waiting;
    let permit = HASH_LANES
        .acquire()
        .await
        .map_err(|_| FirmError::Internal("hashing lanes closed"))?;
    drop(waiting);
    let _permit = permit;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| FirmError::Internal("hashing task failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_one_whatever_their_case_or_form() {
        assert_eq!(
            normalise_login("Alice@Example.COM").unwrap(),
            "alice@example.com"
        );
        // NFKC folds the full-width form onto ASCII.
        assert_eq!(normalise_login("ＡＬＩＣＥ").unwrap(), "alice");
        assert!(normalise_login("a b").is_err());
        assert!(normalise_login(" alice").is_err());
        assert!(normalise_login("").is_err());
        assert!(normalise_login("al\u{202e}ice").is_err());
        // A macron's compatibility form begins with a space: refused as sent.
        assert!(normalise_login("a\u{af}").is_err());
        assert!(normalise_login(&"a".repeat(MAX_LOGIN_CHARS)).is_ok());
        assert!(normalise_login(&"a".repeat(MAX_LOGIN_CHARS + 1)).is_err());
    }

    #[test]
    fn the_login_pattern_lists_what_the_rule_refuses() {
        let p = login_pattern();
        assert!(p.starts_with("^[^\\u0000-\\u0020"), "{}", &p[..40]);
        for refused in ['\u{a0}', '\u{af}', '\u{202e}', '\u{3000}', '\u{feff}'] {
            assert!(!login_char(refused));
        }
        for kept in ['a', 'é', 'Ａ', '@', '\u{1F600}'] {
            assert!(login_char(kept), "{kept:?}");
        }
        assert!(p.ends_with(&format!("]{{1,{MAX_LOGIN_CHARS}}}$")));
    }

    #[test]
    fn tokens_parse_only_in_their_exact_form() {
        let f = FirmId::generate().unwrap();
        let (secret, token) = new_token(SESSION_PREFIX, &f, "0123456789abcdef").unwrap();
        let p = parse_token(SESSION_PREFIX, token.reveal()).unwrap();
        assert_eq!(p.firm, f);
        assert_eq!(p.id_hex, "0123456789abcdef");
        assert_eq!(p.secret.reveal(), secret.reveal());
        assert!(parse_token(ENROLMENT_PREFIX, token.reveal()).is_none());
        assert!(parse_token(SESSION_PREFIX, &format!("{}x", token.reveal())).is_none());
        assert!(parse_token(SESSION_PREFIX, &token.reveal().to_uppercase()).is_none());
        assert_eq!(format!("{token:?}"), "OneTime(<redacted>)");
    }
}
