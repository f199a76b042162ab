//! The decode graphs a CUDA engine keeps (issue 11 point 4: graphs per
//! batch-size bucket): at most a fixed number, the least recently replayed
//! one evicted when a new one is captured.
//!
//! Why not start over when full: graphs are keyed by (rows, the positions
//! the attention grid covers), and under a mixed load a step's row count
//! moves by one at every admission or finish while positions cross powers of
//! two, so far more keys exist than fit. Clearing them all at once made every
//! following step of every row count capture again (milliseconds each);
//! evicting the stalest keeps the keys the current load replays.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `cap` values by key, each with the tick of its last use.
pub(super) struct GraphCache<K, V> {
    cap: usize,
    tick: u64,
    entries: HashMap<K, (u64, V)>,
}

impl<K: Eq + Hash + Copy, V> GraphCache<K, V> {
    /// An empty cache of at most `cap` (at least one) values.
    pub(super) fn new(cap: usize) -> Self {
        GraphCache {
            cap: cap.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The value of `key`, counted as its latest use.
    pub(super) fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(used, v)| {
            *used = tick;
            &*v
        })
    }

    /// Keep `value` under `key` as its latest use; when full, the least
    /// recently used value is dropped first.
    pub(super) fn insert(&mut self, key: K, value: V) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap {
            let stalest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                self.entries.remove(&k);
            }
        }
        self.tick += 1;
        self.entries.insert(key, (self.tick, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::GraphCache;

    /// When full, a new value evicts the one least recently used (inserted
    /// or read), never one replayed since, and the cache never grows past
    /// its cap.
    #[test]
    fn a_full_cache_evicts_the_least_recently_used() {
        let mut c = GraphCache::new(3);
        for k in [1, 2, 3] {
            c.insert(k, k * 10);
        }
        assert_eq!(c.get(&1), Some(&10)); // 2 is now the stalest
        c.insert(4, 40);
        assert!(!c.contains(&2), "the least recently used key stays");
        assert!(c.contains(&1) && c.contains(&3) && c.contains(&4));
        assert_eq!(c.get(&3), Some(&30)); // 1 is now the stalest
        c.insert(5, 50);
        assert!(!c.contains(&1) && c.contains(&3) && c.contains(&4));
        assert_eq!(c.len(), 3);
        // Replacing a present key evicts nothing.
        c.insert(5, 55);
        assert_eq!((c.len(), c.contains(&3)), (3, true));
        assert_eq!(c.get(&5), Some(&55));
        assert_eq!(c.get(&9), None);
    }
}
