//! [`Engine`]: one shard's queue engine, the [`Log`] plus the in-memory
//! index it implies, as a sans-IO state machine with time passed in.
//!
//! * Per-device queues of `(seq, position)` entries, ordered by a per-device
//!   sequence number, with a count and byte limit per device.
//! * One message record serves every recipient (group fan-out from one
//!   stored copy); a reference count per record says when it is dead.
//! * Dedup of client retries by `(sender device, client message id)`: a
//!   sliding window per sender device ([`SenderWindows`]), so its memory
//!   grows with devices, not messages.
//! * Every change is a record appended to the log; [`Engine::open`]
//!   rebuilds the same index by replaying them ([`Engine::apply`] is the one
//!   function both paths use).
//! * Reclaim: when the log holds more than twice its live bytes plus a
//!   segment, the oldest segment's live records are copied forward (a
//!   message with only its live recipients, the dedup window of each sender
//!   whose ids would leave with the segment, device seq floors, group
//!   records) and the
//!   segment is deleted once the copies are durable. A long-offline device
//!   therefore never pins old segments.
//!
//! Durability is the caller's to wait for: a change is durable once
//! [`Engine::durable`] is past the position it returned. The gateway answers
//! ✓ and delivers only then.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use crate::dedup::{Seen, SenderWindows};
use crate::log::{Flush, Log, LogConfig};
use crate::recent::RecentPayloads;
use crate::record::{
    DeathReason, DeviceLife, DeviceRef, MessageRecord, Recipient, Record, SettingKey, Tombstone,
    WINDOW_RECORD_LEN, WindowRecord,
};
use crate::recovery::{Recovered, RecoveryError, recover};
use crate::split_map::SplitMap;
use crate::storage::Storage;

/// 30 days, the default and largest TTL.
pub const TTL_MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// Limits of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Segment and batch sizes.
    pub log: LogConfig,
    /// Most messages queued for one device.
    pub queue_messages_max: usize,
    /// Most receipts (✓✓, read, expired) queued for one device, apart
    /// from its messages.
    pub queue_receipts_max: usize,
    /// Most payload bytes queued for one device.
    pub queue_bytes_max: u64,
    /// TTL of a message that states none.
    pub ttl_default_ms: u64,
    /// Largest TTL; longer ones are clamped.
    pub ttl_max_ms: u64,
    /// Bytes of recent payloads kept in memory for devices that reconnect
    /// soon after (0: none).
    pub payload_cache_bytes: usize,
    /// How long the original id of a stored send is kept for answering its
    /// retries (the dedup window's time backstop), ms.
    pub dedup_ids_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            queue_messages_max: 10_000,
            queue_receipts_max: 10_000,
            queue_bytes_max: 64 << 20,
            ttl_default_ms: TTL_MAX_MS,
            ttl_max_ms: TTL_MAX_MS,
            payload_cache_bytes: 16 << 20,
            dedup_ids_ms: 3_600_000,
        }
    }
}

/// Why a change was refused. Nothing was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A recipient device's queue is at its limit (`RecipientQueueFull`).
    #[error("queue of {device:?} is full")]
    QueueFull {
        /// The device.
        device: DeviceRef,
    },
    /// An ack for a seq never given to the device (`NotYourMessage`).
    #[error("{device:?} never received seq {seq}")]
    NotDelivered {
        /// The device.
        device: DeviceRef,
        /// The seq it named.
        seq: u64,
    },
    /// A message with no recipient device.
    #[error("no recipient")]
    NoRecipient,
    /// A retry below its sender's dedup window (`RetryTooOld`): the client
    /// broke its promise; nothing is stored.
    #[error("client id {client_msg_id} of {sender:?} is below its dedup window")]
    Stale {
        /// The sender.
        sender: DeviceRef,
        /// The id it retried.
        client_msg_id: u64,
    },
    /// The record (payload plus 20 bytes per recipient) would exceed the
    /// log's record limit.
    #[error("a record of {bytes} bytes exceeds the record limit")]
    TooLarge {
        /// Bytes the record would take.
        bytes: usize,
    },
}

/// A message to store.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Server-wide id, chosen by the caller.
    pub message_id: u64,
    /// The sending device.
    pub sender: DeviceRef,
    /// The sender's id for it.
    pub client_msg_id: u64,
    /// Every recipient device (one entry each).
    pub recipients: &'a [DeviceRef],
    /// Requested TTL; 0 = the default.
    pub ttl_ms: u64,
    /// The opaque payload.
    pub payload: &'a [u8],
    /// A receipt the server queues (a record of its own kind, never
    /// deduped), not a client's message.
    pub receipt: bool,
    /// The group it was sent to, or 0.
    pub group: u64,
}

/// The outcome of [`Engine::append_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored at `position`; durable once [`Engine::durable`] is past it.
    Stored {
        /// Log position of the record.
        position: u64,
        /// The seq given to each recipient device.
        seqs: Vec<(DeviceRef, u64)>,
    },
    /// A retry of `message_id` (stored at `position`): answer with the
    /// original once that is durable.
    Duplicate {
        /// The original message id.
        message_id: u64,
        /// Its position.
        position: u64,
    },
    /// A retry of a send stored longer ago than the backstop: stored (and
    /// durable), its id no longer known.
    Forgotten,
}

/// A queue entry that died without being acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The device whose entry expired.
    pub device: DeviceRef,
    /// Its seq.
    pub seq: u64,
    /// The message record (the shell reads sender and id for the receipt).
    pub position: u64,
}

/// One queue entry: 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) position: u64,
    /// The payload's length, and [`RECEIPT_BIT`] for a receipt's entry.
    pub(crate) len_and_kind: u32,
    /// Seconds since the Unix epoch, rounded up (never early).
    pub(crate) expires_s: u32,
}

/// Set in [`Entry::len_and_kind`] for a receipt (records are below 1 MiB).
const RECEIPT_BIT: u32 = 1 << 31;
/// Set in [`Entry::len_and_kind`] for a group message (its record holds
/// the group id too).
const GROUP_BIT: u32 = 1 << 30;

impl Entry {
    pub(crate) fn payload_len(&self) -> u32 {
        self.len_and_kind & !(RECEIPT_BIT | GROUP_BIT)
    }

