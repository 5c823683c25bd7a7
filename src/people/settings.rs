//! The `[people]` section of the configuration: passwords, invitations,
//! sessions, lockout (embedded in `config::Config`).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, parse_duration};

/// People: passwords, invitations, sessions, lockout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleSection {
    /// PBKDF2-HMAC-SHA256 iterations for new password hashes; at least
    /// 600000. Raising it rehashes each password at its next sign-in.
    pub password_iterations: u32,
    /// How long an invitation's enrolment token works.
    pub invitation_ttl: String,
    /// A session's absolute lifetime (refreshing does not extend it).
    pub session_lifetime: String,
    /// A session unused this long stops working.
    pub session_idle_timeout: String,
    /// Failed sign-ins in a row that lock an account.
    pub lockout_threshold: u32,
    /// The first lockout's length; each further one doubles it.
    pub lockout_duration: String,
    /// The longest a lockout gets.
    pub lockout_max: String,
    /// Sign-in (and enrolment) attempts allowed per source address a minute.
    pub sign_in_per_minute: u32,
}

impl Default for PeopleSection {
    fn default() -> Self {
        Self {
            password_iterations: crate::crypto::password::MIN_ITERATIONS,
            invitation_ttl: "72h".to_owned(),
            session_lifetime: "12h".to_owned(),
            session_idle_timeout: "15m".to_owned(),
            lockout_threshold: 8,
            lockout_duration: "15m".to_owned(),
            lockout_max: "24h".to_owned(),
            sign_in_per_minute: 10,
        }
    }
}

impl PeopleSection {
    fn duration(s: &str, default_secs: u64) -> Duration {
        parse_duration(s).unwrap_or(Duration::from_secs(default_secs))
    }

    pub fn invitation_ttl(&self) -> Duration {
        Self::duration(&self.invitation_ttl, 72 * 3600)
    }

    pub fn session_lifetime(&self) -> Duration {
        Self::duration(&self.session_lifetime, 12 * 3600)
    }

    pub fn session_idle_timeout(&self) -> Duration {
        Self::duration(&self.session_idle_timeout, 15 * 60)
    }

    pub fn lockout_duration(&self) -> Duration {
        Self::duration(&self.lockout_duration, 15 * 60)
    }

    pub fn lockout_max(&self) -> Duration {
        Self::duration(&self.lockout_max, 86_400)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("[people] {m}")));
        if !(crate::crypto::password::MIN_ITERATIONS..=10_000_000)
            .contains(&self.password_iterations)
        {
            return bad(format!(
                "password_iterations = {} must be between {} and 10000000",
                self.password_iterations,
                crate::crypto::password::MIN_ITERATIONS
            ));
        }
        for (name, v) in [
            ("invitation_ttl", &self.invitation_ttl),
            ("session_lifetime", &self.session_lifetime),
            ("session_idle_timeout", &self.session_idle_timeout),
            ("lockout_duration", &self.lockout_duration),
            ("lockout_max", &self.lockout_max),
        ] {
            if parse_duration(v).is_none() {
                return bad(format!(
                    "{name} = {v:?} is not a duration (a number and s, m, h or d)"
                ));
            }
        }
        if self.session_idle_timeout() > self.session_lifetime() {
            return bad("session_idle_timeout is longer than session_lifetime".to_owned());
        }
        if self.lockout_max() < self.lockout_duration() {
            return bad("lockout_max is shorter than lockout_duration".to_owned());
        }
        if !(1..=100).contains(&self.lockout_threshold) {
            return bad("lockout_threshold must be between 1 and 100".to_owned());
        }
        if !(1..=100_000).contains(&self.sign_in_per_minute) {
            return bad("sign_in_per_minute must be between 1 and 100000".to_owned());
        }
        Ok(())
    }
}
