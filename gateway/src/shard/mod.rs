//! [`ShardCore`]: everything one shard decides, sans-IO. It owns the
//! shard's connections (their [`Session`]s, frame decoders and pending
//! output), its router partition ([`RouterCore`]) and its queue engine
//! partition ([`Engine`]). This file holds the type, its state and its
//! log-facing inputs; each role has a file of its own:
//!
//! | file | role |
//! |---|---|
//! | `edge.rs` | the connection edge: sockets' inputs, session events to notes, notes to frames |
//! | `home.rs` | this shard as a device's home: store, resume, the delivery pump, reading records back |
//! | `devices.rs` | linked devices at their user's home: the limit, listing, unlinking (by request, operator or idleness) |
//! | `groups.rs` | groups: this shard as a group's home (changes, the group's order, copies to members' homes) and as a member's home |
//! | `receipts.rs` | acks and receipts: ✓✓ to the senders' homes, tombstones once those are durable, receipts a full queue refused |
//! | `settings.rs` | a user's settings at its home: privacy, bans, push tokens; the operator's kick, ban and user info |
//! | `gaps.rs` | gap notices: telling a device which messages were dropped before it read them (TTL, a full queue) |
//! | `push.rs` | push wake-ups for devices that are not connected, coalesced per interval |
//! | `time.rs` | the timer heap of session deadlines, TTL expiry, housekeeping |
//! | `reply.rs` | encoding a session's replies |
//! | `note.rs` | the notes between shards: [`ToHome`] and [`ToConn`] |
//! | `by_position.rs` | the per-record meta's map: recent records in a ring in log order, the rest hashed |
//!
//! One message, end to end (see `docs/architecture.md`):
//! the sender's shard decodes a `Send` and routes a [`ToHome::Submit`] to the
//! recipient's home shard, which dedups it, assigns per-device seqs and
//! appends it to the log. Once the batch is durable the home answers ✓
//! ([`ToConn::Acked`]) and *pumps* each recipient device: a connected device
//! has a cursor (the last seq sent to it) and gets queued entries in seq
//! order while fewer than `window` are unacknowledged. Backlog and live
//! messages take that one path, so a reconnecting device gets everything
//! once and in order, and a device that does not ack stops being fed
//! (backpressure: nothing is dropped, memory stays bounded). An ack sends a
//! `Delivered` receipt (✓✓) to the sender's home, where it is queued
//! durably for the sender's devices like a message; the acked entries are
//! tombstoned once that receipt is durable.
//!
//! # Driving it
//!
//! Every input takes the time as a [`Now`] (monotonic ms for deadlines,
//! wall ms for timestamps and TTLs). A shell, in this order:
//!
//! 1. feeds what happened: `open_conn`, `handshake_done`, `handle_bytes`,
//!    `peer_closed`, `remove_conn` (sockets); `handle_batch` (another
//!    shard); `handle_flushed` or `handle_flush_failed` (the log);
//!    `handle_timeout` once [`ShardCore::poll_timeout`] has passed;
//!    `start_drain`;
//! 2. checks [`ShardCore::failed`]: once it is `Some`, the log is broken
//!    and the process must exit (fail-stop);
//! 3. polls every output until it is empty: `take_ready` then
//!    `take_output` per connection (write it; close after it if asked),
//!    `poll_batch` (send it to its shard), `poll_flush` (write + fdatasync
//!    it; at most one is in flight);
//!    and, apart, reclaims: while `reclaim_due` names a segment, read it,
//!    `reclaim_part` its records (from `queue_engine::reclaim_scan`), then
//!    `reclaim_finish`, and once the log is durable past the position it
//!    returns, delete the segment and call `segment_deleted`;
//! 4. sleeps until the next input or [`ShardCore::poll_timeout`].

