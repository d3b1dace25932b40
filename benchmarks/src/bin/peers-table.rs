//! `peers-table DIR`: reads `DIR/runs.tsv` (one line per run, written by
//! `benchmarks/peers/run`: `loadgen|driver|loadgen-idle|driver-idle|
//! loadgen-kill|driver-kill <TAB> result file (driver-kill: the fill's and
//! the drain's, joined by `+`) <TAB> offered rate or - <TAB> server
//! CPU-µs [<TAB> load generator CPU-µs [<TAB> TCP segments sent]]`),
//! prints the
//! comparison's Markdown table and writes it to `DIR/table.md`, with every
//! run in `DIR/results.json` and the open-loop latencies plotted in
//! `DIR/latency.svg` (the median of each rate's runs).

use std::collections::BTreeMap;

use benchmarks::peers::{
    Extra, RunLine, RunResult, from_driver, from_loadgen, idle_from_driver, idle_from_loadgen,
    open_medians, survival_from_driver, survival_from_loadgen, table,
};

fn main() -> Result<(), String> {
    let dir = std::env::args().nth(1).ok_or("usage: peers-table DIR")?;
    let dir = std::path::Path::new(&dir);
    let runs = std::fs::read_to_string(dir.join("runs.tsv")).map_err(|e| e.to_string())?;
    let mut results: Vec<RunResult> = Vec::new();
    let mut extra: BTreeMap<String, Extra> = BTreeMap::new();
    for line in runs.lines().filter(|l| !l.trim().is_empty()) {
        let RunLine {
            kind,
            file,
            rate,
            cpu,
            client,
            segments,
        } = RunLine::parse(line)?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"));
        if kind == "driver-kill" {
            let (fill, drain) = file.split_once('+').ok_or("driver-kill: fill+drain")?;
            let last = |s: String| s.lines().last().unwrap_or("").to_owned();
            let (system, s) = survival_from_driver(&last(read(fill)?), &last(read(drain)?))
                .map_err(|e| format!("{file}: {e}"))?;
            extra.entry(system).or_default().survival = Some(s);
            continue;
        }
        let json = read(file)?;
        let last_line = json.lines().last().unwrap_or("");
        match kind {
            "loadgen-idle" => {
                let bytes = idle_from_loadgen(&json).map_err(|e| format!("{file}: {e}"))?;
                extra.entry("gateway".to_owned()).or_default().idle_bytes = Some(bytes);
                continue;
            }
            "loadgen-kill" => {
                let s = survival_from_loadgen(&json).map_err(|e| format!("{file}: {e}"))?;
                extra.entry("gateway".to_owned()).or_default().survival = Some(s);
                continue;
            }
            "driver-idle" => {
                let (system, bytes) =
                    idle_from_driver(last_line).map_err(|e| format!("{file}: {e}"))?;
                extra.entry(system).or_default().idle_bytes = Some(bytes);
                continue;
            }
            _ => {}
        }
        let mut result = match kind {
            "loadgen" => from_loadgen(&json, rate, cpu),
            "driver" => from_driver(last_line, cpu),
            other => Err(format!("unknown kind {other}")),
        }
        .map_err(|e| format!("{file}: {e}"))?;
        result.client_cpu_us = client;
        result.tcp_segments = segments;
        results.push(result);
    }
    let text = table(&results, &extra);
    std::fs::write(dir.join("table.md"), &text).map_err(|e| e.to_string())?;
    benchmarks::peers_plot::latency_svg(&open_medians(&results), &dir.join("latency.svg"))?;
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "system": r.system, "rate": r.rate, "delivered_per_s": r.delivered_per_s,
                "p50_us": r.p50_us, "p99_us": r.p99_us, "p999_us": r.p999_us,
                "faults": r.faults, "delivered": r.delivered, "server_cpu_us": r.server_cpu_us,
                "client_cpu_us": r.client_cpu_us, "tcp_segments": r.tcp_segments,
            })
        })
        .collect();
    let json = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
    print!("{text}");
    Ok(())
}
