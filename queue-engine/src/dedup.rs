//! [`SenderWindows`]: dedup of client retries, with state bounded by the
//! sending devices rather than by the messages they sent.
//!
//! The client's promise (`docs/protocol.md`, "Retries"): a device numbers
//! its sends with strictly increasing `client_msg_id`s, retries only sends
//! it has not had an answer to, and sends id `n` only once every id up to
//! `n - DEDUP_WINDOW` has been answered. So a retry is always within the
//! last [`DEDUP_WINDOW`] ids of its device, and the server keeps, per
//! sender device, only:
//!
//! * `high`, the highest id stored, and a 64-bit map of which ids of
//!   `high - 63 ..= high` were stored (24 bytes with the position of the
//!   device's latest window record; about 48 bytes with its map entry);
//! * for ids stored within the last `ids_ms` (the time backstop) and still
//!   inside the window, the original message id and position, so a retry
//!   is answered with the original. An id leaves this list when the window
//!   moves past it or the backstop passes, whichever is first.
//!
//! What a send gets: an id above `high`, or inside the window and not
//! stored, is new. One inside the window and stored is a duplicate, with
//! the original id if it is still listed ([`Seen::Duplicate`]) or without
//! ([`Seen::Forgotten`]). One below the window is [`Seen::Stale`]: the
//! client broke its promise and the server cannot tell.
//!
//! Recovery rebuilds the bits from the message records it replays and
//! from window records: reclaim writes one per sender whose window would
//! otherwise lose ids with the records it deletes, and [`Window::merge`]
//! is order-insensitive, so replay needs no order between the two.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::record::{DeviceRef, WindowRecord};
use crate::split_map::SplitMap;

/// Ids per device inside the dedup window (the bit map's width).
pub const DEDUP_WINDOW: u64 = 64;

/// What a send's `client_msg_id` is to its device's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not stored yet: store it.
    New,
    /// Stored as `message_id` at `position`.
    Duplicate {
        /// The original message id.
        message_id: u64,
        /// Where it was stored.
        position: u64,
    },
    /// Stored, but longer ago than the backstop: its id is not kept.
    Forgotten,
    /// Below the window: the client retried an answered send.
    Stale,
}

/// One sender device's window: 24 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Highest id stored (0: none yet).
    pub high: u64,
    /// Bit `i` set: id `high - i` was stored.
    pub bits: u64,
    /// Position of the device's latest window record (0: none).
    pub record_at: u64,
}

impl Window {
    /// Whether `id` is stored, new, or below the window.
    fn test(&self, id: u64) -> Option<bool> {
        if id > self.high {
            return Some(false);
        }
        let back = self.high - id;
        (back < DEDUP_WINDOW && id > 0).then(|| self.bits >> back & 1 == 1)
    }

    /// Marks `id` stored.
    fn set(&mut self, id: u64) {
        if id > self.high {
            let shift = id - self.high;
            self.bits = if shift >= DEDUP_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.high = id;
        }
        let back = self.high - id;
        if back < DEDUP_WINDOW {
            self.bits |= 1 << back;
        }
    }

    /// Joins another view of the same device's window (from a window
    /// record): the result holds every id either holds.
    pub fn merge(&mut self, high: u64, bits: u64) {
        let (mut hi, mut lo) = (
            *self,
            Window {
                high,
                bits,
                ..*self
            },
        );
        if lo.high > hi.high {
            std::mem::swap(&mut hi, &mut lo);
        }
        let shift = hi.high - lo.high;
        let carried = if shift >= DEDUP_WINDOW {
            0
        } else {
            lo.bits << shift
        };
        self.high = hi.high;
        self.bits = hi.bits | carried;
    }

    /// The lowest id still inside the window.
    fn floor(&self) -> u64 {
        self.high.saturating_sub(DEDUP_WINDOW - 1)
    }
}

