//! The link between shards: lock-free rings of our own, one per ordered
//! pair of shards, and one doorbell per shard that its executor reads on
//! io_uring. Nothing here uses glommio's cross-executor wake paths (its
//! channel mesh lost wake-ups: a start-up that never joined, a `Welcome`
//! stuck for 30 s).
//!
//! One ring slot carries one batch (a `Vec` of router messages), so a
//! crossing costs one slot and at most one wake-up per destination per
//! turn, whatever the number of messages.
//!
//! The wake-up protocol, per shard `s` with doorbell `b`:
//! - `s` about to sleep: `b.asleep = true`; fence; look at every ring into
//!   `s` (and at ring space for its own pending sends); only if all are
//!   empty, read `b` (a Unix socket, readiness polled on io_uring, the same
//!   path as every client connection).
//! - a sender to `s`: push the batch; fence; if `b.asleep` swaps from
//!   true to false, write one byte to `b`.
//!
//! The two fences make this Dekker's handshake: either the sender sees
//! `asleep` and rings, or `s` sees the batch before it sleeps. A byte
//! written before `s` starts its read stays in the socket, so it is never
//! lost; a stray byte costs one spurious wake-up. A full ring is the same
//! handshake the other way: the sender keeps the batch, sets the ring's
//! `sender_waiting`, and the receiver, after it pops, writes the sender's
//! doorbell whether or not the sender is asleep yet (a byte left unread
//! makes its next wait return at once). Gated on `asleep` like the data
//! path, this wake was lost about every other run of the mesh benchmark's
//! unbatched case (both shards asleep, the sender holding a batch, the
//! ring empty); I did not find why, and ungated it was never lost. A full
//! ring is rare, so its extra syscall costs nothing in practice. Nothing
//! is dropped; a full ring only delays.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;
use futures_lite::AsyncReadExt;
use shard_router::{RouterCore, ShardId, ShardMsg};

/// Ring slots per ordered shard pair.
pub const RING_BATCHES_MAX: usize = 1024;

/// The rings and doorbells of `shards` executors. Clone it into each
/// executor, which takes its own end with [`Mesh::end`].
pub struct Mesh<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Mesh<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    shards: usize,
    /// `rings[from * shards + to]`; the diagonal is unused.
    rings: Vec<Ring<T>>,
    bells: Vec<Bell>,
}

impl<T> Inner<T> {
    /// The ring from shard `from` to shard `to`.
    fn ring(&self, from: usize, to: usize) -> &Ring<T> {
        &self.rings[from * self.shards + to]
    }
}

struct Ring<T> {
    queue: ArrayQueue<Vec<T>>,
    /// The sender holds batches this ring had no room for.
    sender_waiting: AtomicBool,
    /// How many (for stall reports).
    held: AtomicU64,
}

struct Bell {
    asleep: AtomicBool,
    /// Non-blocking write end, shared by every sender.
    tx: UnixStream,
    /// Read end, until its executor takes it.
    rx: Mutex<Option<UnixStream>>,
    rung: AtomicU64,
    /// Sleeps begun and ended on this doorbell (for stall reports).
    sleeps: AtomicU64,
    wakes: AtomicU64,
}

impl Bell {
    /// Wakes the owner if it is (about to be) asleep.
    fn ring(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.rung.fetch_add(1, Ordering::Relaxed);
            // WouldBlock: the socket is full of unread bytes, so the owner
            // wakes anyway. Other errors cannot happen while `rx` lives.
            let _ = (&self.tx).write(&[1]);
        }
    }
}

impl Bell {
    /// Wakes the owner now or at its next wait, asleep or not.
    fn ring_always(&self) {
        self.asleep.store(false, Ordering::SeqCst);
        self.rung.fetch_add(1, Ordering::Relaxed);
        let _ = (&self.tx).write(&[1]);
    }
}

