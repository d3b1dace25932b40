//! The connection state machine on virtual time, fed real encoded frames:
//! authentication, timeouts (slowloris), idle probing, rate limits, drain,
//! and a typed refusal for every bad input.

use bytes::Bytes;
use gateway::clock::Now;
use gateway::session::{Event, GroupOp, Reply, Session, SessionConfig, State};
use gateway::token::{Claims, SigningKey, Verifier};
use wire_format::fb::{self, ErrorCode};
use wire_format::{
    Address, AddressKind, DeliverHeader, Encoder, Frame, Limits, OutFrame, WireError, decode_exact,
    device_address, group_address, user_address,
};

/// One moment on both clocks.
fn at(t: u64) -> Now {
    Now {
        mono_ms: t,
        wall_ms: t,
    }
}

const T0: u64 = 1_767_225_600_000; // ms

struct World {
    key: SigningKey,
    verifier: Verifier,
    enc: Encoder,
}

impl World {
    fn new() -> Self {
        let (key, _) = SigningKey::generate(1);
        let verifier = Verifier::new([(1, key.public_key())]);
        Self {
            key,
            verifier,
            enc: Encoder::new(Limits::default()),
        }
    }

    fn frame(out: OutFrame) -> Frame {
        decode_exact(Bytes::from(out.to_vec()), &Limits::default()).unwrap()
    }

    fn hello(&mut self, version: u16, token: Vec<u8>) -> Frame {
        let mut hello = fb::HelloT::default();
        hello.protocol_version = version;
        hello.token = Some(token);
        hello.last_acked_seq = 41;
        let mut header = fb::FrameT::default();
        header.body = fb::BodyT::Hello(Box::new(hello));
        Self::frame(self.enc.encode_owned(&header, Bytes::new()).unwrap())
    }

    fn token(&self, expires_ms: u64) -> Vec<u8> {
        self.key.issue(42, 3, expires_ms / 1000)
    }

    fn send(&mut self, to: Address, id: u64, payload: &'static [u8]) -> Frame {
        Self::frame(
            self.enc
                .send(to, id, 0, Bytes::from_static(payload))
                .unwrap(),
        )
    }

    /// A session authenticated at T0 as user 42, device 3.
    fn authenticated(&mut self, config: SessionConfig) -> Session {
        let mut s = Session::new(T0, config);
        s.handle_handshake_done(T0);
        let hello = self.hello(1, self.token(T0 + 3_600_000));
        s.handle_frame(at(T0), &hello, &self.verifier);
        assert!(matches!(s.poll_event(), Some(Event::Authenticated { .. })));
        s
    }
}

fn replies(s: &mut Session) -> Vec<Reply> {
    std::iter::from_fn(|| s.poll_reply()).collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn fatal(code: ErrorCode) -> Reply {
    Reply::Error {
        code,
        client_msg_id: 0,
        request_id: 0,
        fatal: true,
        retry_after_ms: 0,
    }
}

#[test]
fn hello_authenticates_and_the_sender_is_always_the_token_s_device() {
    let mut w = World::new();
    let mut s = Session::new(T0, SessionConfig::default());
    s.handle_handshake_done(T0 + 5);
    let hello = w.hello(1, w.token(T0 + 3_600_000));
    s.handle_frame(at(T0 + 6), &hello, &w.verifier);
    let claims = Claims {
        key_id: 1,
        user: 42,
        device: 3,
        expires_s: (T0 + 3_600_000) / 1000,
    };
    assert_eq!(
        events(&mut s),
        [Event::Authenticated {
            claims,
            last_acked_seq: 41
        }]
    );
    assert_eq!(s.state(), State::Authenticated(claims));
    s.welcome(7, 41);
    let welcome = Reply::Welcome {
        user: 42,
        device: 3,
        backlog_count: 7,
        heartbeat_interval_ms: 120_000,
        payload_bytes_max: Limits::default().payload_bytes_max(),
        resume_seq: 41,
    };
    assert_eq!(replies(&mut s), [welcome]);

    let send = w.send(user_address(9), 5, b"ciphertext");
    s.handle_frame(at(T0 + 7), &send, &w.verifier);
    let ack = World::frame(w.enc.delivery_ack(12, true).unwrap());
    s.handle_frame(at(T0 + 8), &ack, &w.verifier);
    let ping = World::frame(w.enc.ping(77).unwrap());
    s.handle_frame(at(T0 + 9), &ping, &w.verifier);
    let got = events(&mut s);
    let Event::Send {
        to,
        client_msg_id,
        payload,
        ..
    } = &got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        (to, *client_msg_id, &payload[..]),
        (&user_address(9), 5, &b"ciphertext"[..])
    );
    assert_eq!(
        payload.as_ptr(),
        send.payload().as_ptr(),
        "the payload is not copied"
    );
    assert_eq!(
        got[1],
        Event::Ack {
            seq: 12,
            cumulative: true
        }
    );
    assert_eq!(replies(&mut s), [Reply::Pong { nonce: 77 }]);
}

