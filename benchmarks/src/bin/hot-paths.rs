//! `hot-paths PATH N`: runs one hot path of a message's way through the
//! server N times after its setup, so `benchmarks/instructions.sh` can
//! count its instructions under callgrind (wall time on a shared 2-core
//! machine is noise; instruction counts are not). Only the functions named
//! `measure_*` are counted (callgrind's `--toggle-collect`), so setup is
//! left out.
//!
//! PATH is one of:
//! - `decode`: a `Send` frame with a 100-byte payload, verified and read;
//! - `route`: the home shard of a user (2 shards);
//! - `append`: a 100-byte message stored for one recipient device, with a
//!   group commit every 64 messages (the engine's side of it: the batch
//!   sealed, handed out and reported durable; the write itself is the
//!   shell's I/O and is not counted);
//! - `deliver`: the `Deliver` frame of a 100-byte message encoded;
//! - `ack`: a device's cumulative acknowledgment of one entry (index
//!   update and tombstone).

use std::hint::black_box;

use bytes::Bytes;
use queue_engine::{DeviceRef, Engine, EngineConfig, SimDisk};
use shard_router::{Placement, Target, UserId};
use wire_format::{Body, DeliverHeader, Encoder, Limits, decode_exact};

const NOW: u64 = 1_767_225_600_000;
/// Recipient devices of `append` and `ack`.
const DEVICES: u64 = 100;
/// Messages per group commit in `append`.
const BATCH: u64 = 64;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hot-paths decode|route|append|deliver|ack N";
    let path = args.next().ok_or(usage)?;
    let n: u64 = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
    match path.as_str() {
        "decode" => measure_decode(n),
        "route" => measure_route(n),
        "append" => measure_append(&mut engine(), n),
        "deliver" => measure_deliver(n),
        "ack" => {
            let mut engine = engine();
            append(&mut engine, n);
            measure_ack(&mut engine, n);
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}

#[inline(never)]
fn measure_decode(n: u64) {
    let limits = Limits::default();
    let frame = Bytes::from(benchmarks::send_frame(benchmarks::TYPICAL_PAYLOAD_BYTES));
    for _ in 0..n {
        let frame = decode_exact(black_box(frame.clone()), &limits).expect("a valid Send");
        let Body::Send(send) = frame.body() else {
            unreachable!("a Send")
        };
        black_box((send.client_msg_id(), send.to().map(|a| a.id())));
        black_box(frame.payload().len());
    }
}

#[inline(never)]
fn measure_route(n: u64) {
    let placement = Placement::single_node(2);
    for user in 0..n {
        black_box(placement.route(Target::User(UserId(black_box(user)))));
    }
}

#[inline(never)]
fn measure_deliver(n: u64) {
    let (from, to) = benchmarks::fixture_addresses();
    let payload = Bytes::from(vec![0x5A; benchmarks::TYPICAL_PAYLOAD_BYTES]);
    let mut encoder = Encoder::new(Limits::default());
    for seq in 0..n {
        let header = DeliverHeader {
            from,
            to,
            seq,
            message_id: (1 << 40) + seq,
            server_time_ms: NOW,
        };
        black_box(encoder.deliver(&header, payload.clone()).expect("fits"));
    }
}

#[inline(never)]
fn measure_append(engine: &mut Engine, n: u64) {
    append(engine, n);
}

#[inline(never)]
fn measure_ack(engine: &mut Engine, n: u64) {
    for seq in 1..=n.div_ceil(DEVICES) {
        for user in 0..DEVICES {
            let device = DeviceRef { user, device: 0 };
            if engine.ack(device, seq, true).is_err() {
                assert!(seq > n / DEVICES, "every stored entry is acked");
            }
        }
    }
}

fn engine() -> Engine {
    let config = EngineConfig {
        payload_cache_bytes: 0,
        ..EngineConfig::default()
    };
    Engine::open(&mut SimDisk::new(1), config, NOW)
        .expect("an empty engine")
        .0
}

/// The engine's side of a group commit: every batch handed out and
/// reported durable (the write is the shell's).
fn commit(engine: &mut Engine) {
    engine.seal_lazy();
    while engine.poll_flush().is_some() {
        engine.handle_flushed();
    }
}

/// Stores messages `0..n`, one per recipient device in turn, with a group
/// commit every [`BATCH`].
fn append(engine: &mut Engine, n: u64) {
    for i in 0..n {
        benchmarks::append_fixture_message(engine, NOW, i, DEVICES);
        if (i + 1) % BATCH == 0 {
            commit(engine);
        }
    }
    commit(engine);
}
