//! The key hierarchy.
//!
//! ```text
//! master key (32 bytes, systemd credential or key file; never stored by us)
//!  ├─ HKDF-SHA256(salt "strongroom/v1", info "registry-db")  -> registry SQLCipher key
//!  └─ HKDF-SHA256(salt "strongroom/v1", info "key-wrapping") -> key-wrapping key (KWK)
//!        └─ wraps each firm's random 256-bit keys (AES-256-GCM envelope,
//!           AAD = "strongroom/wrap/v1" | firm id | 0x00 | purpose | version):
//!             db    - the firm database's raw SQLCipher key
//!             data  - field-level encryption of records and secrets
//!             audit - audit-log payloads
//!             auth  - HMAC-SHA256 key for the firm's API key hashes
//! ```

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroize;

use super::envelope::{self, EnvelopeError};
use super::secret::SecretKey;

const HKDF_SALT: &[u8] = b"strongroom/v1";
const WRAP_AAD_PREFIX: &[u8] = b"strongroom/wrap/v1";

/// What a firm key is for. Part of the wrapping AAD, so a key wrapped for one
/// purpose cannot be unwrapped as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Db,
    Data,
    Audit,
    Auth,
    /// The appliance's Ed25519 seed for audit checkpoints and receipts
    /// (wrapped under the appliance id, not a firm's).
    Signing,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Purpose::Db, Purpose::Data, Purpose::Audit, Purpose::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Db => "db",
            Purpose::Data => "data",
            Purpose::Audit => "audit",
            Purpose::Auth => "auth",
            Purpose::Signing => "signing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Purpose::Signing])
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no master key: neither the systemd credential `master-key` ($CREDENTIALS_DIRECTORY) nor keys.master_key_file is available"
    )]
    Missing,
    #[error("cannot read master key {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("master key {path} is unsafe: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("master key {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("key unwrap failed: {0}")]
    Unwrap(EnvelopeError),
    #[error("key wrap failed: {0}")]
    Wrap(EnvelopeError),
    #[error("key derivation failed")]
    Derive,
}

/// The root of trust, held in locked, zeroized memory.
pub struct MasterKey(SecretKey);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Where a master key came from (for logs; never the key itself).
#[derive(Debug, Clone)]
pub enum KeySource {
    Credential(PathBuf),
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Credential(p) => write!(f, "systemd credential {}", p.display()),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

impl MasterKey {
    /// Loads the master key: the systemd credential `master-key` when the
    /// service manager passed one, else the configured key file.
    pub fn load(key_file: Option<&Path>) -> Result<(Self, KeySource), KeyError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join("master-key");
            if path.exists() {
                // systemd owns this file's permissions (0400, ramfs, per-service).
                let key = Self::read(&path, false)?;
                return Ok((key, KeySource::Credential(path)));
            }
        }
        let path = key_file.ok_or(KeyError::Missing)?;
        if !path.exists() {
            return Err(KeyError::Unreadable {
                path: path.to_owned(),
                reason: "no such file".to_owned(),
            });
        }
        let key = Self::read(path, true)?;
        Ok((key, KeySource::File(path.to_owned())))
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex characters (an
    /// optional trailing newline allowed).
    pub fn read(path: &Path, check_owner: bool) -> Result<Self, KeyError> {
        let unreadable = |reason: String| KeyError::Unreadable {
            path: path.to_owned(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
        if check_owner {
            // Security invariant: the master key file is private to the service user.
            let mode = meta.mode() & 0o777;
            if mode != 0o400 && mode != 0o600 {
                return Err(KeyError::Unsafe {
                    path: path.to_owned(),
                    reason: format!("mode {mode:04o}; must be 0400 or 0600"),
                });
            }
            let euid = nix::unistd::geteuid().as_raw();
            if meta.uid() != euid {
                return Err(KeyError::Unsafe {
                    path: path.to_owned(),
                    reason: format!(
                        "owned by uid {}, not by the service user (uid {euid})",
                        meta.uid()
                    ),
                });
            }
        }
        let mut raw = fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let parsed = parse_key_bytes(&raw);
        raw.zeroize();
        match parsed {
            Some(key) => Ok(MasterKey(key)),
            None => Err(KeyError::Malformed {
                path: path.to_owned(),
                reason: "expected exactly 32 bytes or 64 hex characters".to_owned(),
            }),
        }
    }

    pub fn from_secret(key: SecretKey) -> Self {
        MasterKey(key)
    }

    /// Derives the registry key and the key-wrapping key.
    pub fn derive(&self) -> Result<Keyring, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(self.0.expose());
        let expand = |info: &[u8]| -> Result<SecretKey, KeyError> {
            let mut out = [0u8; 32];
            prk.expand(&[info], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out))
                .map_err(|_| KeyError::Derive)?;
            let k = SecretKey::from_bytes(out);
            out.zeroize();
            Ok(k)
        };
        Ok(Keyring {
            registry_db: expand(b"registry-db")?,
            kwk: expand(b"key-wrapping")?,
        })
    }
}

pub(crate) fn parse_key_bytes(raw: &[u8]) -> Option<SecretKey> {
    if raw.len() == 32 {
        let mut b = [0u8; 32];
        b.copy_from_slice(raw);
        let k = SecretKey::from_bytes(b);
        b.zeroize();
        return Some(k);
    }
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    if text.len() != 64 {
        return None;
    }
    let mut b = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        b[i] = (hi * 16 + lo) as u8;
    }
    let k = SecretKey::from_bytes(b);
    b.zeroize();
    Some(k)
}

