//! What one shard keeps per message once it is done with it, measured with
//! a counting allocator (deterministic, unlike time): after messages are
//! sent, ✓'d, delivered, acked and their ✓✓ acked, the shard's memory is
//! back where it was plus a constant per device. Dedup (a window per
//! sender), per-message meta (gone with the last recipient's ack) and
//! receipts (their records and bookkeeping) must not grow with the count.
//!
//! A single real `ShardCore` on a storage that keeps nothing (so the log's
//! bytes are not counted) with two `ClientCore`s, on virtual time.

use bytes::Bytes;
use client::{ClientCore, ClientEvent};
use gateway::clock::Now;
use gateway::shard::{ShardConfig, ShardCore};
use gateway::token::{SigningKey, Verifier};
use queue_engine::{Engine, EngineConfig, NullStorage, write_flush};
use shard_router::{ConnId, Placement, RouterConfig, RouterCore, ShardId};
use testkit::live;
use wire_format::user_address;

#[global_allocator]
static ALLOCATOR: testkit::Counting = testkit::Counting;

const T0: u64 = 1_767_225_600_000;
const ALICE: usize = 0;

/// One shard, its disk and two connected clients (alice → bob).
struct Net {
    core: ShardCore<NullStorage>,
    disk: NullStorage,
    verifier: Verifier,
    clients: Vec<(ClientCore, ConnId)>,
    now: u64,
    acked: u64,
    receipts: u64,
    /// The last group a client heard of.
    group: u64,
    /// ✓s before the current round of sends.
    acked_before: u64,
    /// Where each output taken was (its buffer's address and capacity),
    /// if recorded.
    outputs: Option<Vec<(usize, usize)>>,
}

impl Net {
    fn new() -> Self {
        Self::with_users(&[1, 2])
    }

    /// One shard with a connected client for each of `users` (device 0).
    fn with_users(users: &[u64]) -> Self {
        let (key, _) = SigningKey::generate(1);
        let verifier = Verifier::new([(1, key.public_key())]);
        let mut disk = NullStorage::default();
        // The recent-payload cache is a fixed ring: small, so the warm-up
        // fills it (what passes through it is the in-flight window).
        let engine_config = EngineConfig {
            payload_cache_bytes: 64 << 10,
            ..EngineConfig::default()
        };
        let (engine, _) = Engine::open(&mut disk, engine_config, T0).unwrap();
        let router = RouterCore::new(
            ShardId(0),
            Placement::single_node(1),
            RouterConfig::default(),
        );
        let mut config = ShardConfig::default();
        // Virtual time barely moves: no rate limit may refuse.
        config.session.sends_per_s = 1_000_000;
        config.session.send_bytes_per_s = u32::MAX;
        config.abuse = gateway::abuse::AbuseConfig {
            new_conversations_per_h: 0,
            messages_per_recipient_per_s: 0,
            group_creates_per_day: 0,
        };
        // The clock jumps an hour at a time: no idle timeout either.
        config.session.idle_timeout_ms = 10 * 24 * 3_600_000;
        let core = ShardCore::new(router, engine, NullStorage::default(), config);
        let mut net = Self {
            core,
            disk,
            verifier,
            clients: Vec::new(),
            now: T0,
            acked: 0,
            receipts: 0,
            group: 0,
            acked_before: 0,
            outputs: None,
        };
        for &user in users {
            let token = key.issue(user, 0, T0 / 1000 + 30 * 24 * 3600);
            let conn = net.core.open_conn(net.at()).expect("room");
            net.core.handshake_done(net.at(), conn);
            net.clients.push((ClientCore::new(&token, 0, 1), conn));
        }
        net.settle();
        net
    }

    fn at(&self) -> Now {
        Now {
            mono_ms: self.now - T0,
            wall_ms: self.now,
        }
    }

