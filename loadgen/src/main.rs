//! The `loadgen` binary: drives a real gateway over real TLS and reports
//! what it holds.
//!
//! It will own scenarios (chat, group, offline, idle, churn, handshake),
//! open-loop schedules, HDR latency histograms, end-to-end verification of
//! every message, multi-process runs and reports. It talks to the gateway
//! only through the `client` crate.
//!
//! It must not know about server internals.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    println!(
        "loadgen {}: no scenarios yet (see README, Status)",
        env!("CARGO_PKG_VERSION")
    );
}
