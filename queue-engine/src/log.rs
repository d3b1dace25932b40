//! The append log with group commit, as a sans-IO state machine.
//!
//! [`Log::append`] encodes a record into the batch that is filling and
//! returns its log position at once. [`Log::poll_flush`] hands the shell one
//! sealed batch at a time: one write to one segment, then one `fdatasync`;
//! the shell reports completion with [`Log::handle_flushed`], which moves the
//! durable position. While a flush is in flight, appends fill the next
//! batch, so there is no timer: at low load a lone record is flushed at
//! once, at high load batches grow (up to `batch_bytes_max`). Only one batch
//! is ever unsynced, which is what lets recovery tell a torn tail from
//! corruption.
//!
//! A record nobody waits on to go on (an acknowledgment's tombstone: if a
//! crash loses it, the entry is delivered again, which clients already
//! handle; a receipt, whose ✓✓ may come a little later) goes in with
//! [`Log::append_lazy`]: it does not make its batch due by
//! itself. It rides the next batch that is, or the one the shell seals with
//! [`Log::seal_lazy`] (the gateway does on its 100 ms tick and before it
//! waits for any position), so a quiet log still syncs it soon and a busy
//! one pays no `fdatasync` for it.

use std::collections::VecDeque;

use crate::record::{self, RECORD_BYTES_MAX, Record};

/// Sizes of segments and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// A batch is sealed once it holds this many bytes.
    pub batch_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            batch_bytes_max: 1 << 20,
        }
    }
}

impl LogConfig {
    /// The most bytes at the end of the last segment that can be unsynced
    /// at a crash: one batch, or one record larger than a batch.
    pub fn torn_window(&self) -> u64 {
        (self.batch_bytes_max.max(RECORD_BYTES_MAX + 8)) as u64
    }
}

/// A shell may write a batch as whole blocks of this many bytes, aligned
/// to it (for `O_DIRECT`): the batch's first block rewritten with the bytes
/// before the batch that it already held, its last padded with zeros. It
/// may also pre-size a segment with zeros before its first write. Recovery
/// reads zeros after a segment's last record as that segment's end, and a
/// torn batch can reach this much past its last byte.
pub const WRITE_BLOCK: u64 = 4096;

/// One write + fdatasync for the shell to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    /// Start position of the segment to write.
    pub segment: u64,
    /// Whether the segment must be created first.
    pub create: bool,
    /// Offset inside the segment.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Flush {
    /// Log position just past this batch.
    pub fn end(&self) -> u64 {
        self.segment + self.offset + self.bytes.len() as u64
    }
}

/// The log of one shard.
#[derive(Debug)]
pub struct Log {
    config: LogConfig,
    /// Start of the segment appends go to.
    active_segment: u64,
    /// Whether the active segment exists on storage (or its first flush
    /// must create it).
    active_created: bool,
    /// Next position to assign.
    head: u64,
    /// Durable up to (exclusive).
    durable: u64,
    filling: Option<Flush>,
    /// Whether `filling` holds a record appended with [`Log::append`]
    /// (someone waits for it): then [`Log::poll_flush`] seals it.
    urgent: bool,
    sealed: VecDeque<Flush>,
    in_flight: bool,
    /// Segment starts, oldest first (for reclaim and recovery).
    segments: Vec<u64>,
    /// The buffer of the last batch written, emptied, for the next batch:
    /// one grown from nothing reallocates its way up to a megabyte (and
    /// the allocator hands out freshly faulted pages for it) every batch.
    spare: Vec<u8>,
}

impl Log {
    /// A log whose segments are `segments` (ascending starts, as recovered)
    /// and whose valid data ends at `head`.
    pub fn resume(config: LogConfig, segments: Vec<u64>, head: u64) -> Self {
        let active_segment = segments.last().copied().unwrap_or(0);
        Self {
            config,
            active_segment,
            active_created: !segments.is_empty(),
            head,
            durable: head,
            filling: None,
            urgent: false,
            sealed: VecDeque::new(),
            in_flight: false,
            segments: if segments.is_empty() {
                vec![0]
            } else {
                segments
            },
            spare: Vec::new(),
        }
    }

    /// Next position to be assigned.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Every record that starts below this position is durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Segment starts, oldest first.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// Bytes appended but not yet durable.
    pub fn pending_bytes(&self) -> u64 {
        self.head - self.durable
    }

    /// Appends `record`; returns its position. It is durable once
    /// [`Log::durable`] is past it; its batch is due at once.
    pub fn append(&mut self, record: &Record<'_>) -> u64 {
        let position = self.push(record);
        self.urgent |= self.filling.is_some();
        position
    }

    /// Appends `record`, which nobody waits on: its batch is not due
    /// because of it (see the module's doc). Returns its position.
    pub fn append_lazy(&mut self, record: &Record<'_>) -> u64 {
        self.push(record)
    }

    /// Whether records appended lazily wait for a batch to be due.
    pub fn lazy_pending(&self) -> bool {
        self.filling.is_some() && !self.urgent
    }

