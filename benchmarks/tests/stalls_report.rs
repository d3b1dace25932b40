//! `stalls_report.py` (the analysis of `stalls.sh`) on a made-up trace:
//! which stretches of a core count as foreign bursts, and which slow
//! messages were in flight during one. Runs the script with `python3`.

use std::path::Path;
use std::process::Command;

/// A `perf script -F cpu,time,trace` line of a `sched_switch`.
fn switch(cpu: u32, t: f64, prev: (&str, u32), next: (&str, u32)) -> String {
    format!(
        "[{cpu:03}] {t:.6}: prev_comm={} prev_pid={} prev_prio=120 prev_state=S ==> next_comm={} next_pid={} next_prio=120\n",
        prev.0, prev.1, next.0, next.1
    )
}

fn report(dir: &Path, sched: &str, slow: &str, ours: &str) -> String {
    for (name, text) in [("sched.txt", sched), ("slow.txt", slow), ("ours.txt", ours)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stalls_report.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["sched.txt", "slow.txt", "ours.txt"].map(|f| dir.join(f)))
        .arg("1") // BURST_MS
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_foreign_burst_is_found_and_the_slow_message_during_it_counted() {
    let (shard, worker, agent, kworker) = (
        ("shard-0", 100),
        ("iou-wrk-100", 101),
        ("agent", 50),
        ("kworker/1:0", 60),
    );
    let idle = ("swapper/1", 0);
    let mut sched = String::new();
    // CPU 1: ours, then the agent for 5 ms, ours, a kworker for 0.5 ms
    // (too short), idle, the agent for 2 ms split by a kworker (one
    // burst: no task of ours or idle between), then our io_uring worker.
    for (t, prev, next) in [
        (1.000, idle, shard),
        (1.001, shard, agent),
        (1.006, agent, shard),
        (1.007, shard, kworker),
        (1.0075, kworker, idle),
        (1.010, idle, agent),
        (1.011, agent, kworker),
        (1.0112, kworker, agent),
        (1.012, agent, worker),
        (1.013, worker, idle),
        (1.030, idle, shard),
    ] {
        sched.push_str(&switch(1, t, prev, next));
    }
    // Sent during the first burst, during nothing, and outside the trace.
    let slow = "send_mono_ns\tanswered_mono_ns\tlatency_us\tanswer\n\
        1002000000\t1004000000\t2000\tsend_to_delivered\n\
        1020000000\t1025000000\t5000\tsend_to_delivered\n\
        2000000000\t2005000000\t5000\tsend_to_delivered\n";
    let dir = std::env::temp_dir().join(format!("stalls-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = report(&dir, &sched, slow, "100\n");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.contains("foreign bursts of 1 ms or more: 2, 7 ms in all, longest 5.0 ms"),
        "{out}"
    );
    assert!(out.contains("  agent: 2 bursts, 7.0 ms"), "{out}");
    assert!(
        !out.contains("kworker/1:0: "),
        "a kworker led no burst: {out}"
    );
    assert!(
        !out.contains("iou-wrk"),
        "our io_uring worker is ours: {out}"
    );
    assert!(
        out.contains("slow messages in the window: 2; in flight during a burst: 1 (50%)"),
        "{out}"
    );
}
