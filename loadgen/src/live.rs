//! Recording while a run goes: each worker thread owns a [`Recorder`]
//! (counters, histograms, the per-second series, no sharing) and publishes
//! a handful of totals to its own cache line in [`Live`], which the
//! progress line (`indicatif`) reads twice a second.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::epoch_ns;
use crate::report::{Counter, Latency, Report, Second};

/// The kernel's clock `id` (one every Linux since 2.6.32 knows), read in
/// the vDSO: (seconds, nanoseconds).
fn clock(id: libc::clockid_t) -> (u64, u64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(id, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime({id})");
    let secs = u64::try_from(ts.tv_sec).expect("not before the clock's start");
    (secs, u64::try_from(ts.tv_nsec).expect("below a second"))
}

/// The current Unix second by the kernel's coarse clock: read without the
/// time-stamp counter (it moves once per tick), which is all a per-second
/// bucket needs, at a few ns for each count and latency.
fn coarse_epoch_s() -> u64 {
    clock(libc::CLOCK_REALTIME_COARSE).0
}

/// What one worker publishes.
#[derive(Debug, Default)]
pub struct Slot {
    conns: AtomicI64,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    connects: AtomicU64,
    p99_us: AtomicU64,
}

/// Every worker's published totals.
#[derive(Debug)]
pub struct Live {
    slots: Vec<CachePadded<Slot>>,
}

impl Live {
    /// Room for `workers` workers.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..workers).map(|_| CachePadded::default()).collect(),
        })
    }

    fn sum(&self, f: impl Fn(&Slot) -> u64) -> u64 {
        self.slots.iter().map(|s| f(s)).sum()
    }

    /// Draws the progress line on stderr until `stop` is set (hidden when
    /// stderr is not a terminal).
    pub fn show(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("template"),
            );
            let mut last = (Instant::now(), [0u64; 4]);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let now = [
                    self.sum(|s| s.sent.load(Ordering::Relaxed)),
                    self.sum(|s| s.acked.load(Ordering::Relaxed)),
                    self.sum(|s| s.delivered.load(Ordering::Relaxed)),
                    self.sum(|s| s.connects.load(Ordering::Relaxed)),
                ];
                let dt = last.0.elapsed().as_secs_f64().max(1e-3);
                let rate = |i: usize| (now[i] - last.1[i]) as f64 / dt;
                let conns: i64 = self
                    .slots
                    .iter()
                    .map(|s| s.conns.load(Ordering::Relaxed))
                    .sum();
                let p99 = self
                    .slots
                    .iter()
                    .map(|s| s.p99_us.load(Ordering::Relaxed))
                    .max();
                bar.set_message(format!(
                    "conns {conns} (+{:.0}/s)  sent {:.0}/s  ✓ {:.0}/s  delivered {:.0}/s  p99 {:.2} ms",
                    rate(3),
                    rate(0),
                    rate(1),
                    rate(2),
                    p99.unwrap_or(0) as f64 / 1000.0
                ));
                bar.tick();
                last = (Instant::now(), now);
            }
            bar.finish_and_clear();
        })
    }
}

/// The kernel's monotonic clock, ns: the clock `perf record -k
/// CLOCK_MONOTONIC` stamps its samples with, so slow sends line up with a
/// trace.
fn monotonic_ns() -> u64 {
    let (secs, nanos) = clock(libc::CLOCK_MONOTONIC);
    secs * 1_000_000_000 + nanos
}

/// Sends slower than a threshold (`--slow-us`), kept in memory and
/// written as TSV when the worker finishes.
struct SlowLog {
    threshold_us: u64,
    path: PathBuf,
    /// (the send, scheduled in open loop, monotonic ns; latency µs;
    /// which answer)
    rows: Vec<(u64, u64, Latency)>,
}

/// Rows past which a slow log keeps no more (a threshold below the
/// typical latency would otherwise grow without bound).
const SLOW_ROWS_MAX: usize = 1_000_000;

impl SlowLog {
    fn write(&self) -> std::io::Result<()> {
        let mut text = String::from("send_mono_ns\tanswered_mono_ns\tlatency_us\tanswer\n");
        for (at, us, l) in &self.rows {
            let _ = writeln!(text, "{at}\t{}\t{us}\t{}", at + us * 1000, l.name());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.path, text)
    }
}

/// One worker's recording.
pub struct Recorder {
    report: Report,
    live: Arc<Live>,
    index: usize,
    second: u64,
    current: Second,
    slow: Option<SlowLog>,
}

impl Recorder {
    /// Worker `index`'s recorder for `scenario`.
    pub fn new(scenario: &str, main: Latency, live: Arc<Live>, index: usize) -> Self {
        let mut report = Report::new(scenario, main);
        report.started_unix_ms = epoch_ns(Instant::now()) / 1_000_000;
        Self {
            report,
            live,
            index,
            second: 0,
            current: Second::default(),
            slow: None,
        }
    }

