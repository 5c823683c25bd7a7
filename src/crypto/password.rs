//! Password hashing: PBKDF2-HMAC-SHA256 from the FIPS module.
//!
//! Stored form: `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`, with a
//! 16-byte salt from the DRBG and a 32-byte hash. The iteration count is in
//! every hash, so it can be raised later: a hash below the configured count
//! verifies, and the caller rehashes it at that sign-in.

use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;

use super::CryptoError;

/// The floor: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
pub const MIN_ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub matches: bool,
    /// The stored hash used fewer iterations than asked for now.
    pub needs_rehash: bool,
}

/// Hashes `password` (already normalised) with `iterations`.
pub fn hash(password: &[u8], iterations: u32) -> Result<String, CryptoError> {
    let iterations = iterations.max(MIN_ITERATIONS);
    let salt: [u8; SALT_LEN] = super::random_array()?;
    let mut out = [0u8; HASH_LEN];
    let n = NonZeroU32::new(iterations).ok_or(CryptoError::Failed("pbkdf2 iterations"))?;
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &mut out);
    Ok(format!(
        "{SCHEME}${iterations}${}${}",
        super::hex(&salt),
        super::hex(&out)
    ))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks `password` against a stored hash, in constant time. A stored
/// value that does not parse never matches.
pub fn verify(stored: &str, password: &[u8], iterations_now: u32) -> Checked {
    let mut parts = stored.split('$');
    let parsed = (|| {
        if parts.next()? != SCHEME {
            return None;
        }
        let n: u32 = parts.next()?.parse().ok()?;
        let salt = unhex(parts.next()?)?;
        let hash = unhex(parts.next()?)?;
        (parts.next().is_none() && n >= 1000 && salt.len() >= SALT_LEN && hash.len() == HASH_LEN)
            .then_some((NonZeroU32::new(n)?, salt, hash))
    })();
    let Some((n, salt, hash)) = parsed else {
        return Checked {
            matches: false,
            needs_rehash: false,
        };
    };
    let matches = pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &hash).is_ok();
    Checked {
        matches,
        needs_rehash: matches && n.get() < iterations_now,
    }
}

/// The same work as checking a password against a real hash of
/// `iterations`, for sign-ins whose account does not exist (or cannot sign
/// in), so their answer takes as long as a wrong password's.
pub fn verify_dummy(password: &[u8], iterations: u32) {
    let n = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).unwrap_or(NonZeroU32::MIN);
    let salt = [0x5au8; SALT_LEN];
    let hash = [0u8; HASH_LEN];
    let _ = pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &hash);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7914_pbkdf2_sha256_vector() {
        // RFC 7914 §11: P="passwd", S="salt", c=1, dkLen=64 (first 32 bytes).
        let mut out = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(1).unwrap(),
            b"salt",
            b"passwd",
            &mut out,
        );
        assert_eq!(
            super::super::hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn hashes_verify_and_carry_their_cost() {
        let h = hash("correct horse battery".as_bytes(), MIN_ITERATIONS).unwrap();
        assert!(h.starts_with("pbkdf2-sha256$600000$"));
        let ok = verify(&h, b"correct horse battery", MIN_ITERATIONS);
        assert_eq!(
            ok,
            Checked {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(!verify(&h, b"correct horse batterz", MIN_ITERATIONS).matches);
        assert!(verify(&h, b"correct horse battery", MIN_ITERATIONS + 1).needs_rehash);
        assert_ne!(h, hash(b"correct horse battery", MIN_ITERATIONS).unwrap());
        for bad in [
            "",
            "x$1$00$00",
            &h.replace("sha256", "sha1"),
            &format!("{h}$"),
        ] {
            assert!(!verify(bad, b"correct horse battery", MIN_ITERATIONS).matches);
        }
        // Never below the floor, whatever is asked.
        assert!(hash(b"abcdefghijklmn", 10).unwrap().contains("$600000$"));
    }
}
