//! [`ClientCore`]: the client side of the protocol, sans-IO.
//!
//! Feed it the plaintext bytes TLS hands you ([`ClientCore::handle_bytes`]),
//! send what [`ClientCore::poll_transmit`] gives you, act on
//! [`ClientCore::poll_event`]. It keeps what a reconnecting client must
//! remember: the sends not yet answered with ✓ (to resend with the same
//! client message id, which the server dedups) and the highest seq it has
//! acknowledged (to resume the backlog after it).
//!
//! Delivery acknowledgments can be held back ([`ClientCore::ack_later`],
//! what a client should use by default), as TCP delays its ACKs: a held
//! ack rides the next frame the client writes anyway, and the shell
//! ([`crate::Connection`]) writes it on its own once [`ACK_DELAY`] passes;
//! [`ACK_BATCH`] unacknowledged seqs release it at once. That saves the
//! server a read, and both sides a TLS record and a syscall, per message
//! a busy conversation acknowledges; the cost is ✓✓ arriving up to
//! [`ACK_DELAY`] later.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use wire_format::fb::{self, ErrorCode};
use wire_format::{
    Address, Body, DEDUP_WINDOW, Encoder, FrameDecoder, FrameRef, Limits, OutFrame,
    PROTOCOL_VERSION, WireError,
};

use crate::id_window::IdWindow;

/// How long [`ClientCore::ack_later`] holds an acknowledgment that no other
/// frame carried before the shell writes it on its own.
pub const ACK_DELAY: Duration = Duration::from_millis(100);

/// Seqs [`ClientCore::ack_later`] leaves unacknowledged at most: the
/// messages a dropped connection has the server deliver again.
pub const ACK_BATCH: u64 = 64;

/// What the server told us.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Authenticated.
    Welcome {
        /// Our user, from the token.
        user: u64,
        /// Our device.
        device: u32,
        /// Messages waiting for us.
        backlog_count: u32,
        /// Ping after this much silence.
        heartbeat_interval_ms: u32,
        /// Largest payload [`ClientCore::send`] may carry.
        payload_bytes_max: u32,
        /// Where the server resumed our queue: our resume point, or 0 if
        /// the server's queue ended before it (it then sends everything
        /// still queued; the core adopts it as the last acknowledged seq).
        resume_seq: u64,
    },
    /// ✓: the send with `client_msg_id` is durable.
    Acked {
        /// Our id for it.
        client_msg_id: u64,
        /// The server's id for it.
        message_id: u64,
        /// It was a retry of a message already stored.
        duplicate: bool,
    },
    /// A message for us; acknowledge it with [`ClientCore::ack`] once stored.
    Message {
        /// Its position in our queue.
        seq: u64,
        /// The server's id for it.
        message_id: u64,
        /// The sending device.
        from: Address,
        /// What the sender addressed.
        to: Address,
        /// The opaque payload.
        payload: Bytes,
    },
    /// ✓✓, blue ticks or expiry of messages we sent.
    Receipt {
        /// Which.
        kind: fb::ReceiptKind,
        /// The device or user it is about.
        from: Address,
        /// Server message ids.
        message_ids: Vec<u64>,
        /// Its position in our queue: acknowledge it like a message.
        seq: u64,
    },
    /// A send or request was refused; the connection stays.
    Refused {
        /// Why.
        code: ErrorCode,
        /// The send it is about (0 if none).
        client_msg_id: u64,
        /// For a limit (312–314): try again no sooner than this, ms.
        retry_after_ms: u64,
    },
    /// A group we belong (or belonged) to changed. Queued like a message
    /// (acknowledge `seq`), except `seq` 0: the direct answer to a request
    /// that changed nothing.
    GroupChanged {
        /// Its position in our queue, or 0.
        seq: u64,
        /// Our request it answers (on the requesting device), else 0.
        request_id: u64,
        /// The group.
        group: u64,
        /// What changed.
        change: fb::GroupChange,
        /// Who changed it.
        actor: u64,
        /// The users it is about.
        members: Vec<u64>,
    },
    /// The answer to [`ClientCore::devices_get`].
    Devices {
        /// Our request.
        request_id: u64,
        /// Every linked device of our user.
        devices: Vec<fb::DeviceInfo>,
    },
    /// One of our user's devices changed (queued: acknowledge `seq`).
    DeviceChanged {
        /// Its position in our queue.
        seq: u64,
        /// Our request it answers (on the requesting device), else 0.
        request_id: u64,
        /// The device.
        device: u32,
        /// What changed.
        change: fb::DeviceChange,
    },
    /// A group, device, settings or push request was refused; the
    /// connection stays.
    RequestRefused {
        /// Why.
        code: ErrorCode,
        /// The request.
        request_id: u64,
        /// For a limit (`GroupCreateLimit`): try again no sooner, ms.
        retry_after_ms: u64,
    },
    /// Our user's settings: the answer to [`ClientCore::settings_set`]
    /// (naming its `request_id`), or a change another of our devices made
    /// (`request_id` 0).
    Settings {
        /// Our request it answers, else 0.
        request_id: u64,
        /// Everyone or Nobody sees our last seen.
        last_seen: fb::LastSeenVisibility,
        /// Our read receipts are relayed (On) or not (Off).
        read_receipts: fb::Switch,
    },
    /// A request took effect (durably): [`ClientCore::push_register`].
    Done {
        /// Our request.
        request_id: u64,
    },
    /// Messages for us were dropped before we read them (queued:
    /// acknowledge `seq`). Ask the senders, end to end, to send again.
    Gap {
        /// Its position in our queue.
        seq: u64,
        /// Why they were dropped.
        cause: fb::GapCause,
        /// Per sending device: how many, and between which times.
        senders: Vec<fb::GapSender>,
    },
    /// A watched user's presence changed (or its state when we started
    /// watching): [`ClientCore::watch`].
    Presence {
        /// The user.
        user: u64,
        /// Whether any of its devices is connected.
        online: bool,
        /// When it was last online; 0 if it hides it or it is unknown.
        last_seen_ms: u64,
    },
    /// The server asks us to reconnect (elsewhere) after a while.
    GoAway {
        /// Why: `Draining` (reconnect after the delay) or `ConnectedElsewhere`
        /// (this device connected again; do not reconnect from here).
        reason: fb::GoAwayReason,
        /// Wait at least this long.
        reconnect_after_ms: u32,
    },
    /// The connection is over: a fatal error (with its code) or a bad frame.
    Closed {
        /// Why, if known.
        code: Option<ErrorCode>,
    },
}

