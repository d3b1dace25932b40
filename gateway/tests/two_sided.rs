//! Two-sided harness: `client::ClientCore`s talk to gateway `Session`s
//! through real encoded bytes on virtual time, with a small test shard in
//! the middle (durable at once, in-memory queues, dedup). It proves the two
//! sans-IO cores speak the same protocol: auth, send → ✓, deliver → ack →
//! ✓✓, pings, a fatal error, and resending on reconnect with the same ids.

use std::collections::BTreeMap;

use bytes::Bytes;
use client::{ClientCore, ClientEvent};
use gateway::clock::Now;
use gateway::session::{Event, Reply, Session, SessionConfig};
use gateway::token::{SigningKey, Verifier};
use wire_format::fb::{self, ErrorCode};
use wire_format::{
    DeliverHeader, Encoder, FrameDecoder, Limits, OutFrame, device_address, user_address,
};

/// One moment on both clocks.
fn at(t: u64) -> Now {
    Now {
        mono_ms: t,
        wall_ms: t,
    }
}

const NOW: u64 = 1_767_225_600_000;

struct Conn {
    session: Session,
    decoder: FrameDecoder,
    user: u64,
    device: u32,
}

/// The test shard: what the real one does with the queue engine and router,
/// reduced to maps.
#[derive(Default)]
struct Shard {
    next_message_id: u64,
    next_seq: BTreeMap<(u64, u32), u64>,
    dedup: BTreeMap<(u64, u32, u64), u64>,
    /// (recipient user, device, seq) -> (message id, sender user)
    delivered: BTreeMap<(u64, u32, u64), (u64, u64)>,
}

struct World {
    key: SigningKey,
    verifier: Verifier,
    enc: Encoder,
    shard: Shard,
    clients: Vec<ClientCore>,
    conns: Vec<Conn>,
}

impl World {
    fn new() -> Self {
        let (key, _) = SigningKey::generate(1);
        let verifier = Verifier::new([(1, key.public_key())]);
        let enc = Encoder::new(Limits::default());
        Self {
            key,
            verifier,
            enc,
            shard: Shard::default(),
            clients: Vec::new(),
            conns: Vec::new(),
        }
    }

    fn token(&self, user: u64, device: u32) -> Vec<u8> {
        self.key.issue(user, device, NOW / 1000 + 3600)
    }

    fn connect(&mut self, user: u64, device: u32) -> usize {
        self.clients
            .push(ClientCore::new(&self.token(user, device), 0, 1));
        self.conns.push(self.new_conn(user, device));
        self.clients.len() - 1
    }

    fn new_conn(&self, user: u64, device: u32) -> Conn {
        let mut session = Session::new(NOW, SessionConfig::default());
        session.handle_handshake_done(NOW);
        Conn {
            session,
            decoder: FrameDecoder::new(Limits::default()),
            user,
            device,
        }
    }

    /// Moves bytes both ways until nothing moves.
    fn drive(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(frame) = self.clients[i].poll_transmit() {
                    let conn = &mut self.conns[i];
                    conn.decoder.extend_from_slice(&frame.to_vec());
                    while let Some(frame) = conn.decoder.decode().unwrap() {
                        conn.session.handle_frame(at(NOW), &frame, &self.verifier);
                    }
                    moved = true;
                }
                moved |= self.serve(i);
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }

    /// Runs connection `i`'s events through the shard and sends replies.
    fn serve(&mut self, i: usize) -> bool {
        let mut moved = false;
        while let Some(event) = self.conns[i].session.poll_event() {
            moved = true;
            self.on_event(i, event);
        }
        while let Some(reply) = self.conns[i].session.poll_reply() {
            moved = true;
            let frame = self.encode(reply);
            self.clients[i].handle_bytes(&frame.to_vec());
        }
        moved
    }

    fn on_event(&mut self, i: usize, event: Event) {
        let (user, device) = (self.conns[i].user, self.conns[i].device);
        match event {
            Event::Authenticated { .. } => self.conns[i].session.welcome(0, 0),
            Event::Send {
                to,
                client_msg_id,
                payload,
                ..
            } => {
                let key = (user, device, client_msg_id);
                let (message_id, status) = match self.shard.dedup.get(&key) {
                    Some(id) => (*id, fb::AckStatus::Duplicate),
                    None => {
                        self.shard.next_message_id += 1;
                        let id = self.shard.next_message_id;
                        self.shard.dedup.insert(key, id);
                        self.deliver(user, device, to.id(), id, payload);
                        (id, fb::AckStatus::Stored)
                    }
                };
                let ack = self
                    .enc
                    .server_ack(client_msg_id, message_id, NOW, status)
                    .unwrap();
                self.clients[i].handle_bytes(&ack.to_vec());
            }
            Event::Ack { seq, .. } => {
                let (message_id, sender) = self.shard.delivered[&(user, device, seq)];
                let from = device_address(user, device);
                let receipt = self
                    .enc
                    .receipt(
                        fb::ReceiptKind::Delivered,
                        user_address(sender),
                        from,
                        &[message_id],
                        NOW,
                        0,
                    )
                    .unwrap();
                for j in self.online(sender) {
                    self.clients[j].handle_bytes(&receipt.to_vec());
                }
            }
            Event::Closed { .. } => {}
            other => panic!("not used here: {other:?}"),
        }
    }