impl<T: Send> Mesh<T> {
    /// A mesh of `shards` with `ring_batches` slots per ordered pair.
    pub fn new(shards: usize, ring_batches: usize) -> std::io::Result<Self> {
        let rings = (0..shards * shards)
            .map(|_| Ring {
                queue: ArrayQueue::new(ring_batches),
                sender_waiting: AtomicBool::new(false),
                held: AtomicU64::new(0),
            })
            .collect();
        let mut bells = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = UnixStream::pair()?;
            tx.set_nonblocking(true)?;
            rx.set_nonblocking(true)?;
            bells.push(Bell {
                asleep: AtomicBool::new(false),
                tx,
                rx: Mutex::new(Some(rx)),
                rung: AtomicU64::new(0),
                sleeps: AtomicU64::new(0),
                wakes: AtomicU64::new(0),
            });
        }
        let inner = Arc::new(Inner {
            shards,
            rings,
            bells,
        });
        Ok(Self { inner })
    }

    /// Shard `shard`'s end, bound to the current glommio executor.
    ///
    /// # Panics
    /// If that end was taken already.
    pub fn end(&self, shard: ShardId) -> MeshEnd<T> {
        let me = usize::from(shard.0);
        let rx = self.inner.bells[me]
            .rx
            .lock()
            .expect("not poisoned")
            .take()
            .expect("each shard takes its end once");
        MeshEnd {
            inner: self.inner.clone(),
            me,
            bell: crate::fd::glommio_unix_stream(rx),
            pending: (0..self.inner.shards).map(|_| VecDeque::new()).collect(),
        }
    }

    /// A one-line picture of every ring and doorbell, for a stall report.
    pub fn state(&self) -> String {
        let mut out = String::new();
        for (s, bell) in self.inner.bells.iter().enumerate() {
            let asleep = bell.asleep.load(Ordering::SeqCst);
            let rung = bell.rung.load(Ordering::Relaxed);
            let sleeps = bell.sleeps.load(Ordering::Relaxed);
            let wakes = bell.wakes.load(Ordering::Relaxed);
            out +=
                &format!("shard {s}: asleep {asleep}, rung {rung}, slept {sleeps}, woke {wakes}; ");
        }
        for from in 0..self.inner.shards {
            for to in (0..self.inner.shards).filter(|&t| t != from) {
                let ring = self.inner.ring(from, to);
                let waiting = ring.sender_waiting.load(Ordering::SeqCst);
                let len = ring.queue.len();
                let held = ring.held.load(Ordering::Relaxed);
                out += &format!(
                    "ring {from}->{to}: {len} batches, {held} held, sender waiting {waiting}; "
                );
            }
        }
        out
    }

    /// How many times shard `shard`'s doorbell was written to.
    pub fn bells_rung(&self, shard: ShardId) -> u64 {
        self.inner.bells[usize::from(shard.0)]
            .rung
            .load(Ordering::Relaxed)
    }
}

/// One executor's end of the mesh. Not `Send`: it lives on its executor.
pub struct MeshEnd<T> {
    inner: Arc<Inner<T>>,
    me: usize,
    bell: glommio::net::UnixStream,
    /// Per destination: batches its ring had no room for, in order.
    pending: Vec<VecDeque<Vec<T>>>,
}

impl<T: Send> MeshEnd<T> {
    /// This end's shard.
    pub fn shard(&self) -> ShardId {
        ShardId(u16::try_from(self.me).expect("fewer than 65,536 shards"))
    }

    /// How many times other shards woke this one through its doorbell.
    pub fn doorbells(&self) -> u64 {
        self.inner.bells[self.me].rung.load(Ordering::Relaxed)
    }

    /// Batches waiting for ring space, over all destinations.
    pub fn pending(&self) -> usize {
        self.pending.iter().map(VecDeque::len).sum()
    }

    fn ring(&self, from: usize, to: usize) -> &Ring<T> {
        self.inner.ring(from, to)
    }

