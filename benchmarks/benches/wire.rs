//! Wire-format benchmarks: decode + verify, encode, and splitting a read
//! buffer into frames. Targets (2-core machine): decode + verify of a `Send`
//! with a 100-byte payload and encode of a `Deliver`, each ≤ 60 ns median.

use std::hint::black_box;

use benchmarks::{TYPICAL_PAYLOAD_BYTES, fixture_addresses, read_buffer_of_sends, send_frame};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wire_format::{Body, DeliverHeader, Encoder, FrameDecoder, Limits, decode_exact, fb};

fn decode_verify(c: &mut Criterion) {
    let limits = Limits::default();
    let frame = Bytes::from(send_frame(TYPICAL_PAYLOAD_BYTES));
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_100B_verify_and_read", |b| {
        b.iter(|| {
            let frame = decode_exact(black_box(frame.clone()), &limits).unwrap();
            let Body::Send(send) = frame.body() else {
                unreachable!()
            };
            black_box((
                send.client_msg_id(),
                send.to().map(|a| a.id()),
                frame.payload().len(),
            ))
        })
    });
    // The verifier alone, as the decoder runs it (tracks the vendored patch).
    let header = &frame[..frame.len() - TYPICAL_PAYLOAD_BYTES];
    let opts = limits.verifier_options();
    group.bench_function("send_header_verify_only", |b| {
        b.iter(|| {
            let root = flatbuffers::size_prefixed_root_with_opts::<fb::Frame<'_>>(
                &opts,
                black_box(header),
            );
            black_box(root.unwrap().payload_len())
        })
    });
    group.finish();
}

fn split_read_buffer(c: &mut Criterion) {
    let (buffer, count) = read_buffer_of_sends(64 * 1024, TYPICAL_PAYLOAD_BYTES);
    let mut group = c.benchmark_group("decoder");
    group.throughput(Throughput::Elements(count as u64));
    group.bench_function("split_64KiB_of_100B_sends", |b| {
        b.iter_batched(
            || {
                let mut decoder = FrameDecoder::new(Limits::default());
                decoder.extend_from_slice(&buffer);
                decoder
            },
            |mut decoder| {
                let mut n = 0;
                while let Some(frame) = decoder.decode().unwrap() {
                    black_box(frame.payload().len());
                    n += 1;
                }
                assert_eq!(n, count);
                decoder
            },
            // Each buffer is filled right before it is split, as a read
            // leaves it warm in cache; the 20 µs routine dwarfs the timer.
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let (from, to) = fixture_addresses();
    let payload = Bytes::from(vec![0x5A; TYPICAL_PAYLOAD_BYTES]);
    let header = DeliverHeader {
        from,
        to,
        seq: 1_000,
        message_id: 1 << 40,
        server_time_ms: 1 << 41,
    };
    let mut encoder = Encoder::new(Limits::default());
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("deliver_100B", |b| {
        b.iter(|| {
            black_box(
                encoder
                    .deliver(black_box(&header), payload.clone())
                    .unwrap(),
            )
        })
    });
    group.bench_function("server_ack", |b| {
        b.iter(|| {
            black_box(encoder.server_ack(black_box(7), 1 << 40, 1 << 41, fb::AckStatus::Stored))
        })
    });
    group.finish();
}

criterion_group!(benches, decode_verify, split_read_buffer, encode);
criterion_main!(benches);
