//! Key material in memory: 256-bit keys that are zeroized on drop, locked
//! into RAM where the process may (mlock), and never printed.

use std::fmt;
use std::ptr::NonNull;

use zeroize::Zeroize;

/// A 256-bit secret key. `Debug` prints only `SecretKey(<redacted>)`.
pub struct SecretKey {
    bytes: Box<[u8; 32]>,
    locked: bool,
}

impl SecretKey {
    /// Takes ownership of `bytes` (the caller's copy should be zeroized).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut boxed = Box::new(bytes);
        let mut src = bytes;
        src.zeroize();
        let locked = lock(&mut boxed);
        Self {
            bytes: boxed,
            locked,
        }
    }

    /// A fresh random key from the FIPS DRBG.
    pub fn random() -> Result<Self, super::CryptoError> {
        let mut b = [0u8; 32];
        super::fill_random(&mut b)?;
        let k = Self::from_bytes(b);
        b.zeroize();
        Ok(k)
    }

    /// The raw bytes. Only `crypto/` may call this: key bytes never leave the module.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }
}

fn lock(b: &mut Box<[u8; 32]>) -> bool {
    let ptr = NonNull::from(&mut **b).cast::<std::ffi::c_void>();
    // SAFETY: the range is this live, owned 32-byte allocation.
    unsafe { nix::sys::mman::mlock(ptr, 32).is_ok() }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            let ptr = NonNull::from(&mut *self.bytes).cast::<std::ffi::c_void>();
            // SAFETY: the same allocation that was locked, still live.
            unsafe {
                let _ = nix::sys::mman::munlock(ptr, 32);
            }
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.bytes[..], &other.bytes[..]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = SecretKey::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert_eq!(s, "SecretKey(<redacted>)");
        assert!(!s.to_lowercase().contains("ab"));
    }
}
