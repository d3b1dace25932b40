//! [`RecentPayloads`]: a bounded cache of the payloads appended last, so a
//! device that reconnects moments later, or one online now, is served from
//! memory, not disk.
//!
//! Payloads are copied into chunks of [`CHUNK`] bytes, one allocation per
//! chunk (no allocation per message), and a lookup hands out a [`Bytes`]
//! slice of its chunk: delivering a cached payload takes a reference, not
//! an allocation and a copy. The index is in append order: a lookup searches
//! it from where its slope points ([`find_ascending`]), and eviction pops
//! from its front once the payloads held pass the capacity. A chunk is
//! freed when its last payload is evicted and delivered.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::search::find_ascending;

/// Bytes per chunk (a larger payload gets a chunk of its own size).
pub const CHUNK: usize = 64 << 10;

/// Recent payloads, at most `capacity` bytes of them.
#[derive(Debug, Default)]
pub struct RecentPayloads {
    capacity: usize,
    /// Payload bytes in `index`.
    held: usize,
    /// The chunk being filled (empty: its filled part was split off).
    chunk: BytesMut,
    /// (log position, payload), positions ascending.
    index: VecDeque<(u64, Bytes)>,
}

impl RecentPayloads {
    /// A cache of `capacity` bytes (0 disables it). Memory is taken a
    /// chunk at a time, as payloads come.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Remembers the payload of the record at `position` (positions must
    /// grow). Payloads larger than a quarter of the capacity are not cached.
    pub fn insert(&mut self, position: u64, payload: &[u8]) {
        if payload.len() > self.capacity / 4 {
            return;
        }
        debug_assert!(self.index.back().is_none_or(|(p, _)| *p < position));
        if self.chunk.capacity() < payload.len() {
            self.chunk = BytesMut::with_capacity(CHUNK.max(payload.len()));
        }
        self.chunk.extend_from_slice(payload);
        let bytes = self.chunk.split().freeze();
        self.held += bytes.len();
        self.index.push_back((position, bytes));
        while self.held > self.capacity {
            let Some((_, evicted)) = self.index.pop_front() else {
                break;
            };
            self.held -= evicted.len();
        }
    }

    /// The payload of the record at `position`, if still cached.
    pub fn get(&self, position: u64) -> Option<&Bytes> {
        let i = find_ascending(self.index.len(), position, |i| self.index[i].0)?;
        Some(&self.index[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(cache: &RecentPayloads, position: u64) -> Option<&[u8]> {
        cache.get(position).map(|b| &b[..])
    }

    #[test]
    fn recent_payloads_are_served_and_old_ones_evicted() {
        let mut cache = RecentPayloads::new(100);
        for position in 0..20u64 {
            cache.insert(position, &[u8::try_from(position).unwrap(); 10]);
        }
        assert_eq!(got(&cache, 19), Some(&[19u8; 10][..]));
        assert_eq!(got(&cache, 10), Some(&[10u8; 10][..]), "the last ten fit");
        assert_eq!(got(&cache, 9), None, "evicted");
        assert_eq!(got(&cache, 100), None, "never cached");
    }

    #[test]
    fn the_capacity_bounds_what_is_held_and_big_ones_are_skipped() {
        let mut cache = RecentPayloads::new(100);
        for p in 1..=5u8 {
            cache.insert(u64::from(p), &[p; 24]);
        }
        assert_eq!(got(&cache, 1), None, "120 bytes over 100: the oldest went");
        assert_eq!(got(&cache, 2), Some(&[2u8; 24][..]));
        assert_eq!(got(&cache, 5), Some(&[5u8; 24][..]));
        cache.insert(6, &[6; 26]);
        assert_eq!(got(&cache, 6), None, "over a quarter of the capacity");
        assert_eq!(RecentPayloads::new(0).get(1), None);
    }

    #[test]
    fn payloads_share_a_chunk_and_a_handed_out_one_outlives_eviction() {
        let mut cache = RecentPayloads::new(100);
        cache.insert(1, b"first");
        cache.insert(2, b"second");
        let (a, b) = (cache.get(1).unwrap().clone(), cache.get(2).unwrap().clone());
        // One allocation for both: the second starts where the first ends.
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
        for p in 3..20 {
            cache.insert(p, &[0; 20]);
        }
        assert_eq!(cache.get(1), None, "evicted");
        assert_eq!(&a[..], b"first", "what was handed out is intact");
    }

    #[test]
    fn payloads_across_chunks_come_back_whole() {
        let mut cache = RecentPayloads::new(1 << 20);
        let payload =
            |p: u64| vec![u8::try_from(p % 251).unwrap(); 1000 + usize::try_from(p % 7).unwrap()];
        for p in 0..200 {
            cache.insert(p, &payload(p));
        }
        for p in 0..200 {
            assert_eq!(got(&cache, p), Some(&payload(p)[..]), "{p}");
        }
    }
}
