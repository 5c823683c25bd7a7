//! The only module that imports aws-lc-rs: every cryptographic operation in the
//! process goes through the AWS-LC FIPS 140-3 module from here.
//!
//! Other modules see key material only through the newtypes defined here
//! (redacted `Debug`, zeroized on drop), never as bare byte arrays.

pub mod envelope;
pub mod fips;
pub mod keyring;
mod mac_keys;
pub mod password;
pub mod secret;
pub mod sign;
pub mod sqlcipher;
pub mod totp;

use aws_lc_rs::{digest, hmac, rand};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the AWS-LC module is not in FIPS mode: {0}")]
    NotFips(&'static str),
    #[error("random number generator failure")]
    Rng,
    #[error("cryptographic operation failed: {0}")]
    Failed(&'static str),
}

/// Fills `buf` from the FIPS module's DRBG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    rand::fill(buf).map_err(|_| CryptoError::Rng)
}

/// `N` bytes from the FIPS module's DRBG.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// SHA-256 (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 over the concatenation of `parts`, without copying them together.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA256 (FIPS 198-1) of `parts`, concatenated, under a raw `key`
/// (webhook signatures, where the receiver holds the same key bytes; a
/// data subject's key from its pepper and its sealed half).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-4 example "abc".
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_is_not_constant() {
        let a: [u8; 32] = random_array().unwrap();
        let b: [u8; 32] = random_array().unwrap();
        assert_ne!(a, b);
    }
}