/// A stored id whose original is still known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known {
    pub(crate) client_msg_id: u64,
    pub(crate) message_id: u64,
    pub(crate) position: u64,
    pub(crate) accepted_ms: u64,
}

/// Every sender device's window, and the originals of recent ids.
#[derive(Debug, Default)]
pub struct SenderWindows {
    pub(crate) windows: SplitMap<DeviceRef, Window>,
    /// Per device with recent ids, oldest first.
    pub(crate) known: FxHashMap<DeviceRef, VecDeque<Known>>,
    /// (accepted_ms of a device's oldest known id, device), oldest first:
    /// one entry per device in `known`.
    pub(crate) by_age: VecDeque<(u64, DeviceRef)>,
    /// How long an original is kept (the backstop), ms.
    pub(crate) ids_ms: u64,
}

impl SenderWindows {
    /// Windows that keep originals for `ids_ms`.
    pub fn new(ids_ms: u64) -> Self {
        Self {
            ids_ms,
            ..Self::default()
        }
    }

    /// What `client_msg_id` from `sender` is.
    pub fn check(&self, sender: DeviceRef, client_msg_id: u64) -> Seen {
        let window = self.windows.get(&sender).copied().unwrap_or_default();
        match window.test(client_msg_id) {
            None => Seen::Stale,
            Some(false) => Seen::New,
            Some(true) => self
                .find(sender, client_msg_id)
                .map_or(Seen::Forgotten, |k| Seen::Duplicate {
                    message_id: k.message_id,
                    position: k.position,
                }),
        }
    }

    /// `client_msg_id` from `sender` was stored as `message_id` at
    /// `position` (live, or replayed by recovery).
    pub fn stored(
        &mut self,
        sender: DeviceRef,
        client_msg_id: u64,
        message_id: u64,
        position: u64,
        accepted_ms: u64,
    ) {
        let window = self.windows.entry(sender).or_default();
        // Only recovery stores an id twice (a record and its copy by
        // reclaim): the copy's position wins.
        let again = window.test(client_msg_id) == Some(true);
        window.set(client_msg_id);
        let floor = window.floor();
        if again && self.find(sender, client_msg_id).is_some() {
            return self.moved(sender, client_msg_id, position);
        }
        let ids = self.known.entry(sender).or_insert_with(|| {
            self.by_age.push_back((accepted_ms, sender));
            VecDeque::new()
        });
        // Ids come mostly in order: the ones the window left are in front.
        while ids.front().is_some_and(|k| k.client_msg_id < floor) {
            ids.pop_front();
        }
        ids.push_back(Known {
            client_msg_id,
            message_id,
            position,
            accepted_ms,
        });
    }

    /// Reclaim copied the record of `client_msg_id` to `position`.
    pub fn moved(&mut self, sender: DeviceRef, client_msg_id: u64, position: u64) {
        let known = self.known.get_mut(&sender).into_iter().flatten();
        if let Some(k) = known.rev().find(|k| k.client_msg_id == client_msg_id) {
            k.position = position;
        }
    }

    /// Applies a window record (recovery, or a copy made by reclaim).
    pub fn apply_record(&mut self, position: u64, w: &WindowRecord) {
        let window = self.windows.entry(w.sender).or_default();
        window.merge(w.high, w.bits);
        window.record_at = window.record_at.max(position);
    }

