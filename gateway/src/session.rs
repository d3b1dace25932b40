//! [`Session`]: the protocol state machine of one connection, sans-IO.
//!
//! ```text
//!  Handshaking ──TLS done──► AwaitingHello ──valid Hello──► Authenticated
//!       │ deadline               │ deadline / bad frame         │ start_drain
//!       ▼                        ▼                              ▼
//!     Closed ◄──────────────── Closed ◄──── deadline ──────── Draining
//! ```
//!
//! Inputs are `handle_*` calls with the time passed in; outputs are polled:
//! [`Session::poll_event`] (what the shard must do: route a `Send`, apply an
//! ack, …), [`Session::poll_reply`] (frames the session itself answers
//! with: `Welcome`, `Pong`, `Ping`, `Error`, `GoAway`) and
//! [`Session::poll_timeout`] (when to call [`Session::handle_timeout`]).
//! The sender of every event is the authenticated device: nothing a client
//! writes can name another sender.
//!
//! Every refusal carries its protocol [`ErrorCode`]; fatal ones close the
//! session after the `Error` frame, and nothing of other sessions is
//! touched.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use wire_format::fb::{self, ErrorCode};
use wire_format::{Address, AddressKind, Body, Frame, PROTOCOL_VERSION, WireError};

use crate::clock::Now;
use crate::token::{Claims, Verifier};

/// Deadlines and limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// From the end of the handshake to a valid `Hello`.
    pub auth_timeout_ms: u64,
    /// Silence after which the connection is closed; a `Ping` probes at half.
    pub idle_timeout_ms: u64,
    /// Largest `Send` payload (announced in `Welcome`): every accepted
    /// message must fit in a `Deliver` frame (see `Limits::payload_bytes_max`).
    pub payload_bytes_max: u32,
    /// From `GoAway` to the close.
    pub drain_timeout_ms: u64,
    /// `Send`s per second, sustained.
    pub sends_per_s: u32,
    /// Payload bytes per second, sustained.
    pub send_bytes_per_s: u32,
    /// Seconds of the sustained rates a client may burst.
    pub burst_s: u32,
    /// Refused `Send`s in a row before the connection is closed.
    pub refusals_before_close: u32,
    /// Most ids in one `Receipt` or `PresenceSubscribe`.
    pub items_max: usize,
}

impl SessionConfig {
    fn send_rate(&self) -> Rate {
        Rate::new(self.sends_per_s, self.burst_s)
    }

    fn send_bytes_rate(&self) -> Rate {
        Rate::new(self.send_bytes_per_s, self.burst_s)
    }

