//! The `chat` scenario: 1:1 pairs. Each sender sends stamped payloads to
//! its receiver, closed loop (a window of W unanswered sends) or open loop
//! on a fixed or Poisson schedule with latency measured from the
//! *scheduled* send time (no coordinated omission). Both ends reconnect and
//! resume when the gateway goes away, so the same scenario is the
//! crash-under-load check. Receivers verify every ✓'d message arrives once
//! and in order.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::gate::Gate;
use std::time::{Duration, Instant};

use client::{ClientEvent, IdWindow};
use rustc_hash::FxHashSet;
use wire_format::fb::{ErrorCode, ReceiptKind};
use wire_format::user_address;

use crate::epoch_ns;
use crate::live::Recorder;
use crate::report::{Counter, Latency};
use crate::target::{Target, micros};
use crate::verify::{Link, Stamp, Stream, count_arrival};

/// How long a sender waits for outstanding ✓✓ once every send has its ✓.
const RECEIPT_WAIT: Duration = Duration::from_secs(5);

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
    /// Exponential gaps between sends instead of fixed ones.
    pub poisson: bool,
    /// Payload bytes (at least the verification header).
    pub payload: usize,
    /// How long senders send.
    pub duration: Duration,
    /// After sending stops, how long to wait for ✓, deliveries and ✓✓.
    pub drain: Duration,
    /// User ids start here (senders even, receivers odd).
    pub user_base: u64,
    /// This run's id, stamped into every payload.
    pub run: u64,
    /// Sends scheduled in the first `warmup` are verified but their
    /// latencies are not recorded.
    pub warmup: Duration,
    /// Latencies are recorded for sends scheduled from here (ns since the
    /// epoch; set when the senders start).
    pub measure_from_ns: u64,
}

/// When the next open-loop send is due.
struct Schedule {
    next_at: Instant,
    mean: Option<Duration>,
    poisson: bool,
}

impl Schedule {
    fn new(plan: &ChatPlan, pair: u64, start: Instant) -> Self {
        let mean = plan
            .rate_per_sender
            .map(|r| Duration::from_secs_f64(1.0 / r));
        // Stagger senders across one interval so they do not send in step.
        let offset = mean.map_or(Duration::ZERO, |m| m.mul_f64((pair % 97) as f64 / 97.0));
        Self {
            next_at: start + offset,
            mean,
            poisson: plan.poisson,
        }
    }

    /// The send time if one is due by `now` (closed loop: always, now).
    fn due(&mut self, now: Instant) -> Option<Instant> {
        let Some(mean) = self.mean else {
            return Some(now);
        };
        if self.next_at > now {
            return None;
        }
        let at = self.next_at;
        let gap = if self.poisson {
            mean.mul_f64(-(1.0 - fastrand::f64()).ln())
        } else {
            mean
        };
        self.next_at += gap;
        Some(at)
    }

    fn wait(&self, now: Instant) -> Duration {
        match self.mean {
            Some(_) => self
                .next_at
                .saturating_duration_since(now)
                .max(Duration::from_micros(50)),
            None => Duration::from_millis(100),
        }
    }
}

/// Runs this worker's pairs; every connection on the current executor.
/// Senders start once every worker of this process has its connections
/// open (`ready`), so no worker's sends compete with another's handshakes.
pub async fn run(target: Rc<Target>, plan: ChatPlan, rec: Rc<RefCell<Recorder>>, ready: Arc<Gate>) {
    let connect_by = Instant::now() + Duration::from_secs(120);
    let mut opening = Vec::new();
    for i in 0..plan.pairs {
        let pair = plan.first_pair + i;
        for user in [plan.user_base + 2 * pair + 1, plan.user_base + 2 * pair] {
            let (target, rec) = (target.clone(), rec.clone());
            opening.push(glommio::spawn_local(async move {
                Link::open(target, rec, user, 0, connect_by, false).await
            }));
        }
    }
    let mut links = Vec::new();
    for task in opening {
        match task.await {
            Ok((link, _)) => links.push(link),
            Err(e) => panic!("chat: could not connect: {}", e.0),
        }
    }
    ready.wait().await;
    let start = Instant::now();
    let plan = ChatPlan {
        measure_from_ns: epoch_ns(start + plan.warmup),
        ..plan
    };
    let mut tasks = Vec::new();
    let mut streams = Vec::new();
    let mut links = links.into_iter();
    for i in 0..plan.pairs {
        let pair = plan.first_pair + i;
        let (rx, tx) = (links.next().expect("opened"), links.next().expect("opened"));
        let stream = Rc::new(RefCell::new(Stream::default()));
        streams.push(stream.clone());
        tasks.push(glommio::spawn_local(receive(
            rx,
            plan,
            stream.clone(),
            rec.clone(),
            start,
        )));
        tasks.push(glommio::spawn_local(send(
            tx,
            pair,
            plan,
            stream,
            rec.clone(),
            start,
        )));
    }
    for task in tasks {
        task.await;
    }
    let lost: u64 = streams.iter().map(|s| s.borrow().lost()).sum();
    rec.borrow_mut().add(Counter::Lost, lost);
}

/// A sender's unanswered sends and ✓'d-but-not-✓✓'d messages.
#[derive(Default)]
struct Outstanding {
    /// client message id → (counter, send time).
    unacked: IdWindow<(u64, Instant)>,
    /// server message id → send time.
    unreceipted: IdWindow<Instant>,
    /// ✓✓ that came before their ✓: after a reconnect the resent send's
    /// ✓ (a duplicate) can follow the receipt for the first copy.
    early: FxHashSet<u64>,
}