mod by_position;
mod devices;
mod edge;
mod gaps;
mod groups;
mod home;
mod note;
mod push;
mod receipts;
mod reply;
mod settings;
mod time;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use by_position::ByPosition;
use queue_engine::{DeviceRef, Engine, Flush, ReclaimState, Storage};
use rustc_hash::FxHashMap;
use shard_router::{
    ConnId, ConnRef, DeviceId, DeviceKey, GroupId, RouterCore, ShardId, ShardMsg, Target, UserId,
};
use wire_format::fb;
use wire_format::{
    Address, AddressKind, Encoder, FrameDecoder, Limits, device_address, group_address,
    user_address,
};

use crate::abuse::{AbuseConfig, AbuseState};
use crate::clock::Now;
use crate::pool::BufPool;
use crate::session::{Event, Session, SessionConfig};

pub use note::{Note, Receipt, ToConn, ToHome};
pub use push::Wake;
use reply::append;
pub use reply::encode_reply;
pub use settings::{BANNED_FOR_GOOD, DeviceState, PushToken, UserInfo};
pub use time::LAZY_SEAL_MS;

/// Capacity a connection's output buffer starts with: a turn's ✓s and
/// deliveries of a busy connection, so it rarely grows.
const OUT_BUF_START: usize = 4 * 1024;
/// Output buffers kept for reuse (most are given back within the turn).
const OUT_BUFS_KEPT: usize = 64;
/// Capacity above which an output buffer is not kept.
const OUT_BUF_KEEP: usize = 64 * 1024;
/// Output buffers kept however quiet the shard.
const OUT_BUFS_FLOOR: usize = 4;

/// Limits and settings of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardConfig {
    /// Per-connection protocol settings.
    pub session: SessionConfig,
    /// Frame limits.
    pub limits: Limits,
    /// Unacknowledged entries a device is sent before it must ack.
    pub window: usize,
    /// Pending output bytes past which a connection is a slow reader.
    pub out_bytes_max: usize,
    /// Connections this shard holds at most.
    pub conns_max: usize,
    /// Log bytes appended and not yet durable past which the shard stops
    /// reading its sockets (TCP backpressure) until the disk catches up.
    pub log_unsynced_bytes_max: u64,
    /// Batches held for full rings to other shards past which the shard
    /// stops reading its sockets until they drain.
    pub peer_held_batches_max: usize,
    /// Most members a group may have.
    pub group_members_max: usize,
    /// Most linked devices a user may have.
    pub devices_per_user_max: usize,
    /// A device not connected for this long is unlinked, ms.
    pub device_idle_ms: u64,
    /// Seeds the group ids this shard gives out (the shell passes a random
    /// value; tests a fixed one).
    pub id_seed: u64,
    /// Per-sender-device abuse limits.
    pub abuse: AbuseConfig,
    /// At most one push wake-up per device per this many ms; `None`: no
    /// push notifier (no wake-ups are made).
    pub push_interval_ms: Option<u64>,
}

/// A per-shard budget that, once spent, stops the shard reading sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Log bytes not yet durable.
    LogUnsynced,
    /// Batches held for other shards' full rings.
    PeerOutbox,
}

impl Budget {
    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Budget::LogUnsynced => "log_unsynced",
            Budget::PeerOutbox => "peer_outbox",
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            limits: Limits::default(),
            window: 512,
            out_bytes_max: 4 << 20,
            conns_max: 100_000,
            log_unsynced_bytes_max: 64 << 20,
            peer_held_batches_max: 1024,
            group_members_max: shard_router::GROUP_MEMBERS_MAX_DEFAULT,
            devices_per_user_max: 5,
            device_idle_ms: 30 * 24 * 3600 * 1000,
            id_seed: 0,
            abuse: AbuseConfig::default(),
            push_interval_ms: None,
        }
    }
}

