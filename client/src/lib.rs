//! The messaging edge protocol as a Rust API for tests, `loadgen` and
//! users' own tools.
//!
//! This crate will own a sans-IO client protocol core (authenticate, send,
//! receive, acknowledge, read receipts, resume from the last acknowledged
//! sequence number after a reconnect) and a thin glommio + rustls shell that
//! connects to a gateway trusting a given certificate.
//!
//! It must not know about server internals: it speaks only what
//! `docs/protocol.md` documents, through the `wire-format` crate.
