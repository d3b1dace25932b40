//! [`ShardCore`]: everything one shard decides, sans-IO. It owns the
//! shard's connections (their [`Session`]s, frame decoders and pending
//! output), its router partition ([`RouterCore`]) and its queue engine
//! partition ([`Engine`]).
//!
//! The shell feeds it plaintext bytes, batches from other shards, finished
//! flushes and the time; it polls back batches for other shards, the next
//! group-commit flush and the connections with output to write.
//!
//! One message, end to end (see `docs/architecture.md`):
//! the sender's shard decodes a `Send` and routes a [`Note::Submit`] to the
//! recipient's home shard, which dedups it, assigns per-device seqs and
//! appends it to the log. Once the batch is durable the home answers ✓
//! ([`Note::Acked`]) and *pumps* each recipient device: a connected device
//! has a cursor (the last seq sent to it) and gets queued entries in seq
//! order while fewer than `window` are unacknowledged. Backlog and live
//! messages take that one path, so a reconnecting device gets everything
//! once and in order, and a device that does not ack stops being fed
//! (backpressure: nothing is dropped, memory stays bounded). An ack deletes
//! the entries and sends a `Delivered` receipt (✓✓) to the sender's home,
//! where it is queued durably for the sender's devices like a message.

use std::collections::VecDeque;

use bytes::Bytes;
use queue_engine::{
    Accepted, DeviceRef, Engine, Flush, NewMessage, QueueError, Storage, read_message,
};
use rustc_hash::FxHashMap;
use shard_router::{
    ConnId, ConnRef, DeviceId, DeviceKey, Effect, GroupId, PresenceUpdate, RouterCore, ShardId,
    ShardMsg, Target, UserId,
};
use wire_format::fb::{self, ErrorCode};
use wire_format::{
    Address, AddressKind, DeliverHeader, Encoder, FrameDecoder, Limits, OutFrame, device_address,
    group_address, user_address,
};

use crate::session::{Event, Reply, Session, SessionConfig};
use crate::token::Verifier;

/// Marks a stored record as a receipt (in its client message id).
const RECEIPT_FLAG: u64 = 1 << 63;

/// What shards tell each other (the router's message type).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// To the recipient's home: store and deliver this message.
    Submit {
        /// The sending connection, for ✓ or a refusal.
        reply: ConnRef,
        /// The sender's id for it.
        client_msg_id: u64,
        /// Requested TTL in seconds (0 = default).
        ttl_s: u32,
        /// The opaque payload.
        payload: Bytes,
    },
    /// To the sending connection: ✓.
    Acked {
        /// The sender's id.
        client_msg_id: u64,
        /// The server's id.
        message_id: u64,
        /// When it was accepted.
        at_ms: u64,
        /// A retry of a stored message.
        duplicate: bool,
    },
    /// To a connection: a refusal.
    Refused {
        /// Why.
        code: ErrorCode,
        /// The `Send` it is about, or 0.
        client_msg_id: u64,
        /// Close the connection after it.
        fatal: bool,
    },
    /// To a connection: a queued message.
    Message {
        /// Its seq in the device's queue.
        seq: u64,
        /// The server's id.
        message_id: u64,
        /// When it was accepted.
        at_ms: u64,
        /// The opaque payload.
        payload: Bytes,
    },
    /// To a connection: a queued receipt; to a home: store one.
    Receipt {
        /// Its seq in the device's queue (0 on the way to the home).
        seq: u64,
        /// Delivered, read or expired.
        kind: fb::ReceiptKind,
        /// The messages it is about.
        message_ids: Vec<u64>,
        /// When it happened.
        at_ms: u64,
        /// On the way to the sender's home for a `Delivered` receipt: the
        /// ack to confirm once the receipt is durable.
        confirm: Option<AckRef>,
    },
    /// To a device's home: the receipts for its ack `seq` are durable at
    /// one sender's home.
    ReceiptStored {
        /// The ack.
        seq: u64,
    },
    /// To a device's home: the device connected on `reply`; stream its
    /// queue after `after_seq`.
    Resume {
        /// The connection.
        reply: ConnRef,
        /// The device's last acknowledged seq.
        after_seq: u64,
    },
    /// To a connection: the answer to [`Note::Resume`].
    Welcome {
        /// Entries queued after the resume point.
        backlog_count: u32,
    },
    /// To a device's home: the device acknowledged `seq`.
    DeviceAck {
        /// The connection it came from.
        reply: ConnRef,
        /// The seq.
        seq: u64,
        /// Everything up to `seq`.
        cumulative: bool,
    },
    /// To a device's home: its connection `reply` closed.
    Gone {
        /// The connection.
        reply: ConnRef,
    },
    /// Relayed to online devices only.
    Typing {
        /// The state.
        state: fb::TypingState,
    },
}

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
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            limits: Limits::default(),
            window: 512,
            out_bytes_max: 4 << 20,
            conns_max: 100_000,
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
    /// Errors sent, by code.
    pub errors: FxHashMap<u16, u64>,
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
        note: Note,
    },
    Pump(DeviceKey),
    /// A receipt for this ack is durable: tell the acking device's home.
    Confirm(AckRef),
}

