//! Acks and receipts: what a device's ack covers, ✓✓ to the senders'
//! homes, and tombstones once those receipts are durable.
//!
//! At a home, receipts that arrive in one pass over the router's effects
//! are coalesced: those of one kind from one device to one target become
//! one record of up to [`RECEIPT_IDS_MAX`] ids (so a device that acks
//! often does not cost its senders a record per ack). They queue under a
//! budget of their own (`queue_receipts_max`); one over it waits here and
//! is retried every second, never dropped.

use queue_engine::{Accepted, NewMessage, QueueError, Storage};
use shard_router::{ConnRef, DeviceKey, Target};
use wire_format::fb::{self, ErrorCode};

use super::{AckRef, Meta, PendingAck, Receipt, ShardCore, ToConn, ToHome, Waiting, device_ref};

/// What became of a receipt at its home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Receipted {
    /// Queued at this log position (durable once the log passes it).
    Stored(u64),
    /// Nobody to queue it for.
    Nobody,
    /// A recipient's queue is full: kept and retried, never dropped.
    Full,
}

/// Most message ids in one stored receipt (a `Receipt` frame of this many
/// fits the smallest frame limit).
pub(super) const RECEIPT_IDS_MAX: usize = 256;

/// Receipts of one kind from one device to one target, coalesced.
#[derive(Debug)]
pub(super) struct Coalesced {
    from: DeviceKey,
    to: Target,
    kind: fb::ReceiptKind,
    message_ids: Vec<u64>,
    at_ms: u64,
    /// The acks to confirm once it is durable (`Delivered` receipts).
    confirms: Vec<AckRef>,
}

impl<S: Storage> ShardCore<S> {
    /// A receipt for the devices of `to`, gathered until the end of this
    /// pass ([`ShardCore::store_receipts`]): coalesced with others of its
    /// kind, from `from` to `to`, while they fit one record.
    pub(super) fn receipt_at_home(&mut self, from: DeviceKey, to: Target, r: Receipt) {
        let key = (from, to, r.kind);
        let open = self.receipts_open.get(&key).copied();
        let fits = |c: &Coalesced| c.message_ids.len() + r.message_ids.len() <= RECEIPT_IDS_MAX;
        if let Some(c) = open.map(|i| &mut self.receipts_in[i]).filter(|c| fits(c)) {
            c.message_ids.extend_from_slice(&r.message_ids);
            c.at_ms = c.at_ms.max(r.at_ms);
            c.confirms.extend(r.confirm);
            return;
        }
        // A new record for this key; a full one stays as it is.
        self.receipts_open.insert(key, self.receipts_in.len());
        self.receipts_in.push(Coalesced {
            from,
            to,
            kind: r.kind,
            message_ids: r.message_ids,
            at_ms: r.at_ms,
            confirms: r.confirm.into_iter().collect(),
        });
    }

    /// Stores the receipts gathered in this pass; returns whether there
    /// were any.
    pub(super) fn store_receipts(&mut self, now_ms: u64) -> bool {
        let gathered = std::mem::take(&mut self.receipts_in);
        self.receipts_open.clear();
        let any = !gathered.is_empty();
        for c in gathered {
            if self.try_receipt(now_ms, c) {
                self.stats.receipts_deferred += 1;
            }
        }
        any
    }

    /// Retries the receipts kept because a queue was full.
    pub(super) fn retry_deferred(&mut self, now_ms: u64) {
        for c in std::mem::take(&mut self.deferred) {
            self.try_receipt(now_ms, c);
        }
    }

    /// Stores `c`, or keeps it in `deferred`; returns whether it was kept.
    /// A `Delivered` receipt is confirmed to the acking device's home only
    /// once it is durable, so its tombstone (and more deliveries to that
    /// device) wait: a full queue pushes back.
    fn try_receipt(&mut self, now_ms: u64, c: Coalesced) -> bool {
        let stored = self.store_receipt(now_ms, c.from, c.to, c.kind, &c.message_ids, c.at_ms);
        match stored {
            Receipted::Stored(position) => {
                for ack in &c.confirms {
                    self.waiting.push_back((position, Waiting::Confirm(*ack)));
                }
            }
            Receipted::Nobody => {
                for ack in &c.confirms {
                    self.confirm(now_ms, *ack);
                }
            }
            Receipted::Full => {
                // An expiry stops waiting for a receipt that waits for room
                // (it is still retried): a sender that never reads its
                // receipts must not hold back the expiring shard's reclaim.
                // A crash before room comes loses that one receipt.
                let (expiries, acks) = c.confirms.iter().partition(|a| a.expiry);
                let mut c = c;
                c.confirms = acks;
                for ack in expiries {
                    self.confirm(now_ms, ack);
                }
                self.deferred.push_back(c);
                return true;
            }
        }
        false
    }