    /// Runs every input and output until nothing moves; the clients ack
    /// what they get (bob the messages, alice the ✓✓).
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(frame) = self.clients[i].0.poll_transmit() {
                    let (now, conn) = (self.at(), self.clients[i].1);
                    self.core
                        .handle_bytes(now, conn, &frame.to_vec(), &self.verifier);
                    moved = true;
                }
            }
            for conn in self.core.take_ready() {
                let Some((bytes, _)) = self.core.take_output(conn) else {
                    continue;
                };
                let i = self.clients.iter().position(|c| c.1 == conn).expect("ours");
                self.clients[i].0.handle_bytes(&bytes);
                moved |= !bytes.is_empty();
                if let Some(outputs) = self.outputs.as_mut().filter(|_| !bytes.is_empty()) {
                    outputs.push((bytes.as_ptr() as usize, bytes.capacity()));
                }
                // Written: back to the shard, as the shell gives it back.
                self.core.give_output(bytes);
            }
            while let Some((_, batch)) = self.core.poll_batch() {
                let now = self.at();
                self.core.handle_batch(now, batch);
                moved = true;
            }
            while let Some(flush) = self.core.poll_flush().cloned() {
                write_flush(&mut self.disk, &flush).unwrap();
                let now = self.at();
                self.core.handle_flushed(now);
                moved = true;
            }
            moved |= self.events();
            if !moved && self.core.engine().lazy_pending() {
                // As the shell's timer does: records nobody waits on
                // (tombstones, receipts) are sealed `LAZY_SEAL_MS` later.
                let due = self.core.poll_timeout();
                self.now = self.now.max(T0 + due);
                let now = self.at();
                self.core.handle_timeout(now);
                continue;
            }
            if !moved {
                return;
            }
        }
    }

    /// Handles the clients' events; returns whether there were any.
    fn events(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.clients.len() {
            while let Some(event) = self.clients[i].0.poll_event() {
                any = true;
                match event {
                    ClientEvent::Message { seq, .. } => self.clients[i].0.ack(seq),
                    ClientEvent::Receipt { seq, .. } => {
                        self.receipts += 1;
                        self.clients[i].0.ack(seq);
                    }
                    ClientEvent::Acked { .. } => self.acked += 1,
                    ClientEvent::GroupChanged { seq, group, .. } => {
                        self.group = group;
                        self.clients[i].0.ack(seq);
                    }
                    ClientEvent::Welcome { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        any
    }

    /// Alice sends `n` messages to bob, 60 at a time, each round settled.
    fn exchange(&mut self, n: u64) {
        for round in 0..n.div_ceil(60) {
            for _ in 0..60.min(n - round * 60) {
                let payload = Bytes::from_static(&[7; 100]);
                self.clients[ALICE].0.send(user_address(2), 0, payload);
            }
            self.settle();
        }
    }

    /// Time passes (past the dedup backstop): housekeeping runs.
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.at();
        self.core.handle_timeout(now);
        self.settle();
    }
}

#[test]
fn what_a_shard_keeps_returns_to_baseline_once_everything_is_acked() {
    let n = 60_000;
    let mut net = Net::new();
    // Warm up: every map, buffer and cache reaches its working size.
    net.exchange(n);
    net.advance(3_601_000);
    let baseline = live();
    let (acked, receipts) = (net.acked, net.receipts);
    net.exchange(n);
    assert_eq!(net.acked - acked, n, "every send ✓'d");
    assert!(net.receipts > receipts, "✓✓ came back");
    let after_acks = live();
    net.advance(3_601_000); // the originals' backstop passes
    let once = live();
    net.exchange(n);
    net.advance(3_601_000);
    let twice = live();
    assert_eq!(net.core.failed(), None, "nothing was read back from disk");
    let internals = net.core.internals();
    eprintln!(
        "after {n} more messages: {:+} B right after the last ✓✓ ack, {:+} B past \
         the dedup backstop, {:+} B after {n} more; internals {internals:?}",
        after_acks - baseline,
        once - baseline,
        twice - baseline,
    );
    assert_eq!(internals.meta, 0, "per-message meta went with the acks");
    assert_eq!(
        internals.live_messages, 0,
        "messages and receipts all acked"
    );
    assert_eq!(internals.deferred + internals.acks + internals.waiting, 0);
    assert_eq!(
        net.core.engine().dedup_entries(),
        (1, 0),
        "alice's window, no originals"
    );
    // Nothing per message: 60,000 messages at even 1 B each would be 60 kB.
    // What moves is bounded: the expiry heap's stale entries (24 B each)
    // are dropped once they pass 1,024.
    for (what, bytes) in [("the first", once - baseline), ("the second", twice - once)] {
        assert!(
            bytes.unsigned_abs() <= 32 << 10,
            "{bytes:+} B kept after {what} {n} messages"
        );
    }
}

/// A connection's output is written into a buffer the shard lends, and
/// the shell gives it back once written: the next connection with output
/// writes into that same buffer rather than growing a new one each turn.
#[test]
fn output_goes_into_the_buffer_the_last_write_gave_back() {
    let mut net = Net::new();
    net.exchange(60);
    let lent: Vec<u8> = Vec::with_capacity(32 << 10);
    let lent_at = (lent.as_ptr() as usize, lent.capacity());
    net.core.give_output(lent);
    net.outputs = Some(Vec::new());
    net.exchange(60);
    let outputs = net.outputs.unwrap();
    assert_eq!(
        outputs.first(),
        Some(&lent_at),
        "the first output (alice's ✓) went into the buffer given back"
    );
    // Bob's delivery is made while alice's ✓ is out: a second buffer,
    // with room for a busy turn, not grown from nothing.
    assert!(
        outputs.iter().all(|&(_, capacity)| capacity >= 4096),
        "{outputs:?}"
    );
}

/// A group message is stored once and queued as a reference for each
/// member device: what one more queued group message costs per member
/// device, beyond its one stored copy (the issue's target is 16 B).
#[test]
fn a_queued_group_message_costs_little_per_member_device() {
    const MEMBERS: u64 = 256;
    let users: Vec<u64> = (1..=MEMBERS + 1).collect();
    let mut net = Net::with_users(&users);
    net.clients[ALICE].0.group_create(1, &users[1..]);
    net.settle();
    assert_ne!(net.group, 0, "the group was created");
    // The members go offline: what is sent to the group stays queued.
    for (_, conn) in net.clients.split_off(1) {
        let now = net.at();
        net.core.remove_conn(now, conn);
    }
    net.settle();
    let send = |net: &mut Net, n: u64| {
        for round in 0..n / 50 {
            for _ in 0..50 {
                let payload = Bytes::from_static(&[7; 100]);
                net.clients[ALICE]
                    .0
                    .send(wire_format::group_address(net.group), 0, payload);
            }
            net.settle();
            assert_eq!(
                net.acked,
                (round + 1) * 50 + net.acked_before,
                "✓ per round"
            );
        }
    };
    // Warm up the payload ring, the maps and the queues' buffers.
    net.acked_before = net.acked;
    send(&mut net, 1_000);
    net.acked_before = net.acked;
    let before = live();
    let n = 2_000;
    send(&mut net, n);
    let after = live();
    let per_message = (after - before) as f64 / n as f64;
    let per_member = per_message / MEMBERS as f64;
    eprintln!(
        "{n} group messages to {MEMBERS} offline member devices: {per_message:.0} B per \
         message, {per_member:.1} B per member device (the stored copy's payload \
         is on disk; the recent-payload ring is fixed)"
    );
    let member = queue_engine::DeviceRef { user: 2, device: 0 };
    assert_eq!(
        net.core.engine().queue_len(member).0,
        3_000,
        "every message queued"
    );
    // One copy each: were the payload copied per member, it would be
    // 100 B and more per member device.
    assert!(per_member < 64.0, "{per_member:.1} B per member device");
}
