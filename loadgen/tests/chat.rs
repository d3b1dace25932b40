//! A short `loadgen chat` run with verification against a real gateway
//! process (the workspace's own binary, next to loadgen's): every ✓'d
//! message must arrive once and in order, or loadgen exits non-zero.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use testkit::ScratchDir;

/// A gateway process on a free port with its own data directory.
struct Gateway {
    process: std::process::Child,
    listen: String,
    dir: PathBuf,
}

impl Gateway {
    fn start(dir: &Path) -> Self {
        let gateway = loadgen().with_file_name("gateway");
        assert!(
            gateway.exists(),
            "cargo test --workspace builds {}",
            gateway.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut process = Command::new(&gateway)
            .args(["serve", "--shards", "2", "--listen", &listen])
            .args(["--admin-listen", "127.0.0.1:0", "--sends-per-s", "100000"])
            .args(["--abuse-messages-per-recipient-per-s", "0"])
            .args(["--abuse-new-conversations-per-h", "0"])
            // The smallest segments: 1 MiB allocated per shard, not 64.
            .args(["--segment-bytes", "1048576"])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "{line:?}");
        Self {
            process,
            listen,
            dir: dir.to_path_buf(),
        }
    }

    /// `loadgen` against this gateway, with `args` after the common flags.
    fn loadgen(&self, report_dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new(loadgen())
            .args(["--addr", &self.listen, "--quiet", "--data-dir"])
            .arg(&self.dir)
            .arg("--out")
            .arg(report_dir)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A test's data directory (the gateway's, and loadgen's reports under
/// it): removed when the test passes.
fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new_in(env!("CARGO_TARGET_TMPDIR"), &format!("loadgen-{name}"))
}

fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadgen"))
}

