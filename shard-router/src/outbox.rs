//! Batching of cross-shard messages: everything a shard sends during one
//! turn of its event loop leaves as one batch per destination shard.
//!
//! Waking another core costs tens of microseconds, so a crossing must cost
//! far less than a wake-up per message: the shell carries each batch over
//! its per-pair ring (glommio's channel mesh in the gateway) with one
//! wake-up. Order per destination is the order of `push`.

use crate::ids::ShardId;

/// Largest batch handed to the shell; more messages for one destination in
/// one turn leave as several batches, in order.
pub const BATCH_MESSAGES_MAX: usize = 4096;

/// Messages waiting to leave this shard, per destination.
#[derive(Debug)]
pub struct Outbox<T> {
    /// Full batches and the one filling, per destination shard.
    per_shard: Vec<Vec<Vec<T>>>,
    /// Per destination, about the longest of its recent batches (a maximum
    /// that decays by 1/8 per batch): the next one starts at that
    /// capacity, so a steady flow does not regrow its batch every turn.
    usual_len: Vec<usize>,
    /// Destinations with messages, in the order they got their first one.
    dirty: Vec<ShardId>,
    pending: usize,
}

impl<T> Outbox<T> {
    /// An outbox for a node of `shards` shards.
    pub fn new(shards: u16) -> Self {
        Self {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
            usual_len: vec![0; usize::from(shards)],
            dirty: Vec::new(),
            pending: 0,
        }
    }

    /// Queues `msg` for shard `to`.
    pub fn push(&mut self, to: ShardId, msg: T) {
        let batches = &mut self.per_shard[usize::from(to.0)];
        if batches.is_empty() {
            self.dirty.push(to);
        }
        match batches.last_mut() {
            Some(batch) if batch.len() < BATCH_MESSAGES_MAX => batch.push(msg),
            _ => {
                let start = self.usual_len[usize::from(to.0)].clamp(16, BATCH_MESSAGES_MAX);
                let mut batch = Vec::with_capacity(start);
                batch.push(msg);
                batches.push(batch);
            }
        }
        self.pending += 1;
    }

    /// Messages queued and not yet taken.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Takes the next batch: all batches of one destination come out in
    /// order before the next destination's.
    pub fn pop_batch(&mut self) -> Option<(ShardId, Vec<T>)> {
        let to = *self.dirty.first()?;
        let batches = &mut self.per_shard[usize::from(to.0)];
        let batch = batches.remove(0);
        if batches.is_empty() {
            self.dirty.remove(0);
        }
        self.pending -= batch.len();
        let usual = &mut self.usual_len[usize::from(to.0)];
        *usual = batch.len().max(*usual - *usual / 8);
        Some((to, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_batch_per_destination_in_push_order() {
        let mut out = Outbox::new(3);
        for i in 0..10 {
            out.push(ShardId(i % 3), i);
        }
        assert_eq!(out.pending(), 10);
        let batches: Vec<_> = std::iter::from_fn(|| out.pop_batch()).collect();
        assert_eq!(
            batches,
            [
                (ShardId(0), vec![0, 3, 6, 9]),
                (ShardId(1), vec![1, 4, 7]),
                (ShardId(2), vec![2, 5, 8])
            ]
        );
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn a_batch_starts_as_big_as_the_recent_ones_to_its_destination() {
        let mut out = Outbox::new(2);
        let mut batch_of = |to: u16, n: usize| {
            (0..n).for_each(|i| out.push(ShardId(to), i));
            let (_, batch) = out.pop_batch().unwrap();
            assert_eq!(batch.len(), n);
            batch.capacity()
        };
        assert!(batch_of(1, 100) >= 100);
        assert!(batch_of(1, 1) >= 100, "as big as the last");
        assert!(batch_of(1, 1) >= 80, "a small one lowers it slowly");
        assert!(batch_of(0, 1) < 100, "shard 0 had no big batch");
        for _ in 0..40 {
            batch_of(1, 1);
        }
        assert!(batch_of(1, 1) < 20, "it decays");
    }

    #[test]
    fn big_turns_split_into_bounded_batches_in_order() {
        let mut out = Outbox::new(1);
        for i in 0..BATCH_MESSAGES_MAX + 5 {
            out.push(ShardId(0), i);
        }
        let (_, first) = out.pop_batch().unwrap();
        let (_, second) = out.pop_batch().unwrap();
        assert_eq!(first.len(), BATCH_MESSAGES_MAX);
        assert_eq!(
            second,
            (BATCH_MESSAGES_MAX..BATCH_MESSAGES_MAX + 5).collect::<Vec<_>>()
        );
        assert!(out.pop_batch().is_none());
    }
}