    /// Makes the filling batch due even if only lazy records are in it.
    pub fn seal_lazy(&mut self) {
        self.seal();
    }

    fn push(&mut self, record: &Record<'_>) -> u64 {
        let len = record::encoded_len(record) as u64;
        let in_segment = self.head - self.active_segment;
        if in_segment > 0 && in_segment + len > self.config.segment_bytes_max {
            self.roll();
        }
        let position = self.head;
        let filling = self.filling_batch();
        let written = record::encode(record, &mut filling.bytes) as u64;
        debug_assert_eq!(written, len, "encoded_len agrees with encode");
        let full = filling.bytes.len() >= self.config.batch_bytes_max;
        self.head += len;
        if full {
            self.seal();
        }
        position
    }

    /// The next batch to write and sync, if none is in flight.
    pub fn poll_flush(&mut self) -> Option<&Flush> {
        if !self.flush_ready() {
            return None;
        }
        if self.sealed.is_empty() {
            self.seal(); // urgent records, not yet a full batch
        }
        let flush = self.sealed.front()?;
        self.in_flight = true;
        Some(flush)
    }

    /// Whether [`Log::poll_flush`] would hand out a batch now.
    pub fn flush_ready(&self) -> bool {
        !self.in_flight && (!self.sealed.is_empty() || self.urgent)
    }

    /// The batch [`Log::poll_flush`] handed out, until it is flushed.
    pub fn in_flight(&self) -> Option<&Flush> {
        self.sealed.front().filter(|_| self.in_flight)
    }

    /// The bytes from `position` to the end of its batch, if `position` is
    /// not durable yet (its batch is still in memory: filling, sealed or
    /// being written). A record never straddles two batches.
    pub fn unflushed(&self, position: u64) -> Option<&[u8]> {
        if position < self.durable || position >= self.head {
            return None;
        }
        let batch = self
            .sealed
            .iter()
            .chain(&self.filling)
            .find(|f| f.segment + f.offset <= position && position < f.end())?;
        let at = usize::try_from(position - batch.segment - batch.offset).expect("inside a batch");
        Some(&batch.bytes[at..])
    }

    /// The batch from [`Log::poll_flush`] is written and synced.
    pub fn handle_flushed(&mut self) {
        assert!(self.in_flight, "handle_flushed without a flush in flight");
        let flush = self.sealed.pop_front().expect("in flight");
        assert_eq!(
            flush.segment + flush.offset,
            self.durable,
            "batches complete in order"
        );
        self.durable = flush.end();
        self.in_flight = false;
        // A batch past the limit holds one large record: not kept.
        if flush.bytes.capacity() <= 2 * self.config.batch_bytes_max {
            self.spare = flush.bytes;
            self.spare.clear();
        }
    }

    /// Frees the buffer kept for the next batch.
    pub fn shrink_to_fit(&mut self) {
        self.spare = Vec::new();
    }

    /// Forgets segment `start` (deleted by reclaim).
    pub fn forget_segment(&mut self, start: u64) {
        assert_ne!(
            start, self.active_segment,
            "the active segment is never reclaimed"
        );
        self.segments.retain(|s| *s != start);
    }

    fn filling_batch(&mut self) -> &mut Flush {
        let create = !self.active_created;
        self.active_created = true;
        let (segment, offset) = (self.active_segment, self.head - self.active_segment);
        let spare = &mut self.spare;
        self.filling.get_or_insert_with(|| Flush {
            segment,
            create,
            offset,
            bytes: std::mem::take(spare),
        })
    }

    fn seal(&mut self) {
        if let Some(batch) = self.filling.take() {
            self.sealed.push_back(batch);
        }
        self.urgent = false;
    }

    fn roll(&mut self) {
        self.seal();
        self.active_segment = self.head;
        self.active_created = false;
        self.segments.push(self.head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DeviceRef;

    #[test]
    fn a_lazy_record_rides_the_next_due_batch_or_waits_to_be_sealed() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        let lazy = log.append_lazy(&device(1));
        assert!(log.lazy_pending());
        assert_eq!(log.poll_flush(), None, "a lazy record alone is not due");
        let urgent = log.append(&device(2));
        assert!(!log.lazy_pending());
        let flush = log.poll_flush().unwrap().clone();
        assert_eq!((flush.offset, flush.end()), (lazy, log.head()));
        assert!(urgent > lazy);
        log.handle_flushed();
        assert_eq!(log.durable(), log.head(), "both in one batch");

        let alone = log.append_lazy(&device(3));
        assert_eq!(log.poll_flush(), None);
        log.seal_lazy();
        assert!(!log.lazy_pending());
        let flush = log.poll_flush().unwrap().clone();
        assert_eq!(flush.segment + flush.offset, alone);
        log.handle_flushed();
        assert_eq!(log.durable(), log.head());
        assert_eq!(log.poll_flush(), None, "nothing left");
    }

    #[test]
    fn a_batch_is_ready_when_poll_flush_would_hand_it_out() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        assert!(!log.flush_ready(), "nothing written");
        log.append_lazy(&device(1));
        assert!(!log.flush_ready(), "a lazy record alone is not due");
        log.append(&device(2));
        assert!(log.flush_ready());
        assert!(log.poll_flush().is_some());
        log.append(&device(3));
        assert!(!log.flush_ready(), "one batch in flight at a time");
        log.handle_flushed();
        assert!(log.flush_ready(), "the next one filled meanwhile");
        assert!(log.poll_flush().is_some());
        log.handle_flushed();
        assert!(!log.flush_ready());
        assert_eq!(log.poll_flush(), None);
    }

