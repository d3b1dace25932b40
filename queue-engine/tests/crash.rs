//! `kill -9` for real: a child process appends messages to a log directory
//! with fdatasync and prints each position once it is durable; the test
//! SIGKILLs it at a random point, 50 times, reopens the directory after
//! each kill and checks that every position the child reported is there.
//!
//! The child is this test binary itself, run with `CRASH_CHILD_DIR` set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use queue_engine::*;

const DEVICE: DeviceRef = DeviceRef {
    user: 42,
    device: 0,
};
const SENDER: DeviceRef = DeviceRef { user: 7, device: 0 };
const KILLS: u64 = 50;

fn config() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes_max: 256 * 1024,
            batch_bytes_max: 64 * 1024,
        },
        queue_messages_max: 1 << 20,
        queue_bytes_max: 1 << 40,
        ..EngineConfig::default()
    }
}

/// The child: appends forever, one message per group commit.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let base: u64 = std::env::var("CRASH_CHILD_BASE").unwrap().parse().unwrap();
    let mut storage = FsStorage::open(&dir).unwrap();
    let (mut engine, _) = Engine::open(&mut storage, config(), 0).unwrap();
    for i in 0.. {
        let id = base + i;
        let payload = id.to_le_bytes().repeat(1 + (i % 16) as usize);
        let m = NewMessage {
            message_id: id,
            sender: SENDER,
            client_msg_id: id,
            recipients: &[DEVICE],
            ttl_ms: 0,
            payload: &payload,
            receipt: false,
            group: 0,
        };
        let Ok(Accepted::Stored { position, .. }) = engine.append_message(0, &m) else {
            panic!("stored")
        };
        flush_all(&mut engine, &mut storage).unwrap();
        println!("durable {position}");
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_reported_durable() {
    let dir = std::env::temp_dir().join(format!("qe-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = SimRng::new(0x5EED);
    let mut reported = BTreeSet::new();
    for round in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("CRASH_CHILD_DIR", &dir)
            .env("CRASH_CHILD_BASE", (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 1 + rng.below(120);
        let mut seen = 0;
        for line in lines {
            if let Some(position) = line.unwrap().strip_prefix("durable ") {
                reported.insert(position.parse::<u64>().unwrap());
                seen += 1;
                if seen == kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL, while it is appending the next ones
        child.wait().unwrap();

        let mut storage = FsStorage::open(&dir).unwrap();
        let (engine, _) = Engine::open(&mut storage, config(), 0)
            .unwrap_or_else(|e| panic!("round {round}: cannot reopen: {e}"));
        let present: BTreeSet<u64> = engine
            .backlog(DEVICE, 0)
            .map(|(_, position)| position)
            .collect();
        let lost: Vec<_> = reported.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: durable positions lost: {lost:?}"
        );
        let seqs: Vec<u64> = engine.backlog(DEVICE, 0).map(|(seq, _)| seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "round {round}: order");
    }
    assert!(reported.len() as u64 >= KILLS, "the children made progress");
    std::fs::remove_dir_all(&dir).unwrap();
}