    /// Bytes of its record when it is the record's only entry.
    pub(crate) fn record_len(&self) -> u64 {
        let group = self.len_and_kind & GROUP_BIT != 0;
        let payload_len = self.payload_len() as usize;
        crate::record::message_len(1, payload_len, group) as u64
    }

    pub(crate) fn is_receipt(&self) -> bool {
        self.len_and_kind & RECEIPT_BIT != 0
    }

    fn expired(&self, now_ms: u64) -> bool {
        u64::from(self.expires_s) * 1000 <= now_ms
    }
}

/// The index range of `entries` (sorted by seq) with `from <= seq <= to`.
fn seq_range(entries: &VecDeque<Entry>, from: u64, to: u64) -> std::ops::Range<usize> {
    entries.partition_point(|e| e.seq < from)..entries.partition_point(|e| e.seq <= to)
}

/// Bytes of a message record: what a single-recipient record costs on
/// disk, derived rather than stored.
fn message_record_len(m: &MessageRecord<'_>, recipients: usize) -> u64 {
    crate::record::message_len(recipients, m.payload.len(), m.group != 0) as u64
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) entries: VecDeque<Entry>,
    pub(crate) next_seq: u64,
    pub(crate) bytes: u64,
    /// Entries that are receipts (their own budget; `bytes` counts
    /// messages' payloads only).
    pub(crate) receipts: usize,
    /// The expiry (s) this queue is filed under in [`Engine`]'s expiry
    /// heap: at most its earliest entry's (`u32::MAX`: not filed).
    pub(crate) expiry_key: u32,
    /// Entries' expiries never decrease along the queue (one TTL, entries
    /// appended in order): the expired ones are then a prefix.
    pub(crate) expiry_sorted: bool,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            receipts: 0,
            expiry_key: u32::MAX,
            expiry_sorted: true,
        }
    }
}

impl Queue {
    /// Takes the entries expired by `now_ms` (without removing them) and
    /// returns the earliest expiry left (`u32::MAX`: none).
    fn due(&self, now_ms: u64, device: DeviceRef, out: &mut Vec<Expired>) -> u32 {
        let expired = |e: &Entry| Expired {
            device,
            seq: e.seq,
            position: e.position,
        };
        if self.expiry_sorted {
            let n = self.entries.partition_point(|e| e.expired(now_ms));
            out.extend(self.entries.range(..n).map(expired));
            return self.entries.get(n).map_or(u32::MAX, |e| e.expires_s);
        }
        let mut next = u32::MAX;
        for e in &self.entries {
            match e.expired(now_ms) {
                true => out.push(expired(e)),
                false => next = next.min(e.expires_s),
            }
        }
        next
    }
}

/// A message record referenced by several queue entries (fan-out). A
/// record with one recipient needs none: its entry is its only reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared {
    pub(crate) refs: u32,
    pub(crate) record_len: u32,
}

/// A segment whose live records were copied forward: delete it once
/// [`Engine::durable`] reaches `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The segment to delete.
    pub segment: u64,
    /// The copies are durable once the log is durable up to here.
    pub after: u64,
    /// Message records that moved: (old position, new position); new
    /// position 0 when only the dedup entry was kept.
    pub moved: Vec<(u64, u64)>,
}

/// The queue engine of one shard.
#[derive(Debug)]
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) log: Log,
    pub(crate) queues: SplitMap<DeviceRef, Queue>,
    pub(crate) shared: SplitMap<u64, Shared>,
    /// Message records still referenced.
    pub(crate) live_records: usize,
    pub(crate) windows: SenderWindows,
    /// Queues by their earliest expiry (s): (key, device), earliest first;
    /// an entry whose key is no longer its queue's is skipped.
    pub(crate) expiry: BinaryHeap<Reverse<(u32, DeviceRef)>>,
    /// Queues [`Engine::expire`] looked into, ever.
    pub(crate) expiry_visits: u64,
    /// Queues filed in `expiry` (their key is not `u32::MAX`); the heap is
    /// rebuilt when stale entries outnumber them.
    pub(crate) expiry_filed: usize,
    /// Group records by replay order.
    pub(crate) group_records: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Where the live copy of each group record is (by replay order):
    /// reclaim copies only that one forward, so copies never multiply.
    pub(crate) group_at: FxHashMap<u64, u64>,
    /// The latest device record of each device: (position, length).
    pub(crate) device_records: FxHashMap<DeviceRef, (u64, u64)>,
    /// Each device's latest life record, with its position and length.
    pub(crate) lives: FxHashMap<DeviceRef, (DeviceLife, u64, u64)>,
    /// Each setting's latest value, with its position and length.
    pub(crate) settings: FxHashMap<SettingKey, (Vec<u8>, u64, u64)>,
    /// Bytes of records still needed: live messages, and device, group and
    /// dedup records (the latest copy of each).
    pub(crate) live_bytes: u64,
    pub(crate) recent: RecentPayloads,
}

impl Engine {
    /// Opens the log in `storage` and rebuilds the index from it as of
    /// `now_ms` (dedup originals older than the backstop are forgotten):
    /// from its checkpoint and the log after it when the checkpoint is
    /// usable, else from the whole log (`recovery.rs`, rows 7–11).
    pub fn open(
        storage: &mut impl Storage,
        config: EngineConfig,
        now_ms: u64,
    ) -> Result<(Self, Recovered), RecoveryError> {
        if let Some(opened) = Self::open_from_checkpoint(storage, config, now_ms)? {
            return Ok(opened);
        }
        let mut engine = Self::empty(config);
        let found = recover(storage, &config.log, |position, len, record| {
            engine.apply(position, len, &record)
        })?;
        engine.resume(&found, now_ms);
        Ok((engine, found))
    }

    /// Rows 8–11: the checkpoint and the log after it, or `None` (then the
    /// whole log is replayed).
    fn open_from_checkpoint(
        storage: &mut impl Storage,
        config: EngineConfig,
        now_ms: u64,
    ) -> Result<Option<(Self, Recovered)>, RecoveryError> {
        let Some(bytes) = storage.read_checkpoint()? else {
            return Ok(None);
        };
        let mut engine = Self::empty(config);
        let Some(position) = engine.restore(&bytes) else {
            return Ok(None); // torn (row 8)
        };
        drop(bytes);
        let replay = crate::recovery::recover_from(storage, &config.log, position, |p, l, r| {
            engine.apply(p, l, &r)
        })?;
        let Ok(mut found) = replay else {
            return Ok(None); // stale or past the end (rows 9, 10)
        };
        found.checkpoint = Some(position);
        engine.resume(&found, now_ms);
        Ok(Some((engine, found)))
    }