    fn store_receipt(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        to: Target,
        kind: fb::ReceiptKind,
        message_ids: &[u64],
        at_ms: u64,
    ) -> Receipted {
        let recipients = match to {
            Target::Device(d) if self.is_registered(d) => vec![device_ref(d)],
            Target::Device(d) => self.recipients(from, Target::User(d.user)),
            _ => self.recipients(from, to),
        };
        let mut payload = Vec::with_capacity(1 + 8 * message_ids.len());
        payload.push(kind.0);
        for id in message_ids {
            payload.extend_from_slice(&id.to_le_bytes());
        }
        match self.store_server_record(now_ms, from, to, kind, &payload, &recipients, at_ms) {
            Ok(position) => {
                self.stats.receipts_stored += 1;
                Receipted::Stored(position)
            }
            Err(QueueError::QueueFull { .. }) => Receipted::Full,
            Err(QueueError::NoRecipient) => Receipted::Nobody,
            Err(_) => {
                self.anomaly("a receipt was deduped, refused as an ack or too large");
                Receipted::Nobody
            }
        }
    }

    /// Appends a record the server makes (a receipt, or a group or device
    /// notice: `kind` is its first payload byte) for `recipients`, and
    /// keeps its meta; returns its position.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_server_record(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        to: Target,
        kind: fb::ReceiptKind,
        payload: &[u8],
        recipients: &[queue_engine::DeviceRef],
        at_ms: u64,
    ) -> Result<u64, QueueError> {
        let message_id = self.next_message_id();
        let m = NewMessage {
            message_id,
            sender: device_ref(from),
            client_msg_id: 0,
            recipients,
            ttl_ms: 0,
            payload,
            receipt: true,
            group: 0,
        };
        // A receipt waits on nothing but itself: it rides the next write
        // that is due, or the lazy seal (`LAZY_SEAL_MS`), not one of its
        // own. Notices (gaps, devices, groups) are written at once.
        let receipt = matches!(
            kind,
            fb::ReceiptKind::Delivered | fb::ReceiptKind::Read | fb::ReceiptKind::Expired
        );
        let stored = match receipt {
            true => self.engine.append_message_lazy(now_ms, &m)?,
            false => self.engine.append_message(now_ms, &m)?,
        };
        match stored {
            Accepted::Stored { position, seqs } => {
                let meta = Meta {
                    from,
                    to,
                    message_id,
                    at_ms,
                    receipt: Some(kind),
                    pending: u32::try_from(seqs.len()).expect("at most 65,535 recipients"),
                };
                self.stored(position, meta, &seqs);
                Ok(position)
            }
            // Server records are never deduped.
            Accepted::Duplicate { .. } | Accepted::Forgotten => Err(QueueError::NoRecipient),
        }
    }

    pub(super) fn device_ack(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        device: DeviceKey,
        seq: u64,
        cumulative: bool,
    ) {
        let sent = self
            .cursors
            .get(&device)
            .filter(|c| c.conn == reply)
            .map_or(0, |c| c.sent);
        let acked = if seq > sent {
            Err(QueueError::NotDelivered {
                device: device_ref(device),
                seq,
            })
        } else {
            self.request_ack(now_ms, device, seq, cumulative)
        };
        if let Err(QueueError::NotDelivered { .. }) = acked {
            let note = ToConn::Refused {
                code: ErrorCode::NotYourMessage,
                client_msg_id: 0,
            };
            self.send_conn(now_ms, reply, device, Target::Device(device), note);
        } else if acked.is_err() {
            self.anomaly("an ack failed for a reason other than its seq");
        }
    }

    /// Sends ✓✓ for what an ack of `seq` covers to the senders' homes,
    /// and tombstones the messages once those receipts are durable (in ack
    /// order per device). Receipts already requested by an earlier
    /// cumulative ack are not sent again.
    pub(super) fn request_ack(
        &mut self,
        now_ms: u64,
        device: DeviceKey,
        seq: u64,
        cumulative: bool,
    ) -> Result<(), QueueError> {
        let floor = match cumulative {
            true => self.receipted.get(&device).copied().unwrap_or(0),
            false => 0,
        };
        let positions: Vec<u64> = self
            .engine
            .acked_by(device_ref(device), seq, cumulative)?
            .filter(|(s, _)| *s > floor)
            .map(|(_, position)| position)
            .collect();
        if cumulative {
            let through = self.receipted.entry(device).or_default();
            *through = (*through).max(seq);
        }
        let ack = AckRef {
            device,
            id: self.next_ack,
            expiry: false,
        };
        self.next_ack += 1;
        let receipts = self.receipts_for(now_ms, device, &positions, ack);
        let pending = PendingAck {
            id: ack.id,
            seq,
            cumulative,
            receipts,
        };
        self.acks.entry(device).or_default().push_back(pending);
        self.settle_acks(now_ms, device);
        Ok(())
    }

    /// One of the receipts for `device`'s ack `id` is durable.
    /// A receipt that `ack` waits on is durable (or had nobody to go to):
    /// tell the home that waits, the acking device's or the expiring one's.
    pub(super) fn confirm(&mut self, now_ms: u64, ack: AckRef) {
        let note = match ack.expiry {
            true => ToHome::ExpiryStored { id: ack.id },
            false => ToHome::ReceiptStored { ack: ack.id },
        };
        self.send_home(now_ms, ack.device, Target::Device(ack.device), note);
    }

    pub(super) fn receipt_stored(&mut self, now_ms: u64, device: DeviceKey, id: u64) {
        let found = self.acks.get_mut(&device).and_then(|acks| {
            acks.iter_mut()
                .find(|a| a.id == id && a.receipts > 0)
                .map(|a| a.receipts -= 1)
        });
        if found.is_none() {
            return self.anomaly("a receipt was confirmed for an ack nobody waits on");
        }
        self.settle_acks(now_ms, device);
    }

    /// Tombstones the oldest acks whose receipts are all durable.
    pub(super) fn settle_acks(&mut self, now_ms: u64, device: DeviceKey) {
        let mut settled = false;
        while let Some(acks) = self.acks.get_mut(&device) {
            let Some(a) = acks.front().copied().filter(|a| a.receipts == 0) else {
                break;
            };
            acks.pop_front();
            if acks.is_empty() {
                // Every requested ack is settled: what the floor guarded
                // against re-requesting is tombstoned below.
                self.acks.remove(&device);
                self.receipted.remove(&device);
            }
            // Entries acknowledged or expired meanwhile are simply gone
            // (an empty ack); an error means the seq was never given out.
            if self
                .engine
                .ack(device_ref(device), a.seq, a.cumulative)
                .is_err()
            {
                self.anomaly("a settled ack names a seq the queue never gave out");
            }
            settled = true;
        }
        if settled {
            self.pump(now_ms, device);
        }
    }

    /// ✓✓ for acknowledged messages, one receipt per sender (in chunks);
    /// returns how many receipts went out.
    pub(super) fn receipts_for(
        &mut self,
        now_ms: u64,
        device: DeviceKey,
        positions: &[u64],
        ack: AckRef,
    ) -> u32 {
        let mut by_sender: Vec<(DeviceKey, Vec<u64>)> = Vec::new();
        for position in positions {
            let Some(meta) = self.forget_one(device, *position) else {
                continue; // counted and logged
            };
            if meta.receipt.is_some() {
                continue; // receipts get no receipts
            }
            match by_sender.iter_mut().find(|(s, _)| *s == meta.from) {
                Some((_, ids)) => ids.push(meta.message_id),
                None => by_sender.push((meta.from, vec![meta.message_id])),
            }
        }
        let mut sent = 0;
        for (sender, ids) in by_sender {
            for chunk in ids.chunks(RECEIPT_IDS_MAX) {
                let receipt = ToHome::StoreReceipt(Receipt {
                    kind: fb::ReceiptKind::Delivered,
                    message_ids: chunk.to_vec(),
                    at_ms: now_ms,
                    confirm: Some(ack),
                });
                self.send_home(now_ms, device, Target::User(sender.user), receipt);
                sent += 1;
            }
        }
        sent
    }
}
