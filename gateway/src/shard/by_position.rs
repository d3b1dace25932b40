//! [`ByPosition`]: a map from log position to what the home shard keeps of
//! a live record, shaped for records that come and go roughly in log
//! order.
//!
//! Most records are delivered and acked moments after they are appended,
//! so the recent ones sit in a ring in append order: an insert is a push
//! at its end, and a lookup is a search of 8-byte positions
//! ([`find_ascending`]) landing next to what was just written, where a hash map's probe would
//! land anywhere in megabytes of table (a cache miss per delivered
//! message, the largest single cost of the closed loop's `pump`). A record
//! still live when the ring is full moves to a [`SplitMap`], which holds
//! the long-lived rest (an offline device's backlog); so the ring's length
//! is bounded and never pinned by an old record.

use std::collections::VecDeque;

use queue_engine::search::find_ascending;
use queue_engine::split_map::SplitMap;

/// Records in the ring at most, by default (per shard: 512 KiB of
/// positions and their values).
pub const RING_RECORDS: usize = 1 << 16;

/// A map keyed by log position: recent keys in a ring, the rest hashed.
#[derive(Debug)]
pub struct ByPosition<V> {
    /// Positions in the ring, ascending.
    positions: VecDeque<u64>,
    /// Values of `positions` (`None`: removed; popped once at the front).
    values: VecDeque<Option<V>>,
    /// `Some` values in the ring.
    in_ring: usize,
    ring_max: usize,
    /// Keys older than the ring's, or inserted out of order.
    old: SplitMap<u64, V>,
    /// The highest key ever put in `old`: a key above it is not there, so
    /// an append needs no probe of the map.
    old_max: Option<u64>,
}

impl<V> Default for ByPosition<V> {
    fn default() -> Self {
        Self::with_ring(RING_RECORDS)
    }
}

impl<V> ByPosition<V> {
    /// A map whose ring holds at most `ring_max` (≥ 1) recent keys.
    pub fn with_ring(ring_max: usize) -> Self {
        Self {
            positions: VecDeque::new(),
            values: VecDeque::new(),
            in_ring: 0,
            ring_max: ring_max.max(1),
            old: SplitMap::default(),
            old_max: None,
        }
    }

    /// Sets `position`'s value; returns the old one. Positions above every
    /// one in the ring go to its end (the common case: appends).
    pub fn insert(&mut self, position: u64, value: V) -> Option<V> {
        if self.positions.back().is_some_and(|&last| position <= last) {
            if let Some(slot) = self.slot_mut(position) {
                let old = slot.replace(value);
                self.in_ring += usize::from(old.is_none());
                return old;
            }
            return self.insert_old(position, value);
        }
        let old = match self.old_max {
            Some(max) if position <= max => self.old.remove(&position),
            _ => None,
        };
        self.positions.push_back(position);
        self.values.push_back(Some(value));
        self.in_ring += 1;
        if self.positions.len() > self.ring_max {
            self.evict_front();
        }
        old
    }

    /// The value of `position`.
    pub fn get(&self, position: u64) -> Option<&V> {
        match self.ring_index(position) {
            Some(i) => self.values[i].as_ref(),
            None => self.old.get(&position),
        }
    }

    /// The value of `position`, mutably.
    pub fn get_mut(&mut self, position: u64) -> Option<&mut V> {
        match self.ring_index(position) {
            Some(i) => self.values[i].as_mut(),
            None => self.old.get_mut(&position),
        }
    }

    /// Removes `position`; returns its value.
    pub fn remove(&mut self, position: u64) -> Option<V> {
        let Some(i) = self.ring_index(position) else {
            return self.old.remove(&position);
        };
        let value = self.values[i].take();
        if value.is_some() {
            self.in_ring -= 1;
            self.pop_removed_front();
        }
        value
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.in_ring + self.old.len()
    }

    /// Entries in the ring (the rest are hashed).
    #[cfg(test)]
    pub fn in_ring(&self) -> usize {
        self.in_ring
    }

    /// Where `position` is in the ring, if it is there (removed or not).
    fn ring_index(&self, position: u64) -> Option<usize> {
        find_ascending(self.positions.len(), position, |i| self.positions[i])
    }

    fn slot_mut(&mut self, position: u64) -> Option<&mut Option<V>> {
        let i = self.ring_index(position)?;
        Some(&mut self.values[i])
    }

    /// The ring is full: its oldest key leaves it, for the map if live.
    fn evict_front(&mut self) {
        let (Some(position), Some(value)) = (self.positions.pop_front(), self.values.pop_front())
        else {
            return;
        };
        if let Some(value) = value {
            self.in_ring -= 1;
            self.insert_old(position, value);
        }
        self.pop_removed_front();
    }