/// Counters the shell exports as metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub conns_opened: u64,
    /// Connections closed.
    pub conns_closed: u64,
    /// Connections that authenticated.
    pub authenticated: u64,
    /// Frames decoded.
    pub frames_in: u64,
    /// Frames encoded.
    pub frames_out: u64,
    /// Messages stored (this shard as home).
    pub messages_stored: u64,
    /// Messages and receipts handed to devices.
    pub messages_delivered: u64,
    /// Retries answered with the original.
    pub duplicates: u64,
    /// Receipt records stored (each may cover many messages and acks).
    pub receipts_stored: u64,
    /// Receipts kept for a retry because a recipient's queue was full.
    pub receipts_deferred: u64,
    /// Group changes stored (this shard as the group's home).
    pub group_changes: u64,
    /// Member devices a group message or change skipped: their queue was
    /// full.
    pub group_skipped: u64,
    /// Devices unlinked (by request, operator or idleness).
    pub devices_unlinked: u64,
    /// Settings changes stored (`SettingsSet`).
    pub settings_changed: u64,
    /// Read receipts not relayed because their user turned them off.
    pub read_receipts_suppressed: u64,
    /// Push tokens registered or forgotten by devices.
    pub push_tokens_set: u64,
    /// Sessions the operator closed with `Kicked`.
    pub kicked: u64,
    /// Bans the operator set.
    pub banned: u64,
    /// Push wake-ups handed to the notifier.
    pub push_wakes: u64,
    /// Messages dropped before their device read them (TTL, a full queue
    /// for a group message), each told in a gap notice.
    pub gap_messages: u64,
    /// Gap notices stored.
    pub gap_notices: u64,
    /// Sends and requests refused by each abuse limit
    /// ([`Limit::ALL`] order).
    pub abuse_refused: [u64; 3],
    /// Errors sent, by code.
    pub errors: FxHashMap<u16, u64>,
    /// Internal errors: broken invariants that were counted and logged
    /// instead of crashing the process.
    pub anomalies: u64,
    /// The last of them, for logs and tests.
    pub last_anomaly: Option<&'static str>,
}

/// How many entries the core's bookkeeping holds: once every device has
/// acked everything and disconnected, all of it is zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Internals {
    /// Records whose sender, target and id are kept in memory.
    pub meta: usize,
    /// Connected devices being fed.
    pub cursors: usize,
    /// Things waiting for the log to be durable.
    pub waiting: usize,
    /// Devices with acks whose receipts are not all durable.
    pub acks: usize,
    /// Devices with a receipt floor.
    pub receipted: usize,
    /// Receipts waiting for room in a full queue.
    pub deferred: usize,
    /// Message and receipt records still referenced by a queue.
    pub live_messages: usize,
}

/// What the home shard knows of a stored record without reading it.
#[derive(Debug, Clone, Copy)]
struct Meta {
    from: DeviceKey,
    to: Target,
    message_id: u64,
    at_ms: u64,
    receipt: Option<fb::ReceiptKind>,
    /// Recipient devices that have not acked.
    pending: u32,
}

/// A connected device being fed from its queue.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    conn: ConnRef,
    /// The last seq sent.
    sent: u64,
}

/// Something to do once the log is durable up to a position.
#[derive(Debug)]
enum Waiting {
    Ack {
        reply: ConnRef,
        from: DeviceKey,
        note: ToConn,
    },
    Pump(DeviceKey),
    /// A receipt for this ack is durable: tell the acking device's home.
    Confirm(AckRef),
    /// Send a note to a home (a group's copies and notices leave the
    /// group's home only once what they follow is durable).
    Home {
        from: DeviceKey,
        to: Target,
        note: ToHome,
    },
    /// This shard's part of a group send is durable.
    GroupPart(u64),
    /// Records reclaim copied forward are durable: pump every connected
    /// device (its next entry may have been one of them).
    PumpConnected,
    /// A message for this offline device (with a push token) is durable.
    Wake(DeviceKey),
}

/// A device's ack waiting for its receipts to be durable. `id` tells
/// apart two acks of the same seq (one out of order, one cumulative), so
/// each waits for its own receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckRef {
    device: DeviceKey,
    id: u64,
    /// It is an expiry pass's (see `time.rs`), not a device's ack.
    expiry: bool,
}

/// An ack whose tombstone waits for its receipts: ✓✓ is durable before
/// the message is forgotten, so a crash in between repeats ✓✓ rather than
/// losing it.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    /// Its [`AckRef::id`].
    id: u64,
    seq: u64,
    cumulative: bool,
    /// Receipts not yet durable at their senders' homes.
    receipts: u32,
}

