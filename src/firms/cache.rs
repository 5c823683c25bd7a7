//! Small read-through caches on an open firm (API key rows, collection
//! schemas), so the hot request path needs no database read for them.
//!
//! Security invariant: a change clears the cache *after* it commits, and a
//! fill that read the database before that clear is discarded (the
//! generation check), so no stale row outlives the change's response.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept at most; past it the cache starts over.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug)]
pub struct GenCache<V> {
    inner: Mutex<(u64, HashMap<String, V>)>,
}

impl<V> Default for GenCache<V> {
    fn default() -> Self {
        Self {
            inner: Mutex::new((0, HashMap::new())),
        }
    }
}

impl<V: Clone> GenCache<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, V>)> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Take before reading the database for a fill.
    pub fn generation(&self) -> u64 {
        self.lock().0
    }

    pub fn get(&self, k: &str) -> Option<V> {
        self.lock().1.get(k).cloned()
    }

    /// Caches `v` unless the cache was cleared since `generation`.
    pub fn fill(&self, generation: u64, k: &str, v: V) {
        let mut g = self.lock();
        if g.0 != generation {
            return;
        }
        if g.1.len() >= MAX_ENTRIES {
            g.1.clear();
        }
        g.1.insert(k.to_owned(), v);
    }

    /// Changes a cached entry in place (bookkeeping that is not a change
    /// of meaning, e.g. a key's last use).
    pub fn update(&self, k: &str, f: impl FnOnce(&mut V)) {
        if let Some(v) = self.lock().1.get_mut(k) {
            f(v);
        }
    }

    /// Call after a change commits.
    pub fn invalidate(&self) {
        let mut g = self.lock();
        g.0 += 1;
        g.1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_a_change_is_discarded() {
        let c: GenCache<u32> = GenCache::default();
        let g = c.generation();
        c.invalidate();
        c.fill(g, "k", 1);
        assert_eq!(c.get("k"), None);
        let g = c.generation();
        c.fill(g, "k", 2);
        assert_eq!(c.get("k"), Some(2));
        c.update("k", |v| *v = 3);
        assert_eq!(c.get("k"), Some(3));
        c.invalidate();
        assert_eq!(c.get("k"), None);
    }
}