    fn insert_old(&mut self, position: u64, value: V) -> Option<V> {
        self.old_max = self.old_max.max(Some(position));
        self.old.insert(position, value)
    }

    /// Drops removed keys at the front, so the ring starts at a live one.
    fn pop_removed_front(&mut self) {
        while matches!(self.values.front(), Some(None)) {
            self.values.pop_front();
            self.positions.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn appended_keys_live_in_the_ring_and_leave_it_when_removed() {
        let mut m = ByPosition::with_ring(4);
        for p in [10, 20, 30] {
            assert_eq!(m.insert(p, p * 2), None);
        }
        assert_eq!((m.len(), m.in_ring()), (3, 3));
        assert_eq!(m.get(20), Some(&40));
        *m.get_mut(30).unwrap() += 1;
        assert_eq!(m.remove(10), Some(20));
        assert_eq!(m.remove(10), None, "once");
        assert_eq!((m.len(), m.in_ring()), (2, 2));
        assert_eq!(m.positions.front(), Some(&20), "the removed front is gone");
        assert_eq!(m.get(30), Some(&61));
    }

    #[test]
    fn a_live_key_pushed_out_of_a_full_ring_is_kept_in_the_map() {
        let mut m = ByPosition::with_ring(2);
        m.insert(1, 'a');
        m.insert(2, 'b');
        m.insert(3, 'c');
        assert_eq!((m.len(), m.in_ring()), (3, 2));
        assert_eq!(m.get(1), Some(&'a'), "from the map");
        assert_eq!(m.remove(1), Some('a'));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn an_old_live_key_does_not_pin_the_ring() {
        let mut m = ByPosition::with_ring(8);
        m.insert(0, 0);
        for p in 1..1_000 {
            m.insert(p, p);
            m.remove(p);
        }
        assert!(m.positions.len() <= 8, "bounded: {}", m.positions.len());
        assert_eq!((m.len(), m.get(0)), (1, Some(&0)));
    }

    #[test]
    fn a_key_below_the_ring_end_goes_to_the_map() {
        let mut m = ByPosition::with_ring(8);
        m.insert(100, 'x');
        m.insert(50, 'y');
        m.insert(75, 'z');
        assert_eq!((m.len(), m.in_ring()), (3, 1));
        assert_eq!(m.insert(100, 'w'), Some('x'), "replaced in place");
        assert_eq!(
            [m.get(50), m.get(75), m.get(100)],
            [Some(&'y'), Some(&'z'), Some(&'w')]
        );
    }

    #[test]
    fn a_key_in_the_map_appended_to_an_emptied_ring_is_kept_once() {
        let mut m = ByPosition::with_ring(4);
        m.insert(10, 'a');
        m.insert(5, 'b'); // out of order: the map
        m.remove(10); // the ring is empty again
        assert_eq!(m.insert(5, 'c'), Some('b'), "replaced, not added");
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(5), Some('c'));
        assert_eq!((m.get(5), m.len()), (None, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Bump(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..64u64, any::<u32>()).prop_map(|(p, v)| Op::Insert(p, v)),
            2 => (0..64u64).prop_map(Op::Remove),
            1 => (0..64u64).prop_map(Op::Bump),
        ]
    }

    proptest! {
        /// Whatever the order of keys, it answers as one ordered map.
        #[test]
        fn behaves_as_a_map(ring in 1usize..8, ops in prop::collection::vec(op(), 0..200)) {
            let (mut m, mut model) = (ByPosition::with_ring(ring), BTreeMap::new());
            // Mostly ascending keys, as appends are.
            let mut base = 0;
            for op in ops {
                match op {
                    Op::Insert(p, v) => {
                        base += p % 3;
                        let p = base + p / 8;
                        prop_assert_eq!(m.insert(p, v), model.insert(p, v));
                    }
                    Op::Remove(p) => prop_assert_eq!(m.remove(base.saturating_sub(p)), model.remove(&base.saturating_sub(p))),
                    Op::Bump(p) => {
                        let p = base.saturating_sub(p);
                        if let Some(v) = m.get_mut(p) { *v = v.wrapping_add(1); }
                        if let Some(v) = model.get_mut(&p) { *v = v.wrapping_add(1); }
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert!(m.positions.len() <= ring);
            }
            for (p, v) in &model {
                prop_assert_eq!(m.get(*p), Some(v));
            }
        }
    }
}
