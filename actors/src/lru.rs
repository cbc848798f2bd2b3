//! Recency of use with a cap, without IO: which live entry has gone unused longest.
//! The cart registry keeps one per node, so that a flood of sessions costs at most the
//! cap in live actors; the least recently used gives way to a new one.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// Keys ordered by last use, at most `cap` of them.
#[derive(Debug, Clone)]
pub struct Lru<K> {
    cap: usize,
    clock: u64,
    stamp: HashMap<K, u64>,
    order: BTreeMap<u64, K>,
}

impl<K: Clone + Eq + Hash> Lru<K> {
    /// An empty set that holds at most `cap` keys (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            clock: 0,
            stamp: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Records a use of `key` (adding it if new). When that takes the set past its cap,
    /// the least recently used other key leaves and is returned, so that the caller can
    /// let its entry go.
    pub fn touch(&mut self, key: &K) -> Option<K> {
        self.clock += 1;
        if let Some(old) = self.stamp.insert(key.clone(), self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, key.clone());
        if self.stamp.len() <= self.cap {
            return None;
        }
        let (_, victim) = self.order.pop_first()?;
        self.stamp.remove(&victim);
        Some(victim)
    }

    /// Forgets `key` (its entry went by itself); `false` if it was not there.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.stamp.remove(key) {
            Some(at) => {
                self.order.remove(&at);
                true
            }
            None => false,
        }
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        self.stamp.contains_key(key)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.stamp.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.stamp.is_empty()
    }

    /// The most keys held at once.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Guards against evicting a key that was just used instead of the stalest one.
    #[test]
    fn the_least_recently_used_key_leaves_first() {
        let mut lru = Lru::new(2);
        assert_eq!(lru.touch(&"a"), None);
        assert_eq!(lru.touch(&"b"), None);
        assert_eq!(lru.touch(&"a"), None, "a use of a held key evicts nothing");
        assert_eq!(lru.touch(&"c"), Some("b"), "b was used longest ago");
        assert!(lru.contains(&"a") && lru.contains(&"c") && !lru.contains(&"b"));
        assert_eq!(lru.touch(&"d"), Some("a"));
        assert_eq!(lru.len(), 2);
    }

    /// Guards against a removed key still counting against the cap, or being evicted
    /// later as a ghost.
    #[test]
    fn a_removed_key_frees_its_place() {
        let mut lru = Lru::new(2);
        lru.touch(&1);
        lru.touch(&2);
        assert!(lru.remove(&1));
        assert!(!lru.remove(&1), "only once");
        assert_eq!(lru.touch(&3), None, "room was made");
        assert_eq!(lru.touch(&4), Some(2));
        assert_eq!(
            Lru::<u8>::new(0).cap(),
            1,
            "a cap of zero would evict the newcomer"
        );
    }

    proptest! {
        /// Guards against the cap being exceeded, and against the two indexes drifting
        /// apart, under any sequence of uses and removals: the set always matches a
        /// model that keeps keys in order of last use.
        #[test]
        fn it_matches_a_list_ordered_by_last_use(
            cap in 1usize..6,
            ops in proptest::collection::vec((any::<bool>(), 0u8..10), 0..200),
        ) {
            let mut lru = Lru::new(cap);
            let mut model: Vec<u8> = Vec::new();
            for (remove, key) in ops {
                if remove {
                    let held = model.contains(&key);
                    model.retain(|k| *k != key);
                    prop_assert_eq!(lru.remove(&key), held);
                } else {
                    model.retain(|k| *k != key);
                    model.push(key);
                    let expected = (model.len() > cap).then(|| model.remove(0));
                    prop_assert_eq!(lru.touch(&key), expected);
                }
                prop_assert!(lru.len() <= cap);
                prop_assert_eq!(lru.len(), model.len());
                prop_assert_eq!(lru.order.len(), lru.stamp.len());
                for k in &model {
                    prop_assert!(lru.contains(k));
                }
            }
        }
    }
}