/// A send not yet answered with ✓.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSend {
    /// The destination.
    pub to: Address,
    /// Requested TTL (0 = default).
    pub ttl_s: u32,
    /// The payload.
    pub payload: Bytes,
}

/// The client's protocol state for one connection (and what carries over
/// to the next one).
#[derive(Debug)]
pub struct ClientCore {
    encoder: Encoder,
    decoder: FrameDecoder,
    outbound: VecDeque<OutFrame>,
    events: VecDeque<ClientEvent>,
    pending: IdWindow<PendingSend>,
    /// The highest pending id written on this connection.
    sent_through: u64,
    next_client_msg_id: u64,
    last_acked_seq: u64,
    /// The seq of the last cumulative ack queued (or the `Hello`'s).
    ack_sent_seq: u64,
    authenticated: bool,
    closed: bool,
    /// `retry_after_ms` of the last `Error` received.
    retry_after_ms: u64,
}

impl ClientCore {
    /// A new connection with `token`, resuming after `last_acked_seq`,
    /// numbering sends from `first_client_msg_id` (persist it: ids must not
    /// repeat across restarts within the dedup window).
    pub fn new(token: &[u8], last_acked_seq: u64, first_client_msg_id: u64) -> Self {
        let limits = Limits::default();
        let mut core = Self {
            encoder: Encoder::new(limits),
            decoder: FrameDecoder::new(limits),
            outbound: VecDeque::new(),
            events: VecDeque::new(),
            pending: IdWindow::new(),
            sent_through: 0,
            next_client_msg_id: first_client_msg_id.max(1),
            last_acked_seq,
            ack_sent_seq: last_acked_seq,
            authenticated: false,
            closed: false,
            retry_after_ms: 0,
        };
        core.queue_hello(token);
        core
    }

    /// The next connection after this one dropped: same pending sends (sent
    /// again with their ids after `Hello`), same resume point.
    /// Takes `&self` so a failed attempt can be retried from the same
    /// state.
    pub fn reconnect(&self, token: &[u8]) -> Self {
        let mut next = Self::new(token, self.last_acked_seq, self.next_client_msg_id);
        next.pending.clone_from(&self.pending);
        next.admit();
        next
    }

