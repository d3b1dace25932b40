//! The peers comparison's results (`benchmarks/peers/run`): each run's
//! JSON, from `loadgen` (the gateway; `docs/loadgen-report.md`) or from
//! `peer-driver` (core NATS, MQTT), read into one [`RunResult`], and the
//! Markdown table of issue #17 made from them, with the gateway's figures
//! as ratios to each peer's from the same sitting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One run of one system.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// `gateway`, `nats` or `mqtt`.
    pub system: String,
    /// The offered rate (open loop), or `None` (closed loop).
    pub rate: Option<u64>,
    /// Messages delivered per second of sending.
    pub delivered_per_s: f64,
    /// send→delivered percentiles, µs: p50, p99, p99.9.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub p999_us: u64,
    /// Lost + duplicated + reordered (must be 0).
    pub faults: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// The server's CPU time during the run, µs (from the script).
    pub server_cpu_us: u64,
    /// The load generator's CPU time (`loadgen` or `peer-driver`), µs, if
    /// the script measured it: it shares the machine's cores with the
    /// server, so what it spends is taken from the server's headroom.
    pub client_cpu_us: Option<u64>,
    /// TCP segments sent on the machine during the run (`OutSegs` of
    /// `/proc/net/snmp`), if the script counted them: on loopback each is
    /// one trip through the kernel's TCP stack for a sender and a receiver,
    /// the bulk of both processes' kernel time.
    pub tcp_segments: Option<u64>,
}

impl RunResult {
    /// Server CPU-µs per delivered message.
    pub fn cpu_us_per_message(&self) -> f64 {
        self.server_cpu_us as f64 / self.delivered.max(1) as f64
    }

    /// TCP segments per delivered message, if counted.
    pub fn tcp_segments_per_message(&self) -> Option<f64> {
        self.tcp_segments
            .map(|n| n as f64 / self.delivered.max(1) as f64)
    }

    /// Load generator CPU-µs per delivered message, if measured.
    pub fn client_cpu_us_per_message(&self) -> Option<f64> {
        self.client_cpu_us
            .map(|us| us as f64 / self.delivered.max(1) as f64)
    }
}

fn u(v: &serde_json::Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

/// One line of `runs.tsv`, as `benchmarks/peers/run` writes it: kind,
/// result file, offered rate (`-`: closed loop or none), server CPU-µs,
/// then, where measured, the load generator's CPU-µs and the TCP
/// segments sent during the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLine<'a> {
    /// `loadgen`, `driver`, `loadgen-idle`, `driver-kill`, ...
    pub kind: &'a str,
    /// The result file, relative to the results folder.
    pub file: &'a str,
    /// The offered rate, `None` for `-`.
    pub rate: Option<u64>,
    /// The server's CPU time, µs.
    pub cpu: u64,
    /// The load generator's CPU time, µs.
    pub client: Option<u64>,
    /// TCP segments sent on the machine during the run.
    pub segments: Option<u64>,
}

impl<'a> RunLine<'a> {
    /// Reads a line of four to six tab-separated fields.
    pub fn parse(line: &'a str) -> Result<Self, String> {
        let fields: Vec<&str> = line.split('\t').collect();
        let [kind, file, rate, cpu, ..] = fields[..] else {
            return Err(format!("runs.tsv: fewer than four fields: {line}"));
        };
        if fields.len() > 6 {
            return Err(format!("runs.tsv: more than six fields: {line}"));
        }
        let number = |f: &str, what: &str| -> Result<u64, String> {
            f.parse()
                .map_err(|_| format!("runs.tsv: {what} {f:?}: {line}"))
        };
        let rate = match rate {
            "-" => None,
            r => Some(number(r, "rate")?),
        };
        let optional = |i: usize, what: &str| fields.get(i).map(|f| number(f, what)).transpose();
        Ok(Self {
            kind,
            file,
            rate,
            cpu: number(cpu, "server CPU µs")?,
            client: optional(4, "load generator CPU µs")?,
            segments: optional(5, "TCP segments")?,
        })
    }
}

