//! The model worker's cache of loaded patches, bounded by their total size (parameters) and evicting the least
//! recently used. An evicted patch is loaded from disk again when a stack needs it; stacks being assembled hold their
//! own (cheap, shared-tensor) clones, so eviction never disturbs a job.

use std::collections::HashMap;
use std::hash::Hash;

/// A least-recently-used map whose entries have a weight; the total weight stays within `budget` (an entry heavier
/// than the budget is still kept while it is the only one).
pub struct LruCache<K, V> {
    entries: HashMap<K, (V, usize, u64)>,
    budget: usize,
    total: usize,
    clock: u64,
}

impl<K: Eq + Hash + Clone, V> LruCache<K, V> {
    pub fn new(budget: usize) -> Self {
        Self { entries: HashMap::new(), budget, total: 0, clock: 0 }
    }

    /// The entry of `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|e| {
            e.2 = now;
            &e.0
        })
    }

    /// Adds (or replaces) `key`, then evicts the least recently used other entries until the total fits.
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.clock += 1;
        if let Some((_, w, _)) = self.entries.insert(key.clone(), (value, weight, self.clock)) {
            self.total -= w;
        }
        self.total += weight;
        while self.total > self.budget {
            let oldest =
                self.entries.iter().filter(|(k, _)| **k != key).min_by_key(|(_, e)| e.2).map(|(k, _)| k.clone());
            let Some(k) = oldest else { break };
            if let Some((_, w, _)) = self.entries.remove(&k) {
                self.total -= w;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Total weight held.
    #[cfg(test)]
    fn weight(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_to_stay_within_budget() {
        let mut c = LruCache::new(10);
        c.insert("a", 1, 4);
        c.insert("b", 2, 4);
        assert_eq!(c.get(&"a"), Some(&1)); // a is now newer than b
        c.insert("c", 3, 4); // 12 > 10: b goes
        assert_eq!((c.len(), c.weight()), (2, 8));
        assert_eq!(c.get(&"b"), None);
        assert_eq!(c.get(&"a"), Some(&1));
        // Replacing an entry updates the total; an entry over the budget is kept alone.
        c.insert("a", 9, 2);
        assert_eq!(c.get(&"a"), Some(&9));
        assert_eq!(c.weight(), 6);
        c.insert("huge", 0, 50);
        assert_eq!((c.len(), c.weight()), (1, 50));
        assert_eq!(c.get(&"huge"), Some(&0));
    }
}
