//! Deterministic simulation: a seeded driver runs random steps (appends,
//! retries, acks, expiry, partial flushes, checkpoints (written once
//! durable, as a shell must), crashes with torn writes) against
//! the simulated disk, and after every recovery checks the promises:
//!
//! * every append that was reported durable is present, unless it was
//!   acked or expired;
//! * nothing is present that was never appended, and nothing whose ack or
//!   expiry was durable;
//! * each device's queue is in strictly increasing seq order;
//! * dedup answers a retry of a durable message inside its sender's
//!   window with its id (or, once the backstop passed or its record was
//!   reclaimed, as stored without it), and a retry below the window as
//!   stale.
//!
//! `cargo test` runs a short smoke. The soak (millions of steps):
//! `SIM_SEEDS=100 SIM_STEPS=100000 cargo test --release -p queue-engine --test simulation -- --ignored`
//! A failure names its seed; `SIM_SEED=<seed>` reruns just that one.

#![allow(clippy::cast_possible_truncation)] // small random sizes

use std::collections::BTreeMap;

use queue_engine::*;

const DEVICES: [DeviceRef; 6] = [
    DeviceRef { user: 1, device: 0 },
    DeviceRef { user: 1, device: 1 },
    DeviceRef { user: 2, device: 0 },
    DeviceRef { user: 3, device: 0 },
    DeviceRef { user: 3, device: 1 },
    DeviceRef { user: 4, device: 0 },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// The ack or expiry is in the log up to `end`; durable once past it.
    Pending {
        end: u64,
    },
    Durable,
}

#[derive(Debug, Clone)]
struct Expect {
    position: u64,
    durable: bool,
    death: Option<Death>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    message_id: u64,
    position: u64,
    accepted_ms: u64,
}

