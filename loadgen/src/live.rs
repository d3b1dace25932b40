//! Recording while a run goes: each worker thread owns a [`Recorder`]
//! (counters, histograms, the per-second series, no sharing) and publishes
//! a handful of totals to its own cache line in [`Live`], which the
//! progress line (`indicatif`) reads twice a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::epoch_ns;
use crate::report::{Counter, Latency, Report, Second};

/// The current Unix second by the kernel's coarse clock: read in the vDSO
/// without the time-stamp counter (it moves once per tick), which is all a
/// per-second bucket needs, at a few ns for each count and latency.
fn coarse_epoch_s() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and the clock id is a
    // constant every Linux since 2.6.32 knows.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &raw mut ts) };
    assert_eq!(rc, 0, "CLOCK_REALTIME_COARSE");
    u64::try_from(ts.tv_sec).expect("after 1970")
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

/// One worker's recording.
pub struct Recorder {
    report: Report,
    live: Arc<Live>,
    index: usize,
    second: u64,
    current: Second,
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
        }
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
