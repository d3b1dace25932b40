//! Gap notices, at a device's home: when messages for a device are
//! dropped before it read them, the device is told what it missed on its
//! next connection, so its client can ask the senders (end to end) to
//! send them again. Two causes drop messages:
//!
//! - their TTL ran out (the senders get `Receipt{Expired}` as well);
//! - the device's queue was full when a group message (or change) reached
//!   it: a group is not held back for one member device.
//!
//! A 1:1 message to a full queue is refused to its sender instead
//! (`RecipientQueueFull`, not stored), so the sender knows.
//!
//! What is dropped in one pass (one expiry tick, one pass over the
//! router's effects) is coalesced per device and cause into one notice:
//! per sending device, how many and the first and last acceptance time.
//! A notice is a server record (first payload byte [`NOTICE_GAP`]) queued
//! durably under the device's receipt budget and acknowledged like a
//! message; one that finds that budget full waits here and is retried
//! every second, never dropped.

use queue_engine::{QueueError, Storage};
use shard_router::{DeviceKey, Target};
use wire_format::fb;

use super::{ShardCore, ToConn, device_ref};

/// First byte of a stored gap notice.
pub(super) const NOTICE_GAP: u8 = 18;

/// Most senders in one notice (a `Gap` frame of this many fits the
/// smallest frame limit).
const SENDERS_MAX: usize = 64;

/// What one device missed for one cause, gathered until stored.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gap {
    device: DeviceKey,
    cause: fb::GapCause,
    senders: Vec<fb::GapSender>,
}

impl Gap {
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(2 + 32 * self.senders.len());
        p.push(NOTICE_GAP);
        p.push(self.cause.0);
        for s in &self.senders {
            p.extend_from_slice(&s.user().to_le_bytes());
            p.extend_from_slice(&s.device().to_le_bytes());
            p.extend_from_slice(&s.count().to_le_bytes());
            p.extend_from_slice(&s.first_ms().to_le_bytes());
            p.extend_from_slice(&s.last_ms().to_le_bytes());
        }
        p
    }
}

/// The frame note for a stored gap notice delivered at `seq`.
pub(super) fn gap_note(payload: &[u8], seq: u64) -> Option<ToConn> {
    let body = payload.strip_prefix(&[NOTICE_GAP])?;
    let (cause, rest) = body.split_first()?;
    let u64_at =
        |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let u32_at =
        |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    if rest.len() % 32 != 0 {
        return None;
    }
    let senders = rest
        .chunks_exact(32)
        .map(|c| {
            let (user, device, count) = (u64_at(c, 0)?, u32_at(c, 8)?, u32_at(c, 12)?);
            let (first_ms, last_ms) = (u64_at(c, 16)?, u64_at(c, 24)?);
            Some(fb::GapSender::new(first_ms, last_ms, user, count, device))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ToConn::Gap {
        seq,
        cause: fb::GapCause(*cause),
        senders,
    })
}

impl<S: Storage> ShardCore<S> {
    /// A message for `device` from `sender`, accepted at `at_ms`, was
    /// dropped for `cause`: gathered into the device's next notice.
    pub(super) fn gap(
        &mut self,
        device: DeviceKey,
        sender: DeviceKey,
        at_ms: u64,
        cause: fb::GapCause,
    ) {
        self.stats.gap_messages += 1;
        let gap = match self
            .gaps_in
            .iter_mut()
            .find(|g| g.device == device && g.cause == cause && g.senders.len() < SENDERS_MAX)
        {
            Some(gap) => gap,
            None => {
                self.gaps_in.push(Gap {
                    device,
                    cause,
                    senders: Vec::new(),
                });
                self.gaps_in.last_mut().expect("just pushed")
            }
        };
        let (user, dev) = (sender.user.0, sender.device.0);
        match gap
            .senders
            .iter_mut()
            .find(|s| s.user() == user && s.device() == dev)
        {
            Some(s) => {
                let first = s.first_ms().min(at_ms);
                let last = s.last_ms().max(at_ms);
                *s = fb::GapSender::new(first, last, user, s.count().saturating_add(1), dev);
            }
            None => gap
                .senders
                .push(fb::GapSender::new(at_ms, at_ms, user, 1, dev)),
        }
    }

    /// Stores the notices gathered in this pass, and retries those that
    /// found a full queue before.
    pub(super) fn store_gaps(&mut self, now_ms: u64) {
        let gathered = std::mem::take(&mut self.gaps_in);
        for gap in gathered {
            self.try_gap(now_ms, gap);
        }
    }

    /// Retries the notices kept because a queue was full.
    pub(super) fn retry_gaps(&mut self, now_ms: u64) {
        for gap in std::mem::take(&mut self.gaps_deferred) {
            self.try_gap(now_ms, gap);
        }
    }

    fn try_gap(&mut self, now_ms: u64, gap: Gap) {
        if !self.is_registered(gap.device) {
            return; // unlinked meanwhile: nobody to tell
        }
        let kind = fb::ReceiptKind(NOTICE_GAP);
        let to = Target::Device(gap.device);
        let recipients = [device_ref(gap.device)];
        let payload = gap.payload();
        match self.store_server_record(now_ms, gap.device, to, kind, &payload, &recipients, now_ms)
        {
            Ok(_) => self.stats.gap_notices += 1,
            Err(QueueError::QueueFull { .. }) => self.gaps_deferred.push(gap),
            Err(_) => self.anomaly("a gap notice was refused"),
        }
    }
}
