//! Time: session deadlines through a timer heap, and the once-a-second
//! housekeeping (TTL expiry, retrying receipts a full queue refused).
//!
//! Each connection has at most one live entry in the heap, the earliest
//! deadline its session asked for (`Conn::timer_at`); entries that a later
//! reschedule superseded are skipped when they surface. Deadlines are on
//! the monotonic clock; expiry compares wall-clock TTLs.

use std::cmp::Reverse;

use queue_engine::Storage;
use shard_router::{ConnId, Target};
use wire_format::fb;

use super::{AckRef, Receipt, ShardCore, ToHome, device_key};
use crate::clock::Now;

/// How often TTL expiry and deferred receipts are looked at.
pub(super) const HOUSEKEEPING_MS: u64 = 1_000;

/// The longest a tombstone or a receipt waits in the log's filling batch
/// for a batch that is due anyway (`queue_engine::Log::append_lazy`): it
/// bounds the acknowledgments a crash can undo (their entries are
/// delivered again) and how much later a lone ✓✓ reaches its sender.
pub const LAZY_SEAL_MS: u64 = 100;

impl<S: Storage> ShardCore<S> {
    /// When [`ShardCore::handle_timeout`] must be called next (monotonic
    /// ms): the earliest session deadline, the next housekeeping, or
    /// [`LAZY_SEAL_MS`] after tombstones or receipts were first left
    /// waiting.
    pub fn poll_timeout(&self) -> u64 {
        if self.engine.lazy_pending() && self.lazy_seal_at.get() == u64::MAX {
            self.lazy_seal_at.set(self.mono_ms + LAZY_SEAL_MS);
        }
        let timer = self.timers.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
        timer.min(self.housekeeping_at).min(self.lazy_seal_at.get())
    }

    /// Makes the tombstones and receipts waiting in the log due now
    /// (before a wait for the head to be durable).
    pub fn seal_lazy(&mut self) {
        self.lazy_seal_at.set(u64::MAX);
        self.engine.seal_lazy();
    }

    /// Time passed: every due session deadline, and housekeeping if due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.set_now(now);
        if now.mono_ms >= self.lazy_seal_at.get() {
            self.seal_lazy();
        }
        while let Some(&Reverse((at, conn))) = self.timers.peek() {
            if at > now.mono_ms {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&conn).filter(|c| c.timer_at == at) else {
                continue; // superseded, or the connection is gone
            };
            c.timer_at = u64::MAX;
            if c.session.poll_timeout().is_some_and(|t| t <= now.mono_ms) {
                c.session.handle_timeout(now.mono_ms);
            }
            self.after_session(now.wall_ms, conn);
        }
        if now.mono_ms >= self.housekeeping_at {
            self.housekeeping_at = now.mono_ms + HOUSEKEEPING_MS;
            self.expire(now.wall_ms);
            self.retry_deferred(now.wall_ms);
            self.retry_gaps(now.wall_ms);
            self.run_effects(now.wall_ms);
        }
        if now.mono_ms >= self.idle_scan_at {
            self.idle_scan_at = now.mono_ms + super::devices::IDLE_SCAN_MS;
            self.unlink_idle(now.wall_ms);
            // Offline devices' limits that would change nothing any more.
            let memory_ms = super::edge::ABUSE_MEMORY_MS;
            self.abuse.retain(|_, a| !a.is_idle(now.wall_ms, memory_ms));
        }
    }

    /// Keeps `conn`'s earliest session deadline in the heap.
    pub(super) fn schedule(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(at) = c.session.poll_timeout() else {
            return;
        };
        if at < c.timer_at {
            c.timer_at = at;
            self.timers.push(Reverse((at, conn)));
        }
    }

    /// TTL expiry: `Expired` receipts to the senders, and a gap notice to
    /// each device that missed messages. The entries leave the index at
    /// once; their tombstones wait until every receipt is durable at its
    /// sender's home (as a device's ack waits for its ✓✓), and the gap
    /// notices are appended first. So a crash before then expires them
    /// again after recovery and tells both sides again: at least once,
    /// never lost. No expiry starts while a reclaim runs (a record whose
    /// tombstone waits must not be dropped by it).
    pub(super) fn expire(&mut self, now_ms: u64) {
        if self.reclaiming {
            return; // at the next tick
        }
        let expired = self.engine.take_expired(now_ms);
        if expired.is_empty() {
            return;
        }
        let id = self.next_ack;
        self.next_ack += 1;
        let mut receipts = 0;
        for e in &expired {
            let device = device_key(e.device);
            let Some(meta) = self.forget_one(device, e.position) else {
                continue; // read_back failed the shard
            };
            if meta.receipt.is_none() {
                self.gap(device, meta.from, meta.at_ms, fb::GapCause::Expired);
                let confirm = AckRef {
                    device,
                    id,
                    expiry: true,
                };
                let receipt = ToHome::StoreReceipt(Receipt {
                    kind: fb::ReceiptKind::Expired,
                    message_ids: vec![meta.message_id],
                    at_ms: now_ms,
                    confirm: Some(confirm),
                });
                self.send_home(now_ms, device, Target::User(meta.from.user), receipt);
                receipts += 1;
            }
        }
        self.store_gaps(now_ms);
        match receipts {
            0 => self.engine.tombstone_expired(&expired),
            n => {
                // Gone for the device now (the sender may hear of it before
                // the tombstones below are written); recovery brings them
                // back if the tombstones never are.
                self.engine.hide_expired(&expired);
                self.expiring.insert(id, (expired, n));
            }
        }
    }

    /// One `Expired` receipt of expiry pass `id` is durable; the pass's
    /// tombstones go once all are.
    pub(super) fn expiry_stored(&mut self, id: u64) {
        let Some((_, left)) = self.expiring.get_mut(&id) else {
            return self.anomaly("an expiry was confirmed that nobody waits on");
        };
        *left -= 1;
        if *left == 0 {
            let (expired, _) = self.expiring.remove(&id).expect("just found");
            self.engine.tombstone_expired(&expired);
        }
    }
}
