//! The `group` scenario: G groups of S members, M of them sending stamped
//! payloads to the group (closed loop with a window, or open loop at a
//! rate), and every online member device checking that each ✓'d message
//! of each sender arrives once and in order. It records send→delivered
//! for every member device and send→last member for every message. Some
//! members may stay offline (`--offline`): they are linked first, get the
//! messages queued, and are not waited for.
//!
//! Member `k` of group `g` is user `user_base + g × S + k`; member 0
//! creates the group (adding members 256 at a time, a frame's limit) and
//! senders are members `0..M`; they start 1 s after the group is complete. A worker drives
//! whole groups, so a message's receivers are on the sender's executor.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use client::ClientEvent;
use rustc_hash::FxHashMap;
use wire_format::fb::ErrorCode;
use wire_format::group_address;

use crate::epoch_ns;
use crate::live::Recorder;
use crate::report::{Counter, Latency};
use crate::target::Target;
use crate::verify::{Link, Stamp, Stream, count_arrival};

/// Most users one group frame names (the protocol's list limit).
const ITEMS_MAX: usize = 256;

/// How long after the group is complete its senders start.
const SETTLE: Duration = Duration::from_secs(1);

/// The request id of group `g`'s member additions.
fn add_request(g: u64) -> u64 {
    (g + 1) << 20
}

/// How a group run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct GroupPlan {
    /// Groups this worker drives: `first_group .. first_group + groups`.
    pub first_group: u64,
    /// Groups.
    pub groups: u64,
    /// Members per group (the creator included).
    pub size: u64,
    /// Senders per group.
    pub senders: u64,
    /// Members per group that stay offline (the last ones).
    pub offline: u64,
    /// Unanswered sends per sender.
    pub window: usize,
    /// Messages per second per sender; None = closed loop.
    pub rate_per_sender: Option<f64>,
    /// Messages per sender at most.
    pub messages: u64,
    /// Payload bytes (at least the verification header).
    pub payload: usize,
    /// How long senders send.
    pub duration: Duration,
    /// After sending stops, how long to wait for ✓ and deliveries.
    pub drain: Duration,
    /// The run's first user id.
    pub user_base: u64,
    /// This run's id, stamped into every payload.
    pub run: u64,
}

impl GroupPlan {
    fn user(&self, group: u64, member: u64) -> u64 {
        self.user_base + group * self.size + member
    }

    fn online(&self) -> u64 {
        self.size - self.offline
    }
}

/// What one group's tasks share: its id, and per message the online
/// members that still have to receive it.
#[derive(Default)]
struct Shared {
    /// The group, once every member is in it (0 before).
    id: Cell<u64>,
    /// The group while members are being added (a frame names at most
    /// 256 users), and the chunks still to add.
    building: Cell<u64>,
    adds: RefCell<Vec<Vec<u64>>>,
    add_in_flight: Cell<bool>,
    /// Once every member is in: when sending starts (a settle time, so
    /// the members' `GroupChanged` deliveries are not what is measured).
    ready_at: Cell<Option<Instant>>,
    /// (stream, counter) → (members still to receive it: the ✓ adds the
    /// online members, each arrival takes one; latest arrival, µs after
    /// the send).
    waiting: RefCell<FxHashMap<(u64, u64), (i64, u64)>>,
    /// Per (stream, member) the member's bookkeeping of that sender.
    streams: RefCell<FxHashMap<(u64, u64), Stream>>,
}

/// Runs this worker's groups.
pub async fn run(target: Rc<Target>, plan: GroupPlan, rec: Rc<RefCell<Recorder>>) {
    let mut tasks = Vec::new();
    for g in plan.first_group..plan.first_group + plan.groups {
        tasks.push(glommio::spawn_local(run_group(
            target.clone(),
            plan,
            g,
            rec.clone(),
        )));
    }
    for t in tasks {
        t.await;
    }
}

