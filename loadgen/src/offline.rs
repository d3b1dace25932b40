//! The `offline` scenario, a reconnect storm: recipient devices log in once
//! (so the server knows them) and leave; senders fill each one's queue with
//! M stamped messages; then every device reconnects at once and reads its
//! backlog. Reports how long until every backlog was delivered, and
//! verifies each message arrived once and in order.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::gate::Gate;
use std::time::{Duration, Instant};

use client::ClientEvent;
use wire_format::user_address;

use crate::epoch_ns;
use crate::live::Recorder;
use crate::report::{Counter, Latency};
use crate::target::{Target, micros};
use crate::verify::{Link, Stamp, Stream, count_arrival};

/// How an offline run is shaped (this worker's part).
#[derive(Debug, Clone, Copy)]
pub struct OfflinePlan {
    /// This worker's devices: user ids `user_base + first .. + devices`.
    pub first: u64,
    /// Devices.
    pub devices: u64,
    /// Messages queued per device.
    pub messages: u64,
    /// Sender connections of this worker.
    pub senders: u64,
    /// Unanswered sends per sender.
    pub window: usize,
    /// Payload bytes.
    pub payload: usize,
    /// User ids start here; senders use ids after every device.
    pub user_base: u64,
    /// Devices in the whole run (sender ids start after them).
    pub all_devices: u64,
    /// This run's id.
    pub run: u64,
    /// How long any phase may take.
    pub limit: Duration,
}

/// Runs the three phases; `barrier` lines this process's workers up
/// before the fill and before the storm. With `pause` (a directory), the
/// storm waits for the file `go` there once `filled` is written.
pub async fn run(
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
    plan: OfflinePlan,
    barrier: Arc<Gate>,
    pause: Option<PathBuf>,
) {
    let streams: Vec<_> = (0..plan.devices)
        .map(|_| Rc::new(RefCell::new(Stream::default())))
        .collect();
    register(&target, &rec, &plan).await;
    barrier.wait().await;
    fill(&target, &rec, &plan, &streams).await;
    barrier.wait().await;
    if let Some(dir) = pause {
        wait_for_go(&dir, plan.limit).await;
    }
    let storm_s = storm(&target, &rec, &plan, &streams).await;
    let lost: u64 = streams.iter().map(|s| s.borrow().lost()).sum();
    let mut r = rec.borrow_mut();
    r.add(Counter::Lost, lost);
    r.extra("storm_s", storm_s);
}