    /// Sends one batch to shard `to`. Never waits: with its ring full the
    /// batch is held (in order) and pushed as the receiver makes room.
    pub fn send(&mut self, to: ShardId, batch: Vec<T>) {
        let to = usize::from(to.0);
        debug_assert_ne!(to, self.me, "a shard does not send to itself");
        let batch = if self.pending[to].is_empty() {
            match self.ring(self.me, to).queue.push(batch) {
                Ok(()) => {
                    fence(Ordering::SeqCst);
                    self.inner.bells[to].ring();
                    return;
                }
                Err(batch) => batch,
            }
        } else {
            batch
        };
        self.pending[to].push_back(batch);
        let ring = self.ring(self.me, to);
        ring.held
            .store(self.pending[to].len() as u64, Ordering::Relaxed);
        ring.sender_waiting.store(true, Ordering::SeqCst);
    }

    /// Pushes held batches into rings that have room.
    fn retry_pending(&mut self) {
        for to in 0..self.inner.shards {
            if self.pending[to].is_empty() {
                continue;
            }
            let ring = self.inner.ring(self.me, to);
            let mut pushed = false;
            while let Some(batch) = self.pending[to].pop_front() {
                if let Err(batch) = ring.queue.push(batch) {
                    self.pending[to].push_front(batch);
                    ring.sender_waiting.store(true, Ordering::SeqCst);
                    break;
                }
                pushed = true;
            }
            ring.held
                .store(self.pending[to].len() as u64, Ordering::Relaxed);
            if pushed {
                fence(Ordering::SeqCst);
                self.inner.bells[to].ring();
            }
        }
    }

    /// Hands up to `budget` batches from each peer to `f`, in each peer's
    /// order, and pushes held sends. Returns whether batches are left.
    pub fn recv(&mut self, budget: usize, mut f: impl FnMut(ShardId, Vec<T>)) -> bool {
        self.retry_pending();
        let mut left = false;
        for from in (0..self.inner.shards).filter(|&p| p != self.me) {
            let ring = self.ring(from, self.me);
            let mut popped = false;
            for _ in 0..budget {
                let Some(batch) = ring.queue.pop() else { break };
                popped = true;
                f(ShardId(u16::try_from(from).expect("few shards")), batch);
            }
            if popped {
                fence(Ordering::SeqCst);
                if ring.sender_waiting.swap(false, Ordering::SeqCst) {
                    self.inner.bells[from].ring_always();
                }
            }
            left |= !ring.queue.is_empty();
        }
        left
    }

    /// Whether [`MeshEnd::recv`] would find anything to do.
    fn has_work(&self) -> bool {
        (0..self.inner.shards).any(|p| {
            p != self.me
                && (!self.ring(p, self.me).queue.is_empty()
                    || (!self.pending[p].is_empty() && !self.ring(self.me, p).queue.is_full()))
        })
    }

    /// Waits until a peer sent a batch or made room for a held one. May
    /// return spuriously; cancel-safe (dropping it mid-wait costs at most
    /// one spurious wake-up later).
    pub async fn wait(&mut self) {
        let inner = self.inner.clone();
        let bell = &inner.bells[self.me];
        bell.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let _awake = Awake(&bell.asleep);
        if self.has_work() {
            return;
        }
        let mut bytes = [0; 64];
        bell.sleeps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.bell.read(&mut bytes).await {
            tracing::error!(shard = self.me, "mesh doorbell read failed: {e}");
        }
        bell.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Clears `asleep` when a wait ends, however it ends.
struct Awake<'a>(&'a AtomicBool);

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Sends every batch `core` has for other shards: one per destination.
pub fn flush_outbox<M: Clone + Send>(end: &mut MeshEnd<ShardMsg<M>>, core: &mut RouterCore<M>) {
    while let Some((to, batch)) = core.poll_batch() {
        end.send(to, batch);
    }
}