async fn run_group(target: Rc<Target>, plan: GroupPlan, g: u64, rec: Rc<RefCell<Recorder>>) {
    let connect_by = Instant::now() + Duration::from_secs(120);
    let open = |member| {
        Link::open(
            target.clone(),
            rec.clone(),
            plan.user(g, member),
            0,
            connect_by,
            false,
        )
    };
    // The offline members link their device once, then leave.
    for member in plan.online()..plan.size {
        match open(member).await {
            Ok((link, _)) => link.close().await,
            Err(e) => panic!("group: could not connect: {}", e.0),
        }
    }
    let mut links = Vec::new();
    for member in 0..plan.online() {
        match open(member).await {
            Ok((link, _)) => links.push(link),
            Err(e) => panic!("group: could not connect: {}", e.0),
        }
    }
    let shared = Rc::new(Shared::default());
    let members: Vec<u64> = (1..plan.size).map(|m| plan.user(g, m)).collect();
    let (first, rest) = members.split_at(members.len().min(ITEMS_MAX - 1));
    links[0].core().group_create(g + 1, first);
    *shared.adds.borrow_mut() = rest.chunks(ITEMS_MAX).rev().map(<[u64]>::to_vec).collect();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for (member, link) in (0..).zip(links) {
        let (shared, rec) = (shared.clone(), rec.clone());
        tasks.push(glommio::spawn_local(member_task(
            link, plan, g, member, shared, rec, start,
        )));
    }
    for t in tasks {
        t.await;
    }
    let lost: u64 = shared.streams.borrow().values().map(Stream::lost).sum();
    rec.borrow_mut().add(Counter::Lost, lost);
}

/// One online member: it waits for the group, sends if it is a sender,
/// and receives until every sender's ✓'d messages have arrived.
async fn member_task(
    mut link: Link,
    plan: GroupPlan,
    g: u64,
    member: u64,
    shared: Rc<Shared>,
    rec: Rc<RefCell<Recorder>>,
    start: Instant,
) {
    let give_up = start + plan.duration + plan.drain + Duration::from_secs(30);
    let sender = member < plan.senders;
    let stream = g * plan.senders + member;
    let mut events = Vec::new();
    let mut last_seq = 0;
    let mut unacked: FxHashMap<u64, (u64, u64)> = FxHashMap::default();
    let mut counter = 0u64;
    let mut began: Option<Instant> = None;
    let gap = plan
        .rate_per_sender
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_at = Instant::now();
    let mut marked = false;
    loop {
        let now = Instant::now();
        if member == 0 {
            add_members(&mut link, &shared, g);
        }
        let id = shared.id.get();
        if id != 0 && began.is_none() {
            began = Some(now);
            next_at = now;
        }
        let over = began.is_some_and(|b| now >= b + plan.duration) || counter >= plan.messages;
        if sender && began.is_some() && !over {
            while unacked.len() < plan.window && counter < plan.messages && next_at <= now {
                let at = if gap.is_some() { next_at } else { now };
                let stamp = Stamp {
                    run: plan.run,
                    stream,
                    counter,
                    sent_ns: epoch_ns(at),
                };
                let payload = stamp.payload(plan.payload);
                let client_id = link.core().send(group_address(id), 0, payload);
                unacked.insert(client_id, (counter, stamp.sent_ns));
                counter += 1;
                rec.borrow_mut().add(Counter::Sent, 1);
                next_at = gap.map_or(now, |g| next_at + g);
            }
        }
        let sent_all = !sender || (began.is_some() && over && unacked.is_empty());
        if sender && sent_all && !marked {
            mark_done(&shared, &plan, stream, member);
            marked = true;
        }
        let got_all = began.is_some() && all_received(&shared, &plan, g, member);
        if (sent_all && got_all) || now > give_up {
            break;
        }
        let wait = match gap {
            Some(_) if sender && !over => next_at.saturating_duration_since(now),
            _ => Duration::from_millis(50),
        };
        let wait = wait.max(Duration::from_micros(50));
        if link.poll(wait, &mut events, give_up).await.is_err() {
            break;
        }
        for e in events.drain(..) {
            on_event(
                e,
                &plan,
                g,
                member,
                &shared,
                &rec,
                &mut unacked,
                &mut last_seq,
            );
        }
        link.core().ack_later(last_seq);
    }
    rec.borrow_mut().add(Counter::Unacked, unacked.len() as u64);
    link.close().await;
}

/// The creator adds the next chunk of members once the last is in; the
/// group is ready when none is left.
fn add_members(link: &mut Link, shared: &Shared, g: u64) {
    let building = shared.building.get();
    if building == 0 || shared.id.get() != 0 || shared.add_in_flight.get() {
        return;
    }
    if let Some(at) = shared.ready_at.get() {
        if Instant::now() >= at {
            shared.id.set(building);
        }
        return;
    }
    match shared.adds.borrow_mut().pop() {
        Some(chunk) => {
            link.core().group_add(add_request(g), building, &chunk);
            shared.add_in_flight.set(true);
        }
        None => shared.ready_at.set(Some(Instant::now() + SETTLE)),
    }
}

