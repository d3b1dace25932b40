//! This shard as a device's home: storing messages, resuming a device's
//! queue and pumping it through the delivery window.

use bytes::Bytes;
use queue_engine::{Accepted, DeviceRef, NewMessage, QueueError, Storage, read_message};
use shard_router::{ConnRef, DeviceKey, GroupId, Target};
use wire_format::fb::{self, ErrorCode};

use super::devices::{NOTICE_DEVICE, device_notice_note};
use super::gaps::{NOTICE_GAP, gap_note};
use super::groups::{NOTICE_GROUP, notice_note};
use super::{Cursor, Meta, Note, ShardCore, ToConn, ToHome, Waiting, device_key, device_ref};

impl<S: Storage> ShardCore<S> {
    // ---- this shard as home ---------------------------------------------------------

    pub(super) fn at_home(&mut self, now_ms: u64, from: DeviceKey, to: Target, note: Note) {
        let Note::Home(note) = note else {
            return self.anomaly("a note for a connection was routed to a home");
        };
        match note {
            ToHome::Submit {
                reply,
                client_msg_id,
                ttl_s,
                payload,
            } => match to {
                Target::Group(group) => {
                    self.group_send(now_ms, reply, from, group, client_msg_id, ttl_s, &payload)
                }
                _ => self.store_message(now_ms, reply, from, to, client_msg_id, ttl_s, &payload),
            },
            ToHome::Group {
                reply,
                request_id,
                request,
            } => self.group_request(now_ms, from, reply, request_id, request),
            ToHome::GroupCopy(copy) => self.group_copy(now_ms, from, *copy),
            ToHome::CopyStored { token } => self.group_part_done(now_ms, token),
            ToHome::GroupNotice { notice, users } => {
                self.group_notice(now_ms, from, &notice, &users)
            }
            ToHome::StoreReceipt(r) => self.receipt_at_home(from, to, r),
            ToHome::ReceiptStored { ack } => self.receipt_stored(now_ms, from, ack),
            ToHome::ExpiryStored { id } => self.expiry_stored(id),
            ToHome::Resume { reply, after_seq } => self.resume(now_ms, reply, from, after_seq),
            ToHome::DeviceAck {
                reply,
                seq,
                cumulative,
            } => self.device_ack(now_ms, reply, from, seq, cumulative),
            ToHome::Gone { reply, abuse } => {
                // A replaced connection's limits go on to the connection
                // that replaced it (if it is already here), else wait here.
                match (abuse, self.cursors.get(&from)) {
                    (Some(abuse), Some(c)) if c.conn != reply => {
                        let to = Target::Device(from);
                        self.send_conn(now_ms, c.conn, from, to, ToConn::Abuse(abuse));
                    }
                    (Some(abuse), _) => {
                        self.abuse.insert(from, abuse);
                    }
                    (None, _) => {}
                }
                // A connection the device already replaced leaves its cursor.
                if self.cursors.get(&from).is_some_and(|c| c.conn == reply) {
                    self.cursors.remove(&from);
                    self.touch_device(now_ms, from);
                }
            }
            ToHome::Devices { reply, request_id } => {
                self.devices_request(now_ms, from, reply, request_id)
            }
            ToHome::Unlink {
                reply,
                request_id,
                device,
            } => self.unlink_request(now_ms, from, reply, request_id, device),
            ToHome::Settings {
                reply,
                request_id,
                last_seen,
                read_receipts,
            } => self.settings_request(now_ms, from, reply, request_id, last_seen, read_receipts),
            ToHome::Push {
                reply,
                request_id,
                token,
            } => self.push_request(now_ms, from, reply, request_id, token),
        }
    }

    /// The devices a message to `to` is queued for (never the sender's own).
    pub(super) fn recipients(&self, from: DeviceKey, to: Target) -> Vec<DeviceRef> {
        match to {
            Target::User(user) => self
                .devices
                .get(&user)
                .into_iter()
                .flatten()
                .map(|d| DeviceKey { user, device: *d })
                .filter(|d| *d != from)
                .map(device_ref)
                .collect(),
            Target::Device(d) if self.is_registered(d) && d != from => vec![device_ref(d)],
            _ => Vec::new(),
        }
    }