    fn deliver(
        &mut self,
        sender: u64,
        sender_device: u32,
        to_user: u64,
        message_id: u64,
        payload: Bytes,
    ) {
        for j in self.online(to_user) {
            let (user, device) = (self.conns[j].user, self.conns[j].device);
            let seq = self.shard.next_seq.entry((user, device)).or_insert(0);
            *seq += 1;
            let seq = *seq;
            self.shard
                .delivered
                .insert((user, device, seq), (message_id, sender));
            let header = DeliverHeader {
                from: device_address(sender, sender_device),
                to: user_address(to_user),
                seq,
                message_id,
                server_time_ms: NOW,
            };
            let frame = self.enc.deliver(&header, payload.clone()).unwrap();
            self.clients[j].handle_bytes(&frame.to_vec());
        }
    }

    fn online(&self, user: u64) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|j| self.conns[*j].user == user && !self.conns[*j].session.is_closed())
            .collect()
    }

    fn encode(&mut self, reply: Reply) -> OutFrame {
        let limits = Limits::default();
        gateway::shard::encode_reply(&mut self.enc, &reply, NOW, &limits).unwrap()
    }

    fn events(&mut self, i: usize) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.clients[i].poll_event()).collect()
    }
}

#[test]
fn send_check_deliver_ack_double_check() {
    let mut w = World::new();
    let alice = w.connect(1, 0);
    let bob = w.connect(2, 0);
    w.drive();
    for i in [alice, bob] {
        assert!(w.clients[i].is_authenticated());
        assert!(matches!(
            w.events(i).as_slice(),
            [ClientEvent::Welcome { .. }]
        ));
    }
    let id = w.clients[alice].send(user_address(2), 0, Bytes::from_static(b"hi bob"));
    w.drive();
    assert_eq!(
        w.events(alice),
        [ClientEvent::Acked {
            client_msg_id: id,
            message_id: 1,
            duplicate: false
        }]
    );
    assert!(
        w.clients[alice].pending().is_empty(),
        "✓ clears the pending send"
    );
    let got = w.events(bob);
    let [
        ClientEvent::Message {
            seq,
            message_id: 1,
            payload,
            from,
            ..
        },
    ] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        (&payload[..], *from),
        (&b"hi bob"[..], device_address(1, 0))
    );
    w.clients[bob].ack(*seq);
    w.drive();
    let receipt = ClientEvent::Receipt {
        kind: fb::ReceiptKind::Delivered,
        from: device_address(2, 0),
        message_ids: vec![1],
        seq: 0,
    };
    assert_eq!(w.events(alice), [receipt], "✓✓");
    assert_eq!(w.clients[bob].last_acked_seq(), 1);
}

#[test]
fn a_reconnect_resends_unanswered_sends_with_their_ids_and_dedup_answers() {
    let mut w = World::new();
    let alice = w.connect(1, 0);
    let _bob = w.connect(2, 0);
    w.drive();
    w.events(alice);
    let id = w.clients[alice].send(user_address(2), 0, Bytes::from_static(b"once"));
    w.drive(); // stored and acked, but pretend the ✓ was lost with the connection:
    w.clients[alice] = {
        let mut lost = ClientCore::new(&w.token(1, 0), 0, id);
        let again = lost.send(user_address(2), 0, Bytes::from_static(b"once"));
        assert_eq!(again, id);
        lost.reconnect(&w.token(1, 0))
    };
    w.conns[alice] = w.new_conn(1, 0);
    w.drive();
    let events = w.events(alice);
    assert!(
        events.contains(&ClientEvent::Acked {
            client_msg_id: id,
            message_id: 1,
            duplicate: true
        }),
        "{events:?}"
    );
    assert!(w.clients[alice].pending().is_empty());
    let bob_got = w
        .events(1)
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::Message { .. }))
        .count();
    assert_eq!(bob_got, 1, "delivered once");
}

#[test]
fn server_pings_are_answered_and_a_fatal_error_closes_the_client() {
    let mut w = World::new();
    let alice = w.connect(1, 0);
    w.drive();
    w.events(alice);
    let config = SessionConfig::default();
    w.conns[alice]
        .session
        .handle_timeout(NOW + config.idle_timeout_ms / 2);
    w.drive();
    assert!(
        !w.conns[alice].session.is_closed(),
        "the client's Pong kept it open"
    );
    let bad = wire_format::WireError::FrameTooLarge {
        len: 1 << 20,
        max: 65_536,
    };
    w.conns[alice].session.handle_decode_error(&bad);
    w.drive();
    assert_eq!(
        w.events(alice),
        [ClientEvent::Closed {
            code: Some(ErrorCode::FrameTooLarge)
        }]
    );
    assert!(w.clients[alice].is_closed());
}
