//! Push wake-ups, at a device's home: when a message is durably queued
//! for a device that is not connected and registered a push token, the
//! notifier is told the device, its token and how many messages arrived,
//! never anything of their content.
//!
//! Coalesced: a device gets at most one wake-up per `push_interval_ms`.
//! The first message after a quiet interval wakes it at once (at the next
//! [`ShardCore::take_wakes`]); later ones within the interval are counted
//! into one wake-up at its end. A device that connects cancels what was
//! pending. Time is the wall clock passed in; the due times sit in a heap,
//! so taking the due wake-ups never walks every device.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use queue_engine::Storage;
use rustc_hash::FxHashMap;
use shard_router::DeviceKey;

use super::ShardCore;

/// One wake-up for the notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The device's user.
    pub user: u64,
    /// The device.
    pub device: u32,
    /// Its push service.
    pub platform: String,
    /// Its token (opaque).
    pub token: Vec<u8>,
    /// Messages queued for it since its last wake-up.
    pub count: u32,
    /// When the wake-up was made, ms since the Unix epoch.
    pub at_ms: u64,
}

/// A device with messages to wake it for, or in its quiet interval.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Messages not yet in a wake-up.
    count: u32,
    /// When the next wake-up may go (its heap entry's time).
    due_ms: u64,
}

/// The wake-ups of the devices homed on a shard.
#[derive(Debug, Default)]
pub(super) struct Wakes {
    pending: FxHashMap<DeviceKey, Pending>,
    /// (due, device); entries whose due no longer matches are stale.
    due: BinaryHeap<Reverse<(u64, DeviceKey)>>,
}

impl Wakes {
    /// A message is durable in `device`'s queue at `now_ms`.
    fn queued(&mut self, device: DeviceKey, now_ms: u64) {
        let due = &mut self.due;
        let p = self.pending.entry(device).or_insert_with(|| {
            due.push(Reverse((now_ms, device)));
            Pending {
                count: 0,
                due_ms: now_ms,
            }
        });
        p.count = p.count.saturating_add(1);
    }

    /// The device connected: nothing is pending for it any more.
    pub(super) fn cancel(&mut self, device: DeviceKey) {
        self.pending.remove(&device);
    }

    /// Devices whose wake-up is due at `now_ms`, with their counts; each
    /// then starts a quiet interval of `interval_ms`.
    fn take_due(&mut self, now_ms: u64, interval_ms: u64) -> Vec<(DeviceKey, u32)> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, device))) = self.due.peek() {
            if at > now_ms {
                break;
            }
            self.due.pop();
            let Some(p) = self.pending.get_mut(&device).filter(|p| p.due_ms == at) else {
                continue; // cancelled, or superseded
            };
            if p.count == 0 {
                self.pending.remove(&device); // a quiet interval ended quietly
                continue;
            }
            due.push((device, p.count));
            p.count = 0;
            p.due_ms = now_ms + interval_ms;
            self.due.push(Reverse((p.due_ms, device)));
        }
        due
    }

    /// Devices with a wake-up pending or in their quiet interval.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }
}

impl<S: Storage> ShardCore<S> {
    /// Whether a message durable for `device` should count towards a
    /// wake-up: pushing is on, the device is not connected and it has a
    /// token.
    pub(super) fn wants_wake(&self, device: DeviceKey) -> bool {
        self.config.push_interval_ms.is_some()
            && !self.cursors.contains_key(&device)
            && self.has_push_token(device)
    }

    /// A message is durable in the queue of `device` (offline, with a
    /// token when it was stored).
    pub(super) fn message_for_offline(&mut self, now_ms: u64, device: DeviceKey) {
        if !self.cursors.contains_key(&device) {
            self.wakes.queued(device, now_ms);
        }
    }

    /// The wake-ups due at `now` for the notifier (a shell calls this a few
    /// times a second). Empty when pushing is off.
    pub fn take_wakes(&mut self, now: crate::clock::Now) -> Vec<Wake> {
        self.set_now(now);
        let Some(interval_ms) = self.config.push_interval_ms else {
            return Vec::new();
        };
        let due = self.wakes.take_due(now.wall_ms, interval_ms);
        let wakes: Vec<Wake> = due
            .into_iter()
            .filter_map(|(device, count)| {
                let token = self.push_token(device)?;
                Some(Wake {
                    user: device.user.0,
                    device: device.device.0,
                    platform: token.platform,
                    token: token.token,
                    count,
                    at_ms: now.wall_ms,
                })
            })
            .collect();
        self.stats.push_wakes += wakes.len() as u64;
        wakes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeviceKey = DeviceKey {
        user: shard_router::UserId(1),
        device: shard_router::DeviceId(0),
    };

    #[test]
    fn wake_ups_are_coalesced_per_interval_and_cancelled_by_a_connect() {
        let mut w = Wakes::default();
        for _ in 0..100 {
            w.queued(D, 1_000);
        }
        assert_eq!(w.take_due(1_000, 60_000), [(D, 100)], "the first at once");
        w.queued(D, 2_000);
        w.queued(D, 3_000);
        assert_eq!(w.take_due(30_000, 60_000), [], "quiet for an interval");
        assert_eq!(w.take_due(61_000, 60_000), [(D, 2)], "then what came");
        assert_eq!(w.take_due(121_000, 60_000), [], "nothing new");
        assert_eq!(
            w.len(),
            0,
            "a quiet interval that ended quietly is forgotten"
        );
        w.queued(D, 200_000);
        w.cancel(D);
        assert_eq!(w.take_due(200_000, 60_000), [], "connected: cancelled");
        assert_eq!(w.len(), 0);
    }
}
