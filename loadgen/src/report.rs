//! What a run measured, in one mergeable shape: counters, HDR latency
//! histograms and a per-second series. Workers of one process, worker
//! processes (`--procs`) and runs on several machines (`loadgen merge`) all
//! combine through [`Report::merge`]. Also writes the outputs: the human
//! table, `report.json` (schema in `docs/loadgen-report.md`), one `.hgrm`
//! percentile file per latency and the SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// The JSON schema name and version this build writes and reads.
pub const SCHEMA: &str = "loadgen-report/1";

/// Latencies are recorded in µs, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Counters every scenario shares (absent ones stay zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// Messages handed to the connection.
    Sent,
    /// ✓ received.
    Acked,
    /// Messages received (duplicates included).
    Delivered,
    /// ✓✓ receipts (one per message id).
    Receipts,
    /// ✓'d messages whose ✓✓ had not come by the end.
    ReceiptsMissing,
    /// ✓'d messages never received.
    Lost,
    /// Messages received more than once.
    Duplicated,
    /// Messages received after a later one from the same sender.
    Reordered,
    /// Sends never answered with ✓ by the end (not lost: never promised).
    Unacked,
    /// Sends the server refused (a rate limit, say): never promised.
    Refused,
    /// Messages from another run found in a queue (ignored).
    Stale,
    /// Authenticated connections opened.
    Connects,
    /// Connection attempts that failed.
    ConnectErrors,
    /// Connections re-established after the server went away.
    Reconnects,
}

impl Counter {
    /// Every counter, in report order.
    pub const ALL: [Counter; 14] = [
        Counter::Sent,
        Counter::Acked,
        Counter::Delivered,
        Counter::Receipts,
        Counter::ReceiptsMissing,
        Counter::Lost,
        Counter::Duplicated,
        Counter::Reordered,
        Counter::Unacked,
        Counter::Refused,
        Counter::Stale,
        Counter::Connects,
        Counter::ConnectErrors,
        Counter::Reconnects,
    ];

    /// Its JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Sent => "sent",
            Counter::Acked => "acked",
            Counter::Delivered => "delivered",
            Counter::Receipts => "receipts",
            Counter::ReceiptsMissing => "receipts_missing",
            Counter::Lost => "lost",
            Counter::Duplicated => "duplicated",
            Counter::Reordered => "reordered",
            Counter::Unacked => "unacked",
            Counter::Refused => "refused",
            Counter::Stale => "stale",
            Counter::Connects => "connects",
            Counter::ConnectErrors => "connect_errors",
            Counter::Reconnects => "reconnects",
        }
    }
}

/// Latencies measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Send (scheduled time in open loop) → ✓.
    Ack,
    /// Send → delivered to the recipient device.
    Delivered,
    /// Send → ✓✓ back at the sender.
    Receipt,
    /// TCP connect → `Welcome` (TLS handshake and authentication).
    Connect,
    /// Reconnect storm start → this device's whole backlog read.
    Backlog,
    /// Send → delivered to the last online member of the group.
    LastMember,
    /// Open loop: a send's scheduled time → when the sender got to it
    /// (queued it on its connection). The load generator's own lateness:
    /// when this grows, the figures above measure loadgen, not the server.
    SendLag,
}

impl Latency {
    /// Every latency, in report order.
    pub const ALL: [Latency; 7] = [
        Latency::Ack,
        Latency::Delivered,
        Latency::Receipt,
        Latency::Connect,
        Latency::Backlog,
        Latency::LastMember,
        Latency::SendLag,
    ];

    /// Its JSON name (and `.hgrm` file name).
    pub fn name(self) -> &'static str {
        match self {
            Latency::Ack => "send_to_ack",
            Latency::Delivered => "send_to_delivered",
            Latency::Receipt => "send_to_receipt",
            Latency::Connect => "connect",
            Latency::Backlog => "storm_to_backlog_read",
            Latency::LastMember => "send_to_last_member",
            Latency::SendLag => "scheduled_to_sent",
        }
    }
}