    /// Forgets the originals of ids stored before `now_ms - ids_ms`.
    /// Amortized O(1) per id.
    pub fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.ids_ms);
        while let Some(&(at, device)) = self.by_age.front() {
            if at >= cutoff {
                break;
            }
            self.by_age.pop_front();
            let Some(ids) = self.known.get_mut(&device) else {
                continue;
            };
            while ids.front().is_some_and(|k| k.accepted_ms < cutoff) {
                ids.pop_front();
            }
            match ids.front() {
                Some(k) => self.by_age.push_back((k.accepted_ms.max(cutoff), device)),
                None => {
                    self.known.remove(&device);
                }
            }
        }
    }

    /// The kept original of `client_msg_id` from `sender`, newest first.
    fn find(&self, sender: DeviceRef, client_msg_id: u64) -> Option<&Known> {
        let mut known = self.known.get(&sender).into_iter().flatten().rev();
        known.find(|k| k.client_msg_id == client_msg_id)
    }

    /// `sender`'s window, if it ever stored anything.
    pub fn window(&self, sender: DeviceRef) -> Option<Window> {
        self.windows.get(&sender).copied()
    }

    /// A window record for `sender` was appended at `position`; returns
    /// whether it supersedes an earlier one.
    pub fn recorded(&mut self, sender: DeviceRef, position: u64) -> bool {
        let window = self.windows.entry(sender).or_default();
        let superseded = window.record_at != 0;
        window.record_at = position;
        superseded
    }

    /// Sender devices with a window.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// Ids whose originals are kept.
    pub fn known_ids(&self) -> usize {
        self.known.values().map(VecDeque::len).sum()
    }

    /// Gives back memory of drained lists and maps.
    pub fn shrink_to_fit(&mut self) {
        self.known.shrink_to_fit();
        self.by_age.shrink_to_fit();
        self.windows.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: DeviceRef = DeviceRef { user: 1, device: 0 };

    #[test]
    fn the_window_slides_with_the_highest_id() {
        let mut w = SenderWindows::new(1_000);
        assert_eq!(w.check(PHONE, 1), Seen::New);
        w.stored(PHONE, 1, 100, 10, 0);
        w.stored(PHONE, 3, 300, 30, 0);
        assert_eq!(
            w.check(PHONE, 1),
            Seen::Duplicate {
                message_id: 100,
                position: 10
            }
        );
        assert_eq!(
            w.check(PHONE, 2),
            Seen::New,
            "inside the window, never stored"
        );
        w.stored(PHONE, 64, 640, 64, 0);
        assert_eq!(
            w.check(PHONE, 1),
            Seen::Duplicate {
                message_id: 100,
                position: 10
            }
        );
        w.stored(PHONE, 65, 650, 65, 0);
        assert_eq!(w.check(PHONE, 1), Seen::Stale, "1 is 64 below 65");
        assert_eq!(w.check(PHONE, 2), Seen::New, "2 is the window's floor");
        assert_eq!(w.known_ids(), 3, "the original of 1 left with the window");
        assert_eq!(w.check(PHONE, 0), Seen::Stale, "ids start at 1");
    }

    #[test]
    fn the_backstop_forgets_originals_but_not_the_bits() {
        let mut w = SenderWindows::new(1_000);
        w.stored(PHONE, 1, 100, 10, 0);
        w.stored(PHONE, 2, 200, 20, 600);
        w.expire(1_200);
        assert_eq!(w.check(PHONE, 1), Seen::Forgotten);
        assert!(matches!(w.check(PHONE, 2), Seen::Duplicate { .. }));
        w.expire(1_601);
        assert_eq!(w.check(PHONE, 2), Seen::Forgotten);
        assert_eq!((w.known_ids(), w.known.len(), w.by_age.len()), (0, 0, 0));
        assert_eq!(w.check(PHONE, 3), Seen::New);
    }

    #[test]
    fn merging_is_a_join() {
        let mut a = Window::default();
        a.set(10);
        a.set(7);
        let mut b = Window::default();
        b.set(70);
        b.set(9);
        let mut ab = a;
        ab.merge(b.high, b.bits);
        let mut ba = b;
        ba.merge(a.high, a.bits);
        assert_eq!((ab.high, ab.bits), (ba.high, ba.bits));
        assert_eq!(ab.test(70), Some(true));
        assert_eq!(ab.test(10), Some(true));
        assert_eq!(ab.test(8), Some(false));
        assert_eq!(ab.test(7), Some(true), "7 is 63 below 70");
        assert_eq!(ab.test(6), None, "below 70's window");
    }
}
