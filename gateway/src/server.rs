//! The server shell: one pinned glommio executor per shard, each with its
//! own `SO_REUSEPORT` listener, its [`ShardCore`], its log directory and its
//! ends of the channel mesh. This is the only place bytes meet sockets,
//! files and TLS; every decision is the core's.
//!
//! Per shard, these tasks share the core (one thread, no locks):
//! - the acceptor, spawning one task per connection;
//! - a connection task: rustls over the socket. Reads go through one
//!   shard-wide scratch buffer borrowed only while a read completes, so an
//!   idle connection holds no read buffer; the core's output for it is
//!   written as one TLS write per wake-up (frames coalesce);
//! - the flusher: group commit. The write + fdatasync of a batch go
//!   through the executor's io_uring (`uring_log.rs`), so the executor
//!   keeps serving while the disk syncs, and the next batch fills
//!   meanwhile;
//! - the exchange: batches to and from other shards over the mesh's rings
//!   (`mesh.rs`), sleeping on this shard's doorbell;
//! - the timer: sleeps until the core's next deadline
//!   ([`ShardCore::poll_timeout`]), woken early when an input brings one
//!   closer;
//! - the ticker: metrics and the drain flag, every 100 ms.
//!
//! An I/O error on the log is fail-stop: the shard's core is told, the
//! shard is marked not ready, the error is logged with the shard and the
//! process exits with status 70 (the supervisor restarts it; recovery
//! replays the log, and nothing unsynced was ✓'d).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt, FutureExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement as Cpu};
use queue_engine::{Engine, EngineConfig, FsStorage};
use rustc_hash::FxHashMap;
use shard_router::{ConnId, Placement, RouterConfig, RouterCore, ShardId, ShardMsg};
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, Now};
use crate::mesh::{Mesh, MeshEnd, RING_BATCHES_MAX};
use crate::metrics::Metrics;
use crate::notify::Notify;
use crate::pacer::CommitPacer;
use crate::pool::BufPool;
use crate::quiet::Quiet;
use crate::shard::{Note, ShardConfig, ShardCore, UserInfo};
use crate::tls::{TlsConn, TlsConnError, TlsEvent};
use crate::token::Verifier;
use crate::uring_log::{Place, UringLog};

/// Bytes of the shard-wide read scratch (one TLS record plus overhead).
const SCRATCH_BYTES: usize = 18 * 1024;
/// Plaintext bytes encrypted and written at a time.
const WRITE_CHUNK: usize = 48 * 1024;
/// Capacity above which a write buffer is not kept for reuse.
const WRITE_BUF_KEEP: usize = 64 * 1024;
/// Write buffers a shard keeps for reuse: as many as are usually in
/// flight at once. Thousands can be, behind slow readers; they are freed
/// when written rather than kept at that high-water mark.
const WRITE_BUFS_KEPT: usize = 64;
/// Write buffers kept however quiet the shard (the pool is trimmed every
/// `WRITE_BUFS_TRIM` to what was in use).
const WRITE_BUFS_FLOOR: usize = 4;
const WRITE_BUFS_TRIM: Duration = Duration::from_secs(1);
/// How long runnable tasks may run before the executor reaps I/O
/// completions. glommio's default (100 ms) is a latency floor once
/// thousands of connection tasks are runnable; 1 ms keeps ✓ latency low.
const PREEMPT: Duration = Duration::from_millis(1);
/// How often metrics are published and the drain flag is looked at.
const TICK: Duration = Duration::from_millis(100);
/// Batches taken from each peer's ring before other tasks get a turn.
const RECV_BATCHES_PER_TURN: usize = 64;
/// How often a shard looks whether reclaim is due.
const RECLAIM_CHECK: Duration = Duration::from_millis(500);
/// Records copied forward between two yields of a reclaim.
const RECLAIM_RECORDS_PER_SLICE: usize = 4096;
/// Checks in a row with nothing to reclaim after which the read buffer (a
/// segment's size) is freed: kept while reclaim runs, not for a quiet
/// shard's life.
const RECLAIM_SPACE_IDLE_CHECKS: u32 = 20;
/// Exit status after an I/O error on the log (EX_SOFTWARE).
pub const EXIT_LOG_FAILED: i32 = 70;

