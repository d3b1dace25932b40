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
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    let out = Command::new(&loadgen)
        .args(["--addr", &listen, "--data-dir"])
        .arg(&dir)
        .args(["chat", "--pairs", "20", "--duration", "2s", "--window", "8"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("lost 0 duplicated 0 reordered 0"),
        "{report}"
    );
    let acked: u64 = report
        .lines()
        .find(|l| l.contains("acked"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(acked > 100, "messages flowed: {report}");
}