/// A device's ack waiting for its receipts to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckRef {
    device: DeviceKey,
    seq: u64,
}

/// An ack whose tombstone waits for its receipts: ✓✓ is durable before
/// the message is forgotten, so a crash in between repeats ✓✓ rather than
/// losing it.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
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
    /// Frames that arrived before `Welcome` was written: the client sees
    /// `Welcome` first, whichever shard answers first.
    held: Option<Vec<u8>>,
    ready: bool,
}

/// One shard's decisions.
#[derive(Debug)]
pub struct ShardCore<S> {
    shard: ShardId,
    config: ShardConfig,
    router: RouterCore<Note>,
    engine: Engine,
    reader: S,
    encoder: Encoder,
    conns: FxHashMap<ConnId, Conn>,
    next_conn: u64,
    ready: Vec<ConnId>,
    devices: FxHashMap<UserId, Vec<DeviceId>>,
    cursors: FxHashMap<DeviceKey, Cursor>,
    meta: FxHashMap<u64, Meta>,
    waiting: VecDeque<(u64, Waiting)>,
    /// Per device, in order, acks whose receipts are not all durable yet.
    acks: FxHashMap<DeviceKey, VecDeque<PendingAck>>,
    /// Per device, the highest seq whose receipts were requested.
    receipted: FxHashMap<DeviceKey, u64>,
    draining: bool,
    /// The log failed (fail-stop: the shell exits); why.
    failed: Option<String>,
    /// The latest time passed in.
    now_ms: u64,
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
    pub fn new(router: RouterCore<Note>, engine: Engine, reader: S, config: ShardConfig) -> Self {
        let mut devices: FxHashMap<UserId, Vec<DeviceId>> = FxHashMap::default();
        for d in engine.devices() {
            devices
                .entry(UserId(d.user))
                .or_default()
                .push(DeviceId(d.device));
        }
        Self {
            shard: router.shard(),
            config,
            router,
            engine,
            reader,
            encoder: Encoder::new(config.limits),
            conns: FxHashMap::default(),
            next_conn: 1,
            ready: Vec::new(),
            devices,
            cursors: FxHashMap::default(),
            meta: FxHashMap::default(),
            waiting: VecDeque::new(),
            acks: FxHashMap::default(),
            receipted: FxHashMap::default(),
            draining: false,
            failed: None,
            now_ms: 0,
            stats: Stats::default(),
        }
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
            waiting: self.waiting.len(),
            acks: self.acks.len(),
            receipted: self.receipted.len(),
            live_messages: self.engine.live_messages(),
        }
    }

    // ---- connections --------------------------------------------------------

    /// A TCP connection was accepted: its id, or `None` when the shard is
    /// at its connection limit (or draining) and the shell should close it.
    pub fn open_conn(&mut self, now_ms: u64) -> Option<ConnId> {
        if self.conns.len() >= self.config.conns_max || self.draining {
            self.count_error(ErrorCode::TooManyConnections);
            return None;
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let conn = Conn {
            session: Session::new(now_ms, self.config.session),
            decoder: FrameDecoder::new(self.config.limits),
            device: None,
            out: Vec::new(),
            held: Some(Vec::new()),
            ready: false,
        };
        self.conns.insert(id, conn);
        self.stats.conns_opened += 1;
        Some(id)
    }

    /// The TLS handshake of `conn` completed.
    pub fn handshake_done(&mut self, now_ms: u64, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_handshake_done(now_ms);
        }
    }

    /// Plaintext arrived on `conn`.
    pub fn handle_bytes(&mut self, now_ms: u64, conn: ConnId, bytes: &[u8], verifier: &Verifier) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.decoder.extend_from_slice(bytes);
        loop {
            match c.decoder.decode() {
                Ok(Some(frame)) => {
                    self.stats.frames_in += 1;
                    c.session.handle_frame(now_ms, &frame, verifier);
                }
                Ok(None) => break,
                Err(error) => {
                    c.session.handle_decode_error(&error);
                    break;
                }
            }
            if c.session.is_closed() {
                break;
            }
        }
        c.decoder.release_if_empty();
        self.after_session(now_ms, conn);
    }

    /// The peer closed `conn`, or its socket failed.
    pub fn peer_closed(&mut self, now_ms: u64, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_peer_closed();
        }
        self.after_session(now_ms, conn);
    }

    /// The shell closed the socket of `conn`: forget it.
    pub fn remove_conn(&mut self, now_ms: u64, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_peer_closed();
        }
        self.after_session(now_ms, conn);
        if self.conns.remove(&conn).is_some() {
            self.stats.conns_closed += 1;
        }
    }

    /// Connections with output (or a close) since the last call.
    pub fn take_ready(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.ready)
    }

    /// The plaintext to write to `conn` and whether to close it after.
    /// `None` if the connection is gone.
    pub fn take_output(&mut self, conn: ConnId) -> Option<(Vec<u8>, bool)> {
        let c = self.conns.get_mut(&conn)?;
        c.ready = false;
        Some((std::mem::take(&mut c.out), c.session.is_closed()))
    }

    /// Time passed: session deadlines and TTL expiry.
    pub fn tick(&mut self, now_ms: u64) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.poll_timeout().is_some_and(|t| t <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.handle_timeout(now_ms);
            }
            self.after_session(now_ms, conn);
        }
        self.expire(now_ms);
    }

    /// Drain: `GoAway` to every connection, refuse new ones.
    pub fn start_drain(&mut self, now_ms: u64, reconnect_after_ms: u32) {
        self.draining = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.start_drain(now_ms, reconnect_after_ms);
            }
            self.after_session(now_ms, conn);
        }
    }

    // ---- other shards and the log -------------------------------------------

    /// A batch from another shard (or this one, through the mesh).
    pub fn handle_batch(&mut self, now_ms: u64, batch: Vec<ShardMsg<Note>>) {
        self.router.handle_batch(now_ms, batch);
        self.run_effects(now_ms);
    }

    /// The next batch for another shard.
    pub fn poll_batch(&mut self) -> Option<(ShardId, Vec<ShardMsg<Note>>)> {
        self.router.poll_batch()
    }

    /// The next group-commit batch to write and fdatasync.
    pub fn poll_flush(&mut self) -> Option<&Flush> {
        self.engine.poll_flush()
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

    /// The batch from [`ShardCore::poll_flush`] is durable: answer what
    /// waited for it.
    pub fn handle_flushed(&mut self, now_ms: u64) {
        self.engine.handle_flushed();
        let durable = self.engine.durable();
        while self.waiting.front().is_some_and(|(p, _)| *p < durable) {
            let (_, waiting) = self.waiting.pop_front().expect("checked");
            match waiting {
                Waiting::Ack { reply, from, note } => {
                    self.router
                        .route_to_conn(now_ms, reply, from, Target::Device(from), note)
                }
                Waiting::Pump(device) => self.pump(now_ms, device),
                Waiting::Confirm(ack) => {
                    let note = Note::ReceiptStored { seq: ack.seq };
                    let to = Target::Device(ack.device);
                    self.router.route_home(now_ms, ack.device, to, note);
                }
            }
        }
        self.run_effects(now_ms);
    }

    // ---- sessions -------------------------------------------------------------

    /// Acts on what the session of `conn` produced.
    fn after_session(&mut self, now_ms: u64, conn: ConnId) {
        self.now_ms = self.now_ms.max(now_ms);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(event) = c.session.poll_event() else {
                break;
            };
            self.on_event(now_ms, conn, event);
        }
        self.flush_replies(conn);
        self.run_effects(now_ms);
    }

    fn on_event(&mut self, now_ms: u64, conn: ConnId, event: Event) {
        let device = self.conns.get(&conn).and_then(|c| c.device);
        let reply = ConnRef {
            shard: self.shard,
            conn,
        };
        match (event, device) {
            (
                Event::Authenticated {
                    claims,
                    last_acked_seq,
                },
                _,
            ) => {
                let device = DeviceKey::new(claims.user, claims.device);
                self.stats.authenticated += 1;
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.device = Some(device);
                }
                self.router.handle_connect(now_ms, conn, device);
                let resume = Note::Resume {
                    reply,
                    after_seq: last_acked_seq,
                };
                self.router
                    .route_home(now_ms, device, Target::Device(device), resume);
            }
            (Event::Closed { .. }, device) => {
                self.router.handle_disconnect(now_ms, conn);
                if let Some(device) = device {
                    let gone = Note::Gone { reply };
                    self.router
                        .route_home(now_ms, device, Target::Device(device), gone);
                }
                self.mark_ready(conn);
            }
            (event, Some(device)) => self.on_device_event(now_ms, reply, device, event),
            (_, None) => {}
        }
    }

    fn on_device_event(&mut self, now_ms: u64, reply: ConnRef, device: DeviceKey, event: Event) {
        match event {
            Event::Send {
                to,
                client_msg_id,
                ttl_s,
                payload,
            } => {
                let to = target(&to);
                if matches!(to, Target::Group(_)) {
                    let code = ErrorCode::UnknownGroup; // groups come with group messaging
                    return self.refuse_local(reply.conn, code, client_msg_id, false);
                }
                let submit = Note::Submit {
                    reply,
                    client_msg_id,
                    ttl_s,
                    payload,
                };
                self.router.route_home(now_ms, device, to, submit);
            }
            Event::Ack { seq, cumulative } => {
                let ack = Note::DeviceAck {
                    reply,
                    seq,
                    cumulative,
                };
                self.router
                    .route_home(now_ms, device, Target::Device(device), ack);
            }
            Event::Read { to, message_ids } => {
                let read = Note::Receipt {
                    seq: 0,
                    kind: fb::ReceiptKind::Read,
                    message_ids,
                    at_ms: now_ms,
                    confirm: None,
                };
                self.router.route_home(now_ms, device, target(&to), read);
            }
            Event::Typing { to, state } => {
                let to = target(&to);
                self.router
                    .handle_send(now_ms, reply.conn, to, Note::Typing { state });
            }
            Event::Subscribe { users, unsubscribe } => {
                let users: Vec<UserId> = users.into_iter().map(UserId).collect();
                if unsubscribe {
                    self.router.handle_unsubscribe(now_ms, reply.conn, &users);
                } else {
                    self.router.handle_subscribe(now_ms, reply.conn, &users);
                }
            }
            Event::Group { .. } => self.refuse_local(reply.conn, ErrorCode::UnknownGroup, 0, false),
            Event::Authenticated { .. } | Event::Closed { .. } => {}
        }
    }

    fn refuse_local(&mut self, conn: ConnId, code: ErrorCode, client_msg_id: u64, fatal: bool) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.refuse_from_shard(code, client_msg_id, fatal);
        }
        self.flush_replies(conn);
    }

    /// Encodes the session's replies into the connection's output.
    fn flush_replies(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut any = c.session.is_closed();
        while let Some(reply) = c.session.poll_reply() {
            any = true;
            if let Reply::Error { code, .. } = reply {
                *self.stats.errors.entry(code.0).or_default() += 1;
            }
            if let Ok(frame) =
                encode_reply(&mut self.encoder, &reply, self.now_ms, &self.config.limits)
            {
                self.stats.frames_out += 1;
                append(&mut c.out, &frame);
            }
        }
        if any {
            self.mark_ready(conn);
        }
    }

    fn mark_ready(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.ready {
                c.ready = true;
                self.ready.push(conn);
            }
        }
    }

    fn count_error(&mut self, code: ErrorCode) {
        *self.stats.errors.entry(code.0).or_default() += 1;
    }

    // ---- router effects ---------------------------------------------------------

    fn run_effects(&mut self, now_ms: u64) {
        while let Some(effect) = self.router.poll_effect() {
            match effect {
                Effect::Home { from, to, msg } => self.at_home(now_ms, from, to, msg),
                Effect::Deliver {
                    conn,
                    from,
                    to,
                    msg,
                } => self.for_conn(conn, from, to, msg),
                Effect::Close { conn, .. } => {
                    self.refuse_local(conn, ErrorCode::ShuttingDown, 0, true);
                    self.after_session(now_ms, conn);
                }
                Effect::Presence { conns, update } => {
                    for conn in conns {
                        self.presence_to(conn, update);
                    }
                }
                Effect::SubscriptionRefused { conn, .. } => {
                    self.refuse_local(conn, ErrorCode::TooManyItems, 0, false)
                }
                // Typing to someone offline is dropped; groups and other
                // nodes are not built yet.
                Effect::Undelivered { .. }
                | Effect::Record(_)
                | Effect::GroupReply { .. }
                | Effect::Remote { .. } => {}
            }
        }
    }

    fn presence_to(&mut self, conn: ConnId, update: PresenceUpdate) {
        let state = if update.online {
            fb::PresenceState::Online
        } else {
            fb::PresenceState::Offline
        };
        let frame = self
            .encoder
            .presence(update.user.0, state, update.last_seen_ms);
        self.write_frame(conn, frame);
    }

    /// A note for a connection of this shard.
    fn for_conn(&mut self, conn: ConnId, from: DeviceKey, to: Target, note: Note) {
        let frame = match note {
            Note::Acked {
                client_msg_id,
                message_id,
                at_ms,
                duplicate,
            } => {
                let status = if duplicate {
                    fb::AckStatus::Duplicate
                } else {
                    fb::AckStatus::Stored
                };
                self.encoder
                    .server_ack(client_msg_id, message_id, at_ms, status)
            }
            Note::Message {
                seq,
                message_id,
                at_ms,
                payload,
            } => {
                self.stats.messages_delivered += 1;
                let h = DeliverHeader {
                    from: address(Target::Device(from)),
                    to: address(to),
                    seq,
                    message_id,
                    server_time_ms: at_ms,
                };
                self.encoder.deliver(&h, payload)
            }
            Note::Receipt {
                seq,
                kind,
                message_ids,
                at_ms,
                ..
            } => {
                self.stats.messages_delivered += 1;
                let about = match kind {
                    fb::ReceiptKind::Read => user_address(from.user.0),
                    _ => address(Target::Device(from)),
                };
                self.encoder
                    .receipt(kind, address(to), about, &message_ids, at_ms, seq)
            }
            Note::Typing { state } => {
                self.encoder
                    .typing(address(to), address(Target::Device(from)), state)
            }
            Note::Welcome { backlog_count } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.session.welcome(backlog_count);
                }
                self.flush_replies(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Some(held) = c.held.take() {
                        c.out.extend_from_slice(&held);
                    }
                }
                return;
            }
            Note::Refused {
                code,
                client_msg_id,
                fatal,
            } => return self.refuse_local(conn, code, client_msg_id, fatal),
            Note::Submit { .. }
            | Note::Resume { .. }
            | Note::DeviceAck { .. }
            | Note::ReceiptStored { .. }
            | Note::Gone { .. } => {
                return;
            }
        };
        self.write_frame(conn, frame);
    }

    fn write_frame(&mut self, conn: ConnId, frame: Result<OutFrame, wire_format::WireError>) {
        let Ok(frame) = frame else {
            return self.count_error(ErrorCode::Internal);
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // it left meanwhile: the entry stays queued
        };
        if c.session.is_closed() {
            return;
        }
        self.stats.frames_out += 1;
        append(c.held.as_mut().unwrap_or(&mut c.out), &frame);
        if c.out.len() + c.held.as_ref().map_or(0, Vec::len) > self.config.out_bytes_max {
            c.session.refuse_from_shard(ErrorCode::SlowReader, 0, true);
            self.flush_replies(conn);
        }
        self.mark_ready(conn);
    }

    // ---- this shard as home ---------------------------------------------------------

    fn at_home(&mut self, now_ms: u64, from: DeviceKey, to: Target, note: Note) {
        match note {
            Note::Submit {
                reply,
                client_msg_id,
                ttl_s,
                payload,
            } => self.store_message(now_ms, reply, from, to, client_msg_id, ttl_s, &payload),
            Note::Receipt {
                kind,
                message_ids,
                at_ms,
                confirm,
                ..
            } => {
                let stored = self.store_receipt(now_ms, from, to, kind, &message_ids, at_ms);
                if let Some(ack) = confirm {
                    self.confirm_when_durable(now_ms, ack, stored);
                }
            }
            Note::ReceiptStored { seq } => self.receipt_stored(now_ms, from, seq),
            Note::Resume { reply, after_seq } => self.resume(now_ms, reply, from, after_seq),
            Note::DeviceAck {
                reply,
                seq,
                cumulative,
            } => self.device_ack(now_ms, reply, from, seq, cumulative),
            Note::Gone { reply } if self.cursors.get(&from).is_some_and(|c| c.conn == reply) => {
                self.cursors.remove(&from);
            }
            _ => {}
        }
    }

    /// The devices a message to `to` is queued for (never the sender's own).
    fn recipients(&self, from: DeviceKey, to: Target) -> Vec<DeviceRef> {
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

    fn is_registered(&self, d: DeviceKey) -> bool {
        self.devices
            .get(&d.user)
            .is_some_and(|ds| ds.contains(&d.device))
    }

    fn next_message_id(&self) -> u64 {
        (self.engine.log().head() << 8) | u64::from(self.shard.0 & 0xff)
    }

    #[allow(clippy::too_many_arguments)]
    fn store_message(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        from: DeviceKey,
        to: Target,
        client_msg_id: u64,
        ttl_s: u32,
        payload: &[u8],
    ) {
        let recipients = self.recipients(from, to);
        let message_id = self.next_message_id();
        let m = NewMessage {
            message_id,
            sender: device_ref(from),
            client_msg_id,
            recipients: &recipients,
            ttl_ms: u64::from(ttl_s) * 1000,
            payload,
        };
        let refuse = |code| Note::Refused {
            code,
            client_msg_id,
            fatal: false,
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
                    pending: u32::try_from(seqs.len()).unwrap_or(u32::MAX),
                };
                self.stored(position, meta, &seqs);
                self.waiting.push_back((
                    position,
                    Waiting::Ack {
                        reply,
                        from,
                        note: Note::Acked {
                            client_msg_id,
                            message_id,
                            at_ms: now_ms,
                            duplicate: false,
                        },
                    },
                ));
                return;
            }
            Ok(Accepted::Duplicate {
                message_id,
                position,
            }) => {
                self.stats.duplicates += 1;
                let note = Note::Acked {
                    client_msg_id,
                    message_id,
                    at_ms: now_ms,
                    duplicate: true,
                };
                if position >= self.engine.durable() {
                    let waiting = Waiting::Ack { reply, from, note };
                    return self.waiting.push_back((position, waiting));
                }
                note
            }
            Err(QueueError::QueueFull { .. }) => refuse(ErrorCode::RecipientQueueFull),
            Err(_) => refuse(ErrorCode::InvalidAddress),
        };
        self.router
            .route_to_conn(now_ms, reply, from, Target::Device(from), note);
    }

    /// Bookkeeping for a stored record: its meta, and a pump of each
    /// recipient once it is durable.
    fn stored(&mut self, position: u64, meta: Meta, seqs: &[(DeviceRef, u64)]) {
        self.meta.insert(position, meta);
        for (device, _) in seqs {
            let device = device_key(*device);
            if self.cursors.contains_key(&device) {
                self.waiting.push_back((position, Waiting::Pump(device)));
            }
        }
    }

    fn store_receipt(
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
            client_msg_id: RECEIPT_FLAG | message_id,
            recipients: &recipients,
            ttl_ms: 0,
            payload: &payload,
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
    fn confirm_when_durable(&mut self, now_ms: u64, ack: AckRef, stored: Option<u64>) {
        match stored {
            Some(position) => self.waiting.push_back((position, Waiting::Confirm(ack))),
            None => {
                let note = Note::ReceiptStored { seq: ack.seq };
                let to = Target::Device(ack.device);
                self.router.route_home(now_ms, ack.device, to, note);
            }
        }
    }

    fn resume(&mut self, now_ms: u64, reply: ConnRef, device: DeviceKey, after_seq: u64) {
        if !self.is_registered(device) {
            self.engine.register_device(now_ms, device_ref(device));
            self.devices
                .entry(device.user)
                .or_default()
                .push(device.device);
        }
        // The resume point is an ack the last connection may not have
        // delivered: take it as one (✓✓ to the senders). A point past the
        // queue's end acknowledges nothing.
        if after_seq > 0 {
            let _ = self.request_ack(now_ms, device, after_seq, true);
        }
        let backlog = self.engine.backlog(device_ref(device), after_seq).count();
        let backlog_count = u32::try_from(backlog).unwrap_or(u32::MAX);
        let cursor = Cursor {
            conn: reply,
            sent: after_seq,
        };
        self.cursors.insert(device, cursor);
        let welcome = Note::Welcome { backlog_count };
        self.router
            .route_to_conn(now_ms, reply, device, Target::Device(device), welcome);
        self.pump(now_ms, device);
    }

    /// Sends `device` its next durable entries while its window has room.
    fn pump(&mut self, now_ms: u64, device: DeviceKey) {
        let dref = device_ref(device);
        while let Some(cursor) = self.cursors.get(&device).copied() {
            if self.engine.queued_through(dref, cursor.sent) >= self.config.window {
                return;
            }
            let Some((seq, position)) = self.engine.backlog(dref, cursor.sent).next() else {
                return;
            };
            if let Some((from, to, note)) = self.entry_note(device, seq, position) {
                self.router
                    .route_to_conn(now_ms, cursor.conn, from, to, note);
            }
            if let Some(c) = self.cursors.get_mut(&device) {
                c.sent = seq;
            }
        }
    }

    /// The note that delivers entry `seq` (record at `position`) to `device`.
    fn entry_note(
        &self,
        device: DeviceKey,
        seq: u64,
        position: u64,
    ) -> Option<(DeviceKey, Target, Note)> {
        let (meta, payload) = match (
            self.meta.get(&position),
            self.engine.recent_payload(position),
        ) {
            (Some(meta), Some(payload)) => (*meta, Bytes::copy_from_slice(payload)),
            _ => self.read_back(device, position)?,
        };
        let note = match meta.receipt {
            None => Note::Message {
                seq,
                message_id: meta.message_id,
                at_ms: meta.at_ms,
                payload,
            },
            Some(kind) => Note::Receipt {
                seq,
                kind,
                message_ids: receipt_ids(&payload),
                at_ms: meta.at_ms,
                confirm: None,
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
    fn read_back(&self, device: DeviceKey, position: u64) -> Option<(Meta, Bytes)> {
        let stored = read_message(&self.engine, &self.reader, position).ok()?;
        let receipt = (stored.client_msg_id & RECEIPT_FLAG != 0)
            .then(|| stored.payload.first().map(|k| fb::ReceiptKind(*k)))
            .flatten();
        let meta = Meta {
            from: device_key(stored.sender),
            to: Target::User(device.user),
            message_id: stored.message_id,
            at_ms: stored.accepted_ms,
            receipt,
            pending: 0,
        };
        Some((meta, Bytes::from(stored.payload)))
    }

    fn device_ack(
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
                let note = Note::Refused {
                    code: ErrorCode::NotYourMessage,
                    client_msg_id: 0,
                    fatal: true,
                };
                self.router
                    .route_to_conn(now_ms, reply, device, Target::Device(device), note);
            }
        }
    }

    /// Sends ✓✓ for what an ack of `seq` covers to the senders' homes,
    /// and tombstones the messages once those receipts are durable (in ack
    /// order per device). Receipts already requested by an earlier
    /// cumulative ack are not sent again.
    fn request_ack(
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
    fn receipt_stored(&mut self, now_ms: u64, device: DeviceKey, seq: u64) {
        let Some(acks) = self.acks.get_mut(&device) else {
            return;
        };
        if let Some(a) = acks.iter_mut().find(|a| a.seq == seq && a.receipts > 0) {
            a.receipts -= 1;
        }
        self.settle_acks(now_ms, device);
    }

    /// Tombstones the oldest acks whose receipts are all durable.
    fn settle_acks(&mut self, now_ms: u64, device: DeviceKey) {
        let mut settled = false;
        while let Some(acks) = self.acks.get_mut(&device) {
            let Some(a) = acks.front().copied().filter(|a| a.receipts == 0) else {
                break;
            };
            acks.pop_front();
            if acks.is_empty() {
                self.acks.remove(&device);
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
    fn receipts_for(
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
                let receipt = Note::Receipt {
                    seq: 0,
                    kind: fb::ReceiptKind::Delivered,
                    message_ids: chunk.to_vec(),
                    at_ms: now_ms,
                    confirm: Some(ack),
                };
                self.router
                    .route_home(now_ms, device, Target::User(sender.user), receipt);
                sent += 1;
            }
        }
        sent
    }

    /// TTL expiry: `Expired` receipts to the senders.
    fn expire(&mut self, now_ms: u64) {
        for expired in self.engine.expire(now_ms) {
            let device = device_key(expired.device);
            let meta = match self.meta.get(&expired.position) {
                Some(meta) => *meta,
                None => match self.read_back(device, expired.position) {
                    Some((meta, _)) => meta,
                    None => continue,
                },
            };
            if meta.receipt.is_none() {
                let receipt = Note::Receipt {
                    seq: 0,
                    kind: fb::ReceiptKind::Expired,
                    message_ids: vec![meta.message_id],
                    at_ms: now_ms,
                    confirm: None,
                };
                self.router
                    .route_home(now_ms, device, Target::User(meta.from.user), receipt);
            }
        }
        self.run_effects(now_ms);
    }
}

/// The message ids in a stored receipt's payload (kind byte, then ids).
fn receipt_ids(payload: &[u8]) -> Vec<u64> {
    payload
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn append(out: &mut Vec<u8>, frame: &OutFrame) {
    out.extend_from_slice(frame.header());
    out.extend_from_slice(frame.payload());
}

/// The frame for a session's reply.
pub fn encode_reply(
    e: &mut Encoder,
    reply: &Reply,
    now_ms: u64,
    limits: &Limits,
) -> Result<OutFrame, wire_format::WireError> {
    match *reply {
        Reply::Welcome {
            user,
            device,
            backlog_count,
            heartbeat_interval_ms,
        } => {
            let mut w = fb::WelcomeT::default();
            w.user = user;
            w.device = device;
            w.backlog_count = backlog_count;
            w.heartbeat_interval_ms = heartbeat_interval_ms;
            w.server_time_ms = now_ms;
            w.protocol_version = wire_format::PROTOCOL_VERSION;
            w.frame_bytes_max = limits.frame_bytes_max;
            let mut header = fb::FrameT::default();
            header.body = fb::BodyT::Welcome(Box::new(w));
            e.encode_owned(&header, Bytes::new())
        }
        Reply::Pong { nonce } => e.pong(nonce),
        Reply::Ping { nonce } => e.ping(nonce),
        Reply::Error {
            code,
            client_msg_id,
            fatal,
        } => e.error(
            code,
            client_msg_id,
            fatal,
            code.variant_name().unwrap_or(""),
        ),
        Reply::GoAway { reconnect_after_ms } => {
            let mut g = fb::GoAwayT::default();
            g.reconnect_after_ms = reconnect_after_ms;
            g.reason = fb::GoAwayReason::Draining;
            let mut header = fb::FrameT::default();
            header.body = fb::BodyT::GoAway(Box::new(g));
            e.encode_owned(&header, Bytes::new())
        }
    }
}
