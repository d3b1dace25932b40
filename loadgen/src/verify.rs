//! End-to-end verification, independent of the server: each payload
//! carries (run, stream, counter, send time) inside the opaque bytes; a
//! [`Stream`] is one sender→device flow and keeps which counters were ✓'d
//! and which arrived, so the run can state lost, duplicated and reordered.
//! Also [`Link`]: a connection that reconnects and resumes by itself.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use client::{ClientCore, ClientEvent, Connection};

use crate::live::Recorder;
use crate::report::Counter;
use crate::target::{GaveUp, Target};

/// Bytes of the verification header at the start of every payload.
pub const HEADER: usize = 32;

/// Bytes of each allocation payloads are cut from: about 160 payloads of
/// 100 B (a chunk is reused once every payload cut from it is dropped).
pub const ARENA_BYTES: usize = 16 * 1024;

thread_local! {
    /// The arena of every sender on this thread ([`Stamp::payload_here`]).
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run that sent it (messages from other runs are stale).
    pub run: u64,
    /// The sender→recipient flow.
    pub stream: u64,
    /// Position in the flow, from 0.
    pub counter: u64,
    /// Send (or scheduled send) time, ns since the Unix epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// A payload of `len` bytes (at least [`HEADER`]) carrying this stamp.
    pub fn payload(&self, len: usize) -> Bytes {
        self.payload_in(len, &mut BytesMut::new())
    }

    /// [`Stamp::payload`] cut from this thread's arena. One arena for all
    /// the thread's senders: the reference count that every payload's
    /// cut, write and ✓ touches stays in cache. With an arena per sender
    /// it was a cache miss each time (1,000 senders' arenas): 3.6% of
    /// loadgen's CPU in closed loop went to the cut alone.
    pub fn payload_here(&self, len: usize) -> Bytes {
        ARENA.with(|arena| self.payload_in(len, &mut arena.borrow_mut()))
    }

    /// [`Stamp::payload`] cut from `arena`: the payloads cut from one arena
    /// share [`ARENA_BYTES`] allocations (one per about 160 sends, reused
    /// once every payload cut from it is dropped) instead of one each.
    pub fn payload_in(&self, len: usize, arena: &mut BytesMut) -> Bytes {
        let len = len.max(HEADER);
        if arena.capacity() < len {
            arena.reserve(ARENA_BYTES.max(len));
        }
        for v in [self.run, self.stream, self.counter, self.sent_ns] {
            arena.extend_from_slice(&v.to_le_bytes());
        }
        arena.resize(len, 0x5a);
        arena.split().freeze()
    }

    /// Reads the stamp back (None if the payload is too short).
    pub fn read(p: &[u8]) -> Option<Self> {
        let field = |i: usize| {
            let bytes = p.get(i * 8..i * 8 + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        Some(Self {
            run: field(0)?,
            stream: field(1)?,
            counter: field(2)?,
            sent_ns: field(3)?,
        })
    }
}

/// How a received message compares with what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time, in order.
    InOrder,
    /// First time, after a later counter.
    Reordered,
    /// Seen before.
    Duplicate,
}

/// One flow's bookkeeping.
#[derive(Debug, Default)]
pub struct Stream {
    acked: Vec<u64>,
    received: Vec<u64>,
    highest: Option<u64>,
    acked_count: u64,
    received_unique: u64,
    /// The sender sends no more.
    pub sender_done: bool,
}

fn set(bits: &mut Vec<u64>, i: u64) -> bool {
    let (word, bit) = (usize::try_from(i / 64).expect("64-bit"), i % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was = bits[word] >> bit & 1 == 1;
    bits[word] |= 1 << bit;
    !was
}

impl Stream {
    /// The server answered ✓ for `counter`.
    pub fn acked(&mut self, counter: u64) {
        if set(&mut self.acked, counter) {
            self.acked_count += 1;
        }
    }

    /// `counter` arrived at the recipient.
    pub fn received(&mut self, counter: u64) -> Arrival {
        if !set(&mut self.received, counter) {
            return Arrival::Duplicate;
        }
        self.received_unique += 1;
        let reordered = self.highest.is_some_and(|h| counter < h);
        self.highest = Some(self.highest.map_or(counter, |h| h.max(counter)));
        if reordered {
            Arrival::Reordered
        } else {
            Arrival::InOrder
        }
    }

    /// Every ✓'d message arrived and the sender is done.
    pub fn complete(&self) -> bool {
        self.sender_done && self.received_unique >= self.acked_count && self.lost() == 0
    }

    /// ✓'d but not (yet) received.
    pub fn lost(&self) -> u64 {
        let words = self.acked.len().max(self.received.len());
        (0..words)
            .map(|w| {
                let a = self.acked.get(w).copied().unwrap_or(0);
                let r = self.received.get(w).copied().unwrap_or(0);
                u64::from((a & !r).count_ones())
            })
            .sum()
    }
}

/// Counts an arrival in the recorder; returns whether it was new.
pub fn count_arrival(rec: &RefCell<Recorder>, arrival: Arrival) -> bool {
    let mut r = rec.borrow_mut();
    r.add(Counter::Delivered, 1);
    match arrival {
        Arrival::InOrder => true,
        Arrival::Reordered => {
            r.add(Counter::Reordered, 1);
            true
        }
        Arrival::Duplicate => {
            r.add(Counter::Duplicated, 1);
            false
        }
    }
}

/// A device's connection that survives the gateway going away: on close
/// it reconnects with the same core state (unanswered sends go again with
/// their ids; the backlog resumes after the last acknowledged seq).
pub struct Link {
    conn: Connection,
    user: u64,
    device: u32,
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
}

impl Link {
    /// Logs user/device in (retrying until `give_up`).
    pub async fn open(
        target: Rc<Target>,
        rec: Rc<RefCell<Recorder>>,
        user: u64,
        device: u32,
        give_up: Instant,
        storm: bool,
    ) -> Result<(Self, u32), GaveUp> {
        let (conn, backlog) = target
            .open(|| target.core(user, device), &rec, give_up, storm)
            .await?;
        let link = Self {
            conn,
            user,
            device,
            target,
            rec,
        };
        Ok((link, backlog))
    }

    /// The protocol core (send and ack through it).
    pub fn core(&mut self) -> &mut ClientCore {
        self.conn.core()
    }

    /// Waits up to `wait` for events and appends them to `out`; reconnects
    /// if the connection ended (retrying until `give_up`).
    pub async fn poll(
        &mut self,
        wait: Duration,
        out: &mut Vec<ClientEvent>,
        give_up: Instant,
    ) -> Result<(), GaveUp> {
        match self.conn.next_event_within(wait).await {
            Ok(Some(first)) => {
                out.push(first);
                while let Some(e) = self.conn.core().poll_event() {
                    out.push(e);
                }
            }
            Ok(None) => {}
            Err(_) => {}
        }
        if self.conn.core().is_closed() {
            self.reconnect(give_up).await?;
        }
        Ok(())
    }

    async fn reconnect(&mut self, give_up: Instant) -> Result<(), GaveUp> {
        self.rec.borrow_mut().conns(-1);
        let token = self.target.token(self.user, self.device);
        let old = &self.conn;
        let (conn, _) = self
            .target
            .open(
                || old.core_ref().reconnect(&token),
                &self.rec,
                give_up,
                false,
            )
            .await?;
        self.conn = conn;
        self.rec.borrow_mut().add(Counter::Reconnects, 1);
        Ok(())
    }

    /// Writes what is queued and closes.
    pub async fn close(mut self) {
        let _ = self.conn.finish().await;
        self.rec.borrow_mut().conns(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_short_payloads_are_rejected() {
        let s = Stamp {
            run: 7,
            stream: 3,
            counter: 99,
            sent_ns: 1_700_000_000_000_000_000,
        };
        let p = s.payload(100);
        assert_eq!(p.len(), 100);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(Stamp::read(&p[..31]), None);
    }

    #[test]
    fn payloads_cut_from_one_arena_are_whole_and_adjacent() {
        let mut arena = BytesMut::new();
        let stamp = |counter| Stamp {
            run: 1,
            stream: 2,
            counter,
            sent_ns: 3,
        };
        let (a, b) = (
            stamp(0).payload_in(100, &mut arena),
            stamp(1).payload_in(40, &mut arena),
        );
        assert_eq!((a.len(), b.len()), (100, 40));
        assert_eq!(Stamp::read(&a), Some(stamp(0)));
        assert_eq!(Stamp::read(&b), Some(stamp(1)));
        assert_eq!(
            a,
            stamp(0).payload(100),
            "same bytes as a payload of its own"
        );
        assert_eq!(a.as_ptr_range().end, b.as_ptr(), "one allocation");
    }

    #[test]
    fn a_stream_tells_lost_duplicate_and_reordered_apart() {
        let mut s = Stream::default();
        for c in 0..5 {
            s.acked(c);
        }
        s.sender_done = true;
        assert_eq!(s.received(0), Arrival::InOrder);
        assert_eq!(s.received(2), Arrival::InOrder);
        assert_eq!(s.received(1), Arrival::Reordered);
        assert_eq!(s.received(2), Arrival::Duplicate);
        assert_eq!(s.lost(), 2, "3 and 4 were ✓'d and never came");
        assert!(!s.complete());
        s.received(3);
        s.received(4);
        assert_eq!(s.lost(), 0);
        assert!(s.complete());
        s.acked(4); // a duplicate ✓ (a retry) counts once
        assert_eq!(s.acked_count, 5);
    }
}