    #[test]
    fn the_batch_in_flight_is_the_one_handed_out_until_flushed() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        log.append(&device(1));
        assert_eq!(log.in_flight(), None, "nothing handed out yet");
        let handed = log.poll_flush().unwrap().clone();
        log.append(&device(2)); // the next batch fills meanwhile
        assert_eq!(log.in_flight(), Some(&handed));
        log.handle_flushed();
        assert_eq!(log.in_flight(), None);
    }

    #[test]
    fn a_record_not_durable_yet_is_read_from_its_batch_in_memory() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        let first = log.append(&device(1));
        log.poll_flush().unwrap(); // in flight
        let second = log.append(&device(2)); // filling
        for (position, n) in [(first, 1), (second, 2)] {
            let bytes = log.unflushed(position).expect("in memory");
            assert_eq!(record::decode(bytes).unwrap().0, device(n));
        }
        assert_eq!(log.unflushed(log.head()), None, "nothing there yet");
        log.handle_flushed();
        assert_eq!(log.unflushed(first), None, "durable: on the disk");
        assert!(log.unflushed(second).is_some());
    }

    #[test]
    fn a_written_batch_lends_its_buffer_to_the_next() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        for n in 0..100 {
            log.append(&device(n));
        }
        let capacity = log.poll_flush().unwrap().bytes.capacity();
        log.handle_flushed();
        log.append(&device(100));
        let head = log.head();
        let next = log.poll_flush().unwrap();
        assert_eq!(
            next.bytes.capacity(),
            capacity,
            "the buffer is reused, not grown again from nothing"
        );
        assert_eq!(next.end(), head, "holding only the new record");
    }

    #[test]
    fn a_lazy_record_after_an_urgent_one_keeps_the_batch_due() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        log.append(&device(1));
        log.append_lazy(&device(2));
        assert!(!log.lazy_pending());
        let flush = log.poll_flush().unwrap().clone();
        assert_eq!(flush.end(), log.head(), "the lazy one rides along");
    }

    fn device(n: u64) -> Record<'static> {
        Record::Device {
            device: DeviceRef { user: n, device: 0 },
            registered_ms: 0,
            next_seq: 0,
        }
    }

    #[test]
    fn a_lone_append_flushes_at_once_and_the_next_batch_fills_meanwhile() {
        let mut log = Log::resume(LogConfig::default(), Vec::new(), 0);
        let first = log.append(&device(1));
        let flush = log.poll_flush().unwrap().clone();
        assert!(
            flush.create,
            "the first segment is created by its first flush"
        );
        assert_eq!((flush.segment, flush.offset), (0, 0));
        let second = log.append(&device(2));
        let third = log.append(&device(3));
        assert!(log.poll_flush().is_none(), "one flush in flight at a time");
        assert_eq!(log.durable(), 0);
        log.handle_flushed();
        assert!(log.durable() > first && log.durable() <= second);
        let next = log.poll_flush().unwrap().clone();
        assert!(!next.create);
        assert_eq!(
            next.offset, second,
            "the two appends made while waiting form one batch"
        );
        log.handle_flushed();
        assert!(log.durable() > third);
        assert!(log.poll_flush().is_none(), "nothing left");
    }

    #[test]
    fn segments_roll_at_the_size_limit_and_batches_never_span_them() {
        let config = LogConfig {
            segment_bytes_max: 100,
            batch_bytes_max: 1 << 20,
        };
        let mut log = Log::resume(config, Vec::new(), 0);
        let positions: Vec<u64> = (0..10).map(|n| log.append(&device(n))).collect();
        let mut flushes = Vec::new();
        while let Some(f) = log.poll_flush() {
            flushes.push(f.clone());
            log.handle_flushed();
        }
        assert!(flushes.len() > 1);
        for f in &flushes {
            assert!(f.offset + f.bytes.len() as u64 <= 100, "{f:?}");
        }
        assert_eq!(
            log.segments().len(),
            flushes.iter().filter(|f| f.create).count()
        );
        assert_eq!(log.durable(), log.head());
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn batches_are_bounded_in_bytes() {
        let config = LogConfig {
            segment_bytes_max: 1 << 30,
            batch_bytes_max: 64,
        };
        let mut log = Log::resume(config, Vec::new(), 0);
        for n in 0..20 {
            log.append(&device(n));
        }
        let mut sizes = Vec::new();
        while let Some(f) = log.poll_flush() {
            sizes.push(f.bytes.len());
            log.handle_flushed();
        }
        assert!(sizes.len() >= 5, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s < 64 + 40), "{sizes:?}");
    }
}
