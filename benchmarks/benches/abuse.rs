//! The per-send cost of the abuse limits (`gateway::abuse`): one
//! `check_send` for a device writing to one recipient, and for a device
//! whose recent recipients fill its memory (256 peers, the worst scan).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::abuse::{AbuseConfig, AbuseState, PEERS_MAX};
use shard_router::{Target, UserId};

/// Limits high enough that nothing is refused while benchmarking.
fn config() -> AbuseConfig {
    AbuseConfig {
        new_conversations_per_h: u32::MAX,
        messages_per_recipient_per_s: u32::MAX,
        group_creates_per_day: 0,
    }
}

fn check_send(c: &mut Criterion) {
    let config = config();
    let mut group = c.benchmark_group("abuse");
    for peers in [1u64, PEERS_MAX as u64] {
        let mut state = AbuseState::default();
        let mut id = 0u64;
        for user in 0..peers {
            id += 1;
            state
                .check_send(&config, 0, Target::User(UserId(user)), id)
                .unwrap();
        }
        // The recipient written to least recently: the last in the scan.
        let to = Target::User(UserId(peers - 1));
        group.bench_function(format!("check_send_{peers}_peers"), |b| {
            b.iter(|| {
                id += 1;
                black_box(state.check_send(&config, 1_000, black_box(to), id)).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, check_send);
criterion_main!(benches);