/// The table a run printed, once its exit status says it passed.
fn passed(out: &std::process::Output) -> String {
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Open loop: every send's lateness against its schedule is reported
/// (`scheduled_to_sent`), once per send, so a reader can tell the server's
/// latency from the load generator's own; a closed-loop run reports none.
#[test]
fn an_open_loop_run_reports_how_late_each_send_went_out() {
    let dir = scratch("chat-open");
    let gw = Gateway::start(&dir);
    let report_dir = gw.dir.join("report");
    let chat = ["chat", "--pairs", "10", "--duration", "2s", "--rate", "500"];
    let args = [&["--threads", "2"][..], &chat, &["--warmup", "0s"]].concat();
    let out = gw.loadgen(&report_dir, &args);
    drop(gw);
    let table = passed(&out);
    let report = read_json(&report_dir.join("report.json"));
    let sent = report["counters"]["sent"].as_u64().unwrap();
    assert!(sent > 500, "messages flowed: {table}");
    let lag = &report["latency_us"]["scheduled_to_sent"];
    assert_eq!(lag["count"].as_u64(), Some(sent), "{table}");
    assert!(lag["p99"].as_u64().unwrap() >= lag["p50"].as_u64().unwrap());
}

#[test]
fn a_short_verified_chat_run_passes() {
    let dir = scratch("chat");
    let gw = Gateway::start(&dir);
    let loadgen = loadgen();
    let report_dir = dir.join("report");
    let chat = ["chat", "--pairs", "20", "--duration", "2s", "--window", "8"];
    let args = [&["--threads", "2"][..], &chat, &["--warmup", "0s"]].concat();
    let out = gw.loadgen(&report_dir, &args);
    drop(gw);
    let table = passed(&out);
    assert!(
        table.contains("lost 0 duplicated 0 reordered 0 → PASS"),
        "{table}"
    );
    let report = read_json(&report_dir.join("report.json"));
    assert_eq!(report["schema"], "loadgen-report/1");
    assert_eq!(report["verdict"]["ok"], true);
    let counters = &report["counters"];
    let acked = counters["acked"].as_u64().unwrap();
    assert!(acked > 100, "messages flowed: {table}");
    assert_eq!(counters["delivered"].as_u64(), Some(acked), "each once");
    assert_eq!(counters["connects"].as_u64(), Some(40));
    let delivered = &report["latency_us"]["send_to_delivered"];
    assert_eq!(delivered["count"].as_u64(), Some(acked));
    let lag = &report["latency_us"]["scheduled_to_sent"]["count"];
    assert_eq!(lag.as_u64().unwrap_or(0), 0, "closed loop has no schedule");
    assert!(delivered["p99"].as_u64().unwrap() >= delivered["p50"].as_u64().unwrap());
    let per_second: u64 = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["counts"]["delivered"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per_second, acked, "the series adds up to the total");
    for file in ["send_to_ack.hgrm", "send_to_delivered.hgrm", "report.svg"] {
        let text = std::fs::read_to_string(report_dir.join(file)).unwrap();
        assert!(text.len() > 200, "{file}: {text}");
    }
    // Merging the report with itself doubles the counts and keeps the verdict.
    let merged_dir = dir.join("merged");
    let merged = Command::new(&loadgen)
        .arg("--out")
        .arg(&merged_dir)
        .arg("merge")
        .arg(report_dir.join("report.json"))
        .arg(report_dir.join("report.json"))
        .output()
        .unwrap();
    passed(&merged);
    let merged = read_json(&merged_dir.join("report.json"));
    assert_eq!(merged["counters"]["acked"].as_u64(), Some(2 * acked));
}

/// `--procs 2` runs two worker processes (each connecting from a source
/// address of its own turn) and merges their reports into one.
#[test]
fn worker_processes_merge_into_one_verified_report() {
    let dir = scratch("procs");
    let gw = Gateway::start(&dir);
    let report_dir = gw.dir.join("report");
    let out = gw.loadgen(
        &report_dir,
        &[
            "--procs",
            "2",
            "--source",
            "127.0.0.2,127.0.0.3",
            "chat",
            "--pairs",
            "10",
            "--duration",
            "1s",
        ],
    );
    drop(gw);
    let table = passed(&out);
    let merged = read_json(&report_dir.join("report.json"));
    let parts: Vec<_> = (0..2)
        .map(|i| read_json(&report_dir.join(format!("proc-{i}/report.json"))))
        .collect();
    let acked = |r: &serde_json::Value| r["counters"]["acked"].as_u64().unwrap();
    assert!(parts.iter().all(|p| acked(p) > 0), "both processes sent");
    assert_eq!(acked(&merged), parts.iter().map(acked).sum::<u64>());
    assert_eq!(
        merged["counters"]["connects"].as_u64(),
        Some(20),
        "10 pairs in all"
    );
    assert_eq!(merged["workers"].as_u64(), Some(2));
    assert_eq!(merged["verdict"]["ok"], true, "{table}");
}

/// `group`: every online member device gets each ✓'d group message once
/// and in order; send→last member is recorded once per message.
#[test]
fn a_short_verified_group_run_passes() {
    let dir = scratch("group");
    let gw = Gateway::start(&dir);
    let report_dir = gw.dir.join("report");
    let group = ["group", "--groups", "3", "--size", "8", "--senders", "2"];
    let rest = ["--offline", "1", "--duration", "1s", "--window", "8"];
    let out = gw.loadgen(
        &report_dir,
        &[&["--threads", "2"][..], &group, &rest].concat(),
    );
    drop(gw);
    let table = passed(&out);
    assert!(
        table.contains("lost 0 duplicated 0 reordered 0 → PASS"),
        "{table}"
    );
    let report = read_json(&report_dir.join("report.json"));
    let counters = &report["counters"];
    let acked = counters["acked"].as_u64().unwrap();
    assert!(acked > 20, "messages flowed: {table}");
    // 7 online members, less the sender itself.
    assert_eq!(counters["delivered"].as_u64(), Some(6 * acked), "{table}");
    let last = &report["latency_us"]["send_to_last_member"];
    assert_eq!(last["count"].as_u64(), Some(acked), "{table}");
}
