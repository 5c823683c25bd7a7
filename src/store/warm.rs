//! A bound on warm firms: open firms that hold SQLite connections (the
//! writer's, and idle read connections). Every open firm costs a few
//! kilobytes (its keys and caches); a warm one costs its connections' page
//! caches and schemas, and three or more file descriptors. Past
//! [`WARM_FIRMS`], the least recently used firm is parked: on a writer pool
//! thread, once its queue is empty, its connections close (the writer's
//! pages recorded first, as at any close) and reopen on its next use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// Firms whose connections stay open at once (the hot set).
pub(crate) const WARM_FIRMS: usize = 512;

/// What the bound parks.
pub(crate) trait Park: Send + Sync {
    /// Closes the firm's connections once it is idle (asynchronously).
    fn request_park(self: Arc<Self>);
}

#[derive(Default)]
struct Lru {
    /// Warm firms by the stamp of their last use.
    by_stamp: BTreeMap<u64, Weak<dyn Park>>,
}

fn lru() -> MutexGuard<'static, Lru> {
    static LRU: OnceLock<Mutex<Lru>> = OnceLock::new();
    match LRU.get_or_init(Mutex::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The last stamp handed out. Changed only under the `lru` lock; read
/// without it by a touch's quick check.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A firm's place in the order of use (0: not warm). Changed only under the
/// `lru` lock; read without it, so a recent firm's touch takes no lock.
#[derive(Debug, Default)]
pub(crate) struct Slot(AtomicU64);

/// The firm was used now and holds connections: most recently used. If
/// that makes too many warm firms, the least recently used one is parked.
pub(crate) fn touch(slot: &Slot, firm: impl FnOnce() -> Weak<dyn Park>) {
    // Among the most recent quarter already: far from being parked, and
    // a busy firm's every request need not reorder the whole set.
    let seen = slot.0.load(Ordering::Relaxed);
    if seen != 0 && LAST.load(Ordering::Relaxed).saturating_sub(seen) < (WARM_FIRMS / 4) as u64 {
        return;
    }
    let victim = {
        let mut l = lru();
        let stamp = slot.0.load(Ordering::Relaxed);
        if stamp != 0 {
            l.by_stamp.remove(&stamp);
        }
        let at = LAST.load(Ordering::Relaxed) + 1;
        LAST.store(at, Ordering::Relaxed);
        slot.0.store(at, Ordering::Relaxed);
        l.by_stamp.insert(at, firm());
        if l.by_stamp.len() > WARM_FIRMS {
            l.by_stamp.pop_first().map(|(_, w)| w)
        } else {
            None
        }
    };
    if let Some(p) = victim.and_then(|w| w.upgrade()) {
        p.request_park();
    }
}

/// The firm holds no connection any more (parked or closed).
pub(crate) fn forget(slot: &Slot) {
    let mut l = lru();
    let stamp = slot.0.load(Ordering::Relaxed);
    if stamp != 0 {
        l.by_stamp.remove(&stamp);
        slot.0.store(0, Ordering::Relaxed);
    }
}

/// Firms warm now.
#[cfg(test)]
pub(crate) fn warm() -> usize {
    lru().by_stamp.len()
}