/// Keys derived from the master key.
#[derive(Debug)]
pub struct Keyring {
    registry_db: SecretKey,
    kwk: SecretKey,
}

impl Keyring {
    /// The registry database's SQLCipher key, in the form `PRAGMA key` takes.
    pub fn registry_db_key(&self) -> SqlcipherKey {
        SqlcipherKey::from_secret(&self.registry_db)
    }

    /// Wraps a firm key for storage in the registry.
    pub fn wrap(
        &self,
        firm: &str,
        purpose: Purpose,
        version: u32,
        key: &SecretKey,
    ) -> Result<Vec<u8>, KeyError> {
        envelope::seal(
            &self.kwk,
            version,
            &wrap_aad(firm, purpose, version),
            key.expose(),
        )
        .map_err(KeyError::Wrap)
    }

    /// Unwraps a firm key; fails on any change to the blob or its context.
    pub fn unwrap(
        &self,
        firm: &str,
        purpose: Purpose,
        version: u32,
        wrapped: &[u8],
    ) -> Result<SecretKey, KeyError> {
        let mut plain = envelope::open(&self.kwk, &wrap_aad(firm, purpose, version), wrapped)
            .map_err(KeyError::Unwrap)?;
        if plain.len() != 32 {
            plain.zeroize();
            return Err(KeyError::Unwrap(EnvelopeError::Malformed));
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&plain);
        plain.zeroize();
        let k = SecretKey::from_bytes(b);
        b.zeroize();
        Ok(k)
    }
}

fn wrap_aad(firm: &str, purpose: Purpose, version: u32) -> Vec<u8> {
    let mut aad = WRAP_AAD_PREFIX.to_vec();
    aad.push(b'|');
    aad.extend_from_slice(firm.as_bytes());
    aad.push(0);
    aad.extend_from_slice(purpose.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// A raw SQLCipher key as the text `x'<64 hex>'` (and its bytes), zeroized
/// on drop.
pub struct SqlcipherKey(String, [u8; 32]);

impl SqlcipherKey {
    pub fn from_secret(k: &SecretKey) -> Self {
        SqlcipherKey(format!("x'{}'", super::hex(k.expose())), *k.expose())
    }

    /// The pragma value; for `store/` to hand to SQLCipher and for the
    /// root-only disaster-recovery export.
    pub fn as_pragma_value(&self) -> &str {
        &self.0
    }

    /// The page MAC of the SQLCipher file whose first page is `page` (4096
    /// bytes), if this key made it; None if it made neither kind.
    pub fn page_mac_of(&self, page: &[u8]) -> Option<super::sqlcipher::PageMac> {
        use super::sqlcipher::{PageMac, page_one_mac_matches};
        [PageMac::Sha256, PageMac::Sha512]
            .into_iter()
            .find(|m| page_one_mac_matches(page, &self.1, *m))
    }
}

impl Drop for SqlcipherKey {
    fn drop(&mut self) {
        self.0.zeroize();
        self.1.zeroize();
    }
}

impl fmt::Debug for SqlcipherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqlcipherKey(<redacted>)")
    }
}

