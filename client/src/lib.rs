//! The messaging edge protocol as a Rust API for tests, `loadgen` and
//! users' own tools.
//!
//! [`ClientCore`] is the sans-IO protocol core: authenticate, send (with
//! the unanswered sends kept for a reconnect), receive, acknowledge,
//! receipts, and resume from the last acknowledged sequence number.
//! [`Connection`] is the thin glommio + rustls shell that drives it over a
//! TLS connection trusting the certificates given ([`trust`]).
//!
//! Acknowledge with [`ClientCore::ack_later`]: the ack rides the next frame
//! written or goes out on its own after [`ACK_DELAY`], as TCP delays its
//! ACKs (the server reads one frame fewer per message of a busy
//! conversation). [`ClientCore::ack`] writes at once; call
//! [`Connection::finish`] before closing so a held ack is not lost (it is
//! only resent by the next `Hello` otherwise).
//!
//! It must not know about server internals: it speaks only what
//! `docs/protocol.md` documents, through the `wire-format` crate.

mod conn;
mod core;
mod id_window;
pub mod token;

pub use crate::conn::{Connection, trust};
pub use crate::core::{ACK_BATCH, ACK_DELAY, ClientCore, ClientEvent, PendingSend};
pub use crate::id_window::IdWindow;