/// A histogram as JSON: headline percentiles for people, the whole
/// histogram (HDR V2 + deflate, base64) for merging.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistJson {
    /// Values recorded.
    pub count: u64,
    /// µs.
    pub p50: u64,
    /// µs.
    pub p90: u64,
    /// µs.
    pub p99: u64,
    /// µs.
    pub p999: u64,
    /// µs.
    pub max: u64,
    /// The histogram, for merging.
    pub hdr: String,
}

impl HistJson {
    fn of(h: &Histogram<u64>) -> Self {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(h, &mut bytes)
            .expect("serialize to memory");
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            hdr: STANDARD.encode(bytes),
        }
    }

    fn histogram(&self) -> Result<Histogram<u64>, String> {
        let bytes = STANDARD.decode(&self.hdr).map_err(|e| e.to_string())?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{e:?}"))?;
        let mut out = new_histogram();
        out.add(&h).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// One second of a run.
#[derive(Debug, Clone)]
pub struct Second {
    /// Counters during this second (only the throughput ones are kept).
    pub counts: [u64; Counter::ALL.len()],
    /// The scenario's main latency, for values recorded this second.
    pub latency: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Self {
            counts: [0; Counter::ALL.len()],
            latency: new_histogram(),
        }
    }
}

/// One second as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondJson {
    /// Wall-clock second (Unix time) it covers.
    pub unix_s: u64,
    /// Throughput counters this second.
    pub counts: BTreeMap<String, u64>,
    /// The main latency this second.
    pub latency_us: HistJson,
}

/// A run's results, mergeable.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The command line(s) that produced it.
    pub commands: Vec<Vec<String>>,
    /// Worker threads in all processes.
    pub workers: u64,
    /// Earliest start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Longest wall time of any part, seconds.
    pub wall_s: f64,
    /// How long senders were sending (for rates), seconds.
    pub send_s: f64,
    /// Totals.
    pub counters: [u64; Counter::ALL.len()],
    /// Latency histograms, µs.
    pub latency: Vec<Histogram<u64>>,
    /// Which latency the series and plot follow.
    pub main_latency: Latency,
    /// Per second, by Unix second.
    pub series: BTreeMap<u64, Second>,
    /// Scenario-specific figures (e.g. `storm_s`, `gateway_bytes_per_conn`).
    pub extra: BTreeMap<String, f64>,
}

/// [`Report`] as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportJson {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Scenario name.
    pub scenario: String,
    /// Command lines.
    pub commands: Vec<Vec<String>>,
    /// Worker threads in all processes.
    pub workers: u64,
    /// ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Seconds.
    pub wall_s: f64,
    /// Seconds senders sent.
    pub send_s: f64,
    /// Totals by name.
    pub counters: BTreeMap<String, u64>,
    /// Histograms by name, µs.
    pub latency_us: BTreeMap<String, HistJson>,
    /// Name of the latency the series follows.
    pub series_latency: String,
    /// Per second.
    pub series: Vec<SecondJson>,
    /// Scenario-specific figures.
    pub extra: BTreeMap<String, f64>,
    /// Whether verification passed, and why not.
    pub verdict: Verdict,
}

