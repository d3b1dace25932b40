//! A short `loadgen chat` run with verification against a real gateway
//! process (the workspace's own binary, next to loadgen's): every ✓'d
//! message must arrive once and in order, or loadgen exits non-zero.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn a_short_verified_chat_run_passes() {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let gateway = loadgen.with_file_name("gateway");
    assert!(
        gateway.exists(),
        "cargo test --workspace builds {}",
        gateway.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("loadgen-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Command::new(&gateway)
        .args([
            "serve",
            "--shards",
            "2",
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--sends-per-s", "100000", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    let report_dir = dir.join("report");
    let out = Command::new(&loadgen)
        .args(["--addr", &listen, "--quiet", "--threads", "2", "--data-dir"])
        .arg(&dir)
        .arg("--out")
        .arg(&report_dir)
        .args([
            "chat",
            "--pairs",
            "20",
            "--duration",
            "2s",
            "--window",
            "8",
            "--warmup",
            "0s",
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("lost 0 duplicated 0 reordered 0 → PASS"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["schema"], "loadgen-report/1");
    assert_eq!(report["verdict"]["ok"], true);
    let counters = &report["counters"];
    let acked = counters["acked"].as_u64().unwrap();
    assert!(acked > 100, "messages flowed: {table}");
    assert_eq!(counters["delivered"].as_u64(), Some(acked), "each once");
    assert_eq!(counters["connects"].as_u64(), Some(40));
    let delivered = &report["latency_us"]["send_to_delivered"];
    assert_eq!(delivered["count"].as_u64(), Some(acked));
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
    assert!(merged.status.success(), "{merged:?}");
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(merged["counters"]["acked"].as_u64(), Some(2 * acked));
}