    /// The ping interval `Welcome` announces: 40% of the idle timeout, so a
    /// client that follows it is never closed as idle (the server probes at
    /// half the timeout and closes at all of it). 120 s for the default 300 s.
    pub fn heartbeat_interval_ms(&self) -> u32 {
        u32::try_from(self.idle_timeout_ms * 2 / 5).unwrap_or(u32::MAX)
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            auth_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            payload_bytes_max: wire_format::Limits::default().payload_bytes_max(),
            drain_timeout_ms: 30_000,
            sends_per_s: 100,
            send_bytes_per_s: 1 << 20,
            burst_s: 2,
            refusals_before_close: 100,
            items_max: 256,
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TLS handshake in progress.
    Handshaking,
    /// TLS is up; waiting for `Hello`.
    AwaitingHello,
    /// Authenticated as the device in the claims.
    Authenticated(Claims),
    /// `GoAway` sent; finishing what is in flight.
    Draining(Claims),
    /// Done; the shell closes the socket.
    Closed,
}

/// What the shard must do for this connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The device authenticated; answer with [`Session::welcome`].
    Authenticated {
        /// Who.
        claims: Claims,
        /// Resume the backlog after this seq.
        last_acked_seq: u64,
    },
    /// Store and forward `payload` to `to`.
    Send {
        /// The destination (kind User, Device or Group).
        to: Address,
        /// The sender's id for it.
        client_msg_id: u64,
        /// Requested TTL (0 = default).
        ttl_s: u32,
        /// The opaque payload, a slice of the read buffer.
        payload: Bytes,
    },
    /// The device acknowledges `seq` (and everything before, if cumulative).
    Ack {
        /// The seq.
        seq: u64,
        /// Whether everything up to `seq` is acknowledged.
        cumulative: bool,
    },
    /// The user read these messages; tell `to`.
    Read {
        /// The original sender.
        to: Address,
        /// Server message ids.
        message_ids: Vec<u64>,
    },
    /// Relay a typing state to `to`.
    Typing {
        /// The peer.
        to: Address,
        /// The state.
        state: fb::TypingState,
    },
    /// Start or stop watching users' presence.
    Subscribe {
        /// The users.
        users: Vec<u64>,
        /// Stop instead of start.
        unsubscribe: bool,
    },
    /// A group change (`group` is 0 for a create: the shard assigns it).
    Group {
        /// Which change.
        op: GroupOp,
        /// Echoed in the resulting `GroupChanged`.
        request_id: u64,
        /// The group.
        group: u64,
        /// The users it is about.
        members: Vec<u64>,
    },
    /// List the user's linked devices.
    DevicesGet {
        /// Echoed in the `Devices` answer.
        request_id: u64,
    },
    /// Unlink one of the user's devices.
    DeviceUnlink {
        /// Echoed in the resulting `DeviceChanged`.
        request_id: u64,
        /// The device.
        device: u32,
    },
    /// Change (or read) the user's privacy settings.
    SettingsSet {
        /// Echoed in the `Settings` answer.
        request_id: u64,
        /// Last-seen visibility (`Unchanged` leaves it).
        last_seen: fb::LastSeenVisibility,
        /// Read receipts on or off (`Unchanged` leaves it).
        read_receipts: fb::Switch,
    },
    /// Register (or, empty, forget) this device's push token.
    PushRegister {
        /// Echoed in the `Done` answer.
        request_id: u64,
        /// The platform's token, at most [`PUSH_TOKEN_BYTES_MAX`] bytes.
        token: Vec<u8>,
        /// The push service, at most [`PUSH_PLATFORM_BYTES_MAX`] bytes.
        platform: String,
    },
    /// The session ended; `code` is why (None: the client left cleanly).
    Closed {
        /// The protocol reason, if any.
        code: Option<ErrorCode>,
    },
}

/// Largest push token a device may register.
pub const PUSH_TOKEN_BYTES_MAX: usize = 512;
/// Largest push platform name.
pub const PUSH_PLATFORM_BYTES_MAX: usize = 32;

/// The group frames a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOp {
    /// `GroupCreate`.
    Create,
    /// `GroupAdd`.
    Add,
    /// `GroupRemove` (removing oneself is leaving).
    Remove,
}

/// A frame the session answers with; the shell encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The answer to a valid `Hello`.
    Welcome {
        /// The authenticated user.
        user: u64,
        /// The authenticated device.
        device: u32,
        /// Messages queued after the resume point.
        backlog_count: u32,
        /// Announced ping interval.
        heartbeat_interval_ms: u32,
        /// Largest `Send` payload accepted.
        payload_bytes_max: u32,
        /// The seq the server resumes after (the clamped resume point).
        resume_seq: u64,
    },
    /// Answer to a client `Ping`.
    Pong {
        /// Its nonce.
        nonce: u64,
    },
    /// A probe of a silent client.
    Ping {
        /// A nonce to match the `Pong`.
        nonce: u64,
    },
    /// A refusal.
    Error {
        /// Why.
        code: ErrorCode,
        /// The `Send` it is about, or 0.
        client_msg_id: u64,
        /// The group or device request it is about, or 0.
        request_id: u64,
        /// Whether the connection closes after it.
        fatal: bool,
        /// Do not try again sooner, ms (limits and bans; else 0).
        retry_after_ms: u64,
    },
    /// Reconnect elsewhere (`Draining`), or not from here at all
    /// (`ConnectedElsewhere`: the device connected again).
    GoAway {
        /// Why.
        reason: fb::GoAwayReason,
        /// Wait at least this long before reconnecting.
        reconnect_after_ms: u32,
    },
}

