//! Shared fixtures for the benchmarks in `benches/`: realistic frames and
//! buffers, built once so every benchmark measures only what it names.
//!
//! Run them with `cargo bench -p benchmarks`; `benchmarks/README.md` lists
//! each benchmark, its target and how to read it.

pub mod peers;
pub mod peers_plot;

use bytes::{Bytes, BytesMut};
use queue_engine::{DeviceRef, Engine, NewMessage};
use wire_format::{Encoder, Limits, device_address, user_address};

/// Payload bytes of the typical message the targets are stated for.
pub const TYPICAL_PAYLOAD_BYTES: usize = 100;

/// A `Send` frame to a user with a payload of `payload_bytes`.
pub fn send_frame(payload_bytes: usize) -> Vec<u8> {
    let mut encoder = Encoder::new(Limits::default());
    let payload = Bytes::from(vec![0x5A; payload_bytes]);
    encoder
        .send(user_address(42), 7, 0, payload)
        .expect("fits in a frame")
        .to_vec()
}

/// A read buffer of at most `buffer_bytes` holding whole `Send` frames
/// back to back, and how many frames it holds.
pub fn read_buffer_of_sends(buffer_bytes: usize, payload_bytes: usize) -> (BytesMut, usize) {
    let frame = send_frame(payload_bytes);
    let count = buffer_bytes / frame.len();
    let mut buf = BytesMut::with_capacity(buffer_bytes);
    for _ in 0..count {
        buf.extend_from_slice(&frame);
    }
    (buf, count)
}

/// The sender and recipient addresses the fixtures use.
pub fn fixture_addresses() -> (wire_format::Address, wire_format::Address) {
    (device_address(1, 0), user_address(42))
}

/// Stores message `i` of the engine fixtures: a 100-byte payload from one
/// of 100 senders (a new client id each round) to device 0 of user
/// `i % devices`.
pub fn append_fixture_message(engine: &mut Engine, now_ms: u64, i: u64, devices: u64) {
    let payload = [7u8; TYPICAL_PAYLOAD_BYTES];
    let m = NewMessage {
        message_id: i + 1,
        sender: DeviceRef {
            user: 1_000_000 + i % 100,
            device: 0,
        },
        client_msg_id: 1 + i / 100,
        recipients: &[DeviceRef {
            user: i % devices,
            device: 0,
        }],
        ttl_ms: 0,
        payload: &payload,
        receipt: false,
        group: 0,
    };
    engine.append_message(now_ms, &m).expect("stored");
}
