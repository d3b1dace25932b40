//! The wire format of the messaging edge: what a frame is and how its bytes
//! are split, verified, read and written.
//!
//! A frame is `u32 LE header_len | header | payload`: the first two parts are
//! a FlatBuffers size-prefixed buffer whose root is [`fb::Frame`], and the
//! payload (end-to-end encrypted, never parsed here) follows it unchanged.
//! `docs/protocol.md` describes every frame and flow for implementers in any
//! language.
//!
//! * [`FrameDecoder`] takes bytes as they arrive and yields [`Frame`]s whose
//!   header and payload are slices of the read buffer (no copy, no
//!   allocation per frame), or, through [`FrameDecoder::feed`],
//!   [`FrameRef`]s read where they lie in the caller's bytes. Every header
//!   passes the FlatBuffers verifier with options derived from [`Limits`]
//!   before anything reads it.
//! * [`Encoder`] builds headers with one reused builder; an [`OutFrame`]
//!   pairs the header bytes with the caller's payload [`Bytes`], so forwarding
//!   a message never copies its payload.
//! * [`WireError`] is the one error type; [`WireError::code`] gives the
//!   stable [`ErrorCode`] that an `Error` frame carries.
//!
//! This crate knows nothing of sockets, TLS, runtimes or storage.
//!
//! [`Bytes`]: bytes::Bytes

// The generated code names `alloc::` from nested modules; only a crate-root
// `extern crate` puts it in scope there.
extern crate alloc;

mod decode;
mod encode;
mod error;
mod frame;
pub mod fuzz;
mod limits;
#[cfg(test)]
mod proptests;
mod template;

#[allow(
    unsafe_code,
    missing_docs,
    unused_qualifications,
    rust_2018_idioms,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation
)]
#[rustfmt::skip]
mod generated {
    include!("generated/frames_generated.rs");
}

/// The FlatBuffers types generated from `schema/frames.fbs`: read-only views
/// (`Send<'a>`, …), builders, and the owned object API (`SendT`, …) used by
/// tests and tools.
pub mod fb {
    pub use crate::generated::edge::wire::*;
}

pub use decode::{FrameDecoder, decode_exact};
pub use encode::{DeliverHeader, Encoder, ErrorHeader, GroupChangedHeader, OutFrame};
pub use error::{WireError, is_fatal};
pub use fb::{Address, AddressKind, ErrorCode};
pub use frame::{Body, Frame, FrameKind, FrameRef};
pub use limits::Limits;

/// Protocol version spoken by this crate (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u16 = 1;

/// The dedup window, in client message ids: a device sends id `n` only
/// once every id up to `n - DEDUP_WINDOW` it sent has been answered, so
/// its retries always fall inside the server's window (protocol.md,
/// "Retries").
pub const DEDUP_WINDOW: u64 = 64;

/// Bytes of the little-endian length prefix in front of every header.
pub const PREFIX_BYTES: usize = PREFIX_BYTES_U32 as usize;
const PREFIX_BYTES_U32: u32 = 4;

/// An address naming every device of `user`.
pub fn user_address(user: u64) -> Address {
    Address::new(user, 0, AddressKind::User)
}

/// An address naming exactly `device` of `user`.
pub fn device_address(user: u64, device: u32) -> Address {
    Address::new(user, device, AddressKind::Device)
}

/// An address naming every member of `group`.
pub fn group_address(group: u64) -> Address {
    Address::new(group, 0, AddressKind::Group)
}
