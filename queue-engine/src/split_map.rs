//! [`SplitMap`]: a hash map in [`PARTS`] parts, each growing on its own,
//! so that no single insert rehashes more than about 1/`PARTS` of the
//! entries. A plain map of tens of millions of entries doubles in one go
//! (allocating and rehashing everything) and stalls the event loop for
//! that long; here the same growth comes as `PARTS` small steps
//! (`benches/steady.rs`, `steady/worst_insert_*`).
//!
//! The part is chosen by a second mix of the key's hash, so the entries of
//! one part do not share the bits the inner map uses.

use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Parts of a [`SplitMap`].
pub const PARTS: usize = 64;

/// A hash map whose growth is spread over [`PARTS`] independent parts.
#[derive(Debug)]
pub struct SplitMap<K, V> {
    parts: Box<[FxHashMap<K, V>]>,
}

impl<K, V> Default for SplitMap<K, V> {
    fn default() -> Self {
        Self {
            parts: (0..PARTS).map(|_| FxHashMap::default()).collect(),
        }
    }
}

impl<K: Hash + Eq, V> SplitMap<K, V> {
    fn part(&self, key: &K) -> usize {
        let hash = FxBuildHasher.hash_one(key);
        // A multiplicative mix; the top bits pick the part.
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let part = mixed >> (64 - PARTS.trailing_zeros());
        usize::try_from(part).expect("below PARTS")
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.parts[self.part(key)].get(key)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let part = self.part(key);
        self.parts[part].get_mut(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value; returns the old one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let part = self.part(&key);
        self.parts[part].insert(key, value)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let part = self.part(key);
        self.parts[part].remove(key)
    }

    /// `key`'s entry, for in-place manipulation.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        let part = self.part(&key);
        self.parts[part].entry(key)
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.is_empty())
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.parts.iter().flat_map(|p| p.iter())
    }

    /// Every key, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.parts.iter().flat_map(|p| p.keys())
    }

    /// Every value, in no order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.parts.iter().flat_map(|p| p.values())
    }

    /// Every value, mutably, in no order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.parts.iter_mut().flat_map(|p| p.values_mut())
    }

    /// Gives back memory of parts that shrank.
    pub fn shrink_to_fit(&mut self) {
        self.parts.iter_mut().for_each(|p| p.shrink_to_fit());
    }

    /// The largest part's length (for tests: the split is even).
    pub fn largest_part(&self) -> usize {
        self.parts.iter().map(|p| p.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_evenly_and_behave_as_one_map() {
        let mut m = SplitMap::default();
        for k in 0..64_000u64 {
            assert_eq!(m.insert(k * 256, k), None);
        }
        assert_eq!(m.len(), 64_000);
        assert!(
            m.largest_part() < 2 * 64_000 / PARTS,
            "parts even: largest {}",
            m.largest_part()
        );
        assert_eq!(m.get(&(5 * 256)), Some(&5));
        *m.entry(5 * 256).or_default() += 1;
        assert_eq!(m.remove(&(5 * 256)), Some(6));
        assert!(!m.contains_key(&(5 * 256)));
        assert_eq!(m.iter().count(), 63_999);
        assert_eq!(m.values().sum::<u64>(), (0..64_000).sum::<u64>() - 5);
    }
}