/// A new master key from the FIPS DRBG, as 64 hex characters (the form key
/// files and credentials accept), zeroized on drop.
pub fn new_master_key_hex() -> Result<zeroize::Zeroizing<String>, super::CryptoError> {
    let key = SecretKey::random()?;
    Ok(zeroize::Zeroizing::new(super::hex(key.expose())))
}

/// A secret's fingerprint: HMAC-SHA256 under the firm's auth key, domain
/// separated, so it tells whether a value changed but, without the key,
/// cannot be used to guess the value.
/// A key's public fingerprint for inventories: SHA-256 over a fixed label
/// and the key (one-way; names the key, reveals nothing of it).
pub fn key_fingerprint(k: &SecretKey) -> String {
    super::hex(&super::sha256_parts(&[
        b"strongroom/key-fingerprint/v1|",
        k.expose(),
    ]))
}

pub fn secret_fingerprint(auth_key: &SecretKey, name: &str, value: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, auth_key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"strongroom/secret-fingerprint/v1|");
    ctx.update(name.as_bytes());
    ctx.update(b"|");
    ctx.update(value);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// HMAC-SHA256 of an API key's secret under the firm's auth key:
/// `"strongroom/api-key/v1|" | key id | "|" | secret`.
pub fn api_key_mac(auth_key: &SecretKey, key_id: &str, secret: &[u8]) -> [u8; 32] {
    credential_mac(auth_key, "api-key", key_id, secret)
}

/// HMAC-SHA256 of a user credential's secret (a session token, an
/// enrolment token, a recovery code) under the firm's auth key, separated
/// by `kind` and bound to the id it belongs to.
pub fn credential_mac(auth_key: &SecretKey, kind: &str, id: &str, secret: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, auth_key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"strongroom/");
    ctx.update(kind.as_bytes());
    ctx.update(b"/v1|");
    ctx.update(id.as_bytes());
    ctx.update(b"|");
    ctx.update(secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        MasterKey::from_secret(SecretKey::from_bytes([1; 32]))
            .derive()
            .unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let a = ring();
        let b = ring();
        assert_eq!(
            a.registry_db_key().as_pragma_value(),
            b.registry_db_key().as_pragma_value()
        );
        assert_ne!(a.registry_db.expose(), a.kwk.expose());
        let other = MasterKey::from_secret(SecretKey::from_bytes([2; 32]))
            .derive()
            .unwrap();
        assert_ne!(
            a.registry_db_key().as_pragma_value(),
            other.registry_db_key().as_pragma_value()
        );
    }

    #[test]
    fn wrap_binds_firm_purpose_and_version() {
        let r = ring();
        let k = SecretKey::from_bytes([9; 32]);
        let w = r.wrap("frm_a", Purpose::Db, 1, &k).unwrap();
        assert_eq!(r.unwrap("frm_a", Purpose::Db, 1, &w).unwrap(), k);
        assert!(r.unwrap("frm_b", Purpose::Db, 1, &w).is_err());
        assert!(r.unwrap("frm_a", Purpose::Data, 1, &w).is_err());
        assert!(r.unwrap("frm_a", Purpose::Db, 2, &w).is_err());
        let other = MasterKey::from_secret(SecretKey::from_bytes([2; 32]))
            .derive()
            .unwrap();
        assert!(other.unwrap("frm_a", Purpose::Db, 1, &w).is_err());
    }

    #[test]
    fn key_file_formats() {
        assert!(parse_key_bytes(&[5; 32]).is_some());
        let hex = "ab".repeat(32);
        assert!(parse_key_bytes(hex.as_bytes()).is_some());
        assert!(parse_key_bytes(format!("{hex}\n").as_bytes()).is_some());
        assert!(parse_key_bytes(&[5; 31]).is_none());
        assert!(parse_key_bytes("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn api_key_mac_depends_on_every_input() {
        let k = SecretKey::from_bytes([3; 32]);
        let m = api_key_mac(&k, "key_1", b"s");
        assert_ne!(m, api_key_mac(&k, "key_2", b"s"));
        assert_ne!(m, api_key_mac(&k, "key_1", b"t"));
        assert_ne!(
            m,
            api_key_mac(&SecretKey::from_bytes([4; 32]), "key_1", b"s")
        );
        assert!(ct_eq(&m, &api_key_mac(&k, "key_1", b"s")));
    }
}
