//! The messaging edge protocol as a Rust API for tests, `loadgen` and
//! users' own tools.
//!
//! [`ClientCore`] is the sans-IO protocol core: authenticate, send (with
//! the unanswered sends kept for a reconnect), receive, acknowledge,
//! receipts, and resume from the last acknowledged sequence number.
//! [`Connection`] is the thin glommio + rustls shell that drives it over a
//! TLS connection trusting the certificates given ([`trust`]).
//!
//! It must not know about server internals: it speaks only what
//! `docs/protocol.md` documents, through the `wire-format` crate.

mod conn;
mod core;
pub mod token;

pub use crate::conn::{Connection, trust};
pub use crate::core::{ACK_BATCH, ACK_DELAY, ClientCore, ClientEvent, PendingSend};