    /// From now on, every ✓ or delivery at least `threshold_us` after its
    /// send is also written to `path` when the worker finishes (with the
    /// kernel's monotonic time of the send and the answer).
    pub fn log_slow(&mut self, threshold_us: u64, path: PathBuf) {
        self.slow = Some(SlowLog {
            threshold_us,
            path,
            rows: Vec::new(),
        });
    }

    fn slot(&self) -> &Slot {
        &self.live.slots[self.index]
    }

    /// The current second's bucket (rolling over when the second changes).
    fn bucket(&mut self) -> &mut Second {
        let now = coarse_epoch_s();
        if now != self.second {
            self.roll(now);
        }
        &mut self.current
    }

    fn roll(&mut self, now: u64) {
        let done = std::mem::take(&mut self.current);
        if self.second != 0 && (done.counts.iter().any(|c| *c > 0) || !done.latency.is_empty()) {
            let p99 = done.latency.value_at_quantile(0.99);
            self.slot().p99_us.store(p99, Ordering::Relaxed);
            self.report.series.insert(self.second, done);
        }
        self.second = now;
    }

    /// Counts `n` more of `c`.
    pub fn add(&mut self, c: Counter, n: u64) {
        self.report.counters[c as usize] += n;
        self.bucket().counts[c as usize] += n;
        let total = self.report.counters[c as usize];
        let slot = match c {
            Counter::Sent => &self.slot().sent,
            Counter::Acked => &self.slot().acked,
            Counter::Delivered => &self.slot().delivered,
            Counter::Connects => &self.slot().connects,
            _ => return,
        };
        slot.store(total, Ordering::Relaxed);
    }

    /// Records a latency in µs.
    pub fn latency(&mut self, l: Latency, us: u64) {
        self.report.latency[l as usize].saturating_record(us.max(1));
        if l == self.report.main_latency {
            self.bucket().latency.saturating_record(us.max(1));
        }
        if let Some(slow) = &mut self.slow
            && matches!(l, Latency::Ack | Latency::Delivered)
            && us >= slow.threshold_us
            && slow.rows.len() < SLOW_ROWS_MAX
        {
            let sent = monotonic_ns().saturating_sub(us * 1000);
            slow.rows.push((sent, us, l));
        }
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn conns(&self, delta: i64) {
        self.slot().conns.fetch_add(delta, Ordering::Relaxed);
    }

    /// Sets a scenario-specific figure.
    pub fn extra(&mut self, key: &str, value: f64) {
        self.report.extra.insert(key.to_owned(), value);
    }

    /// The finished report (wall time from its start).
    pub fn finish(mut self, send_s: f64) -> Report {
        self.roll(0);
        if let Some(slow) = &self.slow
            && let Err(e) = slow.write()
        {
            eprintln!("loadgen: slow log {}: {e}", slow.path.display());
        }
        let started = self.report.started_unix_ms;
        self.report.wall_s = (epoch_ns(Instant::now()) / 1_000_000 - started) as f64 / 1000.0;
        self.report.send_s = send_s;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_answers_are_written_with_their_monotonic_times() {
        let dir = std::env::temp_dir().join(format!("loadgen-slow-{}", std::process::id()));
        let path = dir.join("slow-0.tsv");
        let mut r = Recorder::new("chat", Latency::Delivered, Live::new(1), 0);
        r.log_slow(1000, path.clone());
        let before = monotonic_ns();
        r.latency(Latency::Delivered, 999);
        r.latency(Latency::Delivered, 2500);
        r.latency(Latency::Ack, 1000);
        r.latency(Latency::SendLag, 5000);
        let after = monotonic_ns();
        r.finish(1.0);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect())
            .collect();
        assert_eq!(rows.len(), 2, "only ✓ and delivery at or past 1 ms: {text}");
        assert_eq!((rows[0][2], rows[0][3]), ("2500", "send_to_delivered"));
        assert_eq!((rows[1][2], rows[1][3]), ("1000", "send_to_ack"));
        let sent: u64 = rows[0][0].parse().unwrap();
        let answered: u64 = rows[0][1].parse().unwrap();
        assert_eq!(answered - sent, 2_500_000);
        assert!(
            before - 2_500_000 <= sent && answered <= after,
            "{before} {sent} {after}"
        );
    }

    #[test]
    fn counts_land_in_totals_series_and_the_live_slot() {
        let live = Live::new(2);
        let mut r = Recorder::new("chat", Latency::Delivered, live.clone(), 1);
        r.add(Counter::Delivered, 3);
        r.add(Counter::Lost, 1);
        r.latency(Latency::Delivered, 250);
        r.latency(Latency::Ack, 100);
        assert_eq!(live.sum(|s| s.delivered.load(Ordering::Relaxed)), 3);
        let report = r.finish(1.0);
        assert_eq!(report.count(Counter::Delivered), 3);
        assert_eq!(report.count(Counter::Lost), 1);
        let seconds: u64 = report
            .series
            .values()
            .map(|s| s.counts[Counter::Delivered as usize])
            .sum();
        assert_eq!(seconds, 3);
        let in_series: u64 = report.series.values().map(|s| s.latency.len()).sum();
        assert_eq!(in_series, 1, "only the main latency goes in the series");
    }
}
