//! The password policy (NIST SP 800-63B): 12 to 256 characters of any
//! Unicode, normalised to NFKC before it is checked or hashed; refused if
//! it is a commonly used password or contains the login name. No
//! composition rules and no expiry: length and the blocklist do the work.
//!
//! The blocklist is the 30,000 most frequent passwords of the Xato
//! 10-million-password corpus (Mark Burnett, 2015), in the ranked form the
//! `zxcvbn` strength estimator ships (MIT licence), one per line in
//! `common-passwords.txt`, compiled into the binary.

use std::collections::HashSet;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::firms::FirmError;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 256;

static COMMON: &str = include_str!("common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON.lines().filter(|l| !l.is_empty()).collect())
}

/// How many passwords the blocklist holds.
pub fn blocklist_len() -> usize {
    common().len()
}

/// The password as hashed: NFKC.
pub fn normalise(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfkc().collect())
}

/// Checks a new password for `login` (normalised); the normalised form if
/// it passes.
pub fn check(password: &str, login: &str) -> Result<Zeroizing<String>, FirmError> {
    let pw = normalise(password);
    let n = pw.chars().count();
    if n < MIN_CHARS {
        return Err(FirmError::WeakPassword(format!(
            "it must be at least {MIN_CHARS} characters long"
        )));
    }
    if n > MAX_CHARS {
        return Err(FirmError::WeakPassword(format!(
            "it must be at most {MAX_CHARS} characters long"
        )));
    }
    let lower = Zeroizing::new(pw.to_lowercase());
    if common().contains(lower.as_str()) {
        return Err(FirmError::WeakPassword(
            "it is one of the most commonly used passwords".into(),
        ));
    }
    let local = login.split('@').next().unwrap_or(login);
    if lower.contains(login) || (local.chars().count() >= 3 && lower.contains(local)) {
        return Err(FirmError::WeakPassword("it contains the login name".into()));
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_what_it_says() {
        assert!(blocklist_len() >= 10_000);
        assert!(check("short", "alice").is_err());
        assert!(check(&"x".repeat(257), "alice").is_err());
        assert!(check(&"é".repeat(256), "alice").is_ok());
        // Common (case-insensitively), though long enough.
        assert!(common().contains("1q2w3e4r5t6y"));
        assert!(check("1Q2W3E4R5T6Y", "alice").is_err());
        // Contains the login, or an email login's local part.
        assert!(check("my-Alice-password-1", "alice").is_err());
        assert!(check("bobby-tables-99!", "bobby@example.com").is_err());
        assert!(check("correct horse battery staple", "alice").is_ok());
        // NFKC: the full-width form is the ASCII one.
        assert_eq!(normalise("ｃｏｒｒｅｃｔ").as_str(), "correct");
    }
}
