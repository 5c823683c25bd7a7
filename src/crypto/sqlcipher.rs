//! SQLCipher's page crypto on the AWS-LC FIPS module.
//!
//! SQLCipher is compiled with `-DSQLCIPHER_CRYPTO_CUSTOM=sqlcipher_awslc_setup`
//! (see `.cargo/config.toml`): at `sqlite3_initialize()` it calls
//! [`sqlcipher_awslc_setup`], which fills SQLCipher's provider vtable with the
//! functions below. Algorithms are SQLCipher 4's defaults (AES-256-CBC per page,
//! HMAC-SHA512 page MAC, PBKDF2-HMAC-SHA512), so files stay byte-compatible with
//! stock SQLCipher 4. `build.rs` compares [`SqlcipherProvider`] with the bundled
//! SQLCipher's `struct sqlcipher_provider` and fails the build if they differ.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::slice;
use std::sync::OnceLock;

use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::{hmac, pbkdf2, rand};

/// The name `PRAGMA cipher_provider` reports; checked on every database open.
pub const PROVIDER_NAME: &str = "aws-lc-rs-fips";

const SQLITE_OK: c_int = 0;
const SQLITE_ERROR: c_int = 1;
const SQLCIPHER_ENCRYPT: c_int = 1;
const ALG_SHA1: c_int = 0;
const ALG_SHA256: c_int = 1;
const ALG_SHA512: c_int = 2;

type Ctx = *mut c_void;

/// Mirror of SQLCipher's `struct sqlcipher_provider` (field order and arity
/// are checked against the bundled source by `build.rs`).
#[repr(C)]
pub struct SqlcipherProvider {
    init: Option<unsafe extern "C" fn() -> c_int>,
    shutdown: Option<unsafe extern "C" fn()>,
    get_provider_name: Option<unsafe extern "C" fn(Ctx) -> *const c_char>,
    add_random: Option<unsafe extern "C" fn(Ctx, *const c_void, c_int) -> c_int>,
    random: Option<unsafe extern "C" fn(Ctx, *mut c_void, c_int) -> c_int>,
    hmac: Option<
        unsafe extern "C" fn(
            Ctx,
            c_int,
            *const u8,
            c_int,
            *const u8,
            c_int,
            *const u8,
            c_int,
            *mut u8,
        ) -> c_int,
    >,
    kdf: Option<
        unsafe extern "C" fn(
            Ctx,
            c_int,
            *const u8,
            c_int,
            *const u8,
            c_int,
            c_int,
            c_int,
            *mut u8,
        ) -> c_int,
    >,
    cipher: Option<
        unsafe extern "C" fn(
            Ctx,
            c_int,
            *const u8,
            c_int,
            *const u8,
            *const u8,
            c_int,
            *mut u8,
        ) -> c_int,
    >,
    get_cipher: Option<unsafe extern "C" fn(Ctx) -> *const c_char>,
    get_key_sz: Option<unsafe extern "C" fn(Ctx) -> c_int>,
    get_iv_sz: Option<unsafe extern "C" fn(Ctx) -> c_int>,
    get_block_sz: Option<unsafe extern "C" fn(Ctx) -> c_int>,
    get_hmac_sz: Option<unsafe extern "C" fn(Ctx, c_int) -> c_int>,
    ctx_init: Option<unsafe extern "C" fn(*mut Ctx) -> c_int>,
    ctx_free: Option<unsafe extern "C" fn(*mut Ctx) -> c_int>,
    fips_status: Option<unsafe extern "C" fn(Ctx) -> c_int>,
    get_provider_version: Option<unsafe extern "C" fn(Ctx) -> *const c_char>,
    next: *mut SqlcipherProvider,
}

/// Runs `f`, never letting a panic unwind into C.
fn guarded(f: impl FnOnce() -> Result<(), ()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SQLITE_OK,
        _ => SQLITE_ERROR,
    }
}

/// # Safety
/// `p` must be null or point to `n` readable bytes.
unsafe fn bytes<'a>(p: *const u8, n: c_int) -> &'a [u8] {
    if p.is_null() || n <= 0 {
        &[]
    } else {
        // SAFETY: caller guarantees `n` readable bytes at `p`.
        unsafe { slice::from_raw_parts(p, n as usize) }
    }
}

unsafe extern "C" fn get_provider_name(_: Ctx) -> *const c_char {
    c"aws-lc-rs-fips".as_ptr()
}

unsafe extern "C" fn get_provider_version(_: Ctx) -> *const c_char {
    static VERSION: OnceLock<CString> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            CString::new(format!("AWS-LC FIPS {}", aws_lc_rs::awslc_version())).unwrap_or_default()
        })
        .as_ptr()
}

