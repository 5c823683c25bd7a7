//! Versioned authenticated encryption (AES-256-GCM in the FIPS module).
//!
//! Wire format of an envelope (all integers big-endian):
//!
//! ```text
//! byte 0      format (0x01 = AES-256-GCM, 96-bit module-generated nonce)
//! bytes 1..5  key version (u32) of the key that sealed it
//! bytes 5..17 nonce
//! bytes 17..  ciphertext || 16-byte tag
//! ```
//!
//! The 5 header bytes are authenticated along with the caller's AAD, so a
//! changed format byte or key version fails to open like a changed ciphertext.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};

use super::secret::SecretKey;

pub const FORMAT_AES256GCM: u8 = 0x01;
const HEADER: usize = 1 + 4;
const TAG: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope too short or of an unknown format")]
    Malformed,
    #[error("envelope does not authenticate (wrong key, wrong context or tampered)")]
    Auth,
    #[error("envelope sealing failed")]
    Seal,
}

/// Seals `plaintext` under `key` (which has version `version`), binding `aad`.
pub fn seal(
    key: &SecretKey,
    version: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let k = RandomizedNonceKey::new(&AES_256_GCM, key.expose()).map_err(|_| EnvelopeError::Seal)?;
    let mut header = [0u8; HEADER];
    header[0] = FORMAT_AES256GCM;
    header[1..5].copy_from_slice(&version.to_be_bytes());
    let full_aad = [&header[..], aad].concat();
    let mut buf = plaintext.to_vec();
    // Security invariant: the nonce is generated inside the FIPS module, never reused.
    let nonce = k
        .seal_in_place_append_tag(Aad::from(&full_aad), &mut buf)
        .map_err(|_| EnvelopeError::Seal)?;
    let mut out = Vec::with_capacity(HEADER + NONCE_LEN + buf.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&buf);
    Ok(out)
}

/// The key version an envelope says it was sealed with (unauthenticated until opened).
pub fn key_version(envelope: &[u8]) -> Result<u32, EnvelopeError> {
    if envelope.len() < HEADER + NONCE_LEN + TAG || envelope[0] != FORMAT_AES256GCM {
        return Err(EnvelopeError::Malformed);
    }
    Ok(u32::from_be_bytes([
        envelope[1],
        envelope[2],
        envelope[3],
        envelope[4],
    ]))
}

/// Opens an envelope sealed under `key` with the same `aad`.
pub fn open(key: &SecretKey, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    key_version(envelope)?;
    let k = RandomizedNonceKey::new(&AES_256_GCM, key.expose()).map_err(|_| EnvelopeError::Auth)?;
    let full_aad = [&envelope[..HEADER], aad].concat();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&envelope[HEADER..HEADER + NONCE_LEN]);
    let mut buf = envelope[HEADER + NONCE_LEN..].to_vec();
    let plain_len = k
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&full_aad),
            &mut buf,
        )
        .map_err(|_| EnvelopeError::Auth)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version() {
        let k = SecretKey::from_bytes([7; 32]);
        let e = seal(&k, 42, b"ctx", b"hello").unwrap();
        assert_eq!(e.len(), 5 + 12 + 5 + 16);
        assert_eq!(key_version(&e).unwrap(), 42);
        assert_eq!(open(&k, b"ctx", &e).unwrap(), b"hello");
    }

    #[test]
    fn tampering_any_byte_fails() {
        let k = SecretKey::from_bytes([7; 32]);
        let e = seal(&k, 1, b"ctx", b"some secret payload").unwrap();
        for i in 0..e.len() {
            let mut t = e.clone();
            t[i] ^= 0x01;
            assert!(
                open(&k, b"ctx", &t).is_err(),
                "byte {i} flipped still opened"
            );
        }
        assert!(open(&k, b"ctx", &e[..e.len() - 1]).is_err());
        assert_eq!(open(&k, b"ctx", &[]), Err(EnvelopeError::Malformed));
    }

    #[test]
    fn wrong_key_or_aad_fails() {
        let k = SecretKey::from_bytes([7; 32]);
        let e = seal(&k, 1, b"ctx", b"x").unwrap();
        assert_eq!(open(&k, b"other", &e), Err(EnvelopeError::Auth));
        assert_eq!(
            open(&SecretKey::from_bytes([8; 32]), b"ctx", &e),
            Err(EnvelopeError::Auth)
        );
    }

    #[test]
    fn nonces_differ() {
        let k = SecretKey::from_bytes([7; 32]);
        let a = seal(&k, 1, b"", b"same").unwrap();
        let b = seal(&k, 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }
}
