//! Router benchmarks: the route decision and the registry lookup of a
//! user's online devices. Targets per core: ≥ 50,000,000 routes/s (≤ 20 ns)
//! and ≥ 20,000,000 lookups/s (≤ 50 ns).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shard_router::{
    ConnId, ConnRef, DeviceKey, Placement, Registry, Session, ShardId, Target, UserId,
};

/// Users in the registry: large enough that lookups miss the CPU caches as
/// they would on a shard holding a million connections.
const USERS: u64 = 1_000_000;

fn route(c: &mut Criterion) {
    let placement = Placement::single_node(2);
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1024));
    group.bench_function("route_1024_users", |b| {
        b.iter(|| {
            for user in 0..1024u64 {
                black_box(placement.route(Target::User(UserId(black_box(user)))));
            }
        })
    });
    group.finish();
}

fn registry_lookup(c: &mut Criterion) {
    let mut registry = Registry::new();
    for user in 0..USERS {
        for device in 0..2u32 {
            let conn = ConnRef {
                shard: ShardId(0),
                conn: ConnId(user * 2 + u64::from(device)),
            };
            registry.register(DeviceKey::new(user, device), Session { conn, since_ms: 0 });
        }
    }
    let mut group = c.benchmark_group("router");
    // 1,024 users stay in cache; 65,536 spread over the registry mostly do not.
    let cases = [
        ("online_devices_hot_1024_of_1M", 1024u64),
        ("online_devices_spread_65536_of_1M", 65_536),
    ];
    for (name, count) in cases {
        // A fixed pseudo-random order, so lookups do not walk memory in order.
        let users: Vec<UserId> = (0..count)
            .map(|i| UserId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % USERS))
            .collect();
        group.throughput(Throughput::Elements(count));
        group.bench_function(name, |b| {
            b.iter(|| {
                for user in &users {
                    black_box(registry.online_devices(black_box(*user)).len());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route, registry_lookup);
criterion_main!(benches);