    fn empty(config: EngineConfig) -> Self {
        Self {
            config,
            log: Log::resume(config.log, Vec::new(), 0),
            queues: SplitMap::default(),
            shared: SplitMap::default(),
            live_records: 0,
            windows: SenderWindows::new(config.dedup_ids_ms),
            expiry: BinaryHeap::new(),
            expiry_visits: 0,
            expiry_filed: 0,
            group_records: std::collections::BTreeMap::new(),
            group_at: FxHashMap::default(),
            device_records: FxHashMap::default(),
            lives: FxHashMap::default(),
            settings: FxHashMap::default(),
            live_bytes: 0,
            recent: RecentPayloads::new(config.payload_cache_bytes),
        }
    }

    /// After the replay: the log goes on where it ends.
    fn resume(&mut self, found: &Recovered, now_ms: u64) {
        self.log = Log::resume(self.config.log, found.segments.clone(), found.head);
        self.windows.expire(now_ms);
    }

    // ---- changes ------------------------------------------------------------

    /// Stores a message for every recipient device, or says why not. Its
    /// batch is due at once: someone waits on it (a sender's ✓).
    pub fn append_message(
        &mut self,
        now_ms: u64,
        m: &NewMessage<'_>,
    ) -> Result<Accepted, QueueError> {
        self.append_message_as(now_ms, m, false)
    }

    /// [`Engine::append_message`] for a record no one waits on to go on (a
    /// receipt: ✓✓, read, expired): it rides the next batch that is due,
    /// or waits for [`Engine::seal_lazy`], instead of making a batch due
    /// by itself, so a receipt costs no write of its own. It is durable,
    /// and visible, once [`Engine::durable`] is past its position, as any.
    pub fn append_message_lazy(
        &mut self,
        now_ms: u64,
        m: &NewMessage<'_>,
    ) -> Result<Accepted, QueueError> {
        self.append_message_as(now_ms, m, true)
    }

    fn append_message_as(
        &mut self,
        now_ms: u64,
        m: &NewMessage<'_>,
        lazy: bool,
    ) -> Result<Accepted, QueueError> {
        let seen = match m.receipt {
            true => Seen::New,
            false => self.windows.check(m.sender, m.client_msg_id),
        };
        match seen {
            Seen::New => {}
            Seen::Duplicate {
                message_id,
                position,
            } => {
                return Ok(Accepted::Duplicate {
                    message_id,
                    position,
                });
            }
            Seen::Forgotten => return Ok(Accepted::Forgotten),
            Seen::Stale => {
                return Err(QueueError::Stale {
                    sender: m.sender,
                    client_msg_id: m.client_msg_id,
                });
            }
        }
        // A group message may have no recipient here: its record still
        // holds its id and dedup entry (its payload then is usually empty).
        if m.recipients.is_empty() && m.group == 0 {
            return Err(QueueError::NoRecipient);
        }
        let bytes = crate::record::message_len(m.recipients.len(), m.payload.len(), m.group != 0);
        if bytes > crate::record::RECORD_BYTES_MAX || m.recipients.len() > usize::from(u16::MAX) {
            return Err(QueueError::TooLarge { bytes });
        }
        for device in m.recipients {
            self.check_room(*device, m.payload.len() as u64, m.receipt)?;
        }
        let ttl_ms = if m.ttl_ms == 0 {
            self.config.ttl_default_ms
        } else {
            m.ttl_ms
        };
        let recipients: Vec<Recipient> = m
            .recipients
            .iter()
            .map(|device| Recipient {
                device: *device,
                seq: self.queue(*device).next_seq.max(1),
            })
            .collect();
        let record = Record::Message(MessageRecord {
            receipt: m.receipt,
            group: m.group,
            message_id: m.message_id,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            accepted_ms: now_ms,
            expires_ms: now_ms + ttl_ms.min(self.config.ttl_max_ms),
            recipients,
            payload: m.payload,
        });
        let position = match lazy {
            true => self.append_lazy(&record),
            false => self.append(&record),
        };
        self.recent.insert(position, m.payload);
        let Record::Message(stored) = record else {
            unreachable!()
        };
        Ok(Accepted::Stored {
            position,
            seqs: stored
                .recipients
                .iter()
                .map(|r| (r.device, r.seq))
                .collect(),
        })
    }

    /// `device` acknowledges `seq` (and, if `cumulative`, everything
    /// before). Returns the positions of the messages acknowledged (for ✓✓),
    /// empty if they were already.
    pub fn ack(
        &mut self,
        device: DeviceRef,
        seq: u64,
        cumulative: bool,
    ) -> Result<Vec<u64>, QueueError> {
        let (queue, range) = self.ack_range(device, seq, cumulative)?;
        let Some(first) = queue.entries.get(range.start).filter(|_| !range.is_empty()) else {
            return Ok(Vec::new()); // already acked or expired
        };
        let seq_from = if cumulative { first.seq } else { seq };
        let positions = queue.entries.range(range).map(|e| e.position).collect();
        let tombstone = Tombstone {
            device,
            seq_from,
            seq_to: seq,
            reason: DeathReason::Acked,
        };
        self.append_lazy(&Record::Tombstone(tombstone));
        Ok(positions)
    }

