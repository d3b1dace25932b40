//! The durable heart of the messaging edge: "✓ means it survives `kill -9`
//! and a power cut".
//!
//! This crate owns the per-shard append log (segments of checksummed
//! records, group commit, recovery), the per-device offline queues, acks
//! and tombstones, the dedup window of client retries (per sender device), TTL expiry and
//! segment reclaim. Its index is plain data with time passed in; storage sits
//! behind a trait with a real backend and a seeded fault-injecting simulator.
//!
//! It must not know about sockets, TLS or the gateway's sessions, nor about
//! the frame layout beyond the opaque payload bytes it stores.

mod checkpoint;
mod dedup;
mod engine;
pub mod log;
mod recent;
pub mod record;
pub mod recovery;
pub mod search;
pub mod split_map;

pub use dedup::DEDUP_WINDOW;
pub use engine::{
    Accepted, Engine, EngineConfig, Expired, NewMessage, QueueError, ReclaimState, Reclaimed,
    StoredMessage, TTL_MAX_MS, flush_all, read_message, reclaim_all, reclaim_scan, write_flush,
};
pub use log::{Flush, Log, LogConfig, WRITE_BLOCK};
pub use record::{DeviceLife, DeviceRef, SETTING_VALUE_BYTES_MAX, SettingKey};
pub use recovery::{Recovered, RecoveryError};
pub use storage::{
    CHECKPOINT_FILE, FsStorage, NullStorage, SimDisk, SimOp, SimRng, Storage, segment_file_name,
};
pub mod storage;
