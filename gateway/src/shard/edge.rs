//! The connection edge: sessions in, frames out. Turns a session's events
//! into notes for the homes, and notes for a connection into frames.

use queue_engine::Storage;
use shard_router::{
    ConnId, ConnRef, DeviceKey, Effect, GroupId, GroupRequest, PresenceUpdate, Target, UserId,
};
use wire_format::fb::{self, ErrorCode};
use wire_format::{DeliverHeader, FrameDecoder, GroupChangedHeader, OutFrame, user_address};

use super::{
    BeforeWelcome, Conn, Note, OUT_BUF_START, OUT_BUFS_FLOOR, PushToken, Receipt, ShardCore,
    ToConn, ToHome, address, append, encode_reply, target,
};
use crate::abuse::{Limit, Refusal};
use crate::clock::Now;
use crate::pool::BufPool;
use crate::session::{Event, GroupOp, Reply, Session, State};
use crate::token::Verifier;

/// How long an idle device's recent recipients are remembered (so writing
/// to them again is no new conversation), ms.
pub(super) const ABUSE_MEMORY_MS: u64 = 7 * 24 * 3_600_000;

impl Conn {
    /// Where the next frame goes: behind the `Welcome` while it is awaited
    /// (once authenticated nothing may overtake it), else straight out.
    fn sink(&mut self) -> &mut Vec<u8> {
        let authenticated = matches!(
            self.session.state(),
            State::Authenticated(_) | State::Draining(_)
        );
        match (
            self.waiting.as_mut().and_then(|w| w.held.as_mut()),
            authenticated,
        ) {
            (Some(held), true) => held,
            _ => &mut self.out,
        }
    }

    /// Appends `frame` to what is written next, into a buffer from `pool`
    /// if the connection holds none.
    fn append(&mut self, pool: &mut BufPool, frame: &OutFrame) {
        let sink = self.sink();
        if sink.capacity() == 0 {
            *sink = pool.take();
            sink.reserve(OUT_BUF_START);
        }
        append(sink, frame);
    }

    /// Whether frames still wait behind the `Welcome`.
    fn holding(&self) -> bool {
        self.waiting.as_ref().is_some_and(|w| w.held.is_some())
    }

    /// Bytes waiting behind the `Welcome`.
    fn held_len(&self) -> usize {
        let held = self.waiting.as_ref().and_then(|w| w.held.as_ref());
        held.map_or(0, Vec::len)
    }
}

impl<S: Storage> ShardCore<S> {
    // ---- connections --------------------------------------------------------