/// A `loadgen` `report.json` (schema `loadgen-report/1`) of a `chat` run.
pub fn from_loadgen(
    json: &str,
    rate: Option<u64>,
    server_cpu_us: u64,
) -> Result<RunResult, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if v.get("schema").and_then(|s| s.as_str()) != Some("loadgen-report/1") {
        return Err("not a loadgen-report/1".into());
    }
    let delivered = u(&v, &["counters", "delivered"]).unwrap_or(0);
    let send_s = v
        .get("send_s")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let lat = |p: &str| u(&v, &["latency_us", "send_to_delivered", p]).unwrap_or(0);
    let fault = |k: &str| u(&v, &["counters", k]).unwrap_or(0);
    Ok(RunResult {
        system: "gateway".into(),
        rate,
        delivered_per_s: if send_s > 0.0 {
            delivered as f64 / send_s
        } else {
            0.0
        },
        p50_us: lat("p50"),
        p99_us: lat("p99"),
        p999_us: lat("p999"),
        faults: fault("lost") + fault("duplicated") + fault("reordered"),
        delivered,
        server_cpu_us,
        client_cpu_us: None,
        tcp_segments: None,
    })
}

/// Server bytes per idle connection from a `loadgen idle` `report.json`
/// (`extra.gateway_bytes_per_conn`).
pub fn idle_from_loadgen(json: &str) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    v.pointer("/extra/gateway_bytes_per_conn")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| "no extra.gateway_bytes_per_conn (was --gateway-pid given?)".into())
}

/// Server bytes per idle connection from a `peer-driver --idle-conns`
/// line: (system, bytes).
pub fn idle_from_driver(json: &str) -> Result<(String, f64), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let system = v
        .get("system")
        .and_then(|s| s.as_str())
        .ok_or("no system")?;
    let bytes = v
        .get("bytes_per_conn")
        .and_then(serde_json::Value::as_f64)
        .ok_or("no bytes_per_conn")?;
    Ok((system.to_owned(), bytes))
}

/// A `peer-driver` result line.
pub fn from_driver(json: &str, server_cpu_us: u64) -> Result<RunResult, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let system = v
        .get("system")
        .and_then(|s| s.as_str())
        .ok_or("no system")?
        .to_owned();
    let lat = |p: &str| u(&v, &["send_to_delivered_us", p]).unwrap_or(0);
    let count = |k: &str| u(&v, &[k]).unwrap_or(0);
    Ok(RunResult {
        system,
        rate: u(&v, &["rate"]),
        delivered_per_s: v
            .get("delivered_per_s")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
        p50_us: lat("p50"),
        p99_us: lat("p99"),
        p999_us: lat("p999"),
        faults: count("lost") + count("duplicated") + count("reordered"),
        delivered: count("delivered"),
        server_cpu_us,
        client_cpu_us: None,
        tcp_segments: None,
    })
}

/// The kill -9 check of one system: acknowledged messages for offline
/// receivers, a SIGKILL of the server, a restart, and what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survival {
    /// Messages sent to the offline receivers.
    pub sent: u64,
    /// Of those, acknowledged by the server (core NATS acknowledges none).
    pub acked: u64,
    /// Distinct messages that reached the receivers after the restart.
    pub arrived: u64,
}

impl Survival {
    /// The table's cell: what arrived of what was acknowledged.
    fn cell(&self) -> String {
        if self.acked == 0 {
            format!("no acks; {} of {} sent arrived", self.arrived, self.sent)
        } else {
            format!("{} of {} acked arrived", self.arrived, self.acked)
        }
    }
}

/// The kill -9 check from a `loadgen offline --pause-before-storm`
/// `report.json`.
pub fn survival_from_loadgen(json: &str) -> Result<Survival, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if v.get("scenario").and_then(|s| s.as_str()) != Some("offline") {
        return Err("not a loadgen offline report".into());
    }
    let count = |k: &str| u(&v, &["counters", k]).unwrap_or(0);
    Ok(Survival {
        sent: count("sent"),
        acked: count("acked"),
        arrived: count("delivered"),
    })
}

/// The kill -9 check from `peer-driver --survive fill` and `drain` lines.
pub fn survival_from_driver(fill: &str, drain: &str) -> Result<(String, Survival), String> {
    let fill: serde_json::Value = serde_json::from_str(fill).map_err(|e| e.to_string())?;
    let drain: serde_json::Value = serde_json::from_str(drain).map_err(|e| e.to_string())?;
    let phase = |v: &serde_json::Value| v.get("phase").and_then(|p| p.as_str()).map(str::to_owned);
    if phase(&fill).as_deref() != Some("fill") || phase(&drain).as_deref() != Some("drain") {
        return Err("expected a fill line and a drain line".into());
    }
    let system = fill
        .get("system")
        .and_then(|s| s.as_str())
        .ok_or("no system")?;
    let survival = Survival {
        sent: u(&fill, &["sent"]).ok_or("no sent")?,
        acked: u(&fill, &["acked"]).ok_or("no acked")?,
        arrived: u(&drain, &["arrived"]).ok_or("no arrived")?,
    };
    Ok((system.to_owned(), survival))
}

