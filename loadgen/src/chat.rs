//! The `chat` scenario: 1:1 pairs. Each sender sends numbered payloads to
//! its receiver, closed-loop (a window of W unanswered sends) or open-loop
//! at a fixed rate with latency measured from the *scheduled* send time
//! (no coordinated omission). Receivers check every message arrives once
//! and in order; the report states lost, duplicated and reordered counts.
//!
//! Payload: sender pair (u64) | counter (u64) | send time, ns since the Unix
//! epoch (u64) | padding to the requested size.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{ClientEvent, Connection};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use wire_format::user_address;

use crate::{Target, epoch_ns};

/// How a chat run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct ChatPlan {
    /// Pairs this worker drives: `first_pair .. first_pair + pairs`.
    pub first_pair: u64,
    /// Pairs.
    pub pairs: u64,
    /// Unanswered sends per sender at most.
    pub window: usize,
    /// Messages per second per sender (open loop); None = closed loop.
    pub rate_per_sender: Option<f64>,
    /// Payload bytes (at least 24).
    pub payload: usize,
    /// How long senders send.
    pub duration: Duration,
    /// User ids start here (senders even, receivers odd).
    pub user_base: u64,
}

/// What one worker saw.
#[derive(Debug, Clone)]
pub struct ChatStats {
    /// Sends answered with ✓.
    pub acked: u64,
    /// Messages received (including duplicates).
    pub received: u64,
    /// Received while senders were sending (for the rate).
    pub received_in_window: u64,
    /// ✓'d but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received after a later one from the same sender.
    pub reordered: u64,
    /// ✓✓ receipts.
    pub receipts: u64,
    /// Send (or scheduled send) → ✓, µs.
    pub ack_us: Histogram<u64>,
    /// Send (or scheduled send) → delivered, µs.
    pub deliver_us: Histogram<u64>,
}

impl ChatStats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self {
            acked: 0,
            received: 0,
            received_in_window: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            receipts: 0,
            ack_us: h(),
            deliver_us: h(),
        }
    }

    /// Adds another worker's numbers.
    pub fn merge(&mut self, o: &Self) {
        self.acked += o.acked;
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.receipts += o.receipts;
        self.ack_us.add(&o.ack_us).expect("same bounds");
        self.deliver_us.add(&o.deliver_us).expect("same bounds");
    }
}

/// A pair's shared bookkeeping (sender and receiver run on one executor).
#[derive(Default)]
struct Pair {
    acked: Vec<u64>,
    received: Vec<u64>,
    highest: Option<u64>,
    sender_done: bool,
    acked_count: u64,
    received_unique: u64,
}