unsafe extern "C" fn add_random(_: Ctx, _buf: *const c_void, _len: c_int) -> c_int {
    // The FIPS DRBG seeds itself; caller-supplied entropy is not mixed in.
    SQLITE_OK
}

unsafe extern "C" fn random(_: Ctx, buf: *mut c_void, len: c_int) -> c_int {
    if buf.is_null() || len < 0 {
        return SQLITE_ERROR;
    }
    // SAFETY: SQLCipher passes a writable buffer of `len` bytes.
    let out = unsafe { slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize) };
    guarded(|| rand::fill(out).map_err(|_| ()))
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn hmac_fn(
    _: Ctx,
    algorithm: c_int,
    key: *const u8,
    key_sz: c_int,
    in1: *const u8,
    in1_sz: c_int,
    in2: *const u8,
    in2_sz: c_int,
    out: *mut u8,
) -> c_int {
    if in1.is_null() || out.is_null() {
        return SQLITE_ERROR;
    }
    let alg = match algorithm {
        ALG_SHA1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        ALG_SHA256 => hmac::HMAC_SHA256,
        ALG_SHA512 => hmac::HMAC_SHA512,
        _ => return SQLITE_ERROR,
    };
    // SAFETY: SQLCipher passes buffers of the stated sizes.
    let (key, a, b) = unsafe { (bytes(key, key_sz), bytes(in1, in1_sz), bytes(in2, in2_sz)) };
    guarded(|| {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, key));
        ctx.update(a);
        ctx.update(b);
        let tag = ctx.sign();
        let tag = tag.as_ref();
        // SAFETY: `out` holds get_hmac_sz(algorithm) == tag.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(tag.as_ptr(), out, tag.len()) };
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn kdf(
    _: Ctx,
    algorithm: c_int,
    pass: *const u8,
    pass_sz: c_int,
    salt: *const u8,
    salt_sz: c_int,
    workfactor: c_int,
    key_sz: c_int,
    key: *mut u8,
) -> c_int {
    let alg = match algorithm {
        ALG_SHA1 => pbkdf2::PBKDF2_HMAC_SHA1,
        ALG_SHA256 => pbkdf2::PBKDF2_HMAC_SHA256,
        ALG_SHA512 => pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return SQLITE_ERROR,
    };
    let Some(iterations) = u32::try_from(workfactor).ok().and_then(NonZeroU32::new) else {
        return SQLITE_ERROR;
    };
    if key.is_null() || key_sz <= 0 {
        return SQLITE_ERROR;
    }
    // SAFETY: SQLCipher passes buffers of the stated sizes.
    let (pass, salt) = unsafe { (bytes(pass, pass_sz), bytes(salt, salt_sz)) };
    // SAFETY: `key` is writable for `key_sz` bytes.
    let out = unsafe { slice::from_raw_parts_mut(key, key_sz as usize) };
    guarded(|| {
        super::mac_keys::derive(algorithm as u8, alg, iterations, salt, pass, out);
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn cipher(
    _: Ctx,
    mode: c_int,
    key: *const u8,
    key_sz: c_int,
    iv: *const u8,
    input: *const u8,
    in_sz: c_int,
    out: *mut u8,
) -> c_int {
    if key_sz != 32
        || iv.is_null()
        || input.is_null()
        || out.is_null()
        || in_sz < 0
        || in_sz % 16 != 0
    {
        return SQLITE_ERROR;
    }
    // SAFETY: key is 32 bytes, iv 16 bytes (get_iv_sz).
    let (key, iv) = unsafe { (bytes(key, key_sz), bytes(iv, 16)) };
    let Ok(iv) = <[u8; 16]>::try_from(iv) else {
        return SQLITE_ERROR;
    };
    // SAFETY: `input` and `out` each hold `in_sz` bytes; ptr::copy tolerates overlap.
    let buf = unsafe {
        std::ptr::copy(input, out, in_sz as usize);
        slice::from_raw_parts_mut(out, in_sz as usize)
    };
    guarded(|| {
        let k = UnboundCipherKey::new(&AES_256, key).map_err(|_| ())?;
        if mode == SQLCIPHER_ENCRYPT {
            let k = EncryptingKey::cbc(k).map_err(|_| ())?;
            k.less_safe_encrypt(buf, EncryptionContext::Iv128(iv.into()))
                .map_err(|_| ())?;
        } else {
            let k = DecryptingKey::cbc(k).map_err(|_| ())?;
            k.decrypt(buf, DecryptionContext::Iv128(iv.into()))
                .map_err(|_| ())?;
        }
        Ok(())
    })
}

unsafe extern "C" fn get_cipher(_: Ctx) -> *const c_char {
    c"aes-256-cbc".as_ptr()
}
unsafe extern "C" fn get_key_sz(_: Ctx) -> c_int {
    32
}
unsafe extern "C" fn get_iv_sz(_: Ctx) -> c_int {
    16
}
unsafe extern "C" fn get_block_sz(_: Ctx) -> c_int {
    16
}
unsafe extern "C" fn get_hmac_sz(_: Ctx, algorithm: c_int) -> c_int {
    match algorithm {
        ALG_SHA1 => 20,
        ALG_SHA256 => 32,
        ALG_SHA512 => 64,
        _ => 0,
    }
}
unsafe extern "C" fn ctx_init(_: *mut Ctx) -> c_int {
    // Security invariant: no database page is encrypted or decrypted unless the module is in FIPS mode.
    if aws_lc_rs::try_fips_mode().is_ok() {
        SQLITE_OK
    } else {
        SQLITE_ERROR
    }
}
unsafe extern "C" fn ctx_free(_: *mut Ctx) -> c_int {
    SQLITE_OK
}
unsafe extern "C" fn fips_status(_: Ctx) -> c_int {
    c_int::from(aws_lc_rs::try_fips_mode().is_ok())
}

/// Called by SQLCipher during `sqlite3_initialize()` to fill in its provider.
///
/// # Safety
/// `p` must be null or point to SQLCipher's provider struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlcipher_awslc_setup(p: *mut SqlcipherProvider) -> c_int {
    if p.is_null() {
        return SQLITE_ERROR;
    }
    // SAFETY: SQLCipher hands us its zeroed provider struct to fill.
    let p = unsafe { &mut *p };
    p.init = None;
    p.shutdown = None;
    p.get_provider_name = Some(get_provider_name);
    p.add_random = Some(add_random);
    p.random = Some(random);
    p.hmac = Some(hmac_fn);
    p.kdf = Some(kdf);
    p.cipher = Some(cipher);
    p.get_cipher = Some(get_cipher);
    p.get_key_sz = Some(get_key_sz);
    p.get_iv_sz = Some(get_iv_sz);
    p.get_block_sz = Some(get_block_sz);
    p.get_hmac_sz = Some(get_hmac_sz);
    p.ctx_init = Some(ctx_init);
    p.ctx_free = Some(ctx_free);
    p.fips_status = Some(fips_status);
    p.get_provider_version = Some(get_provider_version);
    SQLITE_OK
}

/// Keeps the setup symbol in every binary that links the store (a library
/// symbol that nothing in Rust references could be dropped by the linker,
/// and SQLCipher would then fail to link or fall back).
/// The page MACs SQLCipher files of ours carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageMac {
    Sha256,
    Sha512,
}

/// PBKDF2 iterations deriving the page-MAC key (`FAST_PBKDF2_ITER` in
/// `.cargo/config.toml`).
const MAC_KDF_ITERATIONS: u32 = 1000;
/// SQLCipher's page size and the salt at the start of page 1.
const PAGE: usize = 4096;
const SALT: usize = 16;
const IV: usize = 16;

/// Whether page 1 of a SQLCipher 4 file, `page`, carries a valid MAC of kind
/// `mac` under the raw key: SQLCipher's own check, made here so that finding
/// a file's format needs no failed open (which SQLCipher logs as an error).
/// Page 1 is the salt, then the ciphertext and its IV, then the MAC over
/// both and the page number (4 bytes little-endian), then padding to a
/// multiple of 16. The MAC key is PBKDF2 with the same hash, 1000
/// iterations, of the raw key with the salt XORed with 0x3a.
pub fn page_one_mac_matches(page: &[u8], raw_key: &[u8; 32], mac: PageMac) -> bool {
    if page.len() < PAGE {
        return false;
    }
    let (kdf, kdf_id, alg, len) = match mac {
        PageMac::Sha256 => (
            pbkdf2::PBKDF2_HMAC_SHA256,
            ALG_SHA256,
            hmac::HMAC_SHA256,
            32,
        ),
        PageMac::Sha512 => (
            pbkdf2::PBKDF2_HMAC_SHA512,
            ALG_SHA512,
            hmac::HMAC_SHA512,
            64,
        ),
    };
    let reserve = (IV + len).div_ceil(16) * 16;
    let salt: Vec<u8> = page[..SALT].iter().map(|b| b ^ 0x3a).collect();
    let mut mac_key = [0u8; 32];
    let Some(iterations) = NonZeroU32::new(MAC_KDF_ITERATIONS) else {
        return false;
    };
    // The same derivation SQLCipher's open makes next (remembered once).
    super::mac_keys::derive(kdf_id as u8, kdf, iterations, &salt, raw_key, &mut mac_key);
    let body = &page[SALT..PAGE - reserve + IV];
    let stored = &page[PAGE - reserve + IV..PAGE - reserve + IV + len];
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, &mac_key));
    ctx.update(body);
    ctx.update(&1u32.to_le_bytes());
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(ctx.sign().as_ref(), stored).is_ok();
    zeroize::Zeroize::zeroize(&mut mac_key);
    ok
}

