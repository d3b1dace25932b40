//! [`Engine`]: one shard's queue engine, the [`Log`] plus the in-memory
//! index it implies, as a sans-IO state machine with time passed in.
//!
//! * Per-device queues of `(seq, position)` entries, ordered by a per-device
//!   sequence number, with a count and byte limit per device.
//! * One message record serves every recipient (group fan-out from one
//!   stored copy); a reference count per record says when it is dead.
//! * Dedup of client retries by `(sender device, client message id)`, for
//!   the message's TTL.
//! * Every change is a record appended to the log; [`Engine::open`]
//!   rebuilds the same index by replaying them ([`Engine::apply`] is the one
//!   function both paths use).
//!
//! Durability is the caller's to wait for: a change is durable once
//! [`Engine::durable`] is past the position it returned. The gateway answers
//! ✓ and delivers only then.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::log::{Flush, Log, LogConfig};
use crate::record::{DeathReason, DeviceRef, MessageRecord, Recipient, Record, Tombstone};
use crate::recovery::{Recovered, RecoveryError, recover};
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
    /// Most payload bytes queued for one device.
    pub queue_bytes_max: u64,
    /// TTL of a message that states none.
    pub ttl_default_ms: u64,
    /// Largest TTL; longer ones are clamped.
    pub ttl_max_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            queue_messages_max: 10_000,
            queue_bytes_max: 64 << 20,
            ttl_default_ms: TTL_MAX_MS,
            ttl_max_ms: TTL_MAX_MS,
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
struct Entry {
    seq: u64,
    position: u64,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    next_seq: u64,
    bytes: u64,
}

/// A stored message record still referenced by queue entries.
#[derive(Debug, Clone, Copy)]
struct Meta {
    refs: u32,
    payload_len: u32,
}

type DedupKey = (DeviceRef, u64);

/// The queue engine of one shard.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    log: Log,
    queues: FxHashMap<DeviceRef, Queue>,
    messages: FxHashMap<u64, Meta>,
    dedup: FxHashMap<DedupKey, (u64, u64)>,
    /// (expires_ms, key, position of the message it was made for).
    dedup_expiry: VecDeque<(u64, DedupKey, u64)>,
    group_records: Vec<Vec<u8>>,
}

impl Engine {
    /// Opens the log in `storage` and rebuilds the index from it as of
    /// `now_ms` (dedup windows closed by then stay closed).
    pub fn open(
        storage: &mut impl Storage,
        config: EngineConfig,
        now_ms: u64,
    ) -> Result<(Self, Recovered), RecoveryError> {
        let mut engine = Self {
            config,
            log: Log::resume(config.log, Vec::new(), 0),
            queues: FxHashMap::default(),
            messages: FxHashMap::default(),
            dedup: FxHashMap::default(),
            dedup_expiry: VecDeque::new(),
            group_records: Vec::new(),
        };
        let found = recover(storage, &config.log, |position, record| {
            engine.apply(position, &record)
        })?;
        engine.log = Log::resume(config.log, found.segments.clone(), found.head);
        engine.close_dedup_windows(now_ms);
        Ok((engine, found))
    }

    // ---- changes ------------------------------------------------------------