    /// What [`Engine::ack`] with the same arguments would acknowledge, as
    /// `(seq, position)`, without acknowledging it (so ✓✓ can be made
    /// durable first).
    pub fn acked_by(
        &self,
        device: DeviceRef,
        seq: u64,
        cumulative: bool,
    ) -> Result<impl Iterator<Item = (u64, u64)> + '_, QueueError> {
        let (queue, range) = self.ack_range(device, seq, cumulative)?;
        Ok(queue.entries.range(range).map(|e| (e.seq, e.position)))
    }

    /// The queue of `device` and the entries an ack of `seq` covers.
    fn ack_range(
        &self,
        device: DeviceRef,
        seq: u64,
        cumulative: bool,
    ) -> Result<(&Queue, std::ops::Range<usize>), QueueError> {
        let queue = self.queues.get(&device);
        let Some(queue) = queue.filter(|q| seq != 0 && seq < q.next_seq) else {
            return Err(QueueError::NotDelivered { device, seq });
        };
        let from = if cumulative { 0 } else { seq };
        Ok((queue, seq_range(&queue.entries, from, seq)))
    }

    /// Records that `device` exists (its queue starts empty).
    pub fn register_device(&mut self, now_ms: u64, device: DeviceRef) -> u64 {
        let next_seq = self.queue(device).next_seq;
        let record = Record::Device {
            device,
            registered_ms: now_ms,
            next_seq,
        };
        self.append(&record)
    }

    /// Records `life` as the device's latest (linked, active, unlinked).
    pub fn set_life(&mut self, life: DeviceLife) -> u64 {
        self.append(&Record::Life(life))
    }

    /// The device's latest life record, if it has one (devices linked
    /// before life records existed have none).
    pub fn life(&self, device: DeviceRef) -> Option<DeviceLife> {
        self.lives.get(&device).map(|l| l.0)
    }

    /// Every device's latest life record.
    pub fn lives(&self) -> impl Iterator<Item = DeviceLife> + '_ {
        self.lives.values().map(|l| l.0)
    }

    /// Records `value` as the latest of setting `key` (durable once the
    /// log passes the returned position).
    pub fn set_setting(&mut self, key: SettingKey, value: &[u8]) -> u64 {
        self.append(&Record::Setting { key, value })
    }

    /// The latest value of setting `key`, if it was ever set.
    pub fn setting(&self, key: SettingKey) -> Option<&[u8]> {
        self.settings.get(&key).map(|s| s.0.as_slice())
    }

    /// Every setting's latest value.
    pub fn settings(&self) -> impl Iterator<Item = (SettingKey, &[u8])> + '_ {
        self.settings.iter().map(|(k, s)| (*k, s.0.as_slice()))
    }

    /// Appends an opaque group membership record (the router's).
    pub fn append_group_record(&mut self, bytes: &[u8]) -> u64 {
        let order = self.log.head();
        self.append(&Record::Group { order, bytes })
    }

    /// Expires every queue entry whose TTL has passed, writing tombstones,
    /// and forgets original ids past the dedup backstop. Returns the
    /// expired entries (for "expired" receipts to the senders).
    /// Only queues whose earliest expiry has passed are looked at (an
    /// ordered heap of queues, not a pass over every entry).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Expired> {
        let expired = self.take_expired(now_ms);
        self.tombstone_expired(&expired);
        expired
    }

    /// The first half of [`Engine::expire`]: the index forgets every entry
    /// whose TTL has passed, and returns them, without writing their
    /// tombstones yet, so a shell can append what must be durable no later
    /// than they are (a notice to the device) first. Call
    /// [`Engine::tombstone_expired`] with them next, in the same turn; if
    /// that is lost in a crash, recovery finds them again and they expire
    /// again.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Expired> {
        self.windows.expire(now_ms);
        let mut expired = Vec::new();
        while let Some(&Reverse((at, device))) = self.expiry.peek() {
            if u64::from(at) * 1000 > now_ms {
                break;
            }
            self.expiry.pop();
            let Some(queue) = self.queues.get_mut(&device) else {
                continue;
            };
            if queue.expiry_key != at {
                continue; // filed again under an earlier key since
            }
            self.expiry_visits += 1;
            let next = queue.due(now_ms, device, &mut expired);
            queue.expiry_key = next;
            match next {
                u32::MAX => self.expiry_filed -= 1,
                _ => self.expiry.push(Reverse((next, device))),
            }
        }
        if self.expiry.len() > 2 * self.expiry_filed + 1024 {
            let queues = &self.queues;
            self.expiry
                .retain(|Reverse((at, d))| queues.get(d).is_some_and(|q| q.expiry_key == *at));
        }
        expired
    }

    /// Takes `expired` (from [`Engine::take_expired`]) out of their queues
    /// now, ahead of their tombstones ([`Engine::tombstone_expired`]), which
    /// a shell may hold back until the senders' `Expired` receipts are
    /// durable: meanwhile nothing delivers, counts or acknowledges them.
    /// A crash before the tombstones brings them back; they expire again.
    /// Reclaim must wait for the tombstones (their records look dead).
    pub fn hide_expired(&mut self, expired: &[Expired]) {
        for e in expired {
            self.apply_tombstone(&Tombstone {
                device: e.device,
                seq_from: e.seq,
                seq_to: e.seq,
                reason: DeathReason::Expired,
            });
        }
    }

    /// The second half of [`Engine::expire`]: the tombstones of `expired`.
    pub fn tombstone_expired(&mut self, expired: &[Expired]) {
        for e in expired {
            let t = Tombstone {
                device: e.device,
                seq_from: e.seq,
                seq_to: e.seq,
                reason: DeathReason::Expired,
            };
            self.append_lazy(&Record::Tombstone(t));
        }
    }

    /// Appends `record` to the log and applies it to the index.
    fn append(&mut self, record: &Record<'_>) -> u64 {
        let position = self.log.append(record);
        self.apply(position, self.log.head() - position, record);
        position
    }

    /// [`Engine::append`] for a record nobody waits on to go on (a
    /// tombstone: lost in a crash, its entries are delivered again or
    /// expire again; a receipt): it rides the next batch that is due
    /// ([`Log::append_lazy`]).
    fn append_lazy(&mut self, record: &Record<'_>) -> u64 {
        let position = self.log.append_lazy(record);
        self.apply(position, self.log.head() - position, record);
        position
    }

    // ---- reclaim ------------------------------------------------------------

    /// Bytes the log occupies, from its oldest segment to its head.
    pub fn log_bytes(&self) -> u64 {
        self.log.head() - self.log.segments()[0]
    }

    /// Bytes of records still needed.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The oldest segment, if reclaiming it is due: the log holds more than
    /// twice the live bytes plus one segment, and it is not the active one.
    pub fn reclaim_due(&self) -> Option<u64> {
        let segments = self.log.segments();
        let limit = 2 * self.live_bytes + self.config.log.segment_bytes_max;
        let due = segments.len() >= 2 && self.log_bytes() > limit;
        // Only a segment whose every byte is durable (its last batch may
        // still be waiting after a roll).
        (due && self.log.durable() >= segments[1]).then(|| segments[0])
    }

    /// Copies the live records of the oldest segment `segment` (its bytes,
    /// as the shell read them) to the head of the log. Delete the segment
    /// once the copies are durable, then call [`Engine::segment_deleted`].
    /// In one go: [`reclaim_scan`], [`Engine::reclaim_part`] and
    /// [`Engine::reclaim_finish`] do the same in steps a shell can spread
    /// over several turns (and the scan over another thread).
    pub fn reclaim(&mut self, segment: u64, bytes: &[u8]) -> Result<Reclaimed, RecoveryError> {
        let records = reclaim_scan(segment, bytes)?;
        let mut state = ReclaimState::default();
        self.reclaim_part(segment, bytes, &records, &mut state);
        Ok(self.reclaim_finish(segment, state))
    }

    /// Copies forward what is still needed of `records` (from
    /// [`reclaim_scan`] of `bytes`, segment `segment`'s contents). Other
    /// changes may come between two parts.
    pub fn reclaim_part(
        &mut self,
        segment: u64,
        bytes: &[u8],
        records: &[(u64, u64)],
        state: &mut ReclaimState,
    ) {
        assert_eq!(Some(&segment), self.log.segments().first(), "oldest first");
        assert!(self.log.segments().len() >= 2, "never the active segment");
        assert!(
            self.log.durable() >= self.log.segments()[1],
            "the segment is fully durable"
        );
        for &(position, _) in records {
            let at = usize::try_from(position - segment).expect("inside the segment");
            // `reclaim_scan` checksummed every record of these bytes.
            let (record, _) = crate::record::decode_verified(&bytes[at..]).expect("scanned");
            if let Record::Tombstone(t) = &record {
                state.floors.push(t.device);
            }
            if let Some(sender) = self.window_leaving(position, &record) {
                state.senders.push(sender);
            }
            if let Some(to) = self.copy_forward(position, &record) {
                state.moved.push((position, to));
            }
        }
    }

    /// Ends the reclaim of `segment`: the dedup windows and seq floors its
    /// records carried are written anew.
    pub fn reclaim_finish(&mut self, segment: u64, state: ReclaimState) -> Reclaimed {
        let ReclaimState {
            mut floors,
            mut senders,
            moved,
        } = state;
        senders.sort();
        senders.dedup();
        for sender in senders {
            self.append_window(sender);
        }
        floors.sort();
        floors.dedup();
        // A device whose latest device record is newer already has a floor
        // at least this high (next_seq only grows).
        let end = self.log.segments()[1];
        floors.retain(|d| self.device_records.get(d).is_none_or(|r| r.0 < end));
        for device in floors {
            let next_seq = self.queue(device).next_seq;
            let floor = Record::Device {
                device,
                registered_ms: 0,
                next_seq,
            };
            self.append(&floor);
        }
        // The delete waits for the head to be durable: tombstones too.
        self.log.seal_lazy();
        Reclaimed {
            segment,
            after: self.log.head(),
            moved,
        }
    }

    /// The sender whose dedup window would lose ids if `record` (at
    /// `position`, in a segment being reclaimed) were dropped.
    fn window_leaving(&self, position: u64, record: &Record<'_>) -> Option<DeviceRef> {
        let (sender, id) = match record {
            Record::Message(m) if !m.receipt => (m.sender, m.client_msg_id),
            Record::Dedup(d) => (d.sender, d.client_msg_id),
            Record::Window(w) => {
                let latest = self.windows.window(w.sender)?.record_at == position;
                return latest.then_some(w.sender);
            }
            _ => return None,
        };
        let window = self.windows.window(sender)?;
        (id + crate::dedup::DEDUP_WINDOW > window.high).then_some(sender)
    }

    /// Appends `sender`'s window as it is now.
    fn append_window(&mut self, sender: DeviceRef) {
        let Some(w) = self.windows.window(sender) else {
            return;
        };
        let record = WindowRecord {
            sender,
            high: w.high,
            bits: w.bits,
        };
        self.append(&Record::Window(record));
    }

    /// The segment from [`Engine::reclaim`] is deleted from storage.
    pub fn segment_deleted(&mut self, segment: u64) {
        self.log.forget_segment(segment);
    }

    /// Re-appends what is still needed of one old record; returns the new
    /// position of a message record.
    fn copy_forward(&mut self, position: u64, record: &Record<'_>) -> Option<u64> {
        match record {
            Record::Message(m) => return self.move_message(position, m),
            Record::Tombstone(_) => {}
            Record::Device {
                device,
                registered_ms,
                ..
            } => {
                if self
                    .device_records
                    .get(device)
                    .is_some_and(|r| r.0 == position)
                {
                    let next_seq = self.queue(*device).next_seq;
                    let registered_ms = *registered_ms;
                    self.append(&Record::Device {
                        device: *device,
                        registered_ms,
                        next_seq,
                    });
                }
            }
            Record::Group { order, .. } => {
                // The live copy moves forward; a stale one (left by a crash
                // between a copy and its segment's deletion) is dropped.
                if self.group_at.get(order) == Some(&position) {
                    self.append(record);
                }
            }
            Record::Life(l) => {
                if self.lives.get(&l.device).is_some_and(|r| r.1 == position) {
                    self.append(record);
                }
            }
            Record::Setting { key, .. } => {
                if self.settings.get(key).is_some_and(|s| s.1 == position) {
                    self.append(record);
                }
            }
            // Carried by window records (`window_leaving`).
            Record::Dedup(_) | Record::Window(_) => {}
        }
        None
    }

    fn move_message(&mut self, position: u64, m: &MessageRecord<'_>) -> Option<u64> {
        let live: Vec<Recipient> = m
            .recipients
            .iter()
            .filter(|r| {
                self.entry_mut(r.device, r.seq)
                    .is_some_and(|e| e.position == position)
            })
            .copied()
            .collect();
        if live.is_empty() {
            return None;
        }
        let old_len = self
            .shared
            .remove(&position)
            .map_or_else(|| message_record_len(m, 1), |s| u64::from(s.record_len));
        let copy = Record::Message(MessageRecord {
            recipients: live.clone(),
            ..m.clone()
        });
        let to = self.log.append(&copy);
        let new_len = self.log.head() - to;
        self.live_bytes = self.live_bytes - old_len + new_len;
        for r in &live {
            self.entry_mut(r.device, r.seq).expect("live").position = to;
        }
        if !m.receipt {
            self.windows.moved(m.sender, m.client_msg_id, to);
        }
        if live.len() > 1 {
            let refs = u32::try_from(live.len()).expect("at most 65,535 recipients");
            let record_len = u32::try_from(new_len).expect("below 4 GiB");
            self.shared.insert(to, Shared { refs, record_len });
        }
        Some(to)
    }

    fn entry_mut(&mut self, device: DeviceRef, seq: u64) -> Option<&mut Entry> {
        let queue = self.queues.get_mut(&device)?;
        let at = queue.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        queue.entries.get_mut(at)
    }

    // ---- group commit (the shell performs the I/O) -------------------------

    /// The next batch to write and fdatasync, if none is in flight.
    /// Tombstones alone do not make a batch due: see
    /// [`Engine::seal_lazy`].
    pub fn poll_flush(&mut self) -> Option<&Flush> {
        self.log.poll_flush()
    }

    /// Whether [`Engine::poll_flush`] would hand out a batch now.
    pub fn flush_ready(&self) -> bool {
        self.log.flush_ready()
    }

    /// The batch [`Engine::poll_flush`] handed out, until
    /// [`Engine::handle_flushed`].
    pub fn flush_in_flight(&self) -> Option<&Flush> {
        self.log.in_flight()
    }

    /// Whether tombstones wait for a batch to be due.
    pub fn lazy_pending(&self) -> bool {
        self.log.lazy_pending()
    }

    /// Makes the tombstones waiting in the filling batch due: call it on a
    /// timer (it bounds how many acknowledgments a crash can undo) and
    /// before waiting for [`Engine::durable`] to reach the head.
    pub fn seal_lazy(&mut self) {
        self.log.seal_lazy();
    }

    /// The batch from [`Engine::poll_flush`] is durable.
    pub fn handle_flushed(&mut self) {
        self.log.handle_flushed();
    }

    /// Everything appended below this position is durable.
    pub fn durable(&self) -> u64 {
        self.log.durable()
    }

    // ---- reads --------------------------------------------------------------

    /// The durable entries of `device` after `after_seq`, in seq order, as
    /// `(seq, record position)`: the backlog to stream on reconnect.
    pub fn backlog(
        &self,
        device: DeviceRef,
        after_seq: u64,
    ) -> impl Iterator<Item = (u64, u64)> + '_ {
        let durable = self.log.durable();
        self.queues
            .get(&device)
            .into_iter()
            .flat_map(move |q| {
                let from = q.entries.partition_point(|e| e.seq <= after_seq);
                q.entries.range(from..)
            })
            // Stop at the first entry not durable (a record reclaim just
            // copied forward can sit before durable ones): never skip it.
            .take_while(move |e| e.position < durable)
            .map(|e| (e.seq, e.position))
    }

    /// The last seq given to `device` (0 if none): where its queue ends.
    pub fn queue_end(&self, device: DeviceRef) -> u64 {
        self.queues
            .get(&device)
            .map_or(0, |q| q.next_seq.saturating_sub(1))
    }

    /// Entries of `device` queued after `seq`, durable or not yet.
    pub fn queued_after(&self, device: DeviceRef, seq: u64) -> usize {
        self.queues.get(&device).map_or(0, |q| {
            q.entries.len() - q.entries.partition_point(|e| e.seq <= seq)
        })
    }

    /// Entries of `device` still queued with a seq up to `seq`: what a
    /// device has been sent and not yet acknowledged, when `seq` is the
    /// last one sent.
    pub fn queued_through(&self, device: DeviceRef, seq: u64) -> usize {
        self.queues
            .get(&device)
            .map_or(0, |q| q.entries.partition_point(|e| e.seq <= seq))
    }

    /// The payload of the message at `position` if it is among the recent
    /// ones kept in memory; otherwise [`read_message`] reads it from disk.
    pub fn recent_payload(&self, position: u64) -> Option<&bytes::Bytes> {
        self.recent.get(position)
    }

    /// Entries (messages and receipts) and message payload bytes queued
    /// for `device`.
    pub fn queue_len(&self, device: DeviceRef) -> (usize, u64) {
        self.queues
            .get(&device)
            .map_or((0, 0), |q| (q.entries.len(), q.bytes))
    }

    /// Every device with a queue.
    pub fn devices(&self) -> impl Iterator<Item = DeviceRef> + '_ {
        self.queues.keys().copied()
    }

    /// Message records still referenced.
    pub fn live_messages(&self) -> usize {
        self.live_records
    }

    /// Queues [`Engine::expire`] has looked into so far (each one had an
    /// entry due, or had one filed as due).
    pub fn expiry_visits(&self) -> u64 {
        self.expiry_visits
    }

    /// Sender devices with a dedup window, and stored ids whose original
    /// is still kept for answering retries.
    pub fn dedup_entries(&self) -> (usize, usize) {
        (self.windows.senders(), self.windows.known_ids())
    }

    /// Gives back memory held for queues that have drained (after a
    /// reconnect storm, say). Costs a pass over every queue.
    pub fn shrink_to_fit(&mut self) {
        for queue in self.queues.values_mut() {
            queue.entries.shrink_to_fit();
        }
        self.shared.shrink_to_fit();
        self.windows.shrink_to_fit();
        self.expiry.shrink_to_fit();
        self.log.shrink_to_fit();
    }

    /// Group records recovered from the log, in the order they were
    /// written, for the router to replay.
    pub fn group_records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.group_records.values().map(Vec::as_slice)
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    // ---- the index ----------------------------------------------------------

    fn queue(&mut self, device: DeviceRef) -> &mut Queue {
        self.queues.entry(device).or_default()
    }

    /// Whether a send of `sender` with `client_msg_id` is already stored
    /// (a retry would be answered as a duplicate).
    pub fn was_stored(&self, sender: DeviceRef, client_msg_id: u64) -> bool {
        matches!(
            self.windows.check(sender, client_msg_id),
            Seen::Duplicate { .. } | Seen::Forgotten
        )
    }

    /// Whether `device`'s queue has room for a message of `payload_len`
    /// bytes (or a receipt).
    pub fn has_room(&self, device: DeviceRef, payload_len: u64, receipt: bool) -> bool {
        let config = self.config;
        let Some(queue) = self.queues.get(&device) else {
            return true;
        };
        match receipt {
            true => queue.receipts < config.queue_receipts_max,
            false => {
                queue.entries.len() - queue.receipts < config.queue_messages_max
                    && queue.bytes + payload_len <= config.queue_bytes_max
            }
        }
    }

    /// Whether `device`'s queue has room: messages and receipts each have
    /// their own budget, so receipts never crowd out messages.
    fn check_room(
        &mut self,
        device: DeviceRef,
        payload_len: u64,
        receipt: bool,
    ) -> Result<(), QueueError> {
        let config = self.config;
        let queue = self.queue(device);
        let full = match receipt {
            true => queue.receipts >= config.queue_receipts_max,
            false => {
                queue.entries.len() - queue.receipts >= config.queue_messages_max
                    || queue.bytes + payload_len > config.queue_bytes_max
            }
        };
        match full {
            true => Err(QueueError::QueueFull { device }),
            false => Ok(()),
        }
    }

    /// Applies one record to the index: the live path and recovery both
    /// come through here, so they cannot disagree.
    pub fn apply(&mut self, position: u64, len: u64, record: &Record<'_>) {
        if !matches!(record, Record::Tombstone(_)) {
            self.live_bytes += len;
        }
        match record {
            Record::Message(m) => self.apply_message(position, len, m),
            Record::Tombstone(t) => self.apply_tombstone(t),
            Record::Device {
                device, next_seq, ..
            } => {
                let queue = self.queue(*device);
                queue.next_seq = queue.next_seq.max(*next_seq);
                if let Some((_, old)) = self.device_records.insert(*device, (position, len)) {
                    self.live_bytes -= old; // superseded
                }
            }
            Record::Group { order, bytes } => {
                if self.group_records.insert(*order, bytes.to_vec()).is_some() {
                    self.live_bytes -= len; // a copy of one already replayed
                }
                // The newest copy is the live one (older ones go with
                // their segments).
                let at = self.group_at.entry(*order).or_insert(position);
                *at = (*at).max(position);
            }
            // An older log's dedup entry: one stored id, its original
            // forgotten; the bytes are dead (reclaim writes a window).
            Record::Dedup(d) => {
                self.live_bytes -= len;
                let w = WindowRecord {
                    sender: d.sender,
                    high: d.client_msg_id,
                    bits: 1,
                };
                self.windows.apply_record(0, &w);
            }
            Record::Life(l) => {
                if let Some((_, _, old)) = self.lives.insert(l.device, (*l, position, len)) {
                    self.live_bytes -= old; // superseded
                }
            }
            Record::Setting { key, value } => {
                let latest = (value.to_vec(), position, len);
                if let Some((_, _, old)) = self.settings.insert(*key, latest) {
                    self.live_bytes -= old; // superseded
                }
            }
            Record::Window(w) => {
                if self.windows.recorded(w.sender, position) {
                    self.live_bytes -= WINDOW_RECORD_LEN; // superseded
                }
                self.windows.apply_record(position, w);
            }
        }
    }

    /// Queues the message for its recipients. Entries go in seq order: a
    /// record copied forward by reclaim arrives after newer ones. If the
    /// entry exists (a crash left both the original and its copy), the copy
    /// takes it over and the original loses that reference.
    fn apply_message(&mut self, position: u64, len: u64, m: &MessageRecord<'_>) {
        debug_assert_eq!(len, message_record_len(m, m.recipients.len()));
        let payload_len = u32::try_from(m.payload.len()).expect("records are below 1 MiB");
        let len_and_kind = payload_len
            | if m.receipt { RECEIPT_BIT } else { 0 }
            | if m.group != 0 { GROUP_BIT } else { 0 };
        let expires_s = u32::try_from(m.expires_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        let mut replaced = Vec::new();
        for r in &m.recipients {
            let queue = self.queue(r.device);
            let entry = Entry {
                seq: r.seq,
                position,
                len_and_kind,
                expires_s,
            };
            // Appends come in seq order: past the last entry, no search.
            let found = match queue.entries.back() {
                Some(last) if last.seq >= r.seq => {
                    queue.entries.binary_search_by_key(&r.seq, |e| e.seq)
                }
                _ => Err(queue.entries.len()),
            };
            match found {
                Ok(at) => replaced.push(std::mem::replace(&mut queue.entries[at], entry)),
                Err(at) => {
                    let before = at.checked_sub(1).and_then(|i| queue.entries.get(i));
                    let after = queue.entries.get(at);
                    queue.expiry_sorted &= before.is_none_or(|b| b.expires_s <= expires_s)
                        && after.is_none_or(|a| expires_s <= a.expires_s);
                    queue.entries.insert(at, entry);
                    match m.receipt {
                        true => queue.receipts += 1,
                        false => queue.bytes += u64::from(payload_len),
                    }
                }
            }
            queue.next_seq = queue.next_seq.max(r.seq + 1);
            if expires_s < queue.expiry_key {
                let newly = queue.expiry_key == u32::MAX;
                queue.expiry_key = expires_s;
                self.expiry_filed += usize::from(newly);
                self.expiry.push(Reverse((expires_s, r.device)));
            }
        }
        match m.recipients.is_empty() {
            // A group message with nobody here: dead at birth, kept only
            // for its dedup entry (reclaim carries that in a window).
            true => self.live_bytes -= len,
            false => self.live_records += 1,
        }
        if m.recipients.len() > 1 {
            let refs = u32::try_from(m.recipients.len()).expect("at most 65,535 recipients");
            let record_len = u32::try_from(len).expect("records are below 4 GiB");
            self.shared.insert(position, Shared { refs, record_len });
        }
        for old in replaced {
            self.release(&old);
        }
        if !m.receipt {
            self.windows.stored(
                m.sender,
                m.client_msg_id,
                m.message_id,
                position,
                m.accepted_ms,
            );
        }
    }

    fn apply_tombstone(&mut self, t: &Tombstone) {
        let Some(queue) = self.queues.get_mut(&t.device) else {
            return;
        };
        queue.next_seq = queue.next_seq.max(t.seq_to + 1);
        // Entries are sorted by seq: the dead ones are one range.
        let range = seq_range(&queue.entries, t.seq_from, t.seq_to);
        let dead: Vec<Entry> = queue.entries.drain(range).collect();
        for e in &dead {
            match e.is_receipt() {
                true => queue.receipts -= 1,
                false => queue.bytes -= u64::from(e.payload_len()),
            }
        }
        if queue.entries.is_empty() {
            queue.expiry_sorted = true;
            // Its heap entry goes stale (skipped, dropped by a rebuild).
            self.expiry_filed -= usize::from(queue.expiry_key != u32::MAX);
            queue.expiry_key = u32::MAX;
        }
        for entry in dead {
            self.release(&entry);
        }
    }

    /// `entry` no longer refers to its message record; the record dies
    /// with its last reference.
    fn release(&mut self, entry: &Entry) {
        let dead_len = match self.shared.get_mut(&entry.position) {
            Some(shared) => {
                shared.refs -= 1;
                let len = u64::from(shared.record_len);
                (shared.refs == 0).then_some(len)
            }
            None => Some(entry.record_len()),
        };
        if let Some(len) = dead_len {
            self.shared.remove(&entry.position);
            self.live_bytes -= len;
            self.live_records -= 1;
        }
    }
}