fn set(bits: &mut Vec<u64>, i: u64) -> bool {
    let (word, bit) = (usize::try_from(i / 64).expect("64-bit"), i % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was = bits[word] >> bit & 1 == 1;
    bits[word] |= 1 << bit;
    !was
}

fn payload(pair: u64, counter: u64, at_ns: u64, len: usize) -> Bytes {
    let mut p = Vec::with_capacity(len.max(24));
    p.extend_from_slice(&pair.to_le_bytes());
    p.extend_from_slice(&counter.to_le_bytes());
    p.extend_from_slice(&at_ns.to_le_bytes());
    p.resize(len.max(24), 0x5a);
    Bytes::from(p)
}

fn field(p: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Runs this worker's pairs; every connection on the current executor.
pub async fn run(target: Rc<Target>, plan: ChatPlan) -> ChatStats {
    let stats = Rc::new(RefCell::new(ChatStats::new()));
    let mut receivers = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..plan.pairs {
        let pair = plan.first_pair + i;
        let conn = target.login(plan.user_base + 2 * pair + 1, 0).await;
        pairs.push(Rc::new(RefCell::new(Pair::default())));
        receivers.push(conn);
    }
    let mut senders = Vec::new();
    for i in 0..plan.pairs {
        let pair = plan.first_pair + i;
        senders.push(target.login(plan.user_base + 2 * pair, 0).await);
    }
    let start = Instant::now();
    let end = start + plan.duration;
    let mut tasks = Vec::new();
    for (i, (rx, tx)) in receivers.into_iter().zip(senders).enumerate() {
        let pair = plan.first_pair + i as u64;
        let state = pairs[i].clone();
        tasks.push(glommio::spawn_local(receive(
            rx,
            state.clone(),
            stats.clone(),
            end,
        )));
        tasks.push(glommio::spawn_local(send(
            tx,
            pair,
            plan,
            state,
            stats.clone(),
            start,
        )));
    }
    for task in tasks {
        task.await;
    }
    let mut out = stats.borrow().clone();
    for pair in &pairs {
        let p = pair.borrow();
        let words = p.acked.len().max(p.received.len());
        for w in 0..words {
            let a = p.acked.get(w).copied().unwrap_or(0);
            let r = p.received.get(w).copied().unwrap_or(0);
            out.lost += u64::from((a & !r).count_ones());
        }
    }
    out
}

async fn send(
    mut conn: Connection,
    pair: u64,
    plan: ChatPlan,
    state: Rc<RefCell<Pair>>,
    stats: Rc<RefCell<ChatStats>>,
    start: Instant,
) {
    let to = user_address(plan.user_base + 2 * pair + 1);
    let end = start + plan.duration;
    let interval = plan
        .rate_per_sender
        .map(|r| Duration::from_secs_f64(1.0 / r));
    // Stagger open-loop senders across one interval.
    let mut next_at =
        start + interval.map_or(Duration::ZERO, |i| i.mul_f64((pair % 97) as f64 / 97.0));
    let mut inflight: FxHashMap<u64, (u64, Instant)> = FxHashMap::default();
    let mut counter = 0;
    let mut receipts_seq = 0;
    loop {
        let now = Instant::now();
        let sending = now < end;
        while sending && inflight.len() < plan.window && (interval.is_none() || next_at <= now) {
            let at = if interval.is_some() { next_at } else { now };
            let p = payload(pair, counter, epoch_ns(at), plan.payload);
            let id = conn.core().send(to, 0, p);
            inflight.insert(id, (counter, at));
            counter += 1;
            next_at += interval.unwrap_or(Duration::ZERO);
        }
        if !sending && (inflight.is_empty() || now > end + Duration::from_secs(10)) {
            break;
        }
        let wait = match (sending, interval) {
            (true, Some(_)) => next_at
                .saturating_duration_since(now)
                .max(Duration::from_micros(50)),
            _ => Duration::from_millis(100),
        };
        let Ok(first) = conn.next_event_within(wait).await else {
            break;
        };
        let mut event = first;
        while let Some(e) = event {
            match e {
                ClientEvent::Acked { client_msg_id, .. } => {
                    if let Some((c, at)) = inflight.remove(&client_msg_id) {
                        let mut s = stats.borrow_mut();
                        s.acked += 1;
                        let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = s.ack_us.record(us);
                        let mut p = state.borrow_mut();
                        set(&mut p.acked, c);
                        p.acked_count += 1;
                    }
                }
                ClientEvent::Receipt { seq, .. } => {
                    stats.borrow_mut().receipts += 1;
                    receipts_seq = receipts_seq.max(seq);
                }
                ClientEvent::Closed { .. } => {
                    eprintln!("loadgen: sender {pair} closed by the server");
                    break;
                }
                _ => {}
            }
            event = conn.core().poll_event();
        }
        conn.core().ack(receipts_seq);
    }
    state.borrow_mut().sender_done = true;
    let _ = conn.flush().await;
}

async fn receive(
    mut conn: Connection,
    state: Rc<RefCell<Pair>>,
    stats: Rc<RefCell<ChatStats>>,
    end: Instant,
) {
    let hard_stop = end + Duration::from_secs(20);
    let mut last_seq = 0;
    loop {
        {
            let p = state.borrow();
            if p.sender_done && p.received_unique >= p.acked_count {
                break;
            }
        }
        if Instant::now() > hard_stop {
            break;
        }
        let Ok(first) = conn.next_event_within(Duration::from_millis(100)).await else {
            break;
        };
        let mut event = first;
        while let Some(e) = event {
            if let ClientEvent::Message { seq, payload, .. } = e {
                last_seq = last_seq.max(seq);
                on_message(&payload, &state, &stats, end);
            }
            event = conn.core().poll_event();
        }
        conn.core().ack(last_seq);
    }
    let _ = conn.flush().await;
}

fn on_message(payload: &[u8], state: &RefCell<Pair>, stats: &RefCell<ChatStats>, end: Instant) {
    if payload.len() < 24 {
        return;
    }
    let (counter, sent_ns) = (field(payload, 1), field(payload, 2));
    let mut s = stats.borrow_mut();
    s.received += 1;
    if Instant::now() <= end {
        s.received_in_window += 1;
    }
    let _ = s
        .deliver_us
        .record(epoch_ns(Instant::now()).saturating_sub(sent_ns) / 1000);
    let mut p = state.borrow_mut();
    if !set(&mut p.received, counter) {
        s.duplicated += 1;
        return;
    }
    p.received_unique += 1;
    if p.highest.is_some_and(|h| counter < h) {
        s.reordered += 1;
    }
    p.highest = Some(p.highest.map_or(counter, |h| h.max(counter)));
}