/// What every shard needs to start.
#[derive(Clone)]
pub struct ServerSpec {
    /// Executors.
    pub shards: usize,
    /// Parent of the per-shard log directories.
    pub data_dir: PathBuf,
    /// TLS.
    pub tls: Arc<rustls::ServerConfig>,
    /// Token keys.
    pub verifier: Arc<Verifier>,
    /// Per-shard settings.
    pub shard: ShardConfig,
    /// Queue engine settings.
    pub engine: EngineConfig,
    /// Where metrics go.
    pub metrics: Arc<Metrics>,
    /// Shared with the admin endpoint and signal handler.
    pub control: Arc<Control>,
    /// Where push wake-ups go (`None`: no push notifier).
    pub notifier: Option<Arc<crate::push::Notifier>>,
    /// A connection silent this long (at most twice it) lets its TLS keys'
    /// expanded form go; `None`: never.
    pub tls_keys_idle: Option<Duration>,
    /// Whether each shard keeps to one CPU ([`crate::cpus`]).
    pub pin_shards: crate::cpus::PinShards,
    /// How far apart back-to-back log writes are held ([`CommitPacer`]).
    pub commit_delay: Duration,
}

/// Process-wide flags: readiness and drain.
#[derive(Debug, Default)]
pub struct Control {
    /// Shards that are listening.
    pub listening: AtomicUsize,
    /// Drain requested (admin `POST /drain`, SIGTERM or SIGINT; shared
    /// with the signal handlers, which set it directly).
    pub drain: Arc<AtomicBool>,
    /// Shards that finished draining.
    pub drained: AtomicUsize,
    /// Shards whose log failed (the process is exiting).
    pub failed: AtomicUsize,
    /// Each shard's [`Stage`], for the start-up watchdog.
    stages: Vec<AtomicU8>,
    /// Operator requests for each shard (a user's home), taken by its
    /// ticker.
    jobs: Vec<Mutex<VecDeque<AdminJob>>>,
}

/// An operator's request about one user, for the user's home shard.
#[derive(Debug)]
pub struct AdminJob {
    /// The user.
    pub user: u64,
    /// What to do.
    pub op: AdminOp,
    /// Where the answer goes.
    pub reply: std::sync::mpsc::Sender<AdminAnswer>,
}

/// What an [`AdminJob`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    /// List the user's linked devices.
    Devices,
    /// Unlink this device.
    Unlink(u32),
    /// The user's devices, online state, queues and settings.
    Info,
    /// Close the user's sessions (one device, or all) with `Kicked`.
    Kick(Option<u32>),
    /// Ban the user until then (ms since the epoch; 0 lifts it).
    Ban {
        /// The end of the ban.
        until_ms: u64,
    },
    /// The push service rejected this device's token: forget it (unless
    /// the device registered another meanwhile).
    ForgetPushToken {
        /// The device.
        device: u32,
        /// The rejected token.
        token: Vec<u8>,
    },
}

/// The answer to an [`AdminJob`].
#[derive(Debug, Clone, PartialEq)]
pub enum AdminAnswer {
    /// The user's linked devices.
    Devices(Vec<wire_format::fb::DeviceInfo>),
    /// The device was unlinked.
    Unlinked,
    /// The user has no such linked device.
    UnknownDevice,
    /// What the operator sees of the user.
    Info(UserInfo),
    /// This many sessions were closed.
    Kicked(usize),
    /// The ban now ends then (0: none).
    Banned {
        /// The end of the ban.
        until_ms: u64,
    },
    /// A rejected push token was handled (forgotten, or already replaced).
    Forgotten(bool),
}

/// Where a shard is in its start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Its executor is being made.
    Starting = 0,
    /// Replaying its log.
    Recovering = 1,
    /// Accepting connections.
    Serving = 2,
}

impl Stage {
    /// What the shard is doing, for a log line.
    pub fn doing(self) -> &'static str {
        match self {
            Self::Starting => "starting its executor",
            Self::Recovering => "recovering its log",
            Self::Serving => "serving",
        }
    }
}