#[test]
fn slow_handshakes_and_missing_hellos_are_cut_off() {
    let config = SessionConfig::default();
    let mut s = Session::new(T0, config);
    assert_eq!(s.poll_timeout(), Some(T0 + config.handshake_timeout_ms));
    s.handle_timeout(T0 + config.handshake_timeout_ms - 1);
    assert!(!s.is_closed());
    s.handle_timeout(T0 + config.handshake_timeout_ms);
    assert!(s.is_closed());
    assert!(replies(&mut s).is_empty(), "no TLS: no Error frame");
    assert_eq!(
        events(&mut s),
        [Event::Closed {
            code: Some(ErrorCode::HandshakeTimeout)
        }]
    );

    let mut s = Session::new(T0, config);
    s.handle_handshake_done(T0 + 100);
    assert_eq!(s.poll_timeout(), Some(T0 + 100 + config.auth_timeout_ms));
    s.handle_timeout(T0 + 100 + config.auth_timeout_ms);
    assert_eq!(replies(&mut s), [fatal(ErrorCode::AuthTimeout)]);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn bad_hellos_get_their_codes() {
    let mut w = World::new();
    let (stranger, _) = SigningKey::generate(1);
    let cases = [
        (w.hello(1, w.token(T0 - 1)), ErrorCode::TokenExpired),
        (
            w.hello(1, stranger.issue(42, 3, T0 / 1000 + 60)),
            ErrorCode::AuthFailed,
        ),
        (w.hello(1, b"short".to_vec()), ErrorCode::AuthFailed),
        (
            w.hello(2, w.token(T0 + 60_000)),
            ErrorCode::UnsupportedVersion,
        ),
        (
            w.send(user_address(1), 1, b"early"),
            ErrorCode::AuthRequired,
        ),
    ];
    for (frame, code) in cases {
        let mut s = Session::new(T0, SessionConfig::default());
        s.handle_handshake_done(T0);
        s.handle_frame(at(T0), &frame, &w.verifier);
        assert_eq!(replies(&mut s), [fatal(code)], "{code:?}");
        assert_eq!(events(&mut s), [Event::Closed { code: Some(code) }]);
    }
}

#[test]
fn out_of_state_frames_and_bad_bytes_close_with_their_codes() {
    let mut w = World::new();
    let header = DeliverHeader {
        from: device_address(1, 0),
        to: user_address(42),
        seq: 1,
        message_id: 1,
        server_time_ms: 0,
    };
    let deliver = World::frame(w.enc.deliver(&header, Bytes::from_static(b"x")).unwrap());
    let second_hello = w.hello(1, w.token(T0 + 60_000));
    for frame in [deliver, second_hello] {
        let mut s = w.authenticated(SessionConfig::default());
        s.handle_frame(at(T0), &frame, &w.verifier);
        assert_eq!(
            replies(&mut s),
            [fatal(ErrorCode::UnexpectedFrame)],
            "{:?}",
            frame.kind()
        );
        assert!(s.is_closed());
    }
    let mut s = w.authenticated(SessionConfig::default());
    s.handle_decode_error(&WireError::FrameTooLarge {
        len: 1 << 20,
        max: 65_536,
    });
    assert_eq!(replies(&mut s), [fatal(ErrorCode::FrameTooLarge)]);
    assert_eq!(
        events(&mut s),
        [Event::Closed {
            code: Some(ErrorCode::FrameTooLarge)
        }]
    );
}

#[test]
fn bad_addresses_and_long_lists_are_refused_without_closing() {
    let mut w = World::new();
    let mut s = w.authenticated(SessionConfig {
        items_max: 2,
        ..SessionConfig::default()
    });
    let nowhere = Address::new(5, 0, AddressKind::None);
    s.handle_frame(at(T0), &w.send(nowhere, 9, b"x"), &w.verifier);
    let ids = [1, 2, 3];
    let receipt = World::frame(
        w.enc
            .receipt(
                fb::ReceiptKind::Read,
                user_address(1),
                user_address(0),
                &ids,
                0,
                0,
            )
            .unwrap(),
    );
    s.handle_frame(at(T0), &receipt, &w.verifier);
    assert_eq!(
        replies(&mut s),
        [
            Reply::Error {
                code: ErrorCode::InvalidAddress,
                client_msg_id: 9,
                request_id: 0,
                fatal: false,
                retry_after_ms: 0,
            },
            Reply::Error {
                code: ErrorCode::TooManyItems,
                client_msg_id: 0,
                request_id: 0,
                fatal: false,
                retry_after_ms: 0,
            },
        ]
    );
    assert!(!s.is_closed());
    s.handle_frame(at(T0), &w.send(group_address(8), 10, b"ok"), &w.verifier);
    assert!(matches!(
        events(&mut s).as_slice(),
        [Event::Send {
            client_msg_id: 10,
            ..
        }]
    ));
}

#[test]
fn group_frames_become_events() {
    let mut w = World::new();
    let mut s = w.authenticated(SessionConfig::default());
    let mut add = fb::GroupAddT::default();
    add.request_id = 4;
    add.group = 77;
    add.members = Some(vec![5, 6]);
    let mut header = fb::FrameT::default();
    header.body = fb::BodyT::GroupAdd(Box::new(add));
    let frame = World::frame(w.enc.encode_owned(&header, Bytes::new()).unwrap());
    s.handle_frame(at(T0), &frame, &w.verifier);
    let expected = Event::Group {
        op: GroupOp::Add,
        request_id: 4,
        group: 77,
        members: vec![5, 6],
    };
    assert_eq!(events(&mut s), [expected]);
}

#[test]
fn a_silent_client_is_probed_then_closed_and_any_frame_resets_the_clock() {
    let mut w = World::new();
    let config = SessionConfig {
        idle_timeout_ms: 60_000,
        ..SessionConfig::default()
    };
    let mut s = w.authenticated(config);
    assert_eq!(s.poll_timeout(), Some(T0 + 30_000));
    s.handle_timeout(T0 + 30_000);
    assert_eq!(replies(&mut s), [Reply::Ping { nonce: T0 + 30_000 }]);
    let pong = World::frame(w.enc.pong(T0 + 30_000).unwrap());
    s.handle_frame(at(T0 + 31_000), &pong, &w.verifier);
    assert_eq!(s.poll_timeout(), Some(T0 + 61_000), "the clock restarts");
    s.handle_timeout(T0 + 61_000);
    assert_eq!(replies(&mut s), [Reply::Ping { nonce: T0 + 61_000 }]);
    s.handle_timeout(T0 + 91_000);
    assert_eq!(replies(&mut s), [fatal(ErrorCode::IdleTimeout)]);
    assert!(s.is_closed());
}

#[test]
fn sends_over_the_rate_are_refused_then_the_connection_is_closed() {
    let mut w = World::new();
    let config = SessionConfig {
        sends_per_s: 10,
        burst_s: 1,
        refusals_before_close: 3,
        ..SessionConfig::default()
    };
    let mut s = w.authenticated(config);
    for id in 0..10 {
        s.handle_frame(at(T0), &w.send(user_address(1), id, b"m"), &w.verifier);
    }
    assert_eq!(events(&mut s).len(), 10, "the burst passes");
    s.handle_frame(at(T0), &w.send(user_address(1), 10, b"m"), &w.verifier);
    let limited = Reply::Error {
        code: ErrorCode::RateLimited,
        client_msg_id: 10,
        request_id: 0,
        fatal: false,
        retry_after_ms: 0,
    };
    assert_eq!(replies(&mut s), [limited]);
    s.handle_frame(
        at(T0 + 100),
        &w.send(user_address(1), 11, b"m"),
        &w.verifier,
    );
    assert_eq!(
        events(&mut s).len(),
        1,
        "a tenth of a second refills one send"
    );
    s.handle_frame(
        at(T0 + 100),
        &w.send(user_address(1), 12, b"m"),
        &w.verifier,
    );
    s.handle_frame(
        at(T0 + 100),
        &w.send(user_address(1), 13, b"m"),
        &w.verifier,
    );
    s.handle_frame(
        at(T0 + 100),
        &w.send(user_address(1), 14, b"m"),
        &w.verifier,
    );
    let last = replies(&mut s).pop().unwrap();
    assert_eq!(
        last,
        Reply::Error {
            code: ErrorCode::RateLimited,
            client_msg_id: 14,
            request_id: 0,
            fatal: true,
            retry_after_ms: 0,
        }
    );
    assert!(s.is_closed(), "a client that keeps pushing is cut off");
}

#[test]
fn draining_refuses_new_sends_keeps_acks_and_closes_at_the_deadline() {
    let mut w = World::new();
    let config = SessionConfig::default();
    let mut s = w.authenticated(config);
    s.start_drain(T0 + 10, 5_000);
    assert_eq!(
        replies(&mut s),
        [Reply::GoAway {
            reason: fb::GoAwayReason::Draining,
            reconnect_after_ms: 5_000
        }]
    );
    s.handle_frame(
        at(T0 + 20),
        &w.send(user_address(1), 3, b"late"),
        &w.verifier,
    );
    let ack = World::frame(w.enc.delivery_ack(2, false).unwrap());
    s.handle_frame(at(T0 + 20), &ack, &w.verifier);
    // Not stored, not fatal, and a code of its own: the table says 502
    // (ShuttingDown) is fatal, and a client must resend this one later.
    let refused = Reply::Error {
        code: ErrorCode::Draining,
        client_msg_id: 3,
        request_id: 0,
        fatal: false,
        retry_after_ms: 0,
    };
    assert!(!wire_format::is_fatal(ErrorCode::Draining));
    assert_eq!(replies(&mut s), [refused]);
    assert_eq!(
        events(&mut s),
        [Event::Ack {
            seq: 2,
            cumulative: false
        }]
    );
    s.handle_timeout(T0 + 10 + config.drain_timeout_ms);
    assert_eq!(
        events(&mut s),
        [Event::Closed {
            code: Some(ErrorCode::ShuttingDown)
        }]
    );
}

#[test]
fn a_client_that_pings_as_welcome_says_is_never_closed_as_idle() {
    for idle_timeout_ms in [1_000, 10_000, 60_000, 300_000] {
        let mut w = World::new();
        let config = SessionConfig {
            idle_timeout_ms,
            ..SessionConfig::default()
        };
        let mut s = w.authenticated(config);
        s.welcome(0, 0);
        let [
            Reply::Welcome {
                heartbeat_interval_ms,
                ..
            },
        ] = replies(&mut s)[..]
        else {
            panic!("a Welcome");
        };
        assert!(u64::from(heartbeat_interval_ms) < idle_timeout_ms / 2);
        // The client pings after each interval of its own silence; the
        // server runs every deadline it asks for in between.
        let mut now = T0;
        for i in 0..50 {
            now += u64::from(heartbeat_interval_ms);
            while let Some(t) = s.poll_timeout().filter(|t| *t <= now) {
                s.handle_timeout(t);
            }
            let ping = World::frame(w.enc.ping(i).unwrap());
            s.handle_frame(at(now), &ping, &w.verifier);
            assert!(
                !s.is_closed(),
                "closed as idle after {i} pings ({idle_timeout_ms} ms)"
            );
        }
    }
}

#[test]
fn a_payload_whose_deliver_would_not_fit_is_refused_at_send() {
    let mut w = World::new();
    let config = SessionConfig::default();
    let mut s = w.authenticated(config);
    let max = config.payload_bytes_max as usize;
    assert_eq!(
        config.payload_bytes_max,
        Limits::default().payload_bytes_max()
    );
    for (len, accepted) in [(max, true), (max + 1, false)] {
        let payload: &'static [u8] = vec![7; len].leak();
        s.handle_frame(
            at(T0 + 1),
            &w.send(user_address(9), len as u64, payload),
            &w.verifier,
        );
        if accepted {
            assert!(
                matches!(&events(&mut s)[..], [Event::Send { payload, .. }] if payload.len() == max)
            );
            assert_eq!(replies(&mut s), []);
        } else {
            assert_eq!(events(&mut s), []);
            let refused = Reply::Error {
                code: ErrorCode::PayloadTooLarge,
                client_msg_id: len as u64,
                request_id: 0,
                fatal: false,
                retry_after_ms: 0,
            };
            assert_eq!(replies(&mut s), [refused]);
        }
    }
    assert!(!s.is_closed());
}