/// A token bucket in thousandths of a token, refilled by the time passed in.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: u64,
}

/// A bucket's rate and depth (from the session's config, not stored per
/// connection).
#[derive(Clone, Copy)]
struct Rate {
    per_s: u64,
    cap_milli: u64,
}

impl Rate {
    fn new(per_s: u32, burst_s: u32) -> Self {
        Self {
            per_s: u64::from(per_s),
            cap_milli: u64::from(per_s) * u64::from(burst_s.max(1)) * 1000,
        }
    }
}

impl Bucket {
    fn full(rate: Rate, now_ms: u64) -> Self {
        Self {
            milli: rate.cap_milli,
            at_ms: now_ms,
        }
    }

    /// Takes `n` tokens if there are enough at `now_ms`.
    fn take(&mut self, rate: Rate, n: u64, now_ms: u64) -> bool {
        let refill = now_ms.saturating_sub(self.at_ms) * rate.per_s;
        self.milli = (self.milli + refill).min(rate.cap_milli);
        self.at_ms = now_ms;
        let need = n * 1000;
        if self.milli < need {
            return false;
        }
        self.milli -= need;
        true
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    /// Shared by the shard's sessions (64 bytes each otherwise).
    config: Rc<SessionConfig>,
    state: State,
    deadline_ms: u64,
    last_rx_ms: u64,
    /// A `Ping` probes the silence (sent at half the idle timeout).
    probed: bool,
    sends: Bucket,
    send_bytes: Bucket,
    refusals_in_a_row: u32,
    events: VecDeque<Event>,
    replies: VecDeque<Reply>,
}

impl Session {
    /// A connection accepted at `now_ms`; the TLS handshake starts.
    pub fn new(now_ms: u64, config: SessionConfig) -> Self {
        Self::with_shared(now_ms, Rc::new(config))
    }

    /// [`Session::new`] with a configuration shared by many sessions.
    pub fn with_shared(now_ms: u64, config: Rc<SessionConfig>) -> Self {
        Self {
            state: State::Handshaking,
            deadline_ms: now_ms + config.handshake_timeout_ms,
            last_rx_ms: now_ms,
            probed: false,
            sends: Bucket::full(config.send_rate(), now_ms),
            send_bytes: Bucket::full(config.send_bytes_rate(), now_ms),
            refusals_in_a_row: 0,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            config,
        }
    }

    /// Where the session stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the shell should close the socket (after flushing replies).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    // ---- input ---------------------------------------------------------------

    /// The TLS handshake completed.
    pub fn handle_handshake_done(&mut self, now_ms: u64) {
        if self.state == State::Handshaking {
            self.state = State::AwaitingHello;
            self.deadline_ms = now_ms + self.config.auth_timeout_ms;
        }
    }

    /// The bytes could not be split into frames: answer with the wire
    /// error's code and close.
    pub fn handle_decode_error(&mut self, error: &WireError) {
        self.fail(error.code(), 0);
    }

    /// The peer closed its side cleanly.
    pub fn handle_peer_closed(&mut self) {
        self.close(None);
    }

    /// A decoded, verified frame arrived at `now` (deadlines use its
    /// monotonic time, the token's expiry its wall time).
    pub fn handle_frame(&mut self, now: Now, frame: &Frame, verifier: &Verifier) {
        let now_ms = now.mono_ms;
        self.last_rx_ms = now_ms;
        match self.state {
            State::Handshaking | State::Closed => {}
            State::AwaitingHello => self.on_hello(now.wall_ms, frame, verifier),
            State::Authenticated(_) | State::Draining(_) => self.on_frame(now_ms, frame),
        }
    }