    /// Sends `payload` to `to`; returns its client message id. It is
    /// written at once unless [`DEDUP_WINDOW`] sends are unanswered: then
    /// it waits for the oldest to be answered (the window promise).
    pub fn send(&mut self, to: Address, ttl_s: u32, payload: Bytes) -> u64 {
        let client_msg_id = self.next_client_msg_id;
        self.next_client_msg_id += 1;
        let send = PendingSend { to, ttl_s, payload };
        self.pending.insert(client_msg_id, send);
        self.admit();
        client_msg_id
    }

    /// Writes the pending sends not yet written, in id order, while each is
    /// within [`DEDUP_WINDOW`] ids of the oldest unanswered one.
    fn admit(&mut self) {
        let Some(oldest) = self.pending.first_id() else {
            return;
        };
        let limit = oldest + DEDUP_WINDOW;
        while let Some((id, send)) = self.pending.first_in(self.sent_through + 1, limit) {
            let (to, ttl_s, payload) = (send.to, send.ttl_s, send.payload.clone());
            self.push(|e| e.send(to, id, ttl_s, payload));
            self.sent_through = id;
        }
    }

    /// Acknowledges every message up to `seq` (stored on this device), at
    /// once: a frame of its own unless others are queued.
    pub fn ack(&mut self, seq: u64) {
        self.ack_later(seq);
        self.release_ack();
    }

    /// Acknowledges every message up to `seq`, held back: the ack rides the
    /// next frame written, or the shell writes it after [`ACK_DELAY`]
    /// ([`ClientCore::ack_held`], [`ClientCore::release_ack`]). Past
    /// [`ACK_BATCH`] unacknowledged seqs it is queued at once. A reconnect
    /// resumes after `seq` either way.
    pub fn ack_later(&mut self, seq: u64) {
        if seq > self.last_acked_seq {
            self.last_acked_seq = seq;
            if seq >= self.ack_sent_seq + ACK_BATCH {
                self.release_ack();
            }
        }
    }

    /// Whether an acknowledgment is held back (see [`ClientCore::ack_later`]).
    pub fn ack_held(&self) -> bool {
        self.last_acked_seq > self.ack_sent_seq
    }

    /// Queues the held-back acknowledgment, if any.
    pub fn release_ack(&mut self) {
        if self.ack_held() {
            let seq = self.last_acked_seq;
            self.ack_sent_seq = seq;
            self.push(|e| e.delivery_ack(seq, true));
        }
    }

    /// Tells `to` (the original sender, a user or device) that the user
    /// read `message_ids` (at most 256).
    pub fn read(&mut self, to: Address, message_ids: &[u64]) {
        let about = Address::default();
        self.push(|e| e.receipt(fb::ReceiptKind::Read, to, about, message_ids, 0, 0));
    }

    /// Acknowledges only `seq` (stored on this device, out of order): the
    /// server deletes that entry; the resume point does not move.
    pub fn ack_only(&mut self, seq: u64) {
        if seq > self.last_acked_seq {
            self.push(|e| e.delivery_ack(seq, false));
        }
    }

