//! Page-MAC keys SQLCipher derives, remembered.
//!
//! Every SQLCipher connection derives its page-MAC key from the database's
//! raw key and salt with PBKDF2 (1000 iterations, `FAST_PBKDF2_ITER`), and
//! the daemon opens a firm's file many times: a writer and readers, again
//! after the firm was parked or closed, and once more to find its page
//! format. The derivation is deterministic, so its result is kept here and
//! the same request is answered from memory. That is a third of the CPU of
//! a cold firm's first request without it.
//!
//! Only these fast derivations are remembered (at most [`MAX_ITERATIONS`]),
//! never a slow passphrase derivation whose cost is the point. Entries are
//! found by a SHA-256 of the whole request (the raw key included), hold the
//! derived key in zeroizing memory, and are bounded by [`ENTRIES`]; the
//! oldest is dropped (and zeroed) first.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, OnceLock};

use aws_lc_rs::{digest, pbkdf2};
use zeroize::Zeroizing;

/// Derivations of at most this many iterations are remembered.
pub(crate) const MAX_ITERATIONS: u32 = 10_000;
/// Keys remembered at once (a few firms' worth more than the warm bound).
const ENTRIES: usize = 4096;

#[derive(Default)]
struct Memo {
    keys: HashMap<[u8; 32], Zeroizing<Vec<u8>>>,
    order: VecDeque<[u8; 32]>,
}

fn memo() -> MutexGuard<'static, Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    match MEMO.get_or_init(Mutex::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// PBKDF2 of `pass` with `salt` into `out`, from memory when the same
/// derivation was made before. `alg_id` names `alg` in the lookup.
pub(crate) fn derive(
    alg_id: u8,
    alg: pbkdf2::Algorithm,
    iterations: NonZeroU32,
    salt: &[u8],
    pass: &[u8],
    out: &mut [u8],
) {
    if iterations.get() > MAX_ITERATIONS {
        pbkdf2::derive(alg, iterations, salt, pass, out);
        return;
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[alg_id]);
    ctx.update(&iterations.get().to_le_bytes());
    ctx.update(&(out.len() as u64).to_le_bytes());
    ctx.update(&(salt.len() as u64).to_le_bytes());
    ctx.update(salt);
    ctx.update(pass);
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    if let Some(k) = memo().keys.get(&id) {
        out.copy_from_slice(k);
        return;
    }
    pbkdf2::derive(alg, iterations, salt, pass, out);
    let mut m = memo();
    if m.keys.insert(id, Zeroizing::new(out.to_vec())).is_none() {
        m.order.push_back(id);
    }
    while m.order.len() > ENTRIES {
        if let Some(old) = m.order.pop_front() {
            // Security invariant: a dropped key is zeroed (Zeroizing).
            m.keys.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(iterations: u32, salt: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        let n = NonZeroU32::new(iterations).unwrap();
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, pass, &mut out);
        out
    }

    fn memoized(iterations: u32, salt: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        let n = NonZeroU32::new(iterations).unwrap();
        derive(1, pbkdf2::PBKDF2_HMAC_SHA256, n, salt, pass, &mut out);
        out
    }

    #[test]
    fn remembered_derivations_equal_fresh_ones_and_differ_by_every_input() {
        let a = memoized(1000, b"salt-one", b"key-one");
        assert_eq!(a, fresh(1000, b"salt-one", b"key-one"));
        // From memory now: still the same.
        assert_eq!(memoized(1000, b"salt-one", b"key-one"), a);
        assert_ne!(memoized(1000, b"salt-two", b"key-one"), a);
        assert_ne!(memoized(1000, b"salt-one", b"key-two"), a);
        assert_ne!(memoized(999, b"salt-one", b"key-one"), a);
        let mut long = vec![0u8; 64];
        let n = NonZeroU32::new(1000).unwrap();
        derive(
            2,
            pbkdf2::PBKDF2_HMAC_SHA512,
            n,
            b"salt-one",
            b"key-one",
            &mut long,
        );
        assert_ne!(&long[..32], &a[..]);
    }

    #[test]
    fn the_memory_stays_bounded() {
        for i in 0..(ENTRIES + 10) {
            memoized(2, &(i as u64).to_le_bytes(), b"bound");
        }
        let m = memo();
        assert!(m.keys.len() <= ENTRIES && m.order.len() <= ENTRIES);
    }
}
