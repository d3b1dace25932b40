//! The reliability check: `benchmarks/crash-under-load.sh` runs a verified
//! `loadgen chat` while the gateway is killed with SIGKILL and restarted on
//! the same data directory 20 times. It passes only if no ✓'d message was
//! lost, duplicated or reordered, every ✓'d message got its ✓✓, and every
//! restart happened. Runs on the
//! binaries of this build (the script builds release ones when run by
//! hand).

use std::path::PathBuf;
use std::process::Command;

use testkit::ScratchDir;

#[test]
fn twenty_sigkill_restarts_lose_and_duplicate_nothing() {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let bin = loadgen.parent().unwrap();
    assert!(
        bin.join("gateway").exists(),
        "cargo test --workspace builds the gateway"
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/crash-under-load.sh");
    let work = ScratchDir::new_in(env!("CARGO_TARGET_TMPDIR"), "crash");
    let out = Command::new("bash")
        .arg(&script)
        .env("BIN", bin)
        .env("WORK", work.path())
        // 1 MiB segments: the log rolls across the crashes, and the run
        // allocates megabytes on disk, not 64 MiB per shard.
        .env("GATEWAY_ARGS", "--segment-bytes 1048576")
        .env("RESTARTS", "20")
        .env("EVERY", "1")
        .env("PAIRS", "50")
        .env("RATE", "5000")
        .env("LIMIT", "240")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("20 SIGKILL restarts"), "{stdout}");
    assert!(
        stdout.contains("lost 0 duplicated 0 reordered 0 → PASS"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("report/report.json")).unwrap())
            .unwrap();
    let counters = &report["counters"];
    assert_eq!(
        counters["receipts"], counters["acked"],
        "every ✓'d message got its ✓✓ despite the crashes: {stdout}"
    );
    let reconnects = counters["reconnects"].as_u64().unwrap_or(0);
    assert!(
        reconnects >= 20 * 100,
        "every restart moved every connection: {stdout}"
    );
}