    /// Plaintext bytes from the server.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        // Frames are read where they lie in `bytes` (the decoder keeps only
        // one cut by the end); the decoder is moved out meanwhile, so the
        // core can take each frame by `&mut self`.
        let limits = *self.decoder.limits();
        let mut decoder = std::mem::replace(&mut self.decoder, FrameDecoder::new(limits));
        let fed = decoder.feed(bytes, |frame| self.handle_frame(&frame));
        decoder.release_if_empty();
        self.decoder = decoder;
        if let Err(error) = fed {
            self.close_on_bad_bytes(&error);
        }
    }

    /// The server closed the connection (after any frames already handled).
    pub fn handle_peer_closed(&mut self) {
        self.close(None);
    }

    /// The next frame to write. A held acknowledgment rides along with
    /// any other frame.
    pub fn poll_transmit(&mut self) -> Option<OutFrame> {
        if !self.outbound.is_empty() {
            self.release_ack();
        }
        self.outbound.pop_front()
    }

    /// The next thing the server told us.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Sends not yet answered with ✓, by client message id.
    pub fn pending(&self) -> &IdWindow<PendingSend> {
        &self.pending
    }

    /// The highest seq acknowledged: where the next connection resumes.
    pub fn last_acked_seq(&self) -> u64 {
        self.last_acked_seq
    }

    /// Whether `Welcome` arrived.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Creates a group with us as admin and `members`; answered by a
    /// `GroupChanged{Created}` naming `request_id` (the group id is in it).
    pub fn group_create(&mut self, request_id: u64, members: &[u64]) {
        let mut g = fb::GroupCreateT::default();
        g.request_id = request_id;
        g.members = Some(members.to_vec());
        self.push_owned(fb::BodyT::GroupCreate(Box::new(g)));
    }

    /// Adds `members` to `group` (admins only).
    pub fn group_add(&mut self, request_id: u64, group: u64, members: &[u64]) {
        let mut g = fb::GroupAddT::default();
        g.request_id = request_id;
        g.group = group;
        g.members = Some(members.to_vec());
        self.push_owned(fb::BodyT::GroupAdd(Box::new(g)));
    }

    /// Removes `members` from `group` (admins only); naming only our own
    /// user is leaving.
    pub fn group_remove(&mut self, request_id: u64, group: u64, members: &[u64]) {
        let mut g = fb::GroupRemoveT::default();
        g.request_id = request_id;
        g.group = group;
        g.members = Some(members.to_vec());
        self.push_owned(fb::BodyT::GroupRemove(Box::new(g)));
    }

    /// Asks for our user's linked devices (answered by `Devices`).
    pub fn devices_get(&mut self, request_id: u64) {
        let mut d = fb::DevicesGetT::default();
        d.request_id = request_id;
        self.push_owned(fb::BodyT::DevicesGet(Box::new(d)));
    }

    /// Changes our user's privacy settings (`Unchanged` leaves one as it
    /// is; both `Unchanged` just reads them); answered by `Settings`.
    pub fn settings_set(
        &mut self,
        request_id: u64,
        last_seen: fb::LastSeenVisibility,
        read_receipts: fb::Switch,
    ) {
        self.push(|e| e.settings_set(request_id, last_seen, read_receipts));
    }

    /// Starts (or, `unwatch`, stops) watching `users`' presence (at most
    /// 256 per call); answered by a `Presence` per user.
    pub fn watch(&mut self, users: &[u64], unwatch: bool) {
        let mut p = fb::PresenceSubscribeT::default();
        p.users = Some(users.to_vec());
        p.unsubscribe = unwatch;
        self.push_owned(fb::BodyT::PresenceSubscribe(Box::new(p)));
    }

    /// Registers this device's push token for `platform` (an empty token
    /// forgets it); answered by `Done` once durable.
    pub fn push_register(&mut self, request_id: u64, token: &[u8], platform: &str) {
        self.push(|e| e.push_register(request_id, token, platform));
    }

    /// The `retry_after_ms` of the last `Error` the server sent: after a
    /// `Closed{Banned}`, how long the ban lasts (0: until lifted).
    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after_ms
    }

    /// Unlinks one of our user's devices (answered by `DeviceChanged`).
    pub fn device_unlink(&mut self, request_id: u64, device: u32) {
        let mut d = fb::DeviceUnlinkT::default();
        d.request_id = request_id;
        d.device = device;
        self.push_owned(fb::BodyT::DeviceUnlink(Box::new(d)));
    }

    fn push_owned(&mut self, body: fb::BodyT) {
        let mut header = fb::FrameT::default();
        header.body = body;
        self.push(|e| e.encode_owned(&header, Bytes::new()));
    }

    fn queue_hello(&mut self, token: &[u8]) {
        let mut hello = fb::HelloT::default();
        hello.protocol_version = PROTOCOL_VERSION;
        hello.token = Some(token.to_vec());
        hello.last_acked_seq = self.last_acked_seq;
        hello.client_name = Some(concat!("edge-client/", env!("CARGO_PKG_VERSION")).into());
        let mut header = fb::FrameT::default();
        header.body = fb::BodyT::Hello(Box::new(hello));
        self.push(|e| e.encode_owned(&header, Bytes::new()));
    }

    fn push(&mut self, encode: impl FnOnce(&mut Encoder) -> Result<OutFrame, WireError>) {
        match encode(&mut self.encoder) {
            Ok(frame) => self.outbound.push_back(frame),
            // Only a payload over the frame limit gets here: the caller's bug.
            Err(error) => panic!("cannot encode a client frame: {error}"),
        }
    }

    fn close_on_bad_bytes(&mut self, error: &WireError) {
        let code = error.code();
        self.push(|e| e.error(code, 0, true, "bad frame from server"));
        self.close(Some(code));
    }

    fn close(&mut self, code: Option<ErrorCode>) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(ClientEvent::Closed { code });
        }
    }

    fn handle_frame(&mut self, frame: &FrameRef<'_>) {
        let event = match frame.body() {
            Body::Welcome(w) => {
                self.authenticated = true;
                self.last_acked_seq = self.last_acked_seq.min(w.resume_seq());
                // Acks above the server's resume point are to be written again.
                self.ack_sent_seq = self.ack_sent_seq.min(self.last_acked_seq);
                ClientEvent::Welcome {
                    user: w.user(),
                    device: w.device(),
                    backlog_count: w.backlog_count(),
                    heartbeat_interval_ms: w.heartbeat_interval_ms(),
                    payload_bytes_max: w.payload_bytes_max(),
                    resume_seq: w.resume_seq(),
                }
            }
            Body::ServerAck(a) => {
                self.pending.remove(a.client_msg_id());
                self.admit();
                ClientEvent::Acked {
                    client_msg_id: a.client_msg_id(),
                    message_id: a.message_id(),
                    duplicate: a.status() == fb::AckStatus::Duplicate,
                }
            }
            Body::Deliver(d) => ClientEvent::Message {
                seq: d.seq(),
                message_id: d.message_id(),
                from: d.from().copied().unwrap_or_default(),
                to: d.to().copied().unwrap_or_default(),
                // A copy: the read buffer is reused, and an app that keeps
                // messages should not keep read buffers with them.
                payload: Bytes::copy_from_slice(frame.payload()),
            },
            Body::Receipt(r) => ClientEvent::Receipt {
                kind: r.kind(),
                from: r.from().copied().unwrap_or_default(),
                message_ids: r
                    .message_ids()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                seq: r.seq(),
            },
            Body::Ping(p) => {
                let nonce = p.nonce();
                return self.push(|e| e.pong(nonce));
            }
            Body::GoAway(g) => ClientEvent::GoAway {
                reason: g.reason(),
                reconnect_after_ms: g.reconnect_after_ms(),
            },
            Body::Error(e) if e.fatal() => {
                self.retry_after_ms = e.retry_after_ms();
                return self.close(Some(e.code()));
            }
            Body::Error(e) if e.request_id() != 0 => ClientEvent::RequestRefused {
                code: e.code(),
                request_id: e.request_id(),
                retry_after_ms: e.retry_after_ms(),
            },
            Body::Error(e) => {
                let client_msg_id = e.client_msg_id();
                // Not stored. Refused while draining: resent on the next
                // connection; otherwise the app decides.
                if e.code() != ErrorCode::Draining {
                    self.pending.remove(client_msg_id);
                    self.admit();
                }
                ClientEvent::Refused {
                    code: e.code(),
                    client_msg_id,
                    retry_after_ms: e.retry_after_ms(),
                }
            }
            Body::GroupChanged(g) => ClientEvent::GroupChanged {
                seq: g.seq(),
                request_id: g.request_id(),
                group: g.group(),
                change: g.change(),
                actor: g.actor(),
                members: g.members().map(|v| v.iter().collect()).unwrap_or_default(),
            },
            Body::Devices(d) => ClientEvent::Devices {
                request_id: d.request_id(),
                devices: d
                    .devices()
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default(),
            },
            Body::DeviceChanged(d) => ClientEvent::DeviceChanged {
                seq: d.seq(),
                request_id: d.request_id(),
                device: d.device(),
                change: d.change(),
            },
            Body::Settings(s) => ClientEvent::Settings {
                request_id: s.request_id(),
                last_seen: s.last_seen(),
                read_receipts: s.read_receipts(),
            },
            Body::Done(d) => ClientEvent::Done {
                request_id: d.request_id(),
            },
            Body::Gap(g) => ClientEvent::Gap {
                seq: g.seq(),
                cause: g.cause(),
                senders: g
                    .senders()
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default(),
            },
            Body::Presence(p) => ClientEvent::Presence {
                user: p.user(),
                online: p.state() == fb::PresenceState::Online,
                last_seen_ms: p.last_seen_ms(),
            },
            _ => return, // typing: not needed by tools yet
        };
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::user_address;

    /// Frames written, after the `Hello`.
    fn sends_written(core: &mut ClientCore) -> usize {
        std::iter::from_fn(|| core.poll_transmit()).count()
    }

    fn ack(core: &mut ClientCore, client_msg_id: u64) {
        let mut e = Encoder::new(Limits::default());
        let frame = e
            .server_ack(client_msg_id, 7, 0, fb::AckStatus::Stored)
            .unwrap();
        core.handle_bytes(&frame.to_vec());
    }

    /// What the core writes next, one word per frame (`ack 5` for a
    /// cumulative delivery ack of seq 5).
    fn written(core: &mut ClientCore) -> Vec<String> {
        std::iter::from_fn(|| core.poll_transmit())
            .map(|f| {
                let frame = wire_format::decode_exact(Bytes::from(f.to_vec()), &Limits::default());
                match frame.unwrap().body() {
                    Body::DeliveryAck(a) if a.cumulative() => format!("ack {}", a.seq()),
                    Body::Send(_) => "send".to_owned(),
                    Body::Hello(h) => format!("hello {}", h.last_acked_seq()),
                    other => format!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn a_held_ack_rides_the_next_frame_or_waits_for_release() {
        let mut core = ClientCore::new(b"token", 3, 1);
        assert_eq!(written(&mut core), ["hello 3"]);
        core.ack_later(5);
        assert!(core.ack_held());
        assert!(written(&mut core).is_empty(), "held, nothing else to ride");
        core.ack_later(9);
        core.send(user_address(2), 0, Bytes::from_static(b"hi"));
        assert_eq!(
            written(&mut core),
            ["send", "ack 9"],
            "one write carries both"
        );
        assert!(!core.ack_held());
        core.ack_later(10);
        core.release_ack();
        assert_eq!(written(&mut core), ["ack 10"], "the shell's delay ran out");
        core.ack(12);
        assert_eq!(written(&mut core), ["ack 12"], "ack is immediate");
        core.ack_later(13);
        let mut next = core.reconnect(b"token");
        // A reconnect resumes after it (and writes the unanswered send again).
        assert_eq!(written(&mut next), ["hello 13", "send"]);
        assert!(!next.ack_held());
    }

    /// A `Welcome` whose resume point is below what this device acked
    /// (the server lost acks in a crash) makes those seqs ackable again.
    #[test]
    fn acks_below_a_lowered_resume_point_are_written_again() {
        let mut core = ClientCore::new(b"token", 0, 1);
        core.ack(8);
        assert_eq!(written(&mut core), ["hello 0", "ack 8"]);
        let mut next = core.reconnect(b"token");
        assert_eq!(written(&mut next), ["hello 8"]);
        let mut body = fb::WelcomeT::default();
        body.resume_seq = 5;
        let mut welcome = fb::FrameT::default();
        welcome.body = fb::BodyT::Welcome(Box::new(body));
        let mut e = Encoder::new(Limits::default());
        next.handle_bytes(&e.encode_owned(&welcome, Bytes::new()).unwrap().to_vec());
        assert_eq!(next.last_acked_seq(), 5);
        next.ack(7);
        assert_eq!(written(&mut next), ["ack 7"]);
    }

    #[test]
    fn a_batch_of_unacknowledged_seqs_releases_the_held_ack() {
        let mut core = ClientCore::new(b"token", 0, 1);
        assert_eq!(written(&mut core), ["hello 0"]);
        core.ack_later(ACK_BATCH - 1);
        assert!(written(&mut core).is_empty());
        core.ack_later(ACK_BATCH);
        assert_eq!(written(&mut core), [format!("ack {ACK_BATCH}")]);
        core.ack_later(ACK_BATCH + 1);
        core.ack_later(ACK_BATCH);
        assert!(core.ack_held(), "an older seq changes nothing");
        assert!(written(&mut core).is_empty());
    }

    #[test]
    fn at_most_the_dedup_window_of_sends_is_unanswered() {
        let window = usize::try_from(DEDUP_WINDOW).unwrap();
        let mut core = ClientCore::new(b"token", 0, 1);
        assert_eq!(sends_written(&mut core), 1, "the Hello");
        let count = DEDUP_WINDOW + 6;
        for _ in 0..count {
            core.send(user_address(2), 0, Bytes::from_static(b"hi"));
        }
        assert_eq!(sends_written(&mut core), window);
        ack(&mut core, 2);
        assert_eq!(sends_written(&mut core), 0, "id 1 still holds the window");
        ack(&mut core, 1);
        assert_eq!(sends_written(&mut core), 2, "ids 65 and 66");
        // A reconnect writes the unanswered ones again, window first.
        let mut next = core.reconnect(b"token");
        assert_eq!(sends_written(&mut next), 1 + window);
        assert_eq!(next.pending().len(), window + 4);
    }
}