/// A connection of this shard.
#[derive(Debug)]
struct Conn {
    session: Session,
    decoder: FrameDecoder,
    device: Option<DeviceKey>,
    out: Vec<u8>,
    /// Until `Welcome` (boxed: an idle connection past it pays a pointer).
    waiting: Option<Box<BeforeWelcome>>,
    ready: bool,
    /// The deadline of its live entry in the timer heap (`u64::MAX`: none).
    timer_at: u64,
    /// Whether the user's read receipts are relayed (its home says so in
    /// `Welcome` and on every change).
    read_receipts: bool,
    /// The device's abuse limits (from its home with `Welcome`, back to
    /// its home when the connection ends; made on first use).
    abuse: Option<Box<AbuseState>>,
}

/// What a connection keeps until its `Welcome` is written.
#[derive(Debug, Default)]
struct BeforeWelcome {
    /// Frames that arrived before `Welcome` was written: the client sees
    /// `Welcome` first, whichever shard answers first.
    held: Option<Vec<u8>>,
    /// What the device asked for before its home let it in (`Welcome`):
    /// acted on only then, so a refused (unlinked, over the limit) device
    /// never sends anything.
    early: Vec<Event>,
}

/// One shard's decisions. Inputs are `handle_*` (and the socket events of
/// `edge.rs`), outputs `poll_*` and `take_*`; the order a shell drives them
/// in, and what each file owns, is in the module docs above.
#[derive(Debug)]
pub struct ShardCore<S> {
    shard: ShardId,
    config: ShardConfig,
    /// `config.session`, shared by every connection's session.
    session_config: std::rc::Rc<SessionConfig>,
    router: RouterCore<Note>,
    engine: Engine,
    reader: S,
    encoder: Encoder,
    /// Boxed: the map's empty slots (it is at most 7/8 full, and often
    /// half) then cost a pointer each, not a whole `Conn`.
    conns: FxHashMap<ConnId, Box<Conn>>,
    next_conn: u64,
    ready: Vec<ConnId>,
    /// Plaintext buffers lent to connections with output until the shell
    /// has written it ([`ShardCore::give_output`]): an idle connection
    /// holds none and a busy one does not grow a new one every turn.
    out_bufs: BufPool,
    /// The (seq, position) entries one pump sends, reused.
    pump_batch: Vec<(u64, u64)>,
    devices: FxHashMap<UserId, Vec<DeviceId>>,
    cursors: FxHashMap<DeviceKey, Cursor>,
    /// Per live record: recent ones in a ring, the rest in a map split so
    /// its growth never stalls the shard.
    meta: ByPosition<Meta>,
    waiting: VecDeque<(u64, Waiting)>,
    /// Per device, in order, acks whose receipts are not all durable yet.
    acks: FxHashMap<DeviceKey, VecDeque<PendingAck>>,
    /// The id of the next ack ([`AckRef::id`]).
    next_ack: u64,
    /// Per device, the highest seq whose receipts were requested.
    receipted: FxHashMap<DeviceKey, u64>,
    /// Receipts refused by a full queue, retried every tick: (from, to, receipt).
    deferred: VecDeque<receipts::Coalesced>,
    /// Receipts that arrived in this pass over the effects, coalesced.
    receipts_in: Vec<receipts::Coalesced>,
    /// The open record in `receipts_in` of each (from, to, kind).
    receipts_open: FxHashMap<(DeviceKey, Target, fb::ReceiptKind), usize>,
    /// Expiry passes whose `Expired` receipts are not all durable yet: the
    /// entries (gone from the index) and how many receipts are awaited.
    /// Their tombstones wait, so a crash repeats the expiry (and its
    /// receipts) rather than lose them.
    expiring: FxHashMap<u64, (Vec<queue_engine::Expired>, u32)>,
    /// A reclaim is copying or deleting a segment (from its first part to
    /// `segment_deleted`): no expiry starts meanwhile, and no reclaim while
    /// an expiry waits, so a record whose tombstone waits is never dropped.
    reclaiming: bool,
    /// Abuse limits of devices homed here that are not connected.
    abuse: FxHashMap<DeviceKey, Box<AbuseState>>,
    /// Push wake-ups of devices homed here.
    wakes: push::Wakes,
    /// Gap notices gathered in this pass.
    gaps_in: Vec<gaps::Gap>,
    /// Gap notices a full queue refused, retried every second.
    gaps_deferred: Vec<gaps::Gap>,
    /// Group sends (this shard as the group's home) waiting for parts.
    group_sends: FxHashMap<u64, groups::GroupSend>,
    /// The next group send's token.
    next_token: u64,
    /// The state of the group id sequence.
    group_ids: u64,
    draining: bool,
    /// The log failed (fail-stop: the shell exits); why.
    failed: Option<String>,
    /// The latest wall-clock time passed in (for encoded timestamps).
    now_ms: u64,
    /// Session deadlines: (monotonic ms, connection), earliest first.
    timers: BinaryHeap<Reverse<(u64, ConnId)>>,
    /// When TTL expiry and deferred receipts are next looked at (monotonic).
    housekeeping_at: u64,
    /// When idle devices are next looked for (monotonic).
    idle_scan_at: u64,
    /// The latest monotonic time passed in.
    mono_ms: u64,
    /// When the log's tombstones are made due if nothing else has
    /// (monotonic; `u64::MAX`: none wait). Armed by `poll_timeout`.
    lazy_seal_at: std::cell::Cell<u64>,
    stats: Stats,
}