/// What a system has besides its runs: memory per idle connection and
/// the kill -9 check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Extra {
    /// Server bytes per idle connection.
    pub idle_bytes: Option<f64>,
    /// The kill -9 check.
    pub survival: Option<Survival>,
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The median of `values` (the lower middle for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get((values.len().max(1) - 1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// The open-loop runs collapsed to one per system and rate: each
/// percentile the median over that rate's runs (this machine's runs
/// differ from minute to minute, so the table quotes medians), counts and
/// CPU time summed. Closed-loop runs are left out.
pub fn open_medians(results: &[RunResult]) -> Vec<RunResult> {
    let mut by: BTreeMap<(&str, u64), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        if let Some(rate) = r.rate {
            by.entry((r.system.as_str(), rate)).or_default().push(r);
        }
    }
    // The lower middle, as `median` takes it.
    let mid = |runs: &[&RunResult], f: fn(&RunResult) -> u64| {
        let mut v: Vec<u64> = runs.iter().map(|r| f(r)).collect();
        v.sort_unstable();
        v[(v.len() - 1) / 2]
    };
    by.into_iter()
        .map(|((system, rate), runs)| RunResult {
            system: system.to_owned(),
            rate: Some(rate),
            delivered_per_s: median(runs.iter().map(|r| r.delivered_per_s).collect()),
            p50_us: mid(&runs, |r| r.p50_us),
            p99_us: mid(&runs, |r| r.p99_us),
            p999_us: mid(&runs, |r| r.p999_us),
            faults: runs.iter().map(|r| r.faults).sum(),
            delivered: runs.iter().map(|r| r.delivered).sum(),
            server_cpu_us: runs.iter().map(|r| r.server_cpu_us).sum(),
            client_cpu_us: runs.iter().map(|r| r.client_cpu_us).sum(),
            tcp_segments: runs.iter().map(|r| r.tcp_segments).sum(),
        })
        .collect()
}

/// The Markdown table: per system the closed-loop rate (median of its
/// runs, each run in brackets), then p50/p99/p99.9 at each open-loop rate
/// (medians of its runs, [`open_medians`]), CPU-µs per delivered message
/// (median over every run), the load generator's CPU-µs per delivered
/// message and the TCP segments per delivered message (each the median
/// over the runs that measured it), server memory per idle connection and
/// the
/// kill -9 check (`extra`, by system); then the gateway's ratios to each
/// peer, and each open-loop run's p99 where a rate had more than one.
pub fn table(results: &[RunResult], extra: &BTreeMap<String, Extra>) -> String {
    let mut systems: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        systems.entry(r.system.as_str()).or_default().push(r);
    }
    let medians = open_medians(results);
    let mut open: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in &medians {
        open.entry(r.system.as_str()).or_default().push(r);
    }
    let mut rates: Vec<u64> = results.iter().filter_map(|r| r.rate).collect();
    rates.sort_unstable();
    rates.dedup();
    let mut out = String::from("| system | closed loop msgs/s |");
    for rate in &rates {
        let _ = write!(out, " p50 / p99 / p99.9 ms at {rate}/s |");
    }
    out.push_str(
        " server CPU-µs per message | load generator CPU-µs per message | TCP segments per message | server bytes per idle connection | kill -9 | faults |\n|---|---|",
    );
    out.push_str(&"---|".repeat(rates.len() + 6));
    out.push('\n');
    for (system, runs) in &systems {
        let closed: Vec<f64> = runs
            .iter()
            .filter(|r| r.rate.is_none())
            .map(|r| r.delivered_per_s)
            .collect();
        let each: Vec<String> = closed.iter().map(|c| format!("{c:.0}")).collect();
        let _ = write!(
            out,
            "| {system} | {:.0} ({}) |",
            median(closed.clone()),
            each.join(", ")
        );
        let open_runs = open.get(system).map_or(&[][..], Vec::as_slice);
        for rate in &rates {
            match open_runs.iter().find(|r| r.rate == Some(*rate)) {
                Some(r) => {
                    let _ = write!(
                        out,
                        " {} / {} / {} |",
                        ms(r.p50_us),
                        ms(r.p99_us),
                        ms(r.p999_us)
                    );
                }
                None => out.push_str(" — |"),
            }
        }
        let cpu = median(runs.iter().map(|r| r.cpu_us_per_message()).collect());
        let client = median_cell(runs, RunResult::client_cpu_us_per_message, 1);
        let segments = median_cell(runs, RunResult::tcp_segments_per_message, 2);
        let faults: u64 = runs.iter().map(|r| r.faults).sum();
        let extra = extra.get(*system).copied().unwrap_or_default();
        let idle = extra
            .idle_bytes
            .map_or("—".to_owned(), |b| format!("{b:.0}"));
        let kill = extra.survival.map_or("—".to_owned(), |s| s.cell());
        let _ = writeln!(
            out,
            " {cpu:.1} | {client} | {segments} | {idle} | {kill} | {faults} |"
        );
    }
    out.push_str(&ratios(&systems, &open, &rates));
    out.push_str(&each_p99(&systems, &rates));
    out
}

/// The median of `f` over the runs that have it, to `decimals` places,
/// or "—" if none has.
fn median_cell(runs: &[&RunResult], f: fn(&RunResult) -> Option<f64>, decimals: usize) -> String {
    let values: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    match values.is_empty() {
        true => "—".to_owned(),
        false => format!("{:.decimals$}", median(values)),
    }
}

/// "Open-loop p99 of each run" lines, if some rate had several runs.
fn each_p99(systems: &BTreeMap<&str, Vec<&RunResult>>, rates: &[u64]) -> String {
    let several = systems.values().any(|runs| {
        rates
            .iter()
            .any(|rate| runs.iter().filter(|r| r.rate == Some(*rate)).count() > 1)
    });
    if !several {
        return String::new();
    }
    let mut out = String::from("\nOpen-loop p99 of each run, ms, in the order run:\n\n");
    for (system, runs) in systems {
        let mut parts = Vec::new();
        for rate in rates {
            let each: Vec<String> = runs
                .iter()
                .filter(|r| r.rate == Some(*rate))
                .map(|r| ms(r.p99_us))
                .collect();
            if !each.is_empty() {
                parts.push(format!("{rate}/s {}", each.join(", ")));
            }
        }
        let _ = writeln!(out, "- {system}: {}", parts.join("; "));
    }
    out
}

/// Lines of "gateway ÷ peer" for the closed-loop rate and each (median)
/// p99, `open` holding the open-loop medians.
fn ratios(
    systems: &BTreeMap<&str, Vec<&RunResult>>,
    open: &BTreeMap<&str, Vec<&RunResult>>,
    rates: &[u64],
) -> String {
    let Some(gateway) = systems.get("gateway") else {
        return String::new();
    };
    let closed = |runs: &[&RunResult]| {
        median(
            runs.iter()
                .filter(|r| r.rate.is_none())
                .map(|r| r.delivered_per_s)
                .collect(),
        )
    };
    let p99 = |runs: &[&RunResult], rate: u64| {
        runs.iter().find(|r| r.rate == Some(rate)).map(|r| r.p99_us)
    };
    let mut out = String::from(
        "\nGateway ÷ peer, same sitting (closed-loop rate: higher is better; p99: lower is better):\n\n",
    );
    for (peer, runs) in systems.iter().filter(|(s, _)| **s != "gateway") {
        let _ = write!(
            out,
            "- {peer}: closed loop {:.2}×",
            closed(gateway) / closed(runs).max(1.0)
        );
        let (g_open, p_open) = (open.get("gateway"), open.get(peer));
        for rate in rates {
            let g = g_open.and_then(|o| p99(o, *rate));
            let p = p_open.and_then(|o| p99(o, *rate));
            if let (Some(g), Some(p)) = (g, p) {
                let _ = write!(out, "; p99 at {rate}/s {:.2}×", g as f64 / p.max(1) as f64);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOADGEN: &str = r#"{"schema": "loadgen-report/1", "scenario": "chat", "send_s": 10.0,
        "counters": {"sent": 1000, "acked": 1000, "delivered": 1000},
        "latency_us": {"send_to_delivered": {"count": 900, "p50": 1500, "p90": 2000, "p99": 9000, "p999": 12000, "max": 13000}},
        "verdict": {"ok": true, "failures": []}}"#;

    const DRIVER: &str = r#"{"system": "nats", "pairs": 500, "rate": 5000, "window": 32, "duration_s": 15,
        "sent": 75000, "acked": 75000, "delivered": 74999, "lost": 1, "duplicated": 0, "reordered": 2,
        "delivered_per_s": 4999.9, "send_to_delivered_us": {"p50": 800, "p99": 3000, "p999": 5000, "max": 7000, "count": 70000}}"#;

    #[test]
    fn a_loadgen_report_is_read() {
        let r = from_loadgen(LOADGEN, Some(100), 50_000).unwrap();
        assert_eq!(r.system, "gateway");
        assert_eq!((r.p50_us, r.p99_us, r.p999_us), (1500, 9000, 12000));
        assert_eq!(r.delivered_per_s, 100.0);
        assert_eq!((r.faults, r.cpu_us_per_message()), (0, 50.0));
        assert!(from_loadgen(r#"{"schema": "other"}"#, None, 0).is_err());
        assert!(from_loadgen("not json", None, 0).is_err());
    }

    #[test]
    fn idle_figures_are_read_from_both_tools() {
        let loadgen =
            r#"{"schema": "loadgen-report/1", "extra": {"gateway_bytes_per_conn": 9900.5}}"#;
        assert_eq!(idle_from_loadgen(loadgen), Ok(9900.5));
        assert!(idle_from_loadgen(r#"{"extra": {}}"#).is_err());
        let driver = r#"{"system": "mqtt", "idle_conns": 5000, "bytes_per_conn": 18955.5}"#;
        assert_eq!(idle_from_driver(driver), Ok(("mqtt".to_owned(), 18955.5)));
    }

    #[test]
    fn the_kill_check_is_read_from_both_tools() {
        let loadgen = r#"{"schema": "loadgen-report/1", "scenario": "offline",
            "counters": {"sent": 1000, "acked": 990, "delivered": 985, "lost": 5}}"#;
        let s = survival_from_loadgen(loadgen).unwrap();
        assert_eq!((s.sent, s.acked, s.arrived), (1000, 990, 985));
        assert_eq!(s.cell(), "985 of 990 acked arrived");
        assert!(survival_from_loadgen(LOADGEN).is_err(), "a chat report");
        let fill = r#"{"system": "mqtt", "phase": "fill", "receivers": 10, "per_receiver": 10, "sent": 100, "acked": 100}"#;
        let drain = r#"{"system": "mqtt", "phase": "drain", "receivers": 10, "arrived": 0, "duplicated": 0, "reordered": 0}"#;
        let (system, s) = survival_from_driver(fill, drain).unwrap();
        assert_eq!((system.as_str(), s.acked, s.arrived), ("mqtt", 100, 0));
        assert!(survival_from_driver(drain, fill).is_err(), "phases swapped");
    }

    #[test]
    fn a_driver_line_is_read_with_its_faults() {
        let r = from_driver(DRIVER, 0).unwrap();
        assert_eq!((r.system.as_str(), r.rate), ("nats", Some(5000)));
        assert_eq!((r.p99_us, r.faults, r.delivered), (3000, 3, 74999));
        assert!(from_driver("{}", 0).is_err(), "a line without its system");
    }

    #[test]
    fn a_runs_line_has_four_to_six_fields() {
        let line = RunLine::parse("driver\tnats-open-2000-1.json\t2000\t5570000\t7510000\t542833");
        assert_eq!(
            line,
            Ok(RunLine {
                kind: "driver",
                file: "nats-open-2000-1.json",
                rate: Some(2000),
                cpu: 5_570_000,
                client: Some(7_510_000),
                segments: Some(542_833),
            })
        );
        let old = RunLine::parse("loadgen\tgateway-closed-1/report.json\t-\t13910000\t10180000");
        let old = old.expect("five fields, from before segments were counted");
        assert_eq!(
            (old.rate, old.client, old.segments),
            (None, Some(10_180_000), None)
        );
        let idle = RunLine::parse("loadgen-idle\tgateway-idle/report.json\t-\t0").expect("four");
        assert_eq!(
            (idle.kind, idle.cpu, idle.client),
            ("loadgen-idle", 0, None)
        );
        for bad in [
            "loadgen\tx.json\t-",
            "loadgen\tx.json\t-\t1\t2\t3\t4",
            "loadgen\tx.json\tfast\t1",
            "loadgen\tx.json\t-\t1\t2\tmany",
        ] {
            assert!(RunLine::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_has_a_row_per_system_and_the_gateways_ratios() {
        let run = |system: &str, rate, per_s, p99_us| RunResult {
            system: system.into(),
            rate,
            delivered_per_s: per_s,
            p50_us: 1000,
            p99_us,
            p999_us: 2 * p99_us,
            faults: 0,
            delivered: 1000,
            server_cpu_us: 20_000,
            client_cpu_us: None,
            tcp_segments: None,
        };
        let mut results = [
            run("gateway", None, 200_000.0, 0),
            run("gateway", None, 180_000.0, 0),
            run("gateway", Some(2000), 2000.0, 4000),
            run("nats", None, 400_000.0, 0),
            run("nats", Some(2000), 2000.0, 2000),
        ];
        // The peer's driver measured (30 and 90 µs per message), loadgen not.
        results[3].client_cpu_us = Some(30_000);
        results[4].client_cpu_us = Some(90_000);
        // And its TCP segments (2.5 and 1.5 per message), loadgen's not.
        results[3].tcp_segments = Some(2_500);
        results[4].tcp_segments = Some(1_500);
        let nats = Extra {
            idle_bytes: Some(34_000.0),
            survival: Some(Survival {
                sent: 100,
                acked: 0,
                arrived: 0,
            }),
        };
        let gateway = Extra {
            idle_bytes: None,
            survival: Some(Survival {
                sent: 100,
                acked: 100,
                arrived: 100,
            }),
        };
        let extra = BTreeMap::from([("nats".to_owned(), nats), ("gateway".to_owned(), gateway)]);
        let t = table(&results, &extra);
        assert!(t.contains("| gateway | 180000 (200000, 180000) |"), "{t}");
        assert!(t.contains(" 1.0 / 4.0 / 8.0 |"), "{t}");
        assert!(
            t.contains(
                "| nats | 400000 (400000) | 1.0 / 2.0 / 4.0 | 20.0 | 30.0 | 1.50 | 34000 | no acks; 0 of 100 sent arrived | 0 |"
            ),
            "{t}"
        );
        assert!(
            t.contains(" 20.0 | — | — | — | 100 of 100 acked arrived | 0 |"),
            "no load generator CPU, no idle figure for the gateway: {t}"
        );
        assert!(
            t.contains("- nats: closed loop 0.45×; p99 at 2000/s 2.00×"),
            "{t}"
        );
        assert!(!t.contains("each run"), "one run per rate: no list: {t}");
    }

    #[test]
    fn several_open_loop_runs_read_as_their_medians_and_are_listed() {
        let run = |system: &str, p50_us, p99_us| RunResult {
            system: system.into(),
            rate: Some(5000),
            delivered_per_s: 5000.0,
            p50_us,
            p99_us,
            p999_us: 3 * p99_us,
            faults: 1,
            delivered: 1000,
            server_cpu_us: 10_000,
            client_cpu_us: None,
            tcp_segments: None,
        };
        let results = [
            run("gateway", 700, 9000),
            run("nats", 1200, 2000),
            run("gateway", 600, 3000),
            run("nats", 1300, 30_000),
            run("gateway", 800, 4000),
            run("nats", 1100, 2500),
        ];
        let medians = open_medians(&results);
        let gateway = medians.iter().find(|r| r.system == "gateway").unwrap();
        assert_eq!(
            (gateway.p50_us, gateway.p99_us, gateway.p999_us),
            (700, 4000, 12_000)
        );
        assert_eq!((gateway.faults, gateway.delivered), (3, 3000));
        let t = table(&results, &BTreeMap::new());
        assert!(t.contains("| gateway | 0 () | 0.7 / 4.0 / 12.0 |"), "{t}");
        assert!(t.contains("| nats | 0 () | 1.2 / 2.5 / 7.5 |"), "{t}");
        assert!(t.contains("p99 at 5000/s 1.60×"), "median over median: {t}");
        assert!(t.contains("- gateway: 5000/s 9.0, 3.0, 4.0"), "{t}");
        assert!(t.contains("- nats: 5000/s 2.0, 30.0, 2.5"), "{t}");
    }
}
