//! The console's CSRF token. The console's session rides in a cookie, which
//! a browser attaches to any request to this origin; a state-changing
//! request must also carry this token, which only a page of this origin
//! can have read. It is an HMAC of the session id under the firm's `auth`
//! key, so it needs no storage, cannot be forged without the key, and dies
//! with its session.

use crate::crypto::{self, keyring};
use crate::firms::FirmError;
use crate::ids::{FirmId, SessionId};

use super::People;

impl People {
    /// The CSRF token bound to `session`:
    /// `hex(HMAC-SHA256(auth key, "strongroom/console-csrf/v1|" session "|"))`.
    pub fn csrf_token(&self, firm: &FirmId, session: &SessionId) -> Result<String, FirmError> {
        let h = match self.pool.cached_handle(firm) {
            Some(h) => h,
            None => self.pool.handle(firm)?,
        };
        let mac = keyring::credential_mac(&h.auth_key, "console-csrf", session.as_str(), b"");
        Ok(crypto::hex(&mac))
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub fn csrf_matches(
        &self,
        firm: &FirmId,
        session: &SessionId,
        presented: &str,
    ) -> Result<bool, FirmError> {
        let expected = self.csrf_token(firm, session)?;
        // Security invariant: CSRF tokens are compared in constant time.
        Ok(keyring::ct_eq(expected.as_bytes(), presented.as_bytes()))
    }
}