    pub(super) fn is_registered(&self, d: DeviceKey) -> bool {
        self.devices
            .get(&d.user)
            .is_some_and(|ds| ds.contains(&d.device))
    }

    pub(super) fn next_message_id(&self) -> u64 {
        (self.engine.log().head() << 8) | u64::from(self.shard.0 & 0xff)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_message(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        from: DeviceKey,
        to: Target,
        client_msg_id: u64,
        ttl_s: u32,
        payload: &[u8],
    ) {
        if self.failed.is_some() {
            // Fail-stop in progress: nothing more is stored (or ✓'d).
            let note = ToConn::Refused {
                code: ErrorCode::StorageUnavailable,
                client_msg_id,
            };
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
        let recipients = self.recipients(from, to);
        let message_id = self.next_message_id();
        let m = NewMessage {
            message_id,
            sender: device_ref(from),
            client_msg_id,
            recipients: &recipients,
            ttl_ms: u64::from(ttl_s) * 1000,
            payload,
            receipt: false,
            group: 0,
        };
        let refuse = |code| ToConn::Refused {
            code,
            client_msg_id,
        };
        let acked = |message_id, duplicate| ToConn::Acked {
            client_msg_id,
            message_id,
            at_ms: now_ms,
            duplicate,
        };
        let note = match self.engine.append_message(now_ms, &m) {
            Ok(Accepted::Stored { position, seqs }) => {
                self.stats.messages_stored += 1;
                let meta = Meta {
                    from,
                    to,
                    message_id,
                    at_ms: now_ms,
                    receipt: None,
                    pending: u32::try_from(seqs.len()).expect("at most 65,535 recipients"),
                };
                self.stored(position, meta, &seqs);
                let note = acked(message_id, false);
                return self.ack_when_durable(now_ms, reply, from, position, note);
            }
            Ok(Accepted::Duplicate {
                message_id,
                position,
            }) => {
                self.stats.duplicates += 1;
                let note = acked(message_id, true);
                return self.ack_when_durable(now_ms, reply, from, position, note);
            }
            // Stored and durable long ago; the original id is not kept.
            Ok(Accepted::Forgotten) => {
                self.stats.duplicates += 1;
                acked(0, true)
            }
            Err(QueueError::Stale { .. }) => refuse(ErrorCode::RetryTooOld),
            Err(QueueError::QueueFull { .. }) => refuse(ErrorCode::RecipientQueueFull),
            // No such user or device (or only the sender itself).
            Err(QueueError::NoRecipient) => refuse(ErrorCode::InvalidAddress),
            // Fans out to too many devices for one record.
            Err(QueueError::TooLarge { .. }) => refuse(ErrorCode::PayloadTooLarge),
            Err(QueueError::NotDelivered { .. }) => {
                self.anomaly("storing a message was refused as an ack");
                refuse(ErrorCode::Internal)
            }
        };
        self.send_conn(now_ms, reply, from, Target::Device(from), note);
    }

    /// ✓ for the record at `position`, at once if it is durable, else when
    /// the log passes it.
    pub(super) fn ack_when_durable(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        from: DeviceKey,
        position: u64,
        note: ToConn,
    ) {
        if position < self.engine.durable() {
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
        let waiting = Waiting::Ack { reply, from, note };
        self.waiting.push_back((position, waiting));
    }

    /// Bookkeeping for a stored record: its meta, and a pump of each
    /// connected recipient once it is durable (or, for a message to an
    /// offline device with a push token, a wake-up).
    pub(super) fn stored(&mut self, position: u64, meta: Meta, seqs: &[(DeviceRef, u64)]) {
        let message = meta.receipt.is_none();
        self.meta.insert(position, meta);
        for (device, _) in seqs {
            let device = device_key(*device);
            if self.cursors.contains_key(&device) {
                self.waiting.push_back((position, Waiting::Pump(device)));
            } else if message && self.wants_wake(device) {
                self.waiting.push_back((position, Waiting::Wake(device)));
            }
        }
    }

    pub(super) fn resume(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        device: DeviceKey,
        after_seq: u64,
    ) {
        if let Some(retry_after_ms) = self.ban_left(now_ms, device.user) {
            let note = ToConn::Close {
                code: ErrorCode::Banned,
                retry_after_ms,
            };
            let end = self.engine.log().head().saturating_sub(1);
            return self.ack_when_durable(now_ms, reply, device, end, note);
        }
        if let Err(code) = self.admit_device(now_ms, device) {
            let note = ToConn::Refused {
                code,
                client_msg_id: 0,
            };
            // Refused for what the log says, once it says so durably.
            let end = self.engine.log().head().saturating_sub(1);
            return self.ack_when_durable(now_ms, reply, device, end, note);
        }
        self.wakes.cancel(device);
        let dref = device_ref(device);
        // A resume point past the queue's end is no ack (the client's state
        // is not this server's): resume from the start of what is queued,
        // and say so in Welcome, rather than hold back what is below it.
        let resume_seq = match after_seq <= self.engine.queue_end(dref) {
            true => after_seq,
            false => 0,
        };
        // The resume point is an ack the last connection may not have
        // delivered: take it as one (✓✓ to the senders).
        if resume_seq > 0 && self.request_ack(now_ms, device, resume_seq, true).is_err() {
            self.anomaly("a resume point inside the queue was refused as an ack");
        }
        // Entries acknowledged already wait in the queue until their ✓✓ is
        // durable: a resume point below them (a client that lost its place)
        // neither counts them nor gets them again.
        let acked = resume_seq.max(self.receipted.get(&device).copied().unwrap_or(0));
        let backlog = self.engine.queued_after(dref, acked);
        let backlog_count = u32::try_from(backlog).unwrap_or(u32::MAX);
        let cursor = Cursor {
            conn: reply,
            sent: acked,
        };
        self.cursors.insert(device, cursor);
        // Entries appended before this cursor existed and not yet durable
        // had no pump waiting for them: one for the end of the log.
        let head = self.engine.log().head();
        if self.engine.durable() < head {
            self.waiting.push_back((head - 1, Waiting::Pump(device)));
        }
        let welcome = ToConn::Welcome {
            backlog_count,
            resume_seq,
            read_receipts: self.read_receipts_on(device.user),
            abuse: self.abuse.remove(&device),
        };
        self.send_conn(now_ms, reply, device, Target::Device(device), welcome);
        self.pump(now_ms, device);
    }

    /// Sends `device` its next durable entries while its window has room:
    /// the entries that fit are taken from the queue in one pass, then
    /// sent in order.
    pub(super) fn pump(&mut self, now_ms: u64, device: DeviceKey) {
        let dref = device_ref(device);
        let Some(cursor) = self.cursors.get(&device).copied() else {
            return;
        };
        let in_flight = self.engine.queued_through(dref, cursor.sent);
        let room = self.config.window.saturating_sub(in_flight);
        if room == 0 {
            return;
        }
        let mut batch = std::mem::take(&mut self.pump_batch);
        batch.clear();
        batch.extend(self.engine.backlog(dref, cursor.sent).take(room));
        for &(seq, position) in &batch {
            // A record that cannot be read failed the shard: stop here
            // rather than skip it (the process exits and recovery replays).
            let Some((from, to, note)) = self.entry_note(device, seq, position) else {
                break;
            };
            self.send_conn(now_ms, cursor.conn, from, to, note);
            // Sending never moves the cursor but by this loop; stop if it
            // was dropped (the connection went) all the same.
            match self.cursors.get_mut(&device) {
                Some(c) if c.conn == cursor.conn => c.sent = seq,
                _ => break,
            }
        }
        self.pump_batch = batch;
    }

    /// The note that delivers entry `seq` (record at `position`) to `device`.
    pub(super) fn entry_note(
        &mut self,
        device: DeviceKey,
        seq: u64,
        position: u64,
    ) -> Option<(DeviceKey, Target, ToConn)> {
        let cached = match (
            self.meta.get(position),
            self.engine.recent_payload(position),
        ) {
            (Some(meta), Some(payload)) => Some((*meta, payload.clone())),
            _ => None,
        };
        let (meta, payload) = match cached {
            Some(found) => found,
            None => self.read_back(device, position)?,
        };
        let note = match meta.receipt {
            Some(kind) if kind.0 == NOTICE_DEVICE => {
                let Some(note) = device_notice_note(&payload, seq, device, meta.from) else {
                    self.anomaly("a stored device notice does not decode");
                    return None;
                };
                note
            }
            Some(kind) if kind.0 == NOTICE_GAP => {
                let Some(note) = gap_note(&payload, seq) else {
                    self.anomaly("a stored gap notice does not decode");
                    return None;
                };
                note
            }
            Some(kind) if kind.0 == NOTICE_GROUP => {
                let Some(note) = notice_note(&payload, seq, device, meta.from) else {
                    self.anomaly("a stored group notice does not decode");
                    return None;
                };
                note
            }
            None => ToConn::Message {
                seq,
                message_id: meta.message_id,
                at_ms: meta.at_ms,
                payload,
            },
            Some(kind) => ToConn::Receipt {
                seq,
                kind,
                message_ids: receipt_ids(&payload),
                at_ms: meta.at_ms,
            },
        };
        let to = match meta.receipt {
            Some(_) => Target::Device(device),
            None => meta.to,
        };
        Some((meta.from, to, note))
    }

    /// Reads a record the memory no longer holds (older than this process,
    /// or out of the recent-payload cache).
    /// A read that fails is an I/O error on the log, and as fail-stop as a
    /// failed write: the shard is marked failed (the shell exits) and
    /// nothing is skipped meanwhile.
    pub(super) fn read_back(&mut self, device: DeviceKey, position: u64) -> Option<(Meta, Bytes)> {
        let stored = match read_message(&self.engine, &self.reader, position) {
            Ok(stored) => stored,
            Err(error) => {
                let why = format!(
                    "shard {}: log read at {position} failed: {error}",
                    self.shard.0
                );
                tracing::error!("{why}");
                self.failed.get_or_insert(why);
                return None;
            }
        };
        let receipt = stored
            .receipt
            .then(|| stored.payload.first().map(|k| fb::ReceiptKind(*k)))
            .flatten();
        let to = match stored.group {
            0 => Target::User(device.user),
            group => Target::Group(GroupId(group)),
        };
        let meta = Meta {
            from: device_key(stored.sender),
            to,
            message_id: stored.message_id,
            at_ms: stored.accepted_ms,
            receipt,
            pending: 0,
        };
        Some((meta, Bytes::from(stored.payload)))
    }
}

impl<S: Storage> ShardCore<S> {
    /// One of the recipient devices of the record at `position` is done
    /// with it (acked or expired): what is known of it, and its meta is
    /// forgotten with its last recipient.
    pub(super) fn forget_one(&mut self, device: DeviceKey, position: u64) -> Option<Meta> {
        let Some(meta) = self.meta.get_mut(position) else {
            return self.read_back(device, position).map(|(meta, _)| meta);
        };
        let Some(pending) = meta.pending.checked_sub(1) else {
            self.anomaly("more acks than recipients for a record");
            return None;
        };
        meta.pending = pending;
        let m = *meta;
        if pending == 0 {
            self.meta.remove(position);
        }
        Some(m)
    }
}

/// The message ids in a stored receipt's payload (kind byte, then ids).
pub(super) fn receipt_ids(payload: &[u8]) -> Vec<u64> {
    payload
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}