    /// A TCP connection was accepted: its id, or `None` when the shard is
    /// at its connection limit (or draining) and the shell should close it.
    pub fn open_conn(&mut self, now: Now) -> Option<ConnId> {
        self.set_now(now);
        if self.conns.len() >= self.config.conns_max || self.draining {
            self.count_error(ErrorCode::TooManyConnections);
            return None;
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let conn = Conn {
            session: Session::with_shared(now.mono_ms, self.session_config.clone()),
            decoder: FrameDecoder::new(self.config.limits),
            device: None,
            out: Vec::new(),
            waiting: Some(Box::new(BeforeWelcome {
                held: Some(Vec::new()),
                early: Vec::new(),
            })),
            ready: false,
            timer_at: u64::MAX,
            read_receipts: true,
            abuse: None,
        };
        self.conns.insert(id, Box::new(conn));
        self.stats.conns_opened += 1;
        self.schedule(id);
        Some(id)
    }

    /// The TLS handshake of `conn` completed.
    pub fn handshake_done(&mut self, now: Now, conn: ConnId) {
        self.set_now(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_handshake_done(now.mono_ms);
        }
        self.schedule(conn);
    }

    /// Plaintext arrived on `conn`.
    pub fn handle_bytes(&mut self, now: Now, conn: ConnId, bytes: &[u8], verifier: &Verifier) {
        self.set_now(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.decoder.extend_from_slice(bytes);
        loop {
            match c.decoder.decode() {
                Ok(Some(frame)) => {
                    self.stats.frames_in += 1;
                    c.session.handle_frame(now, &frame, verifier);
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
        self.after_session(now.wall_ms, conn);
    }

    /// The peer closed `conn`, or its socket failed.
    pub fn peer_closed(&mut self, now: Now, conn: ConnId) {
        self.set_now(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_peer_closed();
        }
        self.after_session(now.wall_ms, conn);
    }

    /// The shell closed the socket of `conn`: forget it.
    pub fn remove_conn(&mut self, now: Now, conn: ConnId) {
        self.set_now(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_peer_closed();
        }
        self.after_session(now.wall_ms, conn);
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
        c.session.release_buffers();
        let closed = c.session.is_closed();
        if closed {
            // Closing before its Welcome came: send what waited anyway.
            if let Some(held) = c.waiting.as_mut().and_then(|w| w.held.take()) {
                c.out.extend_from_slice(&held);
            }
        }
        Some((std::mem::take(&mut c.out), closed))
    }

    /// Takes back a buffer [`ShardCore::take_output`] gave once its bytes
    /// are written, for the next connection with output.
    pub fn give_output(&mut self, buf: Vec<u8>) {
        self.out_bufs.give(buf);
    }

    /// Frees the output buffers no connection needed since the last call
    /// (the shell calls it every second, as it trims its write buffers).
    pub fn trim_output_bufs(&mut self) {
        self.out_bufs.trim(OUT_BUFS_FLOOR);
    }

    /// Drain: `GoAway` to every connection, refuse new ones.
    pub fn start_drain(&mut self, now: Now, reconnect_after_ms: u32) {
        self.set_now(now);
        self.draining = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.start_drain(now.mono_ms, reconnect_after_ms);
            }
            self.after_session(now.wall_ms, conn);
        }
    }

    // ---- sessions -------------------------------------------------------------

    /// Acts on what the session of `conn` produced.
    pub(super) fn after_session(&mut self, now_ms: u64, conn: ConnId) {
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
        self.schedule(conn);
        self.run_effects(now_ms);
    }

    pub(super) fn on_event(&mut self, now_ms: u64, conn: ConnId, event: Event) {
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
                let resume = ToHome::Resume {
                    reply,
                    after_seq: last_acked_seq,
                };
                self.send_home(now_ms, device, Target::Device(device), resume);
            }
            (Event::Closed { .. }, device) => {
                self.router.handle_disconnect(now_ms, conn);
                if let Some(device) = device {
                    // What the device's limits say goes home with it, unless
                    // it would change nothing.
                    let abuse = self
                        .conns
                        .get_mut(&conn)
                        .and_then(|c| c.abuse.take())
                        .filter(|a| !a.is_idle(now_ms, ABUSE_MEMORY_MS));
                    let gone = ToHome::Gone { reply, abuse };
                    self.send_home(now_ms, device, Target::Device(device), gone);
                }
                self.mark_ready(conn);
            }
            (event, Some(device)) => match self.conns.get_mut(&conn) {
                Some(c) if c.holding() => {
                    if let Some(waiting) = c.waiting.as_mut() {
                        waiting.early.push(event);
                    }
                }
                _ => self.on_device_event(now_ms, reply, device, event),
            },
            // The session emits device events only once authenticated.
            (_, None) => self.anomaly("a device event before authentication"),
        }
    }

    pub(super) fn on_device_event(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        device: DeviceKey,
        event: Event,
    ) {
        match event {
            Event::Send {
                to,
                client_msg_id,
                ttl_s,
                payload,
            } => {
                let to = target(&to);
                let send = Some((to, client_msg_id));
                if let Err(refusal) = self.check_abuse(now_ms, reply.conn, send) {
                    return self.refuse_limited(reply.conn, refusal, client_msg_id, 0);
                }
                let submit = ToHome::Submit {
                    reply,
                    client_msg_id,
                    ttl_s,
                    payload,
                };
                self.send_home(now_ms, device, to, submit);
            }
            Event::Ack { seq, cumulative } => {
                let ack = ToHome::DeviceAck {
                    reply,
                    seq,
                    cumulative,
                };
                self.send_home(now_ms, device, Target::Device(device), ack);
            }
            Event::Read { .. } if !self.conns.get(&reply.conn).is_none_or(|c| c.read_receipts) => {
                // The user turned read receipts off: not relayed (it still
                // gets other users' read receipts).
                self.stats.read_receipts_suppressed += 1;
            }
            Event::Read { to, message_ids } => {
                let read = ToHome::StoreReceipt(Receipt {
                    kind: fb::ReceiptKind::Read,
                    message_ids,
                    at_ms: now_ms,
                    confirm: None,
                });
                self.send_home(now_ms, device, target(&to), read);
            }
            Event::Typing { to, state } => {
                let to = target(&to);
                self.router.handle_send(
                    now_ms,
                    reply.conn,
                    to,
                    Note::Conn(ToConn::Typing { state }),
                );
            }
            Event::Subscribe { users, unsubscribe } => {
                let users: Vec<UserId> = users.into_iter().map(UserId).collect();
                if unsubscribe {
                    self.router.handle_unsubscribe(now_ms, reply.conn, &users);
                } else {
                    self.router.handle_subscribe(now_ms, reply.conn, &users);
                }
            }
            Event::Group {
                op,
                request_id,
                group,
                members,
            } => {
                if op == GroupOp::Create
                    && let Err(refusal) = self.check_abuse(now_ms, reply.conn, None)
                {
                    return self.refuse_limited(reply.conn, refusal, 0, request_id);
                }
                let members: Vec<UserId> = members.into_iter().map(UserId).collect();
                let group = match op {
                    GroupOp::Create => GroupId(self.next_group_id()),
                    _ => GroupId(group),
                };
                let request = match op {
                    GroupOp::Create => GroupRequest::Create { group, members },
                    GroupOp::Add => GroupRequest::Add { group, members },
                    GroupOp::Remove => GroupRequest::Remove { group, members },
                };
                let note = ToHome::Group {
                    reply,
                    request_id,
                    request,
                };
                self.send_home(now_ms, device, Target::Group(group), note);
            }
            Event::DevicesGet { request_id } => {
                let note = ToHome::Devices { reply, request_id };
                self.send_home(now_ms, device, Target::User(device.user), note);
            }
            Event::DeviceUnlink {
                request_id,
                device: unlink,
            } => {
                let note = ToHome::Unlink {
                    reply,
                    request_id,
                    device: unlink,
                };
                self.send_home(now_ms, device, Target::User(device.user), note);
            }
            Event::SettingsSet {
                request_id,
                last_seen,
                read_receipts,
            } => {
                let note = ToHome::Settings {
                    reply,
                    request_id,
                    last_seen,
                    read_receipts,
                };
                self.send_home(now_ms, device, Target::User(device.user), note);
            }
            Event::PushRegister {
                request_id,
                token,
                platform,
            } => {
                let token = PushToken { platform, token };
                let note = ToHome::Push {
                    reply,
                    request_id,
                    token,
                };
                self.send_home(now_ms, device, Target::Device(device), note);
            }
            Event::Authenticated { .. } | Event::Closed { .. } => {}
        }
    }

    /// Counts a `Send` (to, client id) (or, `None`, a group creation)
    /// against the connection's device's abuse limits.
    fn check_abuse(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        send: Option<(Target, u64)>,
    ) -> Result<(), Refusal> {
        let config = self.config.abuse;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let state = c.abuse.get_or_insert_with(Box::default);
        let checked = match send {
            Some((to, id)) => state.check_send(&config, now_ms, to, id),
            None => state.check_group_create(&config, now_ms),
        };
        if let Err(refusal) = checked {
            let index = Limit::ALL
                .iter()
                .position(|l| *l == refusal.limit)
                .expect("every limit is in ALL");
            self.stats.abuse_refused[index] += 1;
        }
        checked
    }

    /// Refuses a send or request for an abuse limit, saying when to retry.
    fn refuse_limited(
        &mut self,
        conn: ConnId,
        refusal: Refusal,
        client_msg_id: u64,
        request_id: u64,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let code = refusal.limit.code();
            c.session
                .refuse_limited(code, client_msg_id, request_id, refusal.retry_after_ms);
        }
        self.flush_replies(conn);
    }

