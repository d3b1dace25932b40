//! Acks and receipts: what a device's ack covers, ✓✓ to the senders'
//! homes, and tombstones once those receipts are durable.

use super::*;

impl<S: Storage> ShardCore<S> {
    pub(super) fn store_receipt(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        to: Target,
        kind: fb::ReceiptKind,
        message_ids: &[u64],
        at_ms: u64,
    ) -> Option<u64> {
        let recipients = match to {
            Target::Device(d) if self.is_registered(d) => vec![device_ref(d)],
            Target::Device(d) => self.recipients(from, Target::User(d.user)),
            _ => self.recipients(from, to),
        };
        let message_id = self.next_message_id();
        let mut payload = Vec::with_capacity(1 + 8 * message_ids.len());
        payload.push(kind.0);
        for id in message_ids {
            payload.extend_from_slice(&id.to_le_bytes());
        }
        let m = NewMessage {
            message_id,
            sender: device_ref(from),
            client_msg_id: 0,
            recipients: &recipients,
            ttl_ms: 0,
            payload: &payload,
            receipt: true,
        };
        if let Ok(Accepted::Stored { position, seqs }) = self.engine.append_message(now_ms, &m) {
            let meta = Meta {
                from,
                to,
                message_id,
                at_ms,
                receipt: Some(kind),
                pending: u32::try_from(seqs.len()).unwrap_or(u32::MAX),
            };
            self.stored(position, meta, &seqs);
            return Some(position);
        }
        None
    }

    /// Tells the acking device's home when the receipt at `stored` is
    /// durable (at once if nothing was stored: nobody to tell).
    pub(super) fn confirm_when_durable(&mut self, now_ms: u64, ack: AckRef, stored: Option<u64>) {
        match stored {
            Some(position) => self.waiting.push_back((position, Waiting::Confirm(ack))),
            None => {
                let note = ToHome::ReceiptStored { seq: ack.seq };
                let to = Target::Device(ack.device);
                self.to_home(now_ms, ack.device, to, note);
            }
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
        match acked {
            Ok(()) => {}
            Err(_) => {
                let note = ToConn::Refused {
                    code: ErrorCode::NotYourMessage,
                    client_msg_id: 0,
                };
                self.to_conn(now_ms, reply, device, Target::Device(device), note);
            }
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
        let ack = AckRef { device, seq };
        let receipts = self.receipts_for(now_ms, device, &positions, ack);
        let pending = PendingAck {
            seq,
            cumulative,
            receipts,
        };
        self.acks.entry(device).or_default().push_back(pending);
        self.settle_acks(now_ms, device);
        Ok(())
    }

    /// One of the receipts for `device`'s ack `seq` is durable.
    pub(super) fn receipt_stored(&mut self, now_ms: u64, device: DeviceKey, seq: u64) {
        let Some(acks) = self.acks.get_mut(&device) else {
            return;
        };
        if let Some(a) = acks.iter_mut().find(|a| a.seq == seq && a.receipts > 0) {
            a.receipts -= 1;
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
            // Already acknowledged or expired meanwhile: nothing to do.
            let _ = self.engine.ack(device_ref(device), a.seq, a.cumulative);
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
            let meta = match self.meta.get_mut(position) {
                Some(meta) => {
                    meta.pending = meta.pending.saturating_sub(1);
                    let m = *meta;
                    if m.pending == 0 {
                        self.meta.remove(position);
                    }
                    m
                }
                None => match self.read_back(device, *position) {
                    Some((meta, _)) => meta,
                    None => continue,
                },
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
            for chunk in ids.chunks(256) {
                let receipt = ToHome::StoreReceipt {
                    kind: fb::ReceiptKind::Delivered,
                    message_ids: chunk.to_vec(),
                    at_ms: now_ms,
                    confirm: Some(ack),
                };
                self.to_home(now_ms, device, Target::User(sender.user), receipt);
                sent += 1;
            }
        }
        sent
    }
}