/// Pass or fail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// No message ✓'d and lost, duplicated or reordered.
    pub ok: bool,
    /// What failed.
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str, main_latency: Latency) -> Self {
        Self {
            scenario: scenario.to_owned(),
            commands: vec![std::env::args().collect()],
            workers: 1,
            started_unix_ms: 0,
            wall_s: 0.0,
            send_s: 0.0,
            counters: [0; Counter::ALL.len()],
            latency: Latency::ALL.iter().map(|_| new_histogram()).collect(),
            main_latency,
            series: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// A counter's total.
    pub fn count(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// A latency histogram.
    pub fn hist(&self, l: Latency) -> &Histogram<u64> {
        &self.latency[l as usize]
    }

    /// Adds another part of the same run. Extras that are rates or sizes
    /// are the caller's to combine; here the larger value wins.
    pub fn merge(&mut self, o: &Report) {
        for c in &o.commands {
            if !self.commands.contains(c) {
                self.commands.push(c.clone());
            }
        }
        self.workers += o.workers;
        self.started_unix_ms = match (self.started_unix_ms, o.started_unix_ms) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.wall_s = self.wall_s.max(o.wall_s);
        self.send_s = self.send_s.max(o.send_s);
        for (a, b) in self.counters.iter_mut().zip(o.counters) {
            *a += b;
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            a.add(b).expect("same bounds");
        }
        for (t, s) in &o.series {
            let mine = self.series.entry(*t).or_default();
            for (a, b) in mine.counts.iter_mut().zip(s.counts) {
                *a += b;
            }
            mine.latency.add(&s.latency).expect("same bounds");
        }
        for (k, v) in &o.extra {
            let e = self.extra.entry(k.clone()).or_insert(*v);
            *e = e.max(*v);
        }
    }

    /// Lost, duplicated, reordered: each must be zero.
    pub fn verdict(&self) -> Verdict {
        let mut failures: Vec<String> = [Counter::Lost, Counter::Duplicated, Counter::Reordered]
            .into_iter()
            .filter(|c| self.count(*c) > 0)
            .map(|c| format!("{} {}", self.count(c), c.name()))
            .collect();
        // A messaging run that sent nothing verified nothing.
        let sends = matches!(self.scenario.as_str(), "chat" | "group" | "offline");
        if sends && self.count(Counter::Sent) == 0 {
            failures.push("nothing was sent".into());
        }
        Verdict {
            ok: failures.is_empty(),
            failures,
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> ReportJson {
        let names = |counts: &[u64]| -> BTreeMap<String, u64> {
            Counter::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| (c.name().to_owned(), *n))
                .collect()
        };
        ReportJson {
            schema: SCHEMA.to_owned(),
            scenario: self.scenario.clone(),
            commands: self.commands.clone(),
            workers: self.workers,
            started_unix_ms: self.started_unix_ms,
            wall_s: self.wall_s,
            send_s: self.send_s,
            counters: names(&self.counters),
            latency_us: Latency::ALL
                .iter()
                .filter(|l| !self.hist(**l).is_empty())
                .map(|l| (l.name().to_owned(), HistJson::of(self.hist(*l))))
                .collect(),
            series_latency: self.main_latency.name().to_owned(),
            series: self
                .series
                .iter()
                .map(|(t, s)| SecondJson {
                    unix_s: *t,
                    counts: names(&s.counts),
                    latency_us: HistJson::of(&s.latency),
                })
                .collect(),
            extra: self.extra.clone(),
            verdict: self.verdict(),
        }
    }

    /// Back from JSON (what `loadgen merge` reads).
    pub fn from_json(j: &ReportJson) -> Result<Self, String> {
        if j.schema != SCHEMA {
            return Err(format!(
                "schema {:?}, this loadgen reads {SCHEMA:?}",
                j.schema
            ));
        }
        let counter = |m: &BTreeMap<String, u64>| {
            let mut out = [0; Counter::ALL.len()];
            for (i, c) in Counter::ALL.iter().enumerate() {
                out[i] = m.get(c.name()).copied().unwrap_or(0);
            }
            out
        };
        let main_latency = Latency::ALL
            .into_iter()
            .find(|l| l.name() == j.series_latency)
            .ok_or_else(|| format!("unknown series latency {:?}", j.series_latency))?;
        let mut latency = Vec::new();
        for l in Latency::ALL {
            latency.push(match j.latency_us.get(l.name()) {
                Some(h) => h.histogram()?,
                None => new_histogram(),
            });
        }
        let mut series = BTreeMap::new();
        for s in &j.series {
            let second = Second {
                counts: counter(&s.counts),
                latency: s.latency_us.histogram()?,
            };
            series.insert(s.unix_s, second);
        }
        Ok(Self {
            scenario: j.scenario.clone(),
            commands: j.commands.clone(),
            workers: j.workers,
            started_unix_ms: j.started_unix_ms,
            wall_s: j.wall_s,
            send_s: j.send_s,
            counters: counter(&j.counters),
            latency,
            main_latency,
            series,
            extra: j.extra.clone(),
        })
    }

    /// Reads a `report.json`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let j: ReportJson =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_json(&j).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let rate_s = if self.send_s > 0.0 {
            self.send_s
        } else {
            self.wall_s
        };
        let _ = writeln!(
            t,
            "{}: {} worker thread(s), wall {:.1}s",
            self.scenario, self.workers, self.wall_s
        );
        for c in Counter::ALL {
            let n = self.count(c);
            if n > 0 || matches!(c, Counter::Lost | Counter::Duplicated | Counter::Reordered) {
                let per_s = n as f64 / rate_s.max(1e-9);
                let _ = writeln!(t, "  {:<15}{n:>12}  ({per_s:.0}/s)", c.name());
            }
        }
        for l in Latency::ALL {
            let h = self.hist(l);
            if h.is_empty() {
                continue;
            }
            let ms = |v: u64| v as f64 / 1000.0;
            let _ = writeln!(
                t,
                "  {:<18} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                l.name(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max())
            );
        }
        for (k, v) in &self.extra {
            let _ = writeln!(t, "  {k:<18} {v:.2}");
        }
        let v = self.verdict();
        let _ = writeln!(
            t,
            "  verification: lost {} duplicated {} reordered {} → {}",
            self.count(Counter::Lost),
            self.count(Counter::Duplicated),
            self.count(Counter::Reordered),
            if v.ok {
                "PASS".to_owned()
            } else {
                format!("FAIL ({})", v.failures.join(", "))
            }
        );
        t
    }

    /// Writes `report.json`, `<latency>.hgrm` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(&self.to_json()).map_err(io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)?;
        for l in Latency::ALL {
            let h = self.hist(l);
            if !h.is_empty() {
                std::fs::write(dir.join(format!("{}.hgrm", l.name())), hgrm(h))?;
            }
        }
        crate::plot::svg(self, &dir.join("report.svg"))
    }
}

