//! The steady-state machinery's costs, on the simulated disk (CPU only):
//! what a shard's event loop pauses for. One engine with 200,000 queued
//! messages (2,000 devices × 100, 100-byte payloads) is built once; then:
//!
//! * `expire_tick_nothing_due`: one housekeeping tick's expiry when no
//!   entry is due (it looks at no queue);
//! * `checkpoint_200k_entries`: taking a checkpoint of that index (the
//!   server does it on the executor);
//! * `open_from_checkpoint` vs `open_full_replay`: a restart of that log
//!   with its checkpoint, and with the whole log replayed (the ratio is the
//!   restart speed-up; the replayed part is what follows the checkpoint);
//! * `reclaim_slice_4096_records`: one slice of a reclaim's copying (the
//!   server yields between slices);
//! * `worst_insert_{plain,split}_map_4M`: the longest single insert while
//!   filling a map to 4 M entries of 64 bytes (the size of the shard's
//!   per-record meta): a plain `FxHashMap`, whose last doubling rehashes
//!   everything at once, against the `SplitMap` the index uses (reported
//!   as the time per iteration: the worst insert of each fill).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use queue_engine::split_map::SplitMap;
use queue_engine::{
    Engine, EngineConfig, LogConfig, ReclaimState, SimDisk, Storage, flush_all, reclaim_scan,
};

const DEVICES: u64 = 2_000;
const PER_DEVICE: u64 = 100;
const NOW: u64 = 1_767_225_600_000;

fn config(segment_bytes_max: u64) -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes_max,
            ..LogConfig::default()
        },
        payload_cache_bytes: 0,
        ..EngineConfig::default()
    }
}

/// An engine holding `n` queued messages over DEVICES devices, all
/// durable, with a checkpoint written at its end.
fn loaded(n: u64, segment_bytes_max: u64) -> (Engine, SimDisk) {
    let mut disk = SimDisk::new(1);
    let (mut e, _) = Engine::open(&mut disk, config(segment_bytes_max), NOW).unwrap();
    for i in 0..n {
        benchmarks::append_fixture_message(&mut e, NOW, i, DEVICES);
        if i % 1_000 == 0 {
            flush_all(&mut e, &mut disk).unwrap();
        }
    }
    flush_all(&mut e, &mut disk).unwrap();
    let (_, bytes) = e.checkpoint();
    disk.write_checkpoint(&bytes).unwrap();
    (e, disk)
}

fn steady(c: &mut Criterion) {
    let big = 8 << 20;
    let (mut e, mut disk) = loaded(DEVICES * PER_DEVICE, big);
    let mut group = c.benchmark_group("steady");
    group.sample_size(10);
    group.bench_function("expire_tick_nothing_due", |b| {
        b.iter(|| assert!(e.expire(NOW + 1_000).is_empty()))
    });
    group.bench_function("checkpoint_200k_entries", |b| {
        b.iter(|| e.checkpoint().1.len())
    });
    group.bench_function("open_from_checkpoint", |b| {
        b.iter(|| {
            let (r, found) = Engine::open(&mut disk, config(big), NOW).unwrap();
            assert!(found.checkpoint.is_some());
            r.live_messages()
        })
    });
    let checkpoint = disk.checkpoint.take();
    group.bench_function("open_full_replay", |b| {
        b.iter(|| {
            let (r, found) = Engine::open(&mut disk, config(big), NOW).unwrap();
            assert!(found.checkpoint.is_none());
            r.live_messages()
        })
    });
    disk.checkpoint = checkpoint;
    // A small engine whose oldest segment holds about 4,096 records, all
    // live: each is copied (the most a slice costs).
    let small = 640 << 10;
    let (e, disk) = loaded(6_000, small);
    let oldest = e.log().segments()[0];
    let bytes = disk.read(oldest).unwrap();
    let records = reclaim_scan(oldest, &bytes).unwrap();
    let slice = &records[..4096.min(records.len())];
    assert!(
        slice.len() > 3_000,
        "{} records in the segment",
        slice.len()
    );
    group.bench_function("reclaim_slice_4096_records", |b| {
        b.iter_batched(
            || loaded(6_000, small).0,
            |mut fresh| {
                let mut state = ReclaimState::default();
                fresh.reclaim_part(oldest, &bytes, slice, &mut state);
                fresh
            },
            criterion::BatchSize::PerIteration,
        )
    });
    worst_insert(&mut group);
    group.finish();
}

type Value = [u64; 7];

/// The longest single insert of filling a map to 4 M entries.
fn worst_insert(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    const N: u64 = 4_000_000;
    fn worst(mut insert: impl FnMut(u64)) -> Duration {
        let mut worst = Duration::ZERO;
        for k in 0..N {
            let t = Instant::now();
            insert(k << 8);
            worst = worst.max(t.elapsed());
        }
        worst
    }
    group.bench_function("worst_insert_plain_map_4M", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut m: rustc_hash::FxHashMap<u64, Value> = Default::default();
                    worst(|k| {
                        m.insert(k, [k; 7]);
                    })
                })
                .sum()
        })
    });
    group.bench_function("worst_insert_split_map_4M", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut m: SplitMap<u64, Value> = Default::default();
                    worst(|k| {
                        m.insert(k, [k; 7]);
                    })
                })
                .sum()
        })
    });
}

criterion_group!(benches, steady);
criterion_main!(benches);
