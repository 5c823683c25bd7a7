//! Credentials: API keys (`Authorization: Bearer sr_…`) and the principals
//! they authenticate. People's session tokens (`srs_…`, see `people`)
//! authenticate to the same [`Principal`] and go through the same policy.
//!
//! Token format: `sr_<firm hex>_<key hex>_<secret>` where the secret is 32
//! random bytes (256 bits) from the FIPS DRBG as 64 hex characters. The daemon
//! stores only HMAC-SHA256(firm auth key, key id | secret); the secret is shown
//! once, at minting, and never again.

pub(crate) mod authn;
pub mod failures;
pub mod keys;
pub mod policy;

pub use authn::AuthError;
pub use keys::{KeyView, Keys, Minted, NewKey};

use std::fmt;

use zeroize::Zeroize;

use crate::crypto::{self, CryptoError};
use crate::ids::{ApiKeyId, FirmId, SessionId, UserId};

pub const TOKEN_PREFIX: &str = "sr_";
const SECRET_HEX: usize = 64;

/// Roles, most powerful first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Role::Owner, Role::Admin, Role::Operator, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Who a principal is: a program with an API key, or a person in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Key(ApiKeyId),
    User { user: UserId, session: SessionId },
}

impl Actor {
    /// The audit log's `actor`: the key id, or `user:<user id>`.
    pub fn label(&self) -> String {
        match self {
            Actor::Key(k) => k.to_string(),
            Actor::User { user, .. } => format!("user:{user}"),
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        match self {
            Actor::User { user, .. } => Some(user),
            Actor::Key(_) => None,
        }
    }

    pub fn session(&self) -> Option<&SessionId> {
        match self {
            Actor::User { session, .. } => Some(session),
            Actor::Key(_) => None,
        }
    }
}

/// Who is making a request, after the credential checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub firm: FirmId,
    pub actor: Actor,
    pub role: Role,
    pub overrides: policy::Overrides,
    /// When the credential's power ends (`None`: never). A person's power
    /// does not end with a session, so sessions leave this `None`.
    pub expires_at: Option<time::OffsetDateTime>,
    /// A session that signed in without a second factor its user must
    /// have: it may only enrol one (the policy refuses everything else).
    pub enrolment_only: bool,
    /// Where the request came from (for the audit log).
    pub origin: Origin,
}

/// The request a principal is acting in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub request_id: String,
    pub source_ip: String,
}

/// An API key's secret part. Redacted in `Debug`, zeroized on drop; shown
/// to a human exactly once, when minted.
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut b: [u8; 32] = crypto::random_array()?;
        let s = crypto::hex(&b);
        b.zeroize();
        Ok(Self(s))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The full bearer token for this secret. The one place a secret is revealed.
    pub fn token(&self, firm: &FirmId, key: &ApiKeyId) -> String {
        format!("{TOKEN_PREFIX}{}_{}_{}", firm.hex(), key.hex(), self.0)
    }
}

impl Drop for ApiKeySecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

/// A bearer token split into its parts (the secret still unverified).
#[derive(Debug)]
pub struct ParsedToken {
    pub firm: FirmId,
    pub key: ApiKeyId,
    pub secret: ApiKeySecret,
}

/// Parses `sr_<firm>_<key>_<secret>`; `None` for anything malformed.
pub fn parse_token(token: &str) -> Option<ParsedToken> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let mut parts = rest.split('_');
    let firm = FirmId::from_hex(parts.next()?)?;
    let key = ApiKeyId::from_hex(parts.next()?)?;
    let secret = parts.next()?;
    if parts.next().is_some()
        || secret.len() != SECRET_HEX
        || !secret
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    Some(ParsedToken {
        firm,
        key,
        secret: ApiKeySecret(secret.to_owned()),
    })
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let f = FirmId::generate().unwrap();
        let k = ApiKeyId::generate().unwrap();
        let s = ApiKeySecret::generate().unwrap();
        let t = s.token(&f, &k);
        assert!(t.starts_with("sr_"));
        let p = parse_token(&t).unwrap();
        assert_eq!(p.firm, f);
        assert_eq!(p.key, k);
        assert_eq!(p.secret.as_bytes(), s.as_bytes());
        assert_eq!(format!("{:?}", p.secret), "ApiKeySecret(<redacted>)");
    }

    #[test]
    fn malformed_tokens_rejected() {
        for t in [
            "",
            "sr_",
            "sr_abc_def_ghi",
            "Bearer x",
            &format!(
                "sr_{}_{}_{}",
                "a".repeat(24),
                "b".repeat(16),
                "c".repeat(63)
            ),
            &format!(
                "sr_{}_{}_{}_x",
                "a".repeat(24),
                "b".repeat(16),
                "c".repeat(64)
            ),
            &format!(
                "sr_{}_{}_{}",
                "A".repeat(24),
                "b".repeat(16),
                "c".repeat(64)
            ),
        ] {
            assert!(parse_token(t).is_none(), "{t}");
        }
        assert!(
            parse_token(&format!(
                "sr_{}_{}_{}",
                "a".repeat(24),
                "b".repeat(16),
                "c".repeat(64)
            ))
            .is_some()
        );
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