impl Control {
    /// Queues an operator's request for `shard`'s ticker.
    pub fn submit(&self, shard: usize, job: AdminJob) {
        self.jobs[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(job);
    }

    /// Flags for `shards` shards, all [`Stage::Starting`].
    pub fn new(shards: usize) -> Self {
        Self {
            stages: (0..shards).map(|_| AtomicU8::new(0)).collect(),
            jobs: (0..shards).map(|_| Mutex::default()).collect(),
            ..Self::default()
        }
    }

    fn set_stage(&self, shard: usize, stage: Stage) {
        self.stages[shard].store(stage as u8, Ordering::SeqCst);
    }

    /// The first shard not yet serving, and its stage.
    pub fn not_serving(&self) -> Option<(usize, Stage)> {
        self.stages
            .iter()
            .enumerate()
            .find_map(|(i, s)| match s.load(Ordering::SeqCst) {
                0 => Some((i, Stage::Starting)),
                1 => Some((i, Stage::Recovering)),
                _ => None,
            })
    }
}

/// Starts every shard, each on one of `listeners` (see
/// [`crate::listen::listeners`]); returns their join handles.
pub fn start(
    spec: ServerSpec,
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<Vec<glommio::ExecutorJoinHandle<()>>> {
    assert_eq!(listeners.len(), spec.shards, "one listener per shard");
    let mesh = Mesh::<ShardMsg<Note>>::new(spec.shards, RING_BATCHES_MAX)?;
    let cpus = crate::cpus::shard_cpus(
        spec.pin_shards,
        &crate::cpus::allowed(),
        crate::cpus::online(),
        spec.shards,
    );
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (spec, mesh) = (spec.clone(), mesh.clone());
        let id = ShardId(u16::try_from(i).expect("fewer than 65,536 shards"));
        let cpu = cpus[i].map_or(Cpu::Unbound, Cpu::Fixed);
        let handle = LocalExecutorBuilder::new(cpu)
            .name(&format!("shard-{i}"))
            .preempt_timer(PREEMPT)
            .spawn(move || async move {
                let listener = crate::fd::glommio_listener(listener);
                if let Err(e) = run_shard(spec, mesh.end(id), listener).await {
                    error!(shard = i, "shard stopped: {e}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// One shard's shared state.
struct Shard {
    id: u16,
    core: RefCell<ShardCore<FsStorage>>,
    wakers: RefCell<FxHashMap<ConnId, Rc<Notify>>>,
    outbox: Notify,
    flush: Notify,
    spec: ServerSpec,
    scratch: RefCell<Vec<u8>>,
    /// Write buffers lent to connection tasks while their bytes are in
    /// flight (so an idle connection holds none).
    write_bufs: RefCell<BufPool>,
    clock: Clock,
    timer: Notify,
    /// The monotonic ms the timer task sleeps until.
    timer_at: Cell<u64>,
    /// Batches the mesh holds for other shards' full rings (the exchange
    /// task's count, for the budget).
    peer_held: Cell<usize>,
    /// The position of the last checkpoint written (or loaded).
    checkpoint_at: Cell<Option<u64>>,
    /// Connections that did not read because a budget was spent; woken
    /// when none is.
    paused: RefCell<rustc_hash::FxHashSet<ConnId>>,
    /// The buffer reclaim reads segments into, kept between reclaims.
    reclaim_space: RefCell<Vec<u8>>,
    /// Which connections have gone quiet (their TLS keys then sleep).
    quiet: RefCell<Quiet<ConnId>>,
    /// Times other shards rang this one's doorbell (the exchange task's
    /// reading, for the metrics).
    doorbells: Cell<u64>,
}

impl Shard {
    /// After any input: wake the connections with output, the mesh sender
    /// and the flusher.
    fn kick(&self) {
        let core = self.core.borrow();
        if let Some(why) = core.failed() {
            self.fail_stop(why);
        }
        if core.poll_timeout() < self.timer_at.get() {
            self.timer.notify();
        }
        drop(core);
        let ready = self.core.borrow_mut().take_ready();
        let wakers = self.wakers.borrow();
        for conn in ready {
            if let Some(w) = wakers.get(&conn) {
                w.notify();
            }
        }
        self.outbox.notify();
        self.flush.notify();
        if !self.paused.borrow().is_empty() && self.over_budget().is_none() {
            for conn in self.paused.take() {
                if let Some(w) = wakers.get(&conn) {
                    w.notify();
                }
            }
        }
    }

    /// The spent budget, if any: sockets are not read meanwhile.
    fn over_budget(&self) -> Option<crate::shard::Budget> {
        self.core.borrow().over_budget(self.peer_held.get())
    }

    /// Whether `conn` may read now; if not, it is woken when it may.
    fn may_read(&self, conn: ConnId) -> bool {
        let Some(budget) = self.over_budget() else {
            return true;
        };
        self.spec.metrics.read_paused(self.id, budget.name());
        self.paused.borrow_mut().insert(conn);
        false
    }

    fn now(&self) -> Now {
        self.clock.now()
    }

    /// An empty write buffer from the pool.
    fn write_buf(&self) -> Vec<u8> {
        self.write_bufs.borrow_mut().take()
    }

    /// Returns a write buffer to the pool (dropped if it grew past a
    /// chunk or the pool is full, so the pool stays small).
    fn give_write_buf(&self, buf: Vec<u8>) {
        self.write_bufs.borrow_mut().give(buf);
    }

    /// The log failed: not ready, counted, logged, exit. Never returns.
    fn fail_stop(&self, why: &str) -> ! {
        let control = &self.spec.control;
        control.failed.fetch_add(1, Ordering::SeqCst);
        self.spec.metrics.log_failed(self.id);
        error!(shard = self.id, "stopping the process: {why}");
        std::process::exit(EXIT_LOG_FAILED);
    }
}

async fn run_shard(
    spec: ServerSpec,
    end: MeshEnd<ShardMsg<Note>>,
    listener: TcpListener,
) -> std::io::Result<()> {
    let id = end.shard();
    let dir = spec.data_dir.join(format!("shard-{}", id.0));
    spec.control.set_stage(usize::from(id.0), Stage::Recovering);
    info!(shard = id.0, "recovering the log in {}", dir.display());
    let mut storage = FsStorage::open(&dir)?;
    let started = Instant::now();
    let (engine, found) = Engine::open(&mut storage, spec.engine, crate::clock::wall_ms())
        .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
    drop(storage); // its open files would keep reclaimed segments' space
    let from_checkpoint = found.checkpoint.is_some();
    spec.metrics.recovered(id.0, found.records, from_checkpoint);
    info!(
        shard = id.0,
        devices = engine.devices().count(),
        live_messages = engine.live_messages(),
        checkpoint = ?found.checkpoint,
        records_replayed = found.records,
        "log recovered in {:?}",
        started.elapsed()
    );
    let placement = Placement::single_node(u16::try_from(spec.shards).expect("few shards"));
    let router_config = RouterConfig {
        group_members_max: spec.shard.group_members_max,
        ..RouterConfig::default()
    };
    let router = RouterCore::new(id, placement, router_config);
    let core = ShardCore::new(router, engine, FsStorage::open(&dir)?, spec.shard);
    let shard = Rc::new(Shard {
        id: id.0,
        core: RefCell::new(core),
        wakers: RefCell::new(FxHashMap::default()),
        outbox: Notify::default(),
        flush: Notify::default(),
        spec: spec.clone(),
        scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
        write_bufs: RefCell::new(BufPool::new(WRITE_BUFS_KEPT, WRITE_BUF_KEEP)),
        clock: Clock::new(),
        timer: Notify::default(),
        timer_at: Cell::new(u64::MAX),
        peer_held: Cell::new(0),
        checkpoint_at: Cell::new(found.checkpoint),
        paused: RefCell::new(rustc_hash::FxHashSet::default()),
        reclaim_space: RefCell::new(Vec::new()),
        quiet: RefCell::new(Quiet::new(spec.tls_keys_idle.is_some())),
        doorbells: Cell::new(0),
    });
    glommio::spawn_local(exchange(shard.clone(), end)).detach();
    glommio::spawn_local(flusher(
        shard.clone(),
        UringLog::new(dir.clone(), spec.engine.log.segment_bytes_max),
    ))
    .detach();
    glommio::spawn_local(reclaimer(shard.clone(), dir)).detach();
    spec.control.set_stage(usize::from(id.0), Stage::Serving);
    spec.control.listening.fetch_add(1, Ordering::SeqCst);
    glommio::spawn_local(ticker(shard.clone())).detach();
    glommio::spawn_local(timer(shard.clone())).detach();
    accept_loop(shard, listener).await;
    Ok(())
}

/// The mesh: hands batches from other shards to the core and the core's
/// batches for other shards to their rings; sleeps on the doorbell and the
/// outbox together.
async fn exchange(shard: Rc<Shard>, mut end: MeshEnd<ShardMsg<Note>>) {
    loop {
        let mut got = false;
        let left = end.recv(RECV_BATCHES_PER_TURN, |_, batch| {
            shard.core.borrow_mut().handle_batch(shard.now(), batch);
            got = true;
        });
        loop {
            let next = shard.core.borrow_mut().poll_batch();
            let Some((to, batch)) = next else { break };
            end.send(to, batch);
        }
        let held = end.pending();
        let eased = held < shard.peer_held.replace(held);
        if got || (eased && !shard.paused.borrow().is_empty()) {
            shard.kick();
        }
        if left {
            glommio::yield_if_needed().await;
            continue;
        }
        shard.doorbells.set(end.doorbells());
        end.wait().or(shard.outbox.wait()).await;
    }
}

/// Group commit: one write + fdatasync per batch, on the executor's
/// io_uring; the executor keeps serving while the disk syncs, and the next
/// batch fills meanwhile (and, with `commit_delay_us`, while a write that
/// would follow the last one too closely, when writes already follow each
/// other, is held: [`CommitPacer`]).
async fn flusher(shard: Rc<Shard>, mut log: UringLog) {
    log.make_spare();
    let mut pacer = CommitPacer::new(shard.spec.commit_delay);
    loop {
        shard.flush.wait().await;
        while shard.core.borrow().flush_ready() {
            let hold = pacer.hold(Instant::now());
            if !hold.is_zero() {
                shard.spec.metrics.commit_held(shard.id);
                glommio::timer::sleep(hold).await;
            }
            let place = shard.core.borrow_mut().poll_flush().map(Place::of);
            let Some(place) = place else { break };
            let started = Instant::now();
            let mut len = 0;
            let written = async {
                log.prepare(place).await?;
                // The batch is copied once, into the write's own buffer,
                // while the core lends it (no await holds the borrow).
                let staged = {
                    let core = shard.core.borrow();
                    let flush = core.flush_in_flight().expect("handed out, not flushed");
                    len = flush.bytes.len();
                    log.stage(flush)
                };
                log.write_staged(staged).await
            };
            if let Err(e) = written.await {
                // Fail-stop: nothing waiting on this batch was answered.
                shard.core.borrow_mut().handle_flush_failed(&e);
                let why = shard
                    .core
                    .borrow()
                    .failed()
                    .unwrap_or("log failed")
                    .to_owned();
                shard.fail_stop(&why);
            }
            let seconds = started.elapsed().as_secs_f64();
            shard.spec.metrics.flushed(shard.id, len, seconds);
            pacer.ended(Instant::now());
            shard.core.borrow_mut().handle_flushed(shard.now());
            shard.kick();
        }
    }
}

/// Reclaim inside the server: while the log holds more than twice its
/// live bytes plus a segment, the oldest segment is read and checksummed
/// on the blocking pool, its live records copied forward on the executor a
/// slice at a time (yielding between slices), and it is deleted once the
/// copies are durable. Any I/O error is fail-stop.
async fn reclaimer(shard: Rc<Shard>, dir: PathBuf) {
    let mut idle_checks: u32 = 0;
    loop {
        glommio::timer::sleep(RECLAIM_CHECK).await;
        if checkpoint_due(&shard) {
            write_checkpoint(&shard, &dir).await;
        }
        idle_checks = idle_checks.saturating_add(1);
        if idle_checks == RECLAIM_SPACE_IDLE_CHECKS {
            shard.reclaim_space.take();
        }
        loop {
            // (No borrow of the core may live across the awaits below.)
            let due = shard.core.borrow().reclaim_due();
            let Some(segment) = due else { break };
            idle_checks = 0;
            if let Err(e) = reclaim_one(&shard, &dir, segment).await {
                let mut core = shard.core.borrow_mut();
                core.handle_reclaim_failed(&e.to_string());
                let why = core.failed().unwrap_or("reclaim failed").to_owned();
                drop(core);
                shard.fail_stop(&why);
            }
        }
    }
}

async fn reclaim_one(shard: &Shard, dir: &std::path::Path, segment: u64) -> std::io::Result<()> {
    let started = Instant::now();
    let space = shard.reclaim_space.take();
    let (bytes, records) =
        crate::uring_log::read_for_reclaim(dir.to_owned(), segment, space).await?;
    let mut state = queue_engine::ReclaimState::default();
    for part in records.chunks(RECLAIM_RECORDS_PER_SLICE) {
        shard
            .core
            .borrow_mut()
            .reclaim_part(segment, &bytes, part, &mut state);
        glommio::yield_if_needed().await;
    }
    let after = shard.core.borrow_mut().reclaim_finish(segment, state);
    shard.reclaim_space.replace(bytes.into_space());
    shard.kick(); // the flusher writes the copies
    wait_durable(shard, after).await;
    // A checkpoint inside the segment would be stale once it is gone.
    let next = shard
        .core
        .borrow()
        .engine()
        .log()
        .segments()
        .get(1)
        .copied();
    if shard
        .checkpoint_at
        .get()
        .is_none_or(|p| next.is_some_and(|n| p < n))
    {
        write_checkpoint(shard, dir).await;
    }
    crate::uring_log::delete_segment(dir.to_owned(), segment).await?;
    shard.core.borrow_mut().segment_deleted(segment);
    debug!(
        shard = shard.id,
        segment,
        records = records.len(),
        "reclaimed in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Waits until the log is durable below `position`.
async fn wait_durable(shard: &Shard, position: u64) {
    if shard.core.borrow().engine().durable() < position {
        shard.core.borrow_mut().seal_lazy(); // tombstones too
        shard.kick();
    }
    while shard.core.borrow().engine().durable() < position {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the log grew a segment's worth since the last checkpoint (or
/// the shard drains with anything after it): restart replays only what
/// follows the checkpoint.
fn checkpoint_due(shard: &Shard) -> bool {
    let head = shard.core.borrow().engine().log().head();
    let last = shard.checkpoint_at.get().unwrap_or(0);
    let draining = shard.spec.control.drain.load(Ordering::SeqCst);
    head >= last + shard.spec.engine.log.segment_bytes_max || (draining && head > last)
}

/// Takes a checkpoint of the index (a pass over it, on the executor),
/// waits until the log is durable past it and writes it on the blocking
/// pool. A failure is logged, not fatal: the log stays the truth and a
/// restart then replays more of it.
async fn write_checkpoint(shard: &Shard, dir: &std::path::Path) {
    let started = Instant::now();
    let (position, bytes) = shard.core.borrow().engine().checkpoint();
    let len = bytes.len();
    shard.kick();
    wait_durable(shard, position).await;
    let dir = dir.to_owned();
    let written = glommio::executor()
        .spawn_blocking(move || {
            use queue_engine::Storage;
            FsStorage::open(dir)?.write_checkpoint(&bytes)
        })
        .await;
    match written {
        Ok(()) => {
            shard.checkpoint_at.set(Some(position));
            debug!(
                shard = shard.id,
                position,
                len,
                "checkpoint in {:?}",
                started.elapsed()
            );
        }
        Err(e) => warn!(shard = shard.id, "checkpoint not written: {e}"),
    }
}

/// Lets mimalloc return to the system what this thread freed a while ago.
/// Its delayed purge (`allocator_purge_delay_ms`) runs only inside
/// allocator calls, and an idle shard makes few: after a burst of
/// connections closed, their pages stayed resident (about 600 bytes per
/// idle connection at 19,000 once idle shards stopped waking every
/// millisecond). Does only what is due; cheap when nothing is.
#[allow(unsafe_code)]
fn allocator_collect() {
    // SAFETY: a plain call into mimalloc about the calling thread's heap;
    // no pointers, valid at any time.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

async fn ticker(shard: Rc<Shard>) {
    let mut last = crate::shard::Stats::default();
    let mut drain_deadline: Option<Instant> = None;
    let mut quiet_epoch = shard.spec.tls_keys_idle.map(|idle| Instant::now() + idle);
    let mut trim_at = Instant::now() + WRITE_BUFS_TRIM;
    loop {
        glommio::timer::sleep(TICK).await;
        if Instant::now() >= trim_at {
            trim_at += WRITE_BUFS_TRIM;
            shard.write_bufs.borrow_mut().trim(WRITE_BUFS_FLOOR);
            shard.core.borrow_mut().trim_output_bufs();
            allocator_collect();
        }
        if let (Some(at), Some(idle)) = (&mut quiet_epoch, shard.spec.tls_keys_idle)
            && Instant::now() >= *at
        {
            *at += idle;
            shard.quiet.borrow_mut().end_epoch();
        }
        wake_quiet(&shard);
        let now = shard.now();
        let control = &shard.spec.control;
        if control.drain.load(Ordering::SeqCst) && drain_deadline.is_none() {
            let deadline = shard.spec.shard.session.drain_timeout_ms;
            drain_deadline = Some(Instant::now() + Duration::from_millis(deadline));
            shard.core.borrow_mut().start_drain(now, 1_000);
            info!(shard = shard.id, "draining");
        }
        run_admin_jobs(&shard, now);
        if let Some(notifier) = &shard.spec.notifier {
            let wakes = shard.core.borrow_mut().take_wakes(now);
            notifier.submit(wakes);
        }
        shard.kick();
        let (stats, gauges, conns) = {
            let core = shard.core.borrow();
            let gauges = [
                core.conns() as u64,
                core.engine().live_messages() as u64,
                core.engine().log_bytes(),
                core.engine().live_bytes(),
            ];
            (core.stats().clone(), gauges, core.conns())
        };
        shard.spec.metrics.publish(shard.id, &stats, &last, gauges);
        shard
            .spec
            .metrics
            .doorbells(shard.id, shard.doorbells.get());
        last = stats;
        if let Some(deadline) = drain_deadline
            && (conns == 0 || Instant::now() >= deadline)
        {
            // A planned restart starts from here, replaying nothing.
            let dir = shard.spec.data_dir.join(format!("shard-{}", shard.id));
            write_checkpoint(&shard, &dir).await;
            control.drained.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// Wakes this tick's share of the connections that may have gone quiet,
/// so that those which have let their TLS keys sleep (the others go back
/// to waiting).
fn wake_quiet(shard: &Shard) {
    let woken = shard.quiet.borrow_mut().to_wake();
    let wakers = shard.wakers.borrow();
    for conn in woken {
        if let Some(w) = wakers.get(&conn) {
            w.notify();
        }
    }
}

/// Answers the operator's requests for users homed on this shard.
fn run_admin_jobs(shard: &Shard, now: Now) {
    let jobs: Vec<AdminJob> = {
        let mut queue = shard.spec.control.jobs[shard.id as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.drain(..).collect()
    };
    let mut core = shard.core.borrow_mut();
    for job in jobs {
        let user = job.user;
        let answer = match job.op {
            AdminOp::Devices => AdminAnswer::Devices(core.linked_devices(user)),
            AdminOp::Unlink(device) => match core.admin_unlink(now, user, device) {
                true => AdminAnswer::Unlinked,
                false => AdminAnswer::UnknownDevice,
            },
            AdminOp::Info => AdminAnswer::Info(core.user_info(user)),
            AdminOp::Kick(device) => AdminAnswer::Kicked(core.admin_kick(now, user, device)),
            AdminOp::Ban { until_ms } => {
                core.admin_ban(now, user, until_ms);
                AdminAnswer::Banned { until_ms }
            }
            AdminOp::ForgetPushToken { device, token } => {
                let device = shard_router::DeviceKey::new(user, device);
                AdminAnswer::Forgotten(core.forget_push_token(now, device, &token))
            }
        };
        // The admin thread may have given up waiting: nothing to tell.
        drop(job.reply.send(answer));
    }
}

/// Runs the core's deadlines: sleeps until [`ShardCore::poll_timeout`],
/// or until an input brings the next deadline closer.
async fn timer(shard: Rc<Shard>) {
    loop {
        let at = shard.core.borrow().poll_timeout();
        shard.timer_at.set(at);
        let now = shard.now().mono_ms;
        if at > now {
            let wait = Duration::from_millis(at - now);
            let sleep = async {
                glommio::timer::sleep(wait).await;
            };
            sleep.or(shard.timer.wait()).await;
            continue;
        }
        shard.core.borrow_mut().handle_timeout(shard.now());
        shard.kick();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let opened = shard.core.borrow_mut().open_conn(shard.now());
        let Some(conn) = opened else {
            debug!(
                shard = shard.id,
                "refusing a connection: at the limit or draining"
            );
            continue; // dropped: the client sees the close
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(shard = shard.id, "TCP_NODELAY refused: {e}"); // latency only
        }
        glommio::spawn_local(serve_conn(shard.clone(), stream, conn)).detach();
    }
}

/// What woke a connection task.
enum Wake {
    Read(std::io::Result<usize>),
    Output,
}

/// Bytes of a connection task's state between polls (the future glommio
/// allocates per connection, with the `TlsConn` inside it); pinned by
/// `gateway/tests/conn_memory.rs`.
#[doc(hidden)]
pub fn conn_task_bytes() -> usize {
    fn future_bytes<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }
    future_bytes(serve_conn)
}

/// A connection's task. Not an `async fn`: that would keep its arguments
/// twice in the task's state (as captured and as locals; 136 bytes of
/// every idle connection), where an `async move` block uses what it
/// captured in place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_conn(shard: Rc<Shard>, mut stream: TcpStream, conn: ConnId) -> impl Future<Output = ()> {
    async move {
        let notify = Rc::new(Notify::default());
        shard.wakers.borrow_mut().insert(conn, notify.clone());
        if let Err(e) = drive(&shard, &mut stream, conn, &notify).await {
            debug!(shard = shard.id, "connection ended: {e}");
        }
        shard.wakers.borrow_mut().remove(&conn);
        shard.core.borrow_mut().remove_conn(shard.now(), conn);
        shard.kick();
        // The peer may be gone already; the socket is released either way.
        let _ = stream.close().await;
    }
}

/// Serves `conn` until it ends (an `async move` block for the reason
/// [`serve_conn`] gives).
#[allow(clippy::manual_async_fn)] // on purpose: see `serve_conn`
fn drive<'a>(
    shard: &'a Shard,
    stream: &'a mut TcpStream,
    conn: ConnId,
    notify: &'a Notify,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    async move {
        // Made here, not in the caller: a `TlsConn` bound out of a `match`
        // was stored twice in the task's state (2,936 B against 1,808 B).
        let tls = &mut TlsConn::new(shard.spec.tls.clone()).map_err(std::io::Error::other)?;
        // Output made before the handshake ended (a drain's `GoAway`), sent
        // once it has: nothing is encrypted before then.
        let mut early = Vec::new();
        // The quiet epoch this connection was last busy in (see `Quiet`).
        let mut mark = 0;
        loop {
            // Not bound to a local first: one kept across the awaits below
            // would take 48 bytes of every connection's task.
            let Some((mut plaintext, close)) = shard.core.borrow_mut().take_output(conn) else {
                return Ok(());
            };
            if !plaintext.is_empty() {
                shard.quiet.borrow_mut().busy(conn, &mut mark);
            }
            if tls.is_handshaking() && !close {
                early.append(&mut plaintext);
            } else {
                if !early.is_empty() {
                    plaintext.splice(0..0, std::mem::take(&mut early));
                }
                send(shard, stream, tls, &plaintext, close).await?;
                if close {
                    return Ok(());
                }
            }
            shard.core.borrow_mut().give_output(plaintext);
            if shard.quiet.borrow().is_quiet(mark) {
                tls.hibernate();
                shard.spec.metrics.tls_keys_slept(shard.id);
                mark = 0;
            }
            if !tls.is_handshaking() && !shard.may_read(conn) {
                // Backpressure: the peer's bytes wait in TCP buffers.
                notify.wait().await;
                continue;
            }
            let read = async { Wake::Read(read_some(stream, &shard.scratch).await) };
            // Bound first, not matched on in place: a scrutinee's
            // temporary would be kept across the awaits below.
            let wake = read
                .or(async {
                    notify.wait().await;
                    Wake::Output
                })
                .await;
            match wake {
                Wake::Output => continue,
                Wake::Read(Ok(0)) => shard.core.borrow_mut().peer_closed(shard.now(), conn),
                Wake::Read(Ok(n)) => {
                    shard.quiet.borrow_mut().busy(conn, &mut mark);
                    // An `io::Error` (8 bytes) is what waits across the
                    // write, not a `TlsConnError` (64).
                    let (out, taken) = take_input(shard, tls, conn, n);
                    // The handshake's answer, or the alert after a failure.
                    let written = write_out(shard, stream, out).await;
                    taken?;
                    written?;
                }
                Wake::Read(Err(e)) => return Err(e),
            }
            shard.kick();
        }
    }
}

/// Encrypts `plaintext` (then `close_notify` if `close`) and writes it,
/// a bounded chunk at a time. An `async move` block, as [`serve_conn`]'s:
/// its state is part of every connection's task.
#[allow(clippy::manual_async_fn)] // on purpose: see `serve_conn`
fn send<'a>(
    shard: &'a Shard,
    stream: &'a mut TcpStream,
    tls: &'a mut TlsConn,
    plaintext: &'a [u8],
    close: bool,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    async move {
        if tls.is_handshaking() {
            return Ok(()); // closing before the handshake: nothing to encrypt with
        }
        // An offset, not a `chunks` iterator: 16 bytes less of every task.
        let mut at = 0;
        while at < plaintext.len() {
            let chunk = &plaintext[at..plaintext.len().min(at + WRITE_CHUNK)];
            at += chunk.len();
            let out = encrypted(shard, |out| tls.encrypt(chunk, out))?;
            write_out(shard, stream, out).await?;
        }
        if close {
            let out = encrypted(shard, |out| tls.close(out))?;
            write_out(shard, stream, out).await?;
        }
        Ok(())
    }
}

/// A pooled write buffer filled by `fill` (given back if it fails).
fn encrypted(
    shard: &Shard,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), TlsConnError>,
) -> std::io::Result<Vec<u8>> {
    let mut out = shard.write_buf();
    match fill(&mut out) {
        Ok(()) => Ok(out),
        Err(e) => {
            shard.give_write_buf(out);
            Err(std::io::Error::other(e))
        }
    }
}

/// Feeds `n` bytes of the scratch buffer through TLS to the core, and
/// returns what TLS answers (a pooled buffer, to write even when the
/// input failed: it may hold the alert). No await inside: the scratch is
/// not reused before this returns.
fn take_input(
    shard: &Shard,
    tls: &mut TlsConn,
    conn: ConnId,
    n: usize,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = shard.write_buf();
    let taken = read_tls(
        shard,
        tls,
        conn,
        &mut shard.scratch.borrow_mut()[..n],
        &mut out,
    );
    if taken.is_err() {
        shard.spec.metrics.tls_error(shard.id);
    }
    (out, taken.map_err(std::io::Error::other))
}

/// Feeds `input` through TLS to the core; what TLS answers goes to `out`.
fn read_tls(
    shard: &Shard,
    tls: &mut TlsConn,
    conn: ConnId,
    input: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<(), TlsConnError> {
    tls.read(input, out, |event| {
        let mut core = shard.core.borrow_mut();
        match event {
            TlsEvent::HandshakeDone => {
                shard.spec.metrics.handshake(shard.id);
                core.handshake_done(shard.now(), conn);
            }
            TlsEvent::Plaintext(bytes) => {
                core.handle_bytes(shard.now(), conn, bytes, &shard.spec.verifier);
            }
            TlsEvent::PeerClosed => core.peer_closed(shard.now(), conn),
        }
    })
}

/// Writes `out` (if anything is in it) and gives it back to the pool (an
/// `async move` block, as [`send`]).
#[allow(clippy::manual_async_fn)] // on purpose: see `serve_conn`
fn write_out<'a>(
    shard: &'a Shard,
    stream: &'a mut TcpStream,
    out: Vec<u8>,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    async move {
        let written = match out.is_empty() {
            true => Ok(()),
            false => stream.write_all(&out).await,
        };
        shard.give_write_buf(out);
        written
    }
}

/// Reads into the shard's shared scratch buffer, borrowing it only inside
/// each poll: an idle connection waits on readiness holding no buffer.
async fn read_some(stream: &mut TcpStream, scratch: &RefCell<Vec<u8>>) -> std::io::Result<usize> {
    poll_fn(|cx| {
        let mut buf = scratch.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, &mut buf)
    })
    .await
}