    /// Stores a message for every recipient device, or says why not.
    pub fn append_message(
        &mut self,
        now_ms: u64,
        m: &NewMessage<'_>,
    ) -> Result<Accepted, QueueError> {
        if let Some(&(message_id, position)) = self.dedup.get(&(m.sender, m.client_msg_id)) {
            return Ok(Accepted::Duplicate {
                message_id,
                position,
            });
        }
        if m.recipients.is_empty() {
            return Err(QueueError::NoRecipient);
        }
        for device in m.recipients {
            self.check_room(*device, m.payload.len() as u64)?;
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
            message_id: m.message_id,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            accepted_ms: now_ms,
            expires_ms: now_ms + ttl_ms.min(self.config.ttl_max_ms),
            recipients,
            payload: m.payload,
        });
        let position = self.log.append(&record);
        self.apply(position, &record);
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
        let queue = self.queues.get(&device);
        if queue.is_none_or(|q| seq == 0 || seq >= q.next_seq) {
            return Err(QueueError::NotDelivered { device, seq });
        }
        let queue = queue.expect("checked");
        let acked: Vec<Entry> = queue
            .entries
            .iter()
            .filter(|e| {
                if cumulative {
                    e.seq <= seq
                } else {
                    e.seq == seq
                }
            })
            .copied()
            .collect();
        let Some(first) = acked.first() else {
            return Ok(Vec::new());
        };
        let seq_from = if cumulative { first.seq } else { seq };
        let tombstone = Tombstone {
            device,
            seq_from,
            seq_to: seq,
            reason: DeathReason::Acked,
        };
        let position = self.log.append(&Record::Tombstone(tombstone));
        self.apply(position, &Record::Tombstone(tombstone));
        Ok(acked.iter().map(|e| e.position).collect())
    }

    /// Records that `device` exists (its queue starts empty).
    pub fn register_device(&mut self, now_ms: u64, device: DeviceRef) -> u64 {
        let record = Record::Device {
            device,
            registered_ms: now_ms,
        };
        let position = self.log.append(&record);
        self.apply(position, &record);
        position
    }

    /// Appends an opaque group membership record (the router's).
    pub fn append_group_record(&mut self, bytes: &[u8]) -> u64 {
        let position = self.log.append(&Record::Group(bytes));
        self.group_records.push(bytes.to_vec());
        position
    }

    /// Expires every queue entry and dedup entry whose TTL has passed,
    /// writing tombstones. Returns the expired entries (for "expired"
    /// receipts to the senders).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Expired> {
        self.close_dedup_windows(now_ms);
        let mut expired = Vec::new();
        for (device, queue) in &self.queues {
            for e in queue.entries.iter().filter(|e| e.expires_ms <= now_ms) {
                expired.push(Expired {
                    device: *device,
                    seq: e.seq,
                    position: e.position,
                });
            }
        }
        for e in &expired {
            let t = Tombstone {
                device: e.device,
                seq_from: e.seq,
                seq_to: e.seq,
                reason: DeathReason::Expired,
            };
            let position = self.log.append(&Record::Tombstone(t));
            self.apply(position, &Record::Tombstone(t));
        }
        expired
    }

    /// Forgets dedup entries whose window closed by `now_ms`. Entries are in
    /// acceptance order; one with a shorter TTL behind a longer one is kept
    /// until the longer one goes (a window may last longer, never shorter).
    fn close_dedup_windows(&mut self, now_ms: u64) {
        while let Some(&(expires_ms, key, position)) = self.dedup_expiry.front() {
            if expires_ms > now_ms {
                break;
            }
            self.dedup_expiry.pop_front();
            // A later message may have reused the key after this window closed.
            if self.dedup.get(&key).is_some_and(|&(_, p)| p == position) {
                self.dedup.remove(&key);
            }
        }
    }

    // ---- group commit (the shell performs the I/O) -------------------------

    /// The next batch to write and fdatasync, if none is in flight.
    pub fn poll_flush(&mut self) -> Option<&Flush> {
        self.log.poll_flush()
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
            .flat_map(|q| q.entries.iter())
            .filter(move |e| e.seq > after_seq && e.position < durable)
            .map(|e| (e.seq, e.position))
    }

    /// Messages and payload bytes queued for `device`.
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
        self.messages.len()
    }

    /// Group records recovered from the log, for the router to replay.
    pub fn group_records(&self) -> &[Vec<u8>] {
        &self.group_records
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    // ---- the index ----------------------------------------------------------

    fn queue(&mut self, device: DeviceRef) -> &mut Queue {
        self.queues.entry(device).or_insert_with(|| Queue {
            next_seq: 1,
            ..Queue::default()
        })
    }

    fn check_room(&mut self, device: DeviceRef, payload_len: u64) -> Result<(), QueueError> {
        let (messages_max, bytes_max) =
            (self.config.queue_messages_max, self.config.queue_bytes_max);
        let queue = self.queue(device);
        if queue.entries.len() >= messages_max || queue.bytes + payload_len > bytes_max {
            return Err(QueueError::QueueFull { device });
        }
        Ok(())
    }

    /// Applies one record to the index: the live path and recovery both
    /// come through here, so they cannot disagree.
    pub fn apply(&mut self, position: u64, record: &Record<'_>) {
        match record {
            Record::Message(m) => self.apply_message(position, m),
            Record::Tombstone(t) => self.apply_tombstone(t),
            Record::Device { device, .. } => {
                self.queue(*device);
            }
            Record::Group(bytes) => self.group_records.push(bytes.to_vec()),
            // The original is long durable: position 0 is below any durable mark.
            Record::Dedup(d) => {
                self.remember(d.sender, d.client_msg_id, d.message_id, 0, d.expires_ms)
            }
        }
    }

    fn apply_message(&mut self, position: u64, m: &MessageRecord<'_>) {
        let payload_len = m.payload.len() as u64;
        for r in &m.recipients {
            let queue = self.queue(r.device);
            debug_assert!(
                queue.entries.back().is_none_or(|e| e.seq < r.seq),
                "seqs increase"
            );
            queue.entries.push_back(Entry {
                seq: r.seq,
                position,
                expires_ms: m.expires_ms,
            });
            queue.next_seq = queue.next_seq.max(r.seq + 1);
            queue.bytes += payload_len;
        }
        let refs = u32::try_from(m.recipients.len()).expect("at most 65,535 recipients");
        let payload_len = u32::try_from(m.payload.len()).expect("records are below 4 GiB");
        self.messages.insert(position, Meta { refs, payload_len });
        self.remember(
            m.sender,
            m.client_msg_id,
            m.message_id,
            position,
            m.expires_ms,
        );
    }

    fn apply_tombstone(&mut self, t: &Tombstone) {
        let Some(queue) = self.queues.get_mut(&t.device) else {
            return;
        };
        queue.next_seq = queue.next_seq.max(t.seq_to + 1);
        let mut dead = Vec::new();
        queue.entries.retain(|e| {
            let dies = (t.seq_from..=t.seq_to).contains(&e.seq);
            if dies {
                dead.push(e.position);
            }
            !dies
        });
        for position in dead {
            let meta = self
                .messages
                .get_mut(&position)
                .expect("a queued entry's record is live");
            queue.bytes -= u64::from(meta.payload_len);
            meta.refs -= 1;
            if meta.refs == 0 {
                self.messages.remove(&position);
            }
        }
    }

    fn remember(
        &mut self,
        sender: DeviceRef,
        client_msg_id: u64,
        message_id: u64,
        position: u64,
        expires_ms: u64,
    ) {
        let key = (sender, client_msg_id);
        self.dedup.insert(key, (message_id, position));
        self.dedup_expiry.push_back((expires_ms, key, position));
    }
}

/// The simplest shell: performs every pending flush on `storage` (create,
/// write, fdatasync) and reports each to `engine`. Returns the new durable
/// position. The gateway does the same asynchronously on io_uring.
pub fn flush_all(engine: &mut Engine, storage: &mut impl Storage) -> std::io::Result<u64> {
    while let Some(flush) = engine.poll_flush() {
        if flush.create {
            storage.create(flush.segment)?;
        }
        storage.write(flush.segment, flush.offset, &flush.bytes)?;
        storage.sync(flush.segment)?;
        engine.handle_flushed();
    }
    Ok(engine.durable())
}