    /// Time passed: enforce whichever deadline is due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::Handshaking if now_ms >= self.deadline_ms => {
                self.close(Some(ErrorCode::HandshakeTimeout)); // no TLS: no Error frame
            }
            State::AwaitingHello if now_ms >= self.deadline_ms => {
                self.fail(ErrorCode::AuthTimeout, 0)
            }
            State::Draining(_) if now_ms >= self.deadline_ms => {
                self.close(Some(ErrorCode::ShuttingDown))
            }
            State::Authenticated(_) | State::Draining(_) => self.check_idle(now_ms),
            _ => {}
        }
    }

    /// Answers the `Authenticated` event once the shard knows the backlog
    /// and where it resumes.
    pub fn welcome(&mut self, backlog_count: u32, resume_seq: u64) {
        if let State::Authenticated(claims) | State::Draining(claims) = self.state {
            self.replies.push_back(Reply::Welcome {
                user: claims.user,
                device: claims.device,
                backlog_count,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms(),
                payload_bytes_max: self.config.payload_bytes_max,
                resume_seq,
            });
        }
    }

    /// The same device connected again on another connection: this one
    /// gets `GoAway{ConnectedElsewhere}` (no `Error`: nothing is wrong, and
    /// the client must not reconnect from here) and closes.
    pub fn replaced(&mut self) {
        if matches!(self.state, State::Authenticated(_) | State::Draining(_)) {
            self.replies.push_back(Reply::GoAway {
                reason: fb::GoAwayReason::ConnectedElsewhere,
                reconnect_after_ms: 0,
            });
        }
        self.close(None);
    }

    /// Drain: `GoAway`, refuse new sends, close at the drain deadline (or
    /// earlier, when the shell has flushed and calls [`Session::finish`]).
    pub fn start_drain(&mut self, now_ms: u64, reconnect_after_ms: u32) {
        match self.state {
            State::Authenticated(claims) => {
                self.state = State::Draining(claims);
                self.deadline_ms = now_ms + self.config.drain_timeout_ms;
                self.replies.push_back(Reply::GoAway {
                    reason: fb::GoAwayReason::Draining,
                    reconnect_after_ms,
                });
            }
            State::Handshaking | State::AwaitingHello => self.close(Some(ErrorCode::ShuttingDown)),
            State::Draining(_) | State::Closed => {}
        }
    }

    /// The shard refuses something this connection did (a `Send` that was
    /// not stored, an ack of someone else's message): an `Error` frame, and
    /// a close if the code is fatal ([`wire_format::is_fatal`]).
    pub fn refuse_from_shard(&mut self, code: ErrorCode, client_msg_id: u64) {
        if self.state == State::Closed {
            return;
        }
        if wire_format::is_fatal(code) {
            self.fail(code, client_msg_id);
        } else {
            self.refuse(code, client_msg_id);
        }
    }

    /// The shard refuses a group or device request: an `Error` frame that
    /// names its `request_id` (and a close if the code is fatal).
    pub fn refuse_request(&mut self, code: ErrorCode, request_id: u64) {
        if self.state == State::Closed {
            return;
        }
        self.refuse_limited(code, 0, request_id, 0);
    }

    /// A refusal with everything an `Error` can say: the `Send` or request
    /// it is about and how long to wait (`retry_after_ms`, for limits and
    /// bans); a close if the code is fatal.
    pub fn refuse_limited(
        &mut self,
        code: ErrorCode,
        client_msg_id: u64,
        request_id: u64,
        retry_after_ms: u64,
    ) {
        if self.state == State::Closed {
            return;
        }
        let fatal = wire_format::is_fatal(code);
        self.replies.push_back(Reply::Error {
            code,
            client_msg_id,
            request_id,
            fatal,
            retry_after_ms,
        });
        if fatal {
            self.close(Some(code));
        }
    }

    /// Everything owed has been flushed; a draining session may close now.
    pub fn finish(&mut self) {
        if matches!(self.state, State::Draining(_)) {
            self.close(Some(ErrorCode::ShuttingDown));
        }
    }

    // ---- output --------------------------------------------------------------

    /// The next thing the shard must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next frame the session answers with.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    /// Frees the event and reply queues if they are drained, so an idle
    /// connection holds neither (about 400 B); the next frame makes them
    /// again. For the shell to call once per wake-up, not per frame.
    pub fn release_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.replies.is_empty() {
            self.replies = VecDeque::new();
        }
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Handshaking | State::AwaitingHello => Some(self.deadline_ms),
            State::Authenticated(_) => Some(self.idle_check_ms()),
            State::Draining(_) => Some(self.deadline_ms.min(self.idle_check_ms())),
            State::Closed => None,
        }
    }

    // ---- internals -----------------------------------------------------------

    fn idle_check_ms(&self) -> u64 {
        let idle = self.config.idle_timeout_ms;
        match self.probed {
            false => self.last_rx_ms + idle / 2,
            true => self.last_rx_ms + idle,
        }
    }

    fn check_idle(&mut self, now_ms: u64) {
        let silent = now_ms.saturating_sub(self.last_rx_ms);
        if silent >= self.config.idle_timeout_ms {
            self.fail(ErrorCode::IdleTimeout, 0);
        } else if silent >= self.config.idle_timeout_ms / 2 && !self.probed {
            self.probed = true;
            self.replies.push_back(Reply::Ping { nonce: now_ms });
        }
    }

    fn on_hello(&mut self, wall_ms: u64, frame: &Frame, verifier: &Verifier) {
        let Body::Hello(hello) = frame.body() else {
            return self.fail(ErrorCode::AuthRequired, 0);
        };
        if hello.protocol_version() != PROTOCOL_VERSION {
            return self.fail(ErrorCode::UnsupportedVersion, 0);
        }
        let token = hello.token().map(|t| t.bytes()).unwrap_or_default();
        match verifier.verify(token, wall_ms / 1000) {
            Ok(claims) => {
                self.state = State::Authenticated(claims);
                let last_acked_seq = hello.last_acked_seq();
                self.events.push_back(Event::Authenticated {
                    claims,
                    last_acked_seq,
                });
            }
            Err(error) => self.fail(error.code(), 0),
        }
    }

    fn on_frame(&mut self, now_ms: u64, frame: &Frame) {
        self.probed = false; // anything received proves the peer is there
        match frame.body() {
            Body::Send(send) => self.on_send(now_ms, frame, send),
            Body::DeliveryAck(ack) => self.events.push_back(Event::Ack {
                seq: ack.seq(),
                cumulative: ack.cumulative(),
            }),
            Body::Receipt(r) if r.kind() == fb::ReceiptKind::Read => {
                let ids: Vec<u64> = r
                    .message_ids()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                match r.to().copied() {
                    Some(to) if valid_target(&to) && ids.len() <= self.config.items_max => {
                        self.events.push_back(Event::Read {
                            to,
                            message_ids: ids,
                        })
                    }
                    Some(to) if valid_target(&to) => self.refuse(ErrorCode::TooManyItems, 0),
                    _ => self.refuse(ErrorCode::InvalidAddress, 0),
                }
            }
            Body::Typing(t) => match t.to().copied() {
                Some(to) if valid_target(&to) => self.events.push_back(Event::Typing {
                    to,
                    state: t.state(),
                }),
                _ => self.refuse(ErrorCode::InvalidAddress, 0),
            },
            Body::PresenceSubscribe(p) => {
                let users: Vec<u64> = p.users().map(|v| v.iter().collect()).unwrap_or_default();
                if users.len() > self.config.items_max {
                    return self.refuse(ErrorCode::TooManyItems, 0);
                }
                self.events.push_back(Event::Subscribe {
                    users,
                    unsubscribe: p.unsubscribe(),
                });
            }
            Body::Ping(p) => self.replies.push_back(Reply::Pong { nonce: p.nonce() }),
            Body::Pong(_) => {}
            Body::Error(_) => self.close(None), // the client gives up; nothing to answer
            Body::GroupCreate(g) => self.on_group(GroupOp::Create, g.request_id(), 0, g.members()),
            Body::GroupAdd(g) => {
                self.on_group(GroupOp::Add, g.request_id(), g.group(), g.members())
            }
            Body::GroupRemove(g) => {
                self.on_group(GroupOp::Remove, g.request_id(), g.group(), g.members())
            }
            Body::DevicesGet(d) => self.events.push_back(Event::DevicesGet {
                request_id: d.request_id(),
            }),
            Body::DeviceUnlink(d) => self.events.push_back(Event::DeviceUnlink {
                request_id: d.request_id(),
                device: d.device(),
            }),
            Body::SettingsSet(s) => self.events.push_back(Event::SettingsSet {
                request_id: s.request_id(),
                last_seen: s.last_seen(),
                read_receipts: s.read_receipts(),
            }),
            Body::PushRegister(p) => self.on_push_register(p),
            // A second Hello, or a kind only servers send.
            _ => self.fail(ErrorCode::UnexpectedFrame, 0),
        }
    }

    fn on_send(&mut self, now_ms: u64, frame: &Frame, send: fb::Send<'_>) {
        let client_msg_id = send.client_msg_id();
        if matches!(self.state, State::Draining(_)) {
            return self.refuse(ErrorCode::Draining, client_msg_id);
        }
        let Some(to) = send.to().copied().filter(valid_target) else {
            return self.refuse(ErrorCode::InvalidAddress, client_msg_id);
        };
        let payload = frame.payload_bytes();
        if payload.len() > self.config.payload_bytes_max as usize {
            return self.refuse(ErrorCode::PayloadTooLarge, client_msg_id);
        }
        let allowed = self.sends.take(self.config.send_rate(), 1, now_ms)
            && self
                .send_bytes
                .take(self.config.send_bytes_rate(), payload.len() as u64, now_ms);
        if !allowed {
            self.refusals_in_a_row += 1;
            if self.refusals_in_a_row >= self.config.refusals_before_close {
                return self.fail(ErrorCode::RateLimited, client_msg_id);
            }
            return self.refuse(ErrorCode::RateLimited, client_msg_id);
        }
        self.refusals_in_a_row = 0;
        self.events.push_back(Event::Send {
            to,
            client_msg_id,
            ttl_s: send.ttl_s(),
            payload,
        });
    }

    fn on_group(
        &mut self,
        op: GroupOp,
        request_id: u64,
        group: u64,
        members: Option<flatbuffers::Vector<'_, u64>>,
    ) {
        let members: Vec<u64> = members.map(|v| v.iter().collect()).unwrap_or_default();
        if members.len() > self.config.items_max {
            return self.refuse_request(ErrorCode::TooManyItems, request_id);
        }
        self.events.push_back(Event::Group {
            op,
            request_id,
            group,
            members,
        });
    }

    fn on_push_register(&mut self, p: fb::PushRegister<'_>) {
        let token = p.token().map(|t| t.bytes().to_vec()).unwrap_or_default();
        let platform = p.platform().unwrap_or_default();
        let request_id = p.request_id();
        if token.len() > PUSH_TOKEN_BYTES_MAX || platform.len() > PUSH_PLATFORM_BYTES_MAX {
            return self.refuse_request(ErrorCode::TooManyItems, request_id);
        }
        self.events.push_back(Event::PushRegister {
            request_id,
            token,
            platform: platform.to_owned(),
        });
    }

    /// A non-fatal refusal: the connection stays.
    fn refuse(&mut self, code: ErrorCode, client_msg_id: u64) {
        debug_assert!(!wire_format::is_fatal(code), "{code:?} is fatal");
        self.replies.push_back(Reply::Error {
            code,
            client_msg_id,
            request_id: 0,
            fatal: false,
            retry_after_ms: 0,
        });
    }

    /// A fatal refusal: `Error` frame, then close.
    fn fail(&mut self, code: ErrorCode, client_msg_id: u64) {
        let ok = wire_format::is_fatal(code) || code == ErrorCode::RateLimited;
        debug_assert!(ok, "{code:?} is not fatal");
        self.replies.push_back(Reply::Error {
            code,
            client_msg_id,
            request_id: 0,
            fatal: true,
            retry_after_ms: 0,
        });
        self.close(Some(code));
    }

    fn close(&mut self, code: Option<ErrorCode>) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(Event::Closed { code });
        }
    }
}

/// A destination a client may name.
fn valid_target(address: &Address) -> bool {
    matches!(
        address.kind(),
        AddressKind::User | AddressKind::Device | AddressKind::Group
    )
}