/// What a reclaim in steps has gathered so far ([`Engine::reclaim_part`]).
#[derive(Debug, Default)]
pub struct ReclaimState {
    floors: Vec<DeviceRef>,
    senders: Vec<DeviceRef>,
    moved: Vec<(u64, u64)>,
}

/// The records of segment `segment` (its `bytes`), as `(position, len)`,
/// checksums verified: the CPU-heavy half of a reclaim, which needs no
/// engine (a shell runs it off its event loop). Zeros after the last
/// record are the segment's unused end; anything else there is corruption.
pub fn reclaim_scan(segment: u64, bytes: &[u8]) -> Result<Vec<(u64, u64)>, RecoveryError> {
    let mut records = Vec::new();
    let (valid, bad) = crate::recovery::scan(
        bytes,
        segment,
        &mut |position, len, _| records.push((position, len)),
        &mut 0,
    );
    match bad {
        Some(error) => Err(RecoveryError::Corruption {
            segment,
            offset: valid as u64,
            error,
        }),
        None => Ok(records),
    }
}

/// The simplest shell: performs every pending flush on `storage` (create,
/// write, fdatasync; tombstones included) and reports each to `engine`. Returns the new durable
/// position. The gateway does the same asynchronously on io_uring.
pub fn flush_all(engine: &mut Engine, storage: &mut impl Storage) -> std::io::Result<u64> {
    engine.seal_lazy();
    while let Some(flush) = engine.poll_flush() {
        write_flush(storage, flush)?;
        engine.handle_flushed();
    }
    Ok(engine.durable())
}

