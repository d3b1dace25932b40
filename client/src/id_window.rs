//! [`IdWindow`]: values keyed by ids that mostly arrive in increasing order
//! and mostly leave oldest first, as a client's unanswered sends do (ids
//! it numbers itself) and the server ids awaiting their ✓✓. A sorted ring
//! instead of a tree or a hash map: the common insert is a push at the
//! back, the common removal a pop at the front, and both touch the memory
//! next to the last one. A removal out of order leaves a gap, dropped once
//! it reaches the front.

use std::collections::VecDeque;

/// Values by id, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct IdWindow<V> {
    /// Ascending ids; `None`: removed, not yet at the front.
    slots: VecDeque<(u64, Option<V>)>,
    live: usize,
}

impl<V> Default for IdWindow<V> {
    fn default() -> Self {
        Self {
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<V> IdWindow<V> {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `id`'s value; returns the one it replaces.
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        if self.slots.back().is_none_or(|&(last, _)| last < id) {
            self.slots.push_back((id, Some(value)));
            self.live += 1;
            return None;
        }
        match self.slots.binary_search_by_key(&id, |&(i, _)| i) {
            Ok(at) => {
                let old = self.slots[at].1.replace(value);
                self.live += usize::from(old.is_none());
                old
            }
            Err(at) => {
                self.slots.insert(at, (id, Some(value)));
                self.live += 1;
                None
            }
        }
    }

    /// Removes `id`; returns its value.
    pub fn remove(&mut self, id: u64) -> Option<V> {
        let at = match self.slots.front() {
            Some(&(first, _)) if first == id => 0,
            _ => self.slots.binary_search_by_key(&id, |&(i, _)| i).ok()?,
        };
        let value = self.slots[at].1.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_front();
        }
        Some(value)
    }

    /// `id`'s value.
    pub fn get(&self, id: u64) -> Option<&V> {
        let at = self.slots.binary_search_by_key(&id, |&(i, _)| i).ok()?;
        self.slots[at].1.as_ref()
    }

    /// The lowest id held.
    pub fn first_id(&self) -> Option<u64> {
        // Gaps never stay at the front.
        self.slots.front().map(|&(id, _)| id)
    }

    /// The first entry with an id in `from..below`.
    pub fn first_in(&self, from: u64, below: u64) -> Option<(u64, &V)> {
        let start = self.slots.partition_point(|&(id, _)| id < from);
        self.slots
            .range(start..)
            .take_while(|&&(id, _)| id < below)
            .find_map(|(id, v)| v.as_ref().map(|v| (*id, v)))
    }

    /// Entries in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.slots
            .iter()
            .filter_map(|(id, v)| v.as_ref().map(|v| (*id, v)))
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn in_order_use_keeps_no_gaps() {
        let mut w = IdWindow::new();
        for id in 1..=5 {
            assert_eq!(w.insert(id, id * 10), None);
        }
        assert_eq!(w.remove(1), Some(10));
        assert_eq!(w.remove(3), Some(30), "out of order: a gap");
        assert_eq!(w.remove(2), Some(20));
        assert_eq!(w.first_id(), Some(4), "the gap went with the front");
        assert_eq!(w.slots.len(), 2);
        assert_eq!(w.remove(3), None, "already gone");
    }

    #[test]
    fn first_in_skips_gaps_and_stops_at_the_bound() {
        let mut w = IdWindow::new();
        for id in [2, 4, 6, 8] {
            w.insert(id, ());
        }
        w.remove(4);
        assert_eq!(w.first_in(3, 9).map(|e| e.0), Some(6));
        assert_eq!(w.first_in(7, 8), None);
        assert_eq!(w.first_in(0, 100).map(|e| e.0), Some(2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        FirstIn(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..64u64).prop_map(Op::Insert),
            3 => (0..64u64).prop_map(Op::Remove),
            1 => (0..64u64, 0..64u64).prop_map(|(a, b)| Op::FirstIn(a, b)),
        ]
    }

    proptest! {
        /// Whatever the order of use, it answers as a `BTreeMap` does.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 0..200)) {
            let (mut w, mut model) = (IdWindow::new(), BTreeMap::new());
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(id) => prop_assert_eq!(w.insert(id, n), model.insert(id, n)),
                    Op::Remove(id) => prop_assert_eq!(w.remove(id), model.remove(&id)),
                    Op::FirstIn(a, b) => {
                        let expected = model.range(a..b.max(a)).next().map(|(k, v)| (*k, v));
                        prop_assert_eq!(w.first_in(a, b), expected);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                prop_assert_eq!(w.first_id(), model.keys().next().copied());
                prop_assert!(w.iter().eq(model.iter().map(|(k, v)| (*k, v))));
                for id in 0..64 {
                    prop_assert_eq!(w.get(id), model.get(&id));
                }
            }
        }
    }
}
