//! [`RecentPayloads`]: a bounded cache of the payloads appended last, so a
//! device that reconnects moments later is served from memory, not disk.
//!
//! Payloads are copied into one fixed ring of bytes (no allocation per
//! message); the index is in append order, so a lookup searches an
//! ascending list, starting where its slope points ([`find_ascending`]),
//! and eviction pops from the front as the ring wraps over old bytes.

use std::collections::VecDeque;

use crate::search::find_ascending;

/// Recent payloads, at most `capacity` bytes of them.
#[derive(Debug, Default)]
pub struct RecentPayloads {
    ring: Vec<u8>,
    capacity: usize,
    /// Bytes ever written into the ring (its position modulo `capacity`).
    written: u64,
    /// (log position, absolute ring offset, length), positions ascending.
    index: VecDeque<(u64, u64, u32)>,
}

impl RecentPayloads {
    /// A cache of `capacity` bytes (0 disables it). Memory is taken on the
    /// first insert.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Remembers the payload of the record at `position` (positions must
    /// grow). Payloads larger than a quarter of the ring are not cached.
    pub fn insert(&mut self, position: u64, payload: &[u8]) {
        if payload.len() > self.capacity / 4 {
            return;
        }
        debug_assert!(self.index.back().is_none_or(|(p, ..)| *p < position));
        if self.ring.is_empty() {
            self.ring = vec![0; self.capacity];
        }
        let capacity = self.capacity as u64;
        let mut start = self.written;
        if start % capacity + payload.len() as u64 > capacity {
            start += capacity - start % capacity; // keep each payload contiguous
        }
        self.written = start + payload.len() as u64;
        let at = usize::try_from(start % capacity).expect("inside the ring");
        self.ring[at..at + payload.len()].copy_from_slice(payload);
        let len = u32::try_from(payload.len()).expect("a quarter of the ring");
        self.index.push_back((position, start, len));
        while self
            .index
            .front()
            .is_some_and(|(_, s, _)| *s + capacity < self.written)
        {
            self.index.pop_front();
        }
    }

    /// The payload of the record at `position`, if still cached.
    pub fn get(&self, position: u64) -> Option<&[u8]> {
        let i = find_ascending(self.index.len(), position, |i| self.index[i].0)?;
        let (_, start, len) = self.index[i];
        let at = usize::try_from(start % self.capacity as u64).expect("inside the ring");
        Some(&self.ring[at..at + len as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_payloads_are_served_and_old_ones_evicted() {
        let mut cache = RecentPayloads::new(100);
        for position in 0..20u64 {
            cache.insert(position, &[u8::try_from(position).unwrap(); 10]);
        }
        assert_eq!(cache.get(19), Some(&[19u8; 10][..]));
        assert_eq!(cache.get(10), Some(&[10u8; 10][..]), "the last ten fit");
        assert_eq!(cache.get(9), None, "overwritten");
        assert_eq!(cache.get(100), None, "never cached");
    }

    #[test]
    fn wrapping_keeps_payloads_whole_and_big_ones_are_skipped() {
        let mut cache = RecentPayloads::new(100);
        cache.insert(1, &[1; 24]);
        cache.insert(2, &[2; 24]);
        cache.insert(3, &[3; 24]);
        cache.insert(4, &[4; 24]); // 96 bytes used; the next does not fit the tail
        cache.insert(5, &[5; 24]);
        assert_eq!(cache.get(5), Some(&[5u8; 24][..]));
        assert_eq!(cache.get(1), None, "its bytes were reused");
        assert_eq!(cache.get(4), Some(&[4u8; 24][..]));
        cache.insert(6, &[6; 26]);
        assert_eq!(cache.get(6), None, "over a quarter of the ring");
        assert_eq!(RecentPayloads::new(0).get(1), None);
    }
}