/// Writes `dir/filled` (every queue is full and ✓'d) and waits for
/// `dir/go`, up to `limit`.
async fn wait_for_go(dir: &Path, limit: Duration) {
    std::fs::write(dir.join("filled"), b"filled\n").expect("write the filled marker");
    let give_up = Instant::now() + limit;
    while !dir.join("go").exists() {
        assert!(
            Instant::now() < give_up,
            "offline: no {}/go within --limit",
            dir.display()
        );
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 0: each device logs in once and leaves.
async fn register(target: &Rc<Target>, rec: &Rc<RefCell<Recorder>>, plan: &OfflinePlan) {
    let give_up = Instant::now() + plan.limit;
    let mut tasks = Vec::new();
    for d in 0..plan.devices {
        let (target, rec) = (target.clone(), rec.clone());
        let user = plan.user_base + plan.first + d;
        tasks.push(glommio::spawn_local(async move {
            match Link::open(target, rec, user, 0, give_up, false).await {
                Ok((link, _)) => link.close().await,
                Err(e) => panic!("offline: device {user} could not register: {}", e.0),
            }
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// Phase 1: senders queue `messages` per device, round-robin over their
/// devices, until every send is ✓'d.
async fn fill(
    target: &Rc<Target>,
    rec: &Rc<RefCell<Recorder>>,
    plan: &OfflinePlan,
    streams: &[Rc<RefCell<Stream>>],
) {
    let mut tasks = Vec::new();
    let senders = usize::try_from(plan.senders.clamp(1, plan.devices.max(1))).expect("64-bit");
    for s in 0..senders {
        let mine: Vec<usize> = (s..streams.len()).step_by(senders).collect();
        let mine_streams: Vec<_> = mine.iter().map(|d| streams[*d].clone()).collect();
        let (target, rec, plan) = (target.clone(), rec.clone(), *plan);
        let user = plan.user_base + plan.all_devices + plan.first + s as u64;
        tasks.push(glommio::spawn_local(async move {
            send_all(target, rec, plan, user, mine, mine_streams).await;
        }));
    }
    for t in tasks {
        t.await;
    }
}

async fn send_all(
    target: Rc<Target>,
    rec: Rc<RefCell<Recorder>>,
    plan: OfflinePlan,
    user: u64,
    devices: Vec<usize>,
    streams: Vec<Rc<RefCell<Stream>>>,
) {
    let give_up = Instant::now() + plan.limit;
    let Ok((mut link, _)) = Link::open(target, rec.clone(), user, 0, give_up, false).await else {
        panic!("offline: sender {user} could not connect");
    };
    let mut jobs = (0..plan.messages).flat_map(|k| (0..devices.len()).map(move |i| (k, i)));
    let mut unacked = rustc_hash::FxHashMap::default();
    let mut events = Vec::new();
    let mut more = true;
    while (more || !unacked.is_empty()) && Instant::now() < give_up {
        while more && unacked.len() < plan.window {
            let Some((k, i)) = jobs.next() else {
                more = false;
                break;
            };
            let stream = plan.first + devices[i] as u64;
            let now = epoch_ns(Instant::now());
            let stamp = Stamp {
                run: plan.run,
                stream,
                counter: k,
                sent_ns: now,
            };
            let to = user_address(plan.user_base + stream);
            let id = link.core().send(to, 0, stamp.payload_here(plan.payload));
            unacked.insert(id, (i, k));
            rec.borrow_mut().add(Counter::Sent, 1);
        }
        if link
            .poll(Duration::from_millis(100), &mut events, give_up)
            .await
            .is_err()
        {
            break;
        }
        for e in events.drain(..) {
            if let ClientEvent::Acked { client_msg_id, .. } = e
                && let Some((i, k)) = unacked.remove(&client_msg_id)
            {
                streams[i].borrow_mut().acked(k);
                rec.borrow_mut().add(Counter::Acked, 1);
            }
        }
    }
    rec.borrow_mut().add(Counter::Unacked, unacked.len() as u64);
    for s in &streams {
        s.borrow_mut().sender_done = true;
    }
    link.close().await;
}

/// Phase 2: every device reconnects at once and reads its backlog.
/// Returns seconds from the storm's start until the last backlog was read.
async fn storm(
    target: &Rc<Target>,
    rec: &Rc<RefCell<Recorder>>,
    plan: &OfflinePlan,
    streams: &[Rc<RefCell<Stream>>],
) -> f64 {
    let started = Instant::now();
    let give_up = started + plan.limit;
    let mut tasks = Vec::new();
    for (d, stream) in streams.iter().enumerate() {
        let (target, rec, stream) = (target.clone(), rec.clone(), stream.clone());
        let user = plan.user_base + plan.first + d as u64;
        let run = plan.run;
        tasks.push(glommio::spawn_local(async move {
            let Ok((link, _)) = Link::open(target, rec.clone(), user, 0, give_up, true).await
            else {
                return None;
            };
            read_backlog(link, run, &stream, &rec, give_up).await;
            let done = started.elapsed();
            rec.borrow_mut().latency(Latency::Backlog, micros(done));
            Some(done)
        }));
    }
    let mut last = Duration::ZERO;
    for t in tasks {
        last = last.max(t.await.unwrap_or(plan.limit));
    }
    last.as_secs_f64()
}

async fn read_backlog(
    mut link: Link,
    run: u64,
    stream: &RefCell<Stream>,
    rec: &RefCell<Recorder>,
    give_up: Instant,
) {
    let mut events = Vec::new();
    let mut last_seq = 0;
    while !stream.borrow().complete() && Instant::now() < give_up {
        if link
            .poll(Duration::from_secs(1), &mut events, give_up)
            .await
            .is_err()
        {
            break;
        }
        for e in events.drain(..) {
            let ClientEvent::Message { seq, payload, .. } = e else {
                continue;
            };
            last_seq = last_seq.max(seq);
            match Stamp::read(&payload).filter(|s| s.run == run) {
                Some(s) => {
                    count_arrival(rec, stream.borrow_mut().received(s.counter));
                }
                None => rec.borrow_mut().add(Counter::Stale, 1),
            }
        }
        link.core().ack_later(last_seq);
    }
    link.close().await;
}
