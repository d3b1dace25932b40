//! Shared fixtures for the benchmarks in `benches/`: realistic frames and
//! buffers, built once so every benchmark measures only what it names.
//!
//! Run them with `cargo bench -p benchmarks`; `benchmarks/README.md` lists
//! each benchmark, its target and how to read it.

pub mod peers;
pub mod peers_plot;

use bytes::{Bytes, BytesMut};
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
