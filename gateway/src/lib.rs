//! The gateway's I/O shell, as a library so benchmarks and tests can drive
//! its pieces: the mesh of rings that carries the router's cross-shard
//! batches between glommio executors, the per-connection protocol state
//! machine (sans-IO), TLS configuration, and authentication tokens.
//!
//! Everything here is thin: protocol, routing and queue logic live in the
//! sans-IO crates (`wire-format`, `shard-router`, `queue-engine`).

pub mod abuse;
pub mod admin;
pub mod clock;
pub mod config;
pub mod cpus;
pub mod fd;
pub mod listen;
pub mod mesh;
pub mod metrics;
pub mod notify;
pub mod pacer;
pub mod pool;
pub mod push;
pub mod quiet;
pub mod server;
pub mod session;
pub mod shard;
pub mod tls;
pub mod token;
pub mod uring_log;