    pub(super) fn refuse_local(&mut self, conn: ConnId, code: ErrorCode, client_msg_id: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.refuse_from_shard(code, client_msg_id);
        }
        self.flush_replies(conn);
    }

    pub(super) fn refuse_request(&mut self, conn: ConnId, code: ErrorCode, request_id: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.refuse_request(code, request_id);
        }
        self.flush_replies(conn);
    }

    /// Encodes the session's replies into the connection's output.
    pub(super) fn flush_replies(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut any = c.session.is_closed();
        let mut failed = false;
        while let Some(reply) = c.session.poll_reply() {
            any = true;
            if let Reply::Error { code, .. } = reply {
                *self.stats.errors.entry(code.0).or_default() += 1;
            }
            match encode_reply(&mut self.encoder, &reply, self.now_ms, &self.config.limits) {
                Ok(frame) => {
                    self.stats.frames_out += 1;
                    c.append(&mut self.out_bufs, &frame);
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            self.anomaly("a session reply could not be encoded");
        }
        if any {
            self.mark_ready(conn);
        }
    }

    pub(super) fn mark_ready(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.ready
        {
            c.ready = true;
            self.ready.push(conn);
        }
    }

    pub(super) fn count_error(&mut self, code: ErrorCode) {
        *self.stats.errors.entry(code.0).or_default() += 1;
    }

    // ---- router effects ---------------------------------------------------------

    pub(super) fn run_effects(&mut self, now_ms: u64) {
        loop {
            self.run_router_effects(now_ms);
            self.store_gaps(now_ms);
            // Storing receipts may route more; until none is left.
            if !self.store_receipts(now_ms) {
                return;
            }
        }
    }

    fn run_router_effects(&mut self, now_ms: u64) {
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
                    // Replaced by a newer connection of the same device.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.session.replaced();
                    }
                    self.after_session(now_ms, conn);
                }
                Effect::Presence { conns, update } => {
                    for conn in conns {
                        self.presence_to(conn, update);
                    }
                }
                Effect::SubscriptionRefused { conn, .. } => {
                    self.refuse_local(conn, ErrorCode::TooManyItems, 0)
                }
                // Typing to someone offline is dropped by design (the
                // queue path never produces this effect: it goes home).
                Effect::Undelivered { .. } => {}
                // This shard never asks the router for group changes, and
                // every placement is single-node: neither can happen yet.
                Effect::Record(_) | Effect::GroupReply { .. } => {
                    self.anomaly("a group effect without group messaging")
                }
                Effect::Remote { .. } => self.anomaly("a remote effect on a single node"),
            }
        }
    }

    pub(super) fn presence_to(&mut self, conn: ConnId, update: PresenceUpdate) {
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
    pub(super) fn for_conn(&mut self, conn: ConnId, from: DeviceKey, to: Target, note: Note) {
        let Note::Conn(note) = note else {
            return self.anomaly("a note for a home was routed to a connection");
        };
        let frame = match note {
            ToConn::Acked {
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
            ToConn::Message {
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
            ToConn::Receipt {
                seq,
                kind,
                message_ids,
                at_ms,
            } => {
                self.stats.messages_delivered += 1;
                let about = match kind {
                    fb::ReceiptKind::Read => user_address(from.user.0),
                    _ => address(Target::Device(from)),
                };
                self.encoder
                    .receipt(kind, address(to), about, &message_ids, at_ms, seq)
            }
            ToConn::Typing { state } => {
                self.encoder
                    .typing(address(to), address(Target::Device(from)), state)
            }
            ToConn::Welcome {
                backlog_count,
                resume_seq,
                read_receipts,
                abuse,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                c.read_receipts = read_receipts;
                c.abuse = abuse;
                // Welcome goes out first, then what waited for it.
                let (held, early) = match c.waiting.take() {
                    Some(waiting) => (waiting.held, waiting.early),
                    None => (None, Vec::new()),
                };
                c.session.welcome(backlog_count, resume_seq);
                self.flush_replies(conn);
                if let (Some(c), Some(held)) = (self.conns.get_mut(&conn), held) {
                    c.out.extend_from_slice(&held);
                }
                let reply = ConnRef {
                    shard: self.shard,
                    conn,
                };
                for event in early {
                    self.on_device_event(self.now_ms, reply, from, event);
                }
                return;
            }
            ToConn::Refused {
                code,
                client_msg_id,
            } => return self.refuse_local(conn, code, client_msg_id),
            ToConn::Devices {
                request_id,
                devices,
            } => self.encoder.devices(request_id, &devices),
            ToConn::DeviceChanged {
                seq,
                request_id,
                device,
                change,
            } => {
                self.stats.messages_delivered += 1;
                self.encoder.device_changed(request_id, device, change, seq)
            }
            ToConn::RefusedRequest { code, request_id } => {
                return self.refuse_request(conn, code, request_id);
            }
            ToConn::Settings {
                request_id,
                last_seen_hidden,
                read_receipts,
            } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.read_receipts = read_receipts;
                }
                let last_seen = match last_seen_hidden {
                    true => fb::LastSeenVisibility::Nobody,
                    false => fb::LastSeenVisibility::Everyone,
                };
                let switch = match read_receipts {
                    true => fb::Switch::On,
                    false => fb::Switch::Off,
                };
                self.encoder.settings(request_id, last_seen, switch)
            }
            ToConn::Done { request_id } => self.encoder.done(request_id),
            ToConn::Abuse(state) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    match &mut c.abuse {
                        Some(mine) => mine.merge(&state, self.now_ms),
                        None => c.abuse = Some(state),
                    }
                }
                return;
            }
            ToConn::Gap {
                seq,
                cause,
                senders,
            } => {
                self.stats.messages_delivered += 1;
                self.encoder.gap(cause, &senders, seq)
            }
            ToConn::Close {
                code,
                retry_after_ms,
            } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.session.refuse_limited(code, 0, 0, retry_after_ms);
                }
                return self.flush_replies(conn);
            }
            ToConn::GroupChanged {
                seq,
                request_id,
                group,
                change,
                actor,
                members,
            } => {
                if seq != 0 {
                    self.stats.messages_delivered += 1;
                }
                let g = GroupChangedHeader {
                    request_id,
                    group,
                    change,
                    actor,
                    members: &members,
                    seq,
                };
                self.encoder.group_changed(&g)
            }
        };
        self.write_frame(conn, frame);
    }

    pub(super) fn write_frame(
        &mut self,
        conn: ConnId,
        frame: Result<OutFrame, wire_format::WireError>,
    ) {
        let Ok(frame) = frame else {
            return self.anomaly("a frame for a connection could not be encoded");
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // it left meanwhile: the entry stays queued
        };
        if c.session.is_closed() {
            return;
        }
        self.stats.frames_out += 1;
        c.append(&mut self.out_bufs, &frame);
        if c.out.len() + c.held_len() > self.config.out_bytes_max {
            c.session.refuse_from_shard(ErrorCode::SlowReader, 0);
            self.flush_replies(conn);
        }
        self.mark_ready(conn);
    }
}