fn device_ref(d: DeviceKey) -> DeviceRef {
    DeviceRef {
        user: d.user.0,
        device: d.device.0,
    }
}

fn device_key(d: DeviceRef) -> DeviceKey {
    DeviceKey::new(d.user, d.device)
}

/// The router's target for a wire address (the session checked its kind).
pub fn target(a: &Address) -> Target {
    match a.kind() {
        AddressKind::Device => Target::Device(DeviceKey::new(a.id(), a.device())),
        AddressKind::Group => Target::Group(GroupId(a.id())),
        _ => Target::User(UserId(a.id())),
    }
}

/// The wire address of a router target.
pub fn address(t: Target) -> Address {
    match t {
        Target::User(u) => user_address(u.0),
        Target::Device(d) => device_address(d.user.0, d.device.0),
        Target::Group(g) => group_address(g.0),
    }
}

impl<S: Storage> ShardCore<S> {
    /// Shard `router.shard()` with its engine (already opened and
    /// recovered) and `reader`, a read handle on the same log.
    pub fn new(
        mut router: RouterCore<Note>,
        engine: Engine,
        reader: S,
        config: ShardConfig,
    ) -> Self {
        for bytes in engine.group_records() {
            match shard_router::GroupRecord::decode(bytes) {
                Some(record) => router.replay_group_record(&record),
                None => tracing::error!("a group record in the log does not decode"),
            }
        }
        let mut devices: FxHashMap<UserId, Vec<DeviceId>> = FxHashMap::default();
        let unlinked = |d: DeviceRef| engine.life(d).is_some_and(|l| l.unlinked_ms != 0);
        for d in engine.devices().filter(|d| !unlinked(*d)) {
            devices
                .entry(UserId(d.user))
                .or_default()
                .push(DeviceId(d.device));
        }
        let mut core = Self {
            shard: router.shard(),
            group_ids: config.id_seed ^ (u64::from(router.shard().0) << 48),
            session_config: std::rc::Rc::new(config.session),
            config,
            router,
            engine,
            reader,
            encoder: Encoder::new(config.limits),
            conns: FxHashMap::default(),
            next_conn: 1,
            ready: Vec::new(),
            out_bufs: BufPool::new(OUT_BUFS_KEPT, OUT_BUF_KEEP),
            pump_batch: Vec::new(),
            devices,
            cursors: FxHashMap::default(),
            meta: ByPosition::default(),
            waiting: VecDeque::new(),
            acks: FxHashMap::default(),
            next_ack: 1,
            receipted: FxHashMap::default(),
            deferred: VecDeque::new(),
            receipts_in: Vec::new(),
            receipts_open: FxHashMap::default(),
            expiring: FxHashMap::default(),
            reclaiming: false,
            abuse: FxHashMap::default(),
            wakes: push::Wakes::default(),
            gaps_in: Vec::new(),
            gaps_deferred: Vec::new(),
            group_sends: FxHashMap::default(),
            next_token: 1,
            draining: false,
            failed: None,
            now_ms: 0,
            timers: BinaryHeap::new(),
            housekeeping_at: 0,
            idle_scan_at: 0,
            mono_ms: 0,
            lazy_seal_at: std::cell::Cell::new(u64::MAX),
            stats: Stats::default(),
        };
        core.finish_unlinks();
        core.replay_settings();
        core
    }