/// The sender of `stream` sends no more: each member's stream of it knows.
fn mark_done(shared: &Shared, plan: &GroupPlan, stream: u64, sender: u64) {
    let mut streams = shared.streams.borrow_mut();
    for member in (0..plan.online()).filter(|m| *m != sender) {
        streams.entry((stream, member)).or_default().sender_done = true;
    }
}

/// Whether `member` has every ✓'d message of every other sender.
fn all_received(shared: &Shared, plan: &GroupPlan, g: u64, member: u64) -> bool {
    let streams = shared.streams.borrow();
    (0..plan.senders.min(plan.online()))
        .filter(|s| *s != member)
        .all(|s| {
            streams
                .get(&(g * plan.senders + s, member))
                .is_some_and(Stream::complete)
        })
}

#[allow(clippy::too_many_arguments)]
fn on_event(
    e: ClientEvent,
    plan: &GroupPlan,
    g: u64,
    member: u64,
    shared: &Shared,
    rec: &RefCell<Recorder>,
    unacked: &mut FxHashMap<u64, (u64, u64)>,
    last_seq: &mut u64,
) {
    match e {
        ClientEvent::GroupChanged {
            seq,
            group,
            request_id,
            ..
        } => {
            *last_seq = (*last_seq).max(seq);
            if member == 0 && request_id == g + 1 {
                shared.building.set(group);
            } else if member == 0 && request_id == add_request(g) {
                shared.add_in_flight.set(false);
            }
        }
        ClientEvent::RequestRefused {
            code, request_id, ..
        } => {
            panic!("group {g}: request {request_id} was refused: {code:?}")
        }
        ClientEvent::Receipt { seq, .. } => *last_seq = (*last_seq).max(seq),
        ClientEvent::Acked { client_msg_id, .. } => {
            let Some((counter, sent_ns)) = unacked.remove(&client_msg_id) else {
                return;
            };
            let stream = g * plan.senders + member;
            let mut r = rec.borrow_mut();
            r.add(Counter::Acked, 1);
            r.latency(
                Latency::Ack,
                epoch_ns(Instant::now()).saturating_sub(sent_ns) / 1000,
            );
            let mut streams = shared.streams.borrow_mut();
            let mut left = 0;
            for m in (0..plan.online()).filter(|m| *m != member) {
                streams.entry((stream, m)).or_default().acked(counter);
                left += 1;
            }
            let left: i64 = left;
            drop(streams);
            drop(r);
            // Members that got it before its ✓ already counted down.
            count_down(shared, rec, (stream, counter), left, None);
        }
        ClientEvent::Message { seq, payload, .. } => {
            *last_seq = (*last_seq).max(seq);
            let Some(stamp) = Stamp::read(&payload).filter(|s| s.run == plan.run) else {
                rec.borrow_mut().add(Counter::Stale, 1);
                return;
            };
            let arrival = shared
                .streams
                .borrow_mut()
                .entry((stamp.stream, member))
                .or_default()
                .received(stamp.counter);
            if !count_arrival(rec, arrival) {
                return;
            }
            let us = epoch_ns(Instant::now()).saturating_sub(stamp.sent_ns) / 1000;
            rec.borrow_mut().latency(Latency::Delivered, us);
            count_down(shared, rec, (stamp.stream, stamp.counter), -1, Some(us));
        }
        ClientEvent::Refused {
            code,
            client_msg_id,
            ..
        } if code != ErrorCode::Draining && unacked.remove(&client_msg_id).is_some() => {
            rec.borrow_mut().add(Counter::Refused, 1);
        }
        _ => {}
    }
}

/// Adds `delta` to the members message `key` still waits for (the ✓ adds
/// the online members, each arrival takes one); at zero the last member
/// has it, and its arrival time is recorded.
fn count_down(
    shared: &Shared,
    rec: &RefCell<Recorder>,
    key: (u64, u64),
    delta: i64,
    us: Option<u64>,
) {
    let mut waiting = shared.waiting.borrow_mut();
    let entry = waiting.entry(key).or_insert((0, 0));
    entry.0 += delta;
    entry.1 = entry.1.max(us.unwrap_or(0));
    if entry.0 == 0 {
        let last = entry.1;
        waiting.remove(&key);
        rec.borrow_mut().latency(Latency::LastMember, last);
    }
}