/// Performs one batch from [`Engine::poll_flush`]: creates its segment if
/// new, writes it and fdatasyncs. Report success with
/// [`Engine::handle_flushed`].
pub fn write_flush(storage: &mut impl Storage, flush: &Flush) -> std::io::Result<()> {
    if flush.create {
        storage.create(flush.segment)?;
    }
    storage.write(flush.segment, flush.offset, &flush.bytes)?;
    storage.sync(flush.segment)
}

/// Reclaims every segment that is due: copies forward, makes the copies
/// durable, deletes the old segment. Returns what was reclaimed.
pub fn reclaim_all(
    engine: &mut Engine,
    storage: &mut impl Storage,
) -> Result<Vec<Reclaimed>, RecoveryError> {
    let mut done = Vec::new();
    flush_all(engine, storage)?;
    while let Some(segment) = engine.reclaim_due() {
        let bytes = storage.read(segment)?;
        let reclaimed = engine.reclaim(segment, &bytes)?;
        flush_all(engine, storage)?;
        assert!(
            engine.durable() >= reclaimed.after,
            "copies durable before the delete"
        );
        storage.remove(segment)?;
        engine.segment_deleted(segment);
        done.push(reclaimed);
    }
    Ok(done)
}

/// A message read back from the log, for backlog streaming and receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Server-wide id.
    pub message_id: u64,
    /// The sending device.
    pub sender: DeviceRef,
    /// The sender's id for it.
    pub client_msg_id: u64,
    /// When it was accepted, ms since the Unix epoch.
    pub accepted_ms: u64,
    /// A receipt the server queued, not a client's message.
    pub receipt: bool,
    /// The group it was sent to, or 0.
    pub group: u64,
    /// The opaque payload.
    pub payload: Vec<u8>,
}

