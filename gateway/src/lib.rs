//! The gateway's I/O shell, as a library so benchmarks and tests can drive
//! its pieces: today the channel-mesh link that carries the router's
//! cross-shard batches between glommio executors.
//!
//! Everything here is thin: protocol, routing and queue logic live in the
//! sans-IO crates (`wire-format`, `shard-router`, `queue-engine`).

pub mod mesh;
