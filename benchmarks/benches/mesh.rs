//! Messages crossing between two pinned glommio executors through the
//! gateway's mesh (its own rings and doorbells), as router batches. Target: ≥ 5,000,000 messages/s
//! batched. The unbatched case (one message per ring slot) is measured in
//! the same run for the ratio.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::mesh::{Mesh, RING_BATCHES_MAX};
use glommio::{LocalExecutorBuilder, Placement};
use shard_router::{ConnId, DeviceKey, Outbox, ShardId, ShardMsg, Target, UserId};

type Msg = ShardMsg<u64>;

/// Sends `messages` router messages from shard 0 to shard 1, `per_turn` of
/// them per event-loop turn (one batch per turn), and returns the time from
/// the first send to the last receive.
fn cross(messages: u64, per_turn: u64) -> Duration {
    let mesh = Mesh::<Msg>::new(2, RING_BATCHES_MAX).unwrap();
    let sender = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn({
            let mesh = mesh.clone();
            move || async move {
                let mut end = mesh.end(ShardId(0));
                let mut outbox = Outbox::new(2);
                let from = DeviceKey::new(1, 0);
                let to = Target::User(UserId(2));
                let mut sent = 0;
                while sent < messages {
                    for i in sent..(sent + per_turn).min(messages) {
                        outbox.push(
                            ShardId(1),
                            ShardMsg::Deliver {
                                conn: ConnId(i),
                                from,
                                to,
                                msg: i,
                            },
                        );
                    }
                    sent = (sent + per_turn).min(messages);
                    while let Some((dest, batch)) = outbox.pop_batch() {
                        end.send(dest, batch);
                    }
                    // A full ring: wait for room, as the gateway does.
                    while end.pending() > 0 {
                        end.wait().await;
                        end.recv(0, |_, _| {});
                    }
                }
            }
        })
        .unwrap();
    let receiver = LocalExecutorBuilder::new(Placement::Fixed(1))
        .spawn(move || async move {
            let mut end = mesh.end(ShardId(1));
            let start = Instant::now();
            let mut received = 0;
            while received < messages {
                end.recv(64, |_, batch| {
                    if let Some(ShardMsg::Deliver { msg, .. }) = batch.last() {
                        assert_eq!(*msg, received + batch.len() as u64 - 1, "FIFO");
                    }
                    received += batch.len() as u64;
                });
                if received < messages {
                    end.wait().await;
                }
            }
            start.elapsed()
        })
        .unwrap();
    sender.join().unwrap();
    receiver.join().unwrap()
}

fn mesh_crossing(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, messages, per_turn) in [
        ("batched_256_per_turn", 2_000_000, 256),
        ("unbatched", 200_000, 1),
    ] {
        group.throughput(Throughput::Elements(messages));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| cross(messages, per_turn)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, mesh_crossing);
criterion_main!(benches);