/// Reads the message record at `position` (from [`Engine::backlog`] or an
/// [`Expired`]): two `pread`s, the length then the record; or, if it is
/// not durable yet, from its batch in memory.
pub fn read_message(
    engine: &Engine,
    storage: &impl Storage,
    position: u64,
) -> Result<StoredMessage, RecoveryError> {
    let segment = *engine
        .log()
        .segments()
        .iter()
        .rev()
        .find(|s| **s <= position)
        .expect("in the log");
    let offset = position - segment;
    let corrupt = |error| RecoveryError::Corruption {
        segment,
        offset,
        error,
    };
    // A record not durable yet (a copy reclaim just made, say) is read
    // where it is: its batch, in memory. The disk holds zeros there.
    let read;
    let bytes = match engine.log().unflushed(position) {
        Some(batch) => batch,
        None => {
            let mut len = [0; 4];
            storage.read_at(segment, offset, &mut len)?;
            let mut bytes = vec![0; 4 + u32::from_le_bytes(len) as usize];
            storage.read_at(segment, offset, &mut bytes)?;
            read = bytes;
            &read
        }
    };
    match crate::record::decode(bytes).map_err(corrupt)?.0 {
        Record::Message(m) => Ok(StoredMessage {
            message_id: m.message_id,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            accepted_ms: m.accepted_ms,
            receipt: m.receipt,
            group: m.group,
            payload: m.payload.to_vec(),
        }),
        _ => Err(corrupt(crate::record::RecordError::Malformed { kind: 0 })),
    }
}