struct Sim {
    rng: SimRng,
    disk: SimDisk,
    engine: Engine,
    config: EngineConfig,
    now_ms: u64,
    next_id: u64,
    /// Per sender, the next client id (the client's promise: increasing).
    next_client: BTreeMap<DeviceRef, u64>,
    /// (device, seq) -> what the model expects.
    entries: BTreeMap<(DeviceRef, u64), Expect>,
    /// (sender, client id) -> the stored message.
    sent: BTreeMap<(DeviceRef, u64), Sent>,
    /// The segment of a flush written but not yet synced.
    unsynced: Option<u64>,
    crashes: u64,
    /// A checkpoint taken, written once the log is durable past it.
    pending_checkpoint: Option<(u64, Vec<u8>)>,
    /// Recoveries that started from a checkpoint.
    from_checkpoint: u64,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let config = EngineConfig {
            log: LogConfig {
                segment_bytes_max: 16 * 1024,
                batch_bytes_max: 2048,
            },
            queue_messages_max: 40,
            queue_receipts_max: 20,
            queue_bytes_max: 4096,
            ttl_default_ms: 5_000,
            ttl_max_ms: 20_000,
            payload_cache_bytes: 4096,
            dedup_ids_ms: 3_000,
        };
        let mut disk = SimDisk::new(seed ^ 0xD15C);
        let (engine, _) = Engine::open(&mut disk, config, 1).unwrap();
        Self {
            rng: SimRng::new(seed),
            disk,
            engine,
            config,
            now_ms: 1,
            next_id: 1,
            next_client: BTreeMap::new(),
            entries: BTreeMap::new(),
            sent: BTreeMap::new(),
            unsynced: None,
            crashes: 0,
            pending_checkpoint: None,
            from_checkpoint: 0,
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len() as u64) as usize]
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..40 => self.append(),
            40..60 => self.flush(),
            60..75 => self.ack(),
            75..80 => self.expire(),
            80..82 => self.crash_and_check(),
            82..84 => self.reclaim(),
            84..86 => {
                self.pending_checkpoint = Some(self.engine.checkpoint());
                self.write_due_checkpoint();
            }
            _ => self.now_ms += self.rng.below(50),
        }
    }

    fn append(&mut self) {
        let sender = self.pick(&DEVICES);
        let next = *self.next_client.entry(sender).or_insert(1);
        // A retry stays inside the window (the client's promise).
        let client_msg_id = match next > 1 && self.rng.one_in(8) {
            true => next.saturating_sub(1 + self.rng.below(DEDUP_WINDOW)).max(1),
            false => next,
        };
        self.next_client.insert(sender, next.max(client_msg_id + 1));
        let count = 1 + self.rng.below(3) as usize;
        let recipients: Vec<DeviceRef> = (0..count).map(|_| self.pick(&DEVICES)).collect();
        let mut recipients_unique = recipients.clone();
        recipients_unique.sort();
        recipients_unique.dedup();
        let payload = vec![0xA5; 1 + self.rng.below(200) as usize];
        let ttl_ms = self.rng.below(10_000);
        let message_id = self.next_id;
        self.next_id += 1;
        let m = NewMessage {
            message_id,
            sender,
            client_msg_id,
            recipients: &recipients_unique,
            ttl_ms,
            payload: &payload,
            receipt: false,
            group: 0,
        };
        match self.engine.append_message(self.now_ms, &m) {
            Ok(Accepted::Stored { position, seqs }) => {
                for (device, seq) in seqs {
                    let fresh = Expect {
                        position,
                        durable: false,
                        death: None,
                    };
                    let old = self.entries.insert((device, seq), fresh);
                    assert!(
                        old.is_none(),
                        "seq {seq} of {device:?} given twice: {old:?}"
                    );
                }
                self.sent.insert(
                    (sender, client_msg_id),
                    Sent {
                        message_id,
                        position,
                        accepted_ms: self.now_ms,
                    },
                );
            }
            Ok(Accepted::Duplicate {
                message_id: original,
                position,
            }) => {
                let sent = self.sent[&(sender, client_msg_id)];
                assert_eq!(
                    (original, position),
                    (sent.message_id, sent.position),
                    "dedup answer"
                );
            }
            Ok(Accepted::Forgotten) => {
                let sent = self.sent[&(sender, client_msg_id)];
                assert!(self.forgettable(&sent), "forgotten too soon: {sent:?}");
            }
            Err(QueueError::QueueFull { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }

    fn flush(&mut self) {
        if let Some(segment) = self.unsynced.take() {
            self.disk.sync(segment).unwrap();
            self.engine.handle_flushed();
            self.mark_durable();
            return;
        }
        if let Some(f) = self.engine.poll_flush() {
            if f.create {
                self.disk.create(f.segment).unwrap();
            }
            self.disk.write(f.segment, f.offset, &f.bytes).unwrap();
            self.unsynced = Some(f.segment); // a crash now may tear it
        }
    }

    /// Reclaims what is due, or else forces the oldest segment, with its
    /// copies made durable before the delete (crashes inside that window are
    /// covered by tests/reclaim.rs); then follows the moved records.
    fn reclaim(&mut self) {
        if self.unsynced.is_some() {
            self.flush(); // finish the flush in flight first
        }
        let mut done = reclaim_all(&mut self.engine, &mut self.disk).unwrap();
        self.mark_durable();
        let segments = self.engine.log().segments().to_vec();
        if done.is_empty() && segments.len() >= 2 && self.rng.one_in(2) {
            let bytes = self.disk.read(segments[0]).unwrap();
            let reclaimed = self.engine.reclaim(segments[0], &bytes).unwrap();
            flush_all(&mut self.engine, &mut self.disk).unwrap();
            self.disk.remove(segments[0]).unwrap();
            self.engine.segment_deleted(segments[0]);
            done.push(reclaimed);
        }
        for (old, new) in done.into_iter().flat_map(|r| r.moved) {
            for e in self.entries.values_mut().filter(|e| e.position == old) {
                e.position = new;
            }
            for sent in self.sent.values_mut().filter(|s| s.position == old) {
                sent.position = new;
            }
        }
        self.mark_durable();
    }

    fn write_due_checkpoint(&mut self) {
        let durable = self.engine.durable();
        if let Some((_, bytes)) = self.pending_checkpoint.take_if(|(p, _)| *p <= durable) {
            self.disk.write_checkpoint(&bytes).unwrap();
        }
    }

    fn mark_durable(&mut self) {
        self.write_due_checkpoint();
        let durable = self.engine.durable();
        for e in self.entries.values_mut() {
            e.durable |= e.position < durable;
            if let Some(Death::Pending { end }) = e.death
                && end <= durable
            {
                e.death = Some(Death::Durable);
            }
        }
    }

    fn ack(&mut self) {
        let device = self.pick(&DEVICES);
        let visible: Vec<u64> = self.engine.backlog(device, 0).map(|(seq, _)| seq).collect();
        if visible.is_empty() {
            return;
        }
        let seq = self.pick(&visible);
        let cumulative = self.rng.one_in(2);
        self.engine.ack(device, seq, cumulative).unwrap();
        let end = self.engine.log().head();
        for (&(d, s), e) in self.entries.range_mut((device, 0)..=(device, seq)) {
            let acked = d == device && (s == seq || cumulative);
            if acked && e.death.is_none() {
                e.death = Some(Death::Pending { end });
            }
        }
    }

    fn expire(&mut self) {
        self.now_ms += self.rng.below(8_000);
        let expired = self.engine.expire(self.now_ms);
        let end = self.engine.log().head();
        for x in expired {
            let e = self
                .entries
                .get_mut(&(x.device, x.seq))
                .expect("expired entries were appended");
            assert_eq!(e.position, x.position);
            e.death.get_or_insert(Death::Pending { end });
        }
    }

    fn crash_and_check(&mut self) {
        self.disk.crash();
        self.crashes += 1;
        let (engine, found) = Engine::open(&mut self.disk, self.config, self.now_ms)
            .expect("a torn tail is not corruption");
        self.from_checkpoint += u64::from(found.checkpoint.is_some());
        self.engine = engine;
        self.unsynced = None;
        self.pending_checkpoint = None; // the process that took it died
        self.check_after_recovery();
    }

    fn check_after_recovery(&mut self) {
        let mut present = BTreeMap::new();
        for device in DEVICES {
            let queue: Vec<(u64, u64)> = self.engine.backlog(device, 0).collect();
            assert!(
                queue.windows(2).all(|w| w[0].0 < w[1].0),
                "{device:?} out of order: {queue:?}"
            );
            for (seq, position) in queue {
                present.insert((device, seq), position);
            }
        }
        for (key, position) in &present {
            let e = self
                .entries
                .get(key)
                .unwrap_or_else(|| panic!("{key:?} was never appended"));
            assert_eq!(e.position, *position, "{key:?} moved");
            assert_ne!(
                e.death,
                Some(Death::Durable),
                "{key:?} was durably acked or expired"
            );
        }
        self.entries.retain(|key, e| {
            let here = present.contains_key(key);
            if e.durable && e.death.is_none() {
                assert!(here, "durable {key:?} at {} was lost", e.position);
            }
            if here {
                e.durable = true; // it survived: it is on disk now
                e.death = None; // an unsynced ack or expiry was lost
            }
            here
        });
        let durable = self.engine.durable();
        self.sent.retain(|_, s| s.position < durable);
        self.check_stale();
        let mut high: BTreeMap<DeviceRef, u64> = BTreeMap::new();
        for (sender, id) in self.sent.keys() {
            high.insert(*sender, *id);
        }
        let live: Vec<((DeviceRef, u64), Sent)> = self
            .sent
            .iter()
            .filter(|((sender, id), _)| id + DEDUP_WINDOW > high[sender])
            .map(|(k, s)| (*k, *s))
            .collect();
        for ((sender, client_msg_id), s) in live.into_iter().take(5) {
            let m = NewMessage {
                message_id: 0,
                sender,
                client_msg_id,
                recipients: &DEVICES[..1],
                ttl_ms: 0,
                payload: b"retry",
                receipt: false,
                group: 0,
            };
            let answer = self.engine.append_message(self.now_ms, &m).unwrap();
            if answer == Accepted::Forgotten && self.forgettable(&s) {
                continue;
            }
            assert_eq!(
                answer,
                Accepted::Duplicate {
                    message_id: s.message_id,
                    position: s.position
                }
            );
        }
    }

    /// Whether a stored send's original may be forgotten: the backstop
    /// passed, or its record was reclaimed (a restart then knows only the
    /// window's bits).
    fn forgettable(&self, s: &Sent) -> bool {
        s.accepted_ms + self.config.dedup_ids_ms <= self.now_ms
            || s.position < self.engine.log().segments()[0]
    }

    /// A retry below each sender's window is refused as stale.
    fn check_stale(&mut self) {
        let mut high: BTreeMap<DeviceRef, u64> = BTreeMap::new();
        for (sender, id) in self.sent.keys() {
            high.insert(*sender, *id);
        }
        for (sender, high) in high {
            let Some(below) = high.checked_sub(DEDUP_WINDOW).filter(|b| *b > 0) else {
                continue;
            };
            let m = NewMessage {
                message_id: 0,
                sender,
                client_msg_id: below,
                recipients: &DEVICES[..1],
                ttl_ms: 0,
                payload: b"stale",
                receipt: false,
                group: 0,
            };
            let answer = self.engine.append_message(self.now_ms, &m);
            assert!(
                matches!(answer, Err(QueueError::Stale { .. })),
                "{sender:?} id {below} below {high}: {answer:?}"
            );
        }
    }
}

fn run(seed: u64, steps: u64) -> Sim {
    let result = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed);
        for _ in 0..steps {
            sim.step();
        }
        sim.crash_and_check();
        sim
    });
    result.unwrap_or_else(|panic| {
        eprintln!("simulation failed: rerun with SIM_SEED={seed} SIM_STEPS={steps}");
        std::panic::resume_unwind(panic)
    })
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn smoke() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        run(seed.parse().unwrap(), env("SIM_STEPS", 20_000));
        return;
    }
    let (mut crashes, mut torn, mut deleted, mut from_checkpoint) = (0, 0, 0, 0);
    for seed in 0..24 {
        let sim = run(seed, 4_000);
        crashes += sim.crashes;
        torn += sim.disk.stats.torn;
        deleted += sim.engine.log().segments()[0];
        from_checkpoint += sim.from_checkpoint;
    }
    assert!(
        from_checkpoint > 100,
        "and recovers from checkpoints: {from_checkpoint}"
    );
    assert!(crashes > 1_000, "the smoke crashes often: {crashes}");
    assert!(torn > 100, "and tears writes: {torn}");
    assert!(deleted > 0, "and reclaims segments");
}

#[test]
#[ignore = "soak: run explicitly (see module docs)"]
fn soak() {
    let (seeds, steps) = (env("SIM_SEEDS", 100), env("SIM_STEPS", 100_000));
    let first = env("SIM_FIRST_SEED", 1_000);
    for seed in first..first + seeds {
        run(seed, steps);
    }
    eprintln!("soak: {seeds} seeds x {steps} steps passed");
}
