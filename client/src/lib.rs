//! The messaging edge protocol as a Rust API for tests, `loadgen` and
//! users' own tools.
//!
//! [`ClientCore`] is the sans-IO protocol core: authenticate, send (with
//! the unanswered sends kept for a reconnect), receive, acknowledge,
//! receipts, and resume from the last acknowledged sequence number. A thin
//! glommio + rustls shell that connects to a gateway trusting a given
//! certificate comes with the gateway's TLS server.
//!
//! It must not know about server internals: it speaks only what
//! `docs/protocol.md` documents, through the `wire-format` crate.

mod core;

pub use crate::core::{ClientCore, ClientEvent, PendingSend};