async fn send(
    mut link: Link,
    pair: u64,
    plan: ChatPlan,
    stream: Rc<RefCell<Stream>>,
    rec: Rc<RefCell<Recorder>>,
    start: Instant,
) {
    let to = user_address(plan.user_base + 2 * pair + 1);
    let (end, give_up) = (start + plan.duration, start + plan.duration + plan.drain);
    let mut schedule = Schedule::new(&plan, pair, start);
    let mut out = Outstanding::default();
    let mut counter = 0;
    let mut receipt_seq = 0;
    let mut events = Vec::new();
    let mut acked_all = None;
    loop {
        let now = Instant::now();
        let sending = now < end;
        while sending && out.unacked.len() < plan.window {
            let Some(at) = schedule.due(now) else { break };
            let stamp = Stamp {
                run: plan.run,
                stream: pair,
                counter,
                sent_ns: epoch_ns(at),
            };
            if plan.rate_per_sender.is_some() && epoch_ns(at) >= plan.measure_from_ns {
                rec.borrow_mut()
                    .latency(Latency::SendLag, micros(now.saturating_duration_since(at)));
            }
            let id = link.core().send(to, 0, stamp.payload_here(plan.payload));
            out.unacked.insert(id, (counter, at));
            counter += 1;
            rec.borrow_mut().add(Counter::Sent, 1);
        }
        if !sending && out.unacked.is_empty() {
            // Every send answered: wait a little longer for ✓✓ only.
            let since = *acked_all.get_or_insert(now);
            if out.unreceipted.is_empty() || now > since + RECEIPT_WAIT {
                break;
            }
        }
        if now > give_up {
            break;
        }
        if link
            .poll(schedule.wait(now), &mut events, give_up)
            .await
            .is_err()
        {
            break;
        }
        let now = Instant::now(); // one reading for the batch
        for e in events.drain(..) {
            on_sender_event(
                e,
                now,
                &mut out,
                &stream,
                &rec,
                &mut receipt_seq,
                plan.measure_from_ns,
            );
        }
        link.core().ack_later(receipt_seq);
    }
    stream.borrow_mut().sender_done = true;
    {
        let mut r = rec.borrow_mut();
        r.add(Counter::Unacked, out.unacked.len() as u64);
        r.add(Counter::ReceiptsMissing, out.unreceipted.len() as u64);
    }
    link.close().await;
}

fn on_sender_event(
    e: ClientEvent,
    now: Instant,
    out: &mut Outstanding,
    stream: &RefCell<Stream>,
    rec: &RefCell<Recorder>,
    receipt_seq: &mut u64,
    measure_from_ns: u64,
) {
    let measured = |at: Instant| epoch_ns(at) >= measure_from_ns;
    match e {
        ClientEvent::Acked {
            client_msg_id,
            message_id,
            ..
        } => {
            if let Some((counter, at)) = out.unacked.remove(client_msg_id) {
                let mut r = rec.borrow_mut();
                r.add(Counter::Acked, 1);
                if measured(at) {
                    r.latency(Latency::Ack, micros(now.saturating_duration_since(at)));
                }
                stream.borrow_mut().acked(counter);
                if out.early.remove(&message_id) {
                    r.add(Counter::Receipts, 1);
                } else {
                    out.unreceipted.insert(message_id, at);
                }
            }
        }
        ClientEvent::Receipt {
            kind,
            message_ids,
            seq,
            ..
        } => {
            *receipt_seq = (*receipt_seq).max(seq);
            if kind != ReceiptKind::Delivered {
                return;
            }
            let mut r = rec.borrow_mut();
            for id in message_ids {
                match out.unreceipted.remove(id) {
                    Some(at) => {
                        r.add(Counter::Receipts, 1);
                        if measured(at) {
                            r.latency(Latency::Receipt, micros(now.saturating_duration_since(at)));
                        }
                    }
                    None => {
                        out.early.insert(id);
                    }
                }
            }
        }
        // Refused while draining: the client core sends it again on the
        // next connection, and its ✓ comes then.
        ClientEvent::Refused { code, .. } if code == ErrorCode::Draining => {}
        ClientEvent::Refused { client_msg_id, .. }
            if out.unacked.remove(client_msg_id).is_some() =>
        {
            rec.borrow_mut().add(Counter::Refused, 1);
        }
        _ => {}
    }
}

async fn receive(
    mut link: Link,
    plan: ChatPlan,
    stream: Rc<RefCell<Stream>>,
    rec: Rc<RefCell<Recorder>>,
    start: Instant,
) {
    let give_up = start + plan.duration + plan.drain;
    let mut last_seq = 0;
    let mut events = Vec::new();
    while !stream.borrow().complete() && Instant::now() < give_up {
        // Only completion is checked on a timeout: wake rarely (a timeout
        // cancels the read, which costs a syscall per connection).
        let wait = Duration::from_secs(1);
        if link.poll(wait, &mut events, give_up).await.is_err() {
            break;
        }
        let now_ns = epoch_ns(Instant::now()); // one reading for the batch
        for e in events.drain(..) {
            if let ClientEvent::Message { seq, payload, .. } = e {
                last_seq = last_seq.max(seq);
                on_message(&payload, now_ns, &plan, &stream, &rec);
            }
        }
        link.core().ack_later(last_seq);
    }
    link.close().await;
}

fn on_message(
    payload: &[u8],
    now_ns: u64,
    plan: &ChatPlan,
    stream: &RefCell<Stream>,
    rec: &RefCell<Recorder>,
) {
    let Some(stamp) = Stamp::read(payload).filter(|s| s.run == plan.run) else {
        rec.borrow_mut().add(Counter::Stale, 1);
        return;
    };
    let arrival = stream.borrow_mut().received(stamp.counter);
    if count_arrival(rec, arrival) && stamp.sent_ns >= plan.measure_from_ns {
        let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
        rec.borrow_mut().latency(Latency::Delivered, us);
    }
}