    /// Every input passes the time first.
    fn set_now(&mut self, now: Now) {
        self.now_ms = self.now_ms.max(now.wall_ms);
        self.mono_ms = self.mono_ms.max(now.mono_ms);
    }

    /// Routes `note` to the home of `to`.
    fn send_home(&mut self, now_ms: u64, from: DeviceKey, to: Target, note: ToHome) {
        self.router.route_home(now_ms, from, to, Note::Home(note));
    }

    /// Routes `note` to connection `conn` (of any shard).
    fn send_conn(&mut self, now_ms: u64, conn: ConnRef, from: DeviceKey, to: Target, note: ToConn) {
        self.router
            .route_to_conn(now_ms, conn, from, to, Note::Conn(note));
    }

    /// Something that must never happen did: counted and logged, never
    /// silent (a panic would take every shard of the process down).
    fn anomaly(&mut self, what: &'static str) {
        self.stats.anomalies += 1;
        self.stats.last_anomaly = Some(what);
        tracing::error!(shard = self.shard.0, "internal error: {what}");
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The queue engine (for metrics).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Connections held.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Sizes of the internal bookkeeping (tests check it drains to zero).
    pub fn internals(&self) -> Internals {
        Internals {
            meta: self.meta.len(),
            cursors: self.cursors.len(),
            waiting: self.waiting.len() + self.group_sends.len() + self.expiring.len(),
            acks: self.acks.len(),
            receipted: self.receipted.len(),
            deferred: self.deferred.len()
                + self.receipts_in.len()
                + self.gaps_in.len()
                + self.gaps_deferred.len(),
            live_messages: self.engine.live_messages(),
        }
    }

    // ---- other shards and the log -------------------------------------------

    /// A batch from another shard (or this one, through the mesh).
    pub fn handle_batch(&mut self, now: Now, batch: Vec<ShardMsg<Note>>) {
        self.set_now(now);
        self.router.handle_batch(now.wall_ms, batch);
        self.run_effects(now.wall_ms);
    }

    /// The next batch for another shard.
    pub fn poll_batch(&mut self) -> Option<(ShardId, Vec<ShardMsg<Note>>)> {
        self.router.poll_batch()
    }

    /// The next group-commit batch to write and fdatasync.
    pub fn poll_flush(&mut self) -> Option<&Flush> {
        self.engine.poll_flush()
    }

    /// Whether [`ShardCore::poll_flush`] would hand out a batch now.
    pub fn flush_ready(&self) -> bool {
        self.engine.flush_ready()
    }

    /// The batch [`ShardCore::poll_flush`] handed out, until it is flushed
    /// (a shell that must not hold the core across its write reads it
    /// again here, rather than copying it).
    pub fn flush_in_flight(&self) -> Option<&Flush> {
        self.engine.flush_in_flight()
    }

    /// Writing or syncing the batch from [`ShardCore::poll_flush`] failed.
    /// That is fail-stop: the shell must exit non-zero (the supervisor
    /// restarts it and recovery replays the log). Nothing waiting on the
    /// batch was answered, so nothing unsynced was ✓'d; until the exit the
    /// shard refuses sends with `StorageUnavailable` and is not ready.
    pub fn handle_flush_failed(&mut self, error: &std::io::Error) {
        self.failed = Some(format!("shard {}: log write failed: {error}", self.shard.0));
    }

    /// Why the log failed, if it did (the shard is then not ready).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The budget that is spent, if one is: the shell then reads no socket
    /// (what it has read is handled) until this is `None` again.
    /// `peer_held` is the batches the shell holds for full rings.
    /// Output needs no budget of its own here: a connection's task writes
    /// all its output before it reads again.
    pub fn over_budget(&self, peer_held: usize) -> Option<Budget> {
        let unsynced = self.engine.log().head() - self.engine.durable();
        if unsynced > self.config.log_unsynced_bytes_max {
            return Some(Budget::LogUnsynced);
        }
        (peer_held > self.config.peer_held_batches_max).then_some(Budget::PeerOutbox)
    }

    // ---- reclaim (the shell reads and deletes segments) -----------------------

    /// The oldest segment, if reclaiming it is due (never once failed,
    /// nor while an expiry waits for its receipts).
    pub fn reclaim_due(&self) -> Option<u64> {
        (self.failed.is_none() && self.expiring.is_empty())
            .then(|| self.engine.reclaim_due())
            .flatten()
    }

    /// Copies forward what `records` of `segment` still need (see
    /// [`Engine::reclaim_part`]).
    pub fn reclaim_part(
        &mut self,
        segment: u64,
        bytes: &[u8],
        records: &[(u64, u64)],
        state: &mut ReclaimState,
    ) {
        self.reclaiming = true;
        self.engine.reclaim_part(segment, bytes, records, state);
    }

    /// Ends the reclaim of `segment`; returns the log position the copies
    /// are durable at (delete the segment only then).
    pub fn reclaim_finish(&mut self, segment: u64, state: ReclaimState) -> u64 {
        self.reclaiming = true;
        let reclaimed = self.engine.reclaim_finish(segment, state);
        // What is known of a record follows it to its copy.
        let moved = !reclaimed.moved.is_empty();
        for (old, new) in reclaimed.moved {
            if let Some(meta) = self.meta.remove(old) {
                self.meta.insert(new, meta);
            }
        }
        // A connected device's pump stops at an entry whose copy is not
        // durable yet: it goes on once the copies are.
        if moved && reclaimed.after > 0 {
            self.waiting
                .push_back((reclaimed.after - 1, Waiting::PumpConnected));
        }
        reclaimed.after
    }

    /// The reclaimed `segment` is deleted from storage.
    pub fn segment_deleted(&mut self, segment: u64) {
        self.reclaiming = false;
        self.engine.segment_deleted(segment);
    }

    /// Reading, scanning or deleting a segment for reclaim failed: as
    /// fail-stop as a failed write.
    pub fn handle_reclaim_failed(&mut self, why: &str) {
        let why = format!("shard {}: reclaim failed: {why}", self.shard.0);
        self.failed.get_or_insert(why);
    }

    /// The batch from [`ShardCore::poll_flush`] is durable: answer what
    /// waited for it.
    pub fn handle_flushed(&mut self, now: Now) {
        self.set_now(now);
        let now_ms = now.wall_ms;
        self.engine.handle_flushed();
        let durable = self.engine.durable();
        while self.waiting.front().is_some_and(|(p, _)| *p < durable) {
            let (_, waiting) = self.waiting.pop_front().expect("checked");
            match waiting {
                Waiting::Ack { reply, from, note } => {
                    self.send_conn(now_ms, reply, from, Target::Device(from), note)
                }
                Waiting::Pump(device) => self.pump(now_ms, device),
                Waiting::Confirm(ack) => self.confirm(now_ms, ack),
                Waiting::Home { from, to, note } => self.send_home(now_ms, from, to, note),
                Waiting::GroupPart(token) => self.group_part_done(now_ms, token),
                Waiting::Wake(device) => self.message_for_offline(now_ms, device),
                Waiting::PumpConnected => {
                    let devices: Vec<DeviceKey> = self.cursors.keys().copied().collect();
                    for device in devices {
                        self.pump(now_ms, device);
                    }
                }
            }
        }
        self.run_effects(now_ms);
    }
}