/// The classic HdrHistogram percentile distribution text (values in ms),
/// which HdrHistogram's plotter reads.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(scale: u64) -> Report {
        let mut r = Report::new("chat", Latency::Delivered);
        r.counters[Counter::Sent as usize] = 10 * scale;
        r.counters[Counter::Acked as usize] = 10 * scale;
        r.counters[Counter::Lost as usize] = scale - 1;
        for v in 1..=100 {
            r.latency[Latency::Delivered as usize]
                .record(v * scale)
                .unwrap();
        }
        let s = r.series.entry(1_000 + scale).or_default();
        s.counts[Counter::Delivered as usize] = 5;
        s.latency.record(7).unwrap();
        r.started_unix_ms = 1_000_000 * scale;
        r
    }

    #[test]
    fn json_round_trips_and_merges_like_memory() {
        let (a, b) = (sample(1), sample(2));
        let mut in_memory = a.clone();
        in_memory.merge(&b);
        let text = serde_json::to_string(&a.to_json()).unwrap();
        let mut from_json = Report::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        from_json.merge(&Report::from_json(&b.to_json()).unwrap());
        assert_eq!(from_json.counters, in_memory.counters);
        assert_eq!(from_json.count(Counter::Acked), 30);
        assert_eq!(from_json.started_unix_ms, 1_000_000);
        let h = from_json.hist(Latency::Delivered);
        assert_eq!(h.len(), 200);
        assert_eq!(h.max(), in_memory.hist(Latency::Delivered).max());
        assert_eq!(from_json.series.len(), 2);
        assert_eq!(from_json.workers, 2);
        assert_eq!(from_json.verdict().failures, vec!["1 lost".to_owned()]);
    }

    #[test]
    fn a_messaging_run_that_sent_nothing_fails() {
        let mut r = sample(1);
        assert!(r.verdict().ok, "{:?}", r.verdict().failures);
        r.counters[Counter::Sent as usize] = 0;
        assert_eq!(r.verdict().failures, vec!["nothing was sent".to_owned()]);
        let idle = Report::new("idle", Latency::Connect);
        assert!(idle.verdict().ok, "a connection scenario sends nothing");
    }

    #[test]
    fn another_schema_is_refused() {
        let mut j = sample(1).to_json();
        j.schema = "loadgen-report/0".into();
        assert!(Report::from_json(&j).unwrap_err().contains("schema"));
    }

    #[test]
    fn hgrm_ends_at_the_max() {
        let r = sample(1);
        let text = hgrm(r.hist(Latency::Delivered));
        assert!(text.contains("Total count    =          100"), "{text}");
        assert!(text.contains("#[Max     =        0.100"), "{text}");
    }
}
