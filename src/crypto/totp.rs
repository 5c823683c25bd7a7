//! TOTP (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 6 digits, 30-second
//! steps, the parameters every authenticator app assumes. HMAC-SHA1 stays
//! FIPS-approved for message authentication (SP 800-131A); it is used here
//! for nothing else.

use std::fmt;

use aws_lc_rs::hmac;
use zeroize::Zeroize;

use super::CryptoError;

pub const DIGITS: u32 = 6;
pub const STEP_SECS: i64 = 30;
const SECRET_LEN: usize = 20;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A TOTP shared secret (160 bits from the DRBG). Redacted in `Debug`,
/// zeroized on drop.
#[derive(Clone)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(super::random_array::<SECRET_LEN>()?.to_vec()))
    }

    pub fn from_bytes(b: Vec<u8>) -> Self {
        Self(b)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret in RFC 4648 base32 without padding, as apps take it.
    pub fn base32(&self) -> String {
        base32(&self.0)
    }

    /// The code for time step `step`.
    pub fn code_at(&self, step: i64) -> String {
        hotp(&self.0, step as u64)
    }
}

impl Drop for TotpSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// The time step of a Unix time.
pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// RFC 4226 HOTP with dynamic truncation, `DIGITS` digits.
pub fn hotp(key: &[u8], counter: u64) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&k, &counter.to_be_bytes());
    let t = tag.as_ref();
    let off = usize::from(t[t.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([t[off] & 0x7f, t[off + 1], t[off + 2], t[off + 3]]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// RFC 4648 base32, no padding.
pub fn base32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4226_and_6238_vectors() {
        // RFC 4226 appendix D, six digits.
        let key = b"12345678901234567890";
        let want = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(hotp(key, i as u64), *w);
        }
        // RFC 6238 appendix B (SHA-1), last six of the eight digits.
        for (t, w) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(hotp(key, step_of(t) as u64), w, "t={t}");
        }
    }

    #[test]
    fn base32_matches_rfc_4648() {
        for (i, o) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(i.as_bytes()), o);
        }
        let s = TotpSecret::generate().unwrap();
        assert_eq!(s.base32().len(), 32);
        assert_eq!(format!("{s:?}"), "TotpSecret(<redacted>)");
    }
}