pub fn ensure_linked() {
    std::hint::black_box(sqlcipher_awslc_setup as *const ());
}

/// The provider version string SQLCipher reports.
pub fn provider_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(get_provider_version(std::ptr::null_mut())) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hex;

    fn provider() -> SqlcipherProvider {
        // SAFETY: all-zero is a valid value for a struct of Options and a null pointer.
        let mut p: SqlcipherProvider = unsafe { std::mem::zeroed() };
        // SAFETY: `p` is a valid provider struct.
        assert_eq!(unsafe { sqlcipher_awslc_setup(&mut p) }, SQLITE_OK);
        p
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn aes_256_cbc_known_answer() {
        // NIST SP 800-38A, F.2.5 / F.2.6 (CBC-AES256), first block.
        let p = provider();
        let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = unhex("000102030405060708090a0b0c0d0e0f");
        let pt = unhex("6bc1bee22e409f96e93d7e117393172a");
        let mut ct = [0u8; 16];
        let f = p.cipher.unwrap();
        // SAFETY: buffers of the stated sizes.
        let rc = unsafe {
            f(
                std::ptr::null_mut(),
                SQLCIPHER_ENCRYPT,
                key.as_ptr(),
                32,
                iv.as_ptr(),
                pt.as_ptr(),
                16,
                ct.as_mut_ptr(),
            )
        };
        assert_eq!(rc, SQLITE_OK);
        assert_eq!(hex(&ct), "f58c4c04d6e5f1ba779eabfb5f7bfbd6");
        let mut back = [0u8; 16];
        // SAFETY: as above.
        let rc = unsafe {
            f(
                std::ptr::null_mut(),
                0,
                key.as_ptr(),
                32,
                iv.as_ptr(),
                ct.as_ptr(),
                16,
                back.as_mut_ptr(),
            )
        };
        assert_eq!(rc, SQLITE_OK);
        assert_eq!(back.to_vec(), pt);
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 4231 test case 2 (SHA-256, SHA-512); RFC 2202 test case 2 (SHA-1).
        let p = provider();
        let f = p.hmac.unwrap();
        let key = b"Jefe";
        let (a, b) = (b"what do ya want ".as_slice(), b"for nothing?".as_slice());
        let run = |alg: c_int, len: usize| {
            let mut out = vec![0u8; len];
            // SAFETY: buffers of the stated sizes; output sized by get_hmac_sz.
            let rc = unsafe {
                f(
                    std::ptr::null_mut(),
                    alg,
                    key.as_ptr(),
                    4,
                    a.as_ptr(),
                    a.len() as c_int,
                    b.as_ptr(),
                    b.len() as c_int,
                    out.as_mut_ptr(),
                )
            };
            assert_eq!(rc, SQLITE_OK);
            hex(&out)
        };
        assert_eq!(
            run(ALG_SHA1, 20),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            run(ALG_SHA256, 32),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            run(ALG_SHA512, 64),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn pbkdf2_known_answer() {
        // RFC 6070: P="password", S="salt", c=4096, dkLen=20 (PBKDF2-HMAC-SHA1).
        let p = provider();
        let f = p.kdf.unwrap();
        let mut out = [0u8; 20];
        // SAFETY: buffers of the stated sizes.
        let rc = unsafe {
            f(
                std::ptr::null_mut(),
                ALG_SHA1,
                b"password".as_ptr(),
                8,
                b"salt".as_ptr(),
                4,
                4096,
                20,
                out.as_mut_ptr(),
            )
        };
        assert_eq!(rc, SQLITE_OK);
        assert_eq!(hex(&out), "4b007901b765489abead49d926f721d065a429c1");
    }

    #[test]
    fn reports_fips_and_rejects_bad_input() {
        let p = provider();
        // SAFETY: ctx is unused by these functions.
        unsafe {
            assert_eq!(p.fips_status.unwrap()(std::ptr::null_mut()), 1);
            let name = CStr::from_ptr(p.get_provider_name.unwrap()(std::ptr::null_mut()));
            assert_eq!(name.to_str().unwrap(), PROVIDER_NAME);
            let mut out = [0u8; 16];
            let bad = p.cipher.unwrap()(
                std::ptr::null_mut(),
                1,
                out.as_ptr(),
                16, // wrong key size
                out.as_ptr(),
                out.as_ptr(),
                16,
                out.as_mut_ptr(),
            );
            assert_eq!(bad, SQLITE_ERROR);
        }
        assert!(provider_version().starts_with("AWS-LC FIPS"));
    }
}
