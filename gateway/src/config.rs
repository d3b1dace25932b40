//! The gateway's settings: a TOML file (every key optional, defaults
//! below), each key overridable by the `serve` flag of the same name
//! (`listen` ↔ `--listen`, `sends_per_s` ↔ `--sends-per-s`).
//! `gateway check-config FILE` validates a file without starting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::cpus::PinShards;
use crate::session::SessionConfig;
use crate::shard::ShardConfig;

/// Every setting, with its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Client TLS address; every shard listens on it (`SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Admin HTTP address (metrics, health, drain); keep it private.
    pub admin_listen: SocketAddr,
    /// Executors (one per core); 0 = every core the process may use.
    pub shards: usize,
    /// Whether each shard keeps to one CPU: `on`, `off`, or `auto` (on
    /// if the process's CPU mask leaves some of the machine's CPUs out,
    /// as `CPUAffinity=` does; see `cpus.rs`).
    pub pin_shards: PinShards,
    /// The log, the development certificate and the development token key.
    pub data_dir: PathBuf,
    /// PEM certificate chain; none = a generated development certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
    /// A connection silent this long (at most twice it) lets its TLS 1.3
    /// keys' expanded form go (1 KiB with AES-GCM) until it next reads or
    /// writes, ms; 0 = never.
    pub tls_keys_idle_ms: u64,
    /// A log write that would start within this long of the previous one's
    /// end waits until then, so that under load each write carries more
    /// records; µs; 0 = never ([`crate::pacer`]).
    pub commit_delay_us: u64,
    /// Token verifying keys as `KEY_ID:HEX` (from `gateway token keygen`);
    /// none = a development key generated into the data directory.
    pub verifying_keys: Vec<String>,
    /// Connections per shard.
    pub conns_per_shard: usize,
    /// Sends per second per connection, sustained.
    pub sends_per_s: u32,
    /// Payload bytes per second per connection, sustained.
    pub send_bytes_per_s: u32,
    /// Seconds of the sustained rates a client may burst.
    pub burst_s: u32,
    /// Largest frame accepted, bytes.
    pub frame_bytes_max: u32,
    /// TLS handshake deadline, ms.
    pub handshake_timeout_ms: u64,
    /// From handshake to a valid `Hello`, ms.
    pub auth_timeout_ms: u64,
    /// Silence before a connection is closed, ms (probed at half).
    pub idle_timeout_ms: u64,
    /// From `GoAway` to the close, ms; also the drain deadline.
    pub drain_timeout_ms: u64,
    /// Unacknowledged messages in flight to one device.
    pub window: usize,
    /// Pending output per connection before it is a slow reader, bytes.
    pub out_bytes_max: usize,
    /// Messages one device's offline queue may hold.
    pub queue_messages_max: usize,
    /// Receipts (✓✓, read, expired) one device's queue may hold, apart
    /// from its messages.
    pub queue_receipts_max: usize,
    /// Default message TTL, seconds.
    pub ttl_default_s: u64,
    /// Pending TCP connections the kernel queues per shard's listener
    /// (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// A shard not serving this long after start is stuck: the process
    /// exits (status 75) naming it, seconds.
    pub startup_timeout_s: u64,
    /// How long memory the process freed stays with it before it is given
    /// back to the kernel, ms; -1: never (reused by later allocations).
    pub allocator_purge_delay_ms: i64,
    /// Whether the process's memory may be backed by transparent huge
    /// pages. Off: each first touch of a huge page zeroes 2 MiB inside a
    /// shard's turn, the kernel's `khugepaged` stalls the process while it
    /// collapses pages, and a partly used huge page is resident whole.
    pub allocator_huge_pages: bool,
    /// Log segment size, bytes: reclaim deletes whole segments, so the log
    /// stays within 2 × live bytes + 2 segments.
    pub segment_bytes: u64,
    /// How long a stored send's original id is kept for answering its
    /// retries (the dedup window's time backstop), seconds.
    pub dedup_ids_s: u64,
    /// Log bytes not yet durable past which a shard stops reading its
    /// sockets until the disk catches up (backpressure).
    pub log_unsynced_bytes_max: u64,
    /// Batches held for other shards' full rings past which a shard stops
    /// reading its sockets (backpressure).
    pub peer_held_batches_max: usize,
    /// Most members a group may have.
    pub group_members_max: usize,
    /// Most linked devices a user may have.
    pub devices_per_user_max: usize,
    /// A device not connected for this long is unlinked, seconds.
    pub device_idle_s: u64,
    /// The bearer token every admin request but `/health` and `/ready`
    /// must carry; none = one generated into `data_dir/admin-token`.
    pub admin_token: Option<String>,
    /// New conversations (recipients it has not written to lately) a
    /// sending device may start per hour; 0 = no limit.
    pub abuse_new_conversations_per_h: u32,
    /// Messages a sending device may send one recipient (user, device or
    /// group) per second, bursting twice that; 0 = no limit.
    pub abuse_messages_per_recipient_per_s: u32,
    /// Groups a device may create per day; 0 = no limit.
    pub abuse_group_creates_per_day: u32,
    /// Where push wake-ups go: an HTTP(S) URL that takes POSTed JSON
    /// batches; none = no push notifier.
    pub push_webhook_url: Option<String>,
    /// At most one wake-up per device per this many seconds.
    pub push_interval_s: u64,
    /// Wake-ups waiting for the webhook; past it the oldest are dropped.
    pub push_queue_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let session = SessionConfig::default();
        let shard = ShardConfig::default();
        let engine = queue_engine::EngineConfig::default();
        Self {
            listen: "127.0.0.1:7443".parse().expect("valid"),
            admin_listen: "127.0.0.1:7080".parse().expect("valid"),
            shards: 0,
            pin_shards: PinShards::Auto,
            data_dir: PathBuf::from("data"),
            tls_cert: None,
            tls_key: None,
            allow_tls12: false,
            tls_keys_idle_ms: 10_000,
            commit_delay_us: 0,
            verifying_keys: Vec::new(),
            conns_per_shard: shard.conns_max,
            sends_per_s: session.sends_per_s,
            send_bytes_per_s: session.send_bytes_per_s,
            burst_s: session.burst_s,
            frame_bytes_max: shard.limits.frame_bytes_max,
            handshake_timeout_ms: session.handshake_timeout_ms,
            auth_timeout_ms: session.auth_timeout_ms,
            idle_timeout_ms: session.idle_timeout_ms,
            drain_timeout_ms: session.drain_timeout_ms,
            window: shard.window,
            out_bytes_max: shard.out_bytes_max,
            queue_messages_max: engine.queue_messages_max,
            queue_receipts_max: engine.queue_receipts_max,
            ttl_default_s: engine.ttl_default_ms / 1000,
            listen_backlog: 4096,
            startup_timeout_s: 300,
            allocator_purge_delay_ms: 1_000,
            allocator_huge_pages: false,
            segment_bytes: engine.log.segment_bytes_max,
            dedup_ids_s: engine.dedup_ids_ms / 1000,
            log_unsynced_bytes_max: shard.log_unsynced_bytes_max,
            peer_held_batches_max: shard.peer_held_batches_max,
            group_members_max: shard.group_members_max,
            devices_per_user_max: shard.devices_per_user_max,
            device_idle_s: shard.device_idle_ms / 1000,
            admin_token: None,
            abuse_new_conversations_per_h: shard.abuse.new_conversations_per_h,
            abuse_messages_per_recipient_per_s: shard.abuse.messages_per_recipient_per_s,
            abuse_group_creates_per_day: shard.abuse.group_creates_per_day,
            push_webhook_url: None,
            push_interval_s: 60,
            push_queue_max: 10_000,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

macro_rules! overrides {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        /// Flags of `gateway serve`; each overrides the file's key of the
        /// same name.
        #[derive(Debug, Clone, Default, Args)]
        pub struct Overrides {
            /// A TOML configuration file (every key optional).
            #[arg(long)]
            pub config: Option<PathBuf>,
            /// A token verifying key `KEY_ID:HEX` (repeat for rotation);
            /// replaces the file's `verifying_keys`.
            #[arg(long = "verifying-key")]
            pub verifying_keys: Vec<String>,
            $(#[$doc] #[arg(long)] pub $name: Option<$ty>,)*
        }

        impl Overrides {
            fn apply(&self, s: &mut Settings) {
                $(if let Some(v) = &self.$name { s.$name = v.clone().into(); })*
            }
        }
    };
}

overrides! {
    /// Client TLS address [default: 127.0.0.1:7443].
    listen: SocketAddr,
    /// Admin HTTP address [default: 127.0.0.1:7080].
    admin_listen: SocketAddr,
    /// Executors, one per core; 0 = every core [default: 0].
    shards: usize,
    /// Keep each shard to one CPU: auto, on or off; auto = on if the CPU mask excludes some CPUs [default: auto].
    pin_shards: PinShards,
    /// Data directory [default: data].
    data_dir: PathBuf,
    /// PEM certificate chain [default: a generated development certificate].
    tls_cert: PathBuf,
    /// PEM private key of --tls-cert.
    tls_key: PathBuf,
    /// Accept TLS 1.2 too [default: false].
    allow_tls12: bool,
    /// Silence after which a connection's TLS keys sleep, ms; 0 = never [default: 10000].
    tls_keys_idle_ms: u64,
    /// Hold a log write until this long after the previous one ended, µs; a write after a quiet spell goes at once; 0 = never [default: 0].
    commit_delay_us: u64,
    /// Connections per shard [default: 100000].
    conns_per_shard: usize,
    /// Sends per second per connection [default: 100].
    sends_per_s: u32,
    /// Payload bytes per second per connection [default: 1048576].
    send_bytes_per_s: u32,
    /// Burst, in seconds of the sustained rates [default: 2].
    burst_s: u32,
    /// Largest frame, bytes [default: 65536].
    frame_bytes_max: u32,
    /// TLS handshake deadline, ms [default: 10000].
    handshake_timeout_ms: u64,
    /// Deadline for a valid Hello, ms [default: 10000].
    auth_timeout_ms: u64,
    /// Idle timeout, ms [default: 300000].
    idle_timeout_ms: u64,
    /// Drain deadline, ms [default: 30000].
    drain_timeout_ms: u64,
    /// Unacknowledged messages in flight per device [default: 512].
    window: usize,
    /// Pending output per connection before SlowReader, bytes [default: 4194304].
    out_bytes_max: usize,
    /// Offline queue limit per device, messages [default: 10000].
    queue_messages_max: usize,
    /// Receipts queued per device, apart from messages [default: 10000].
    queue_receipts_max: usize,
    /// Default message TTL, seconds [default: 2592000].
    ttl_default_s: u64,
    /// Listen backlog per shard, capped by net.core.somaxconn [default: 4096].
    listen_backlog: u32,
    /// Start-up watchdog: exit if a shard is not serving by then, seconds [default: 300].
    startup_timeout_s: u64,
    /// Freed memory is given back to the kernel after this long, ms; -1: never [default: 1000].
    allocator_purge_delay_ms: i64,
    /// Let memory be backed by transparent huge pages [default: false].
    allocator_huge_pages: bool,
    /// Log segment size, bytes, at least 1 MiB [default: 67108864].
    segment_bytes: u64,
    /// Original ids kept for answering retries, seconds [default: 3600].
    dedup_ids_s: u64,
    /// Unsynced log bytes before a shard stops reading sockets [default: 67108864].
    log_unsynced_bytes_max: u64,
    /// Batches held for full rings before a shard stops reading sockets [default: 1024].
    peer_held_batches_max: usize,
    /// Most members per group [default: 1024].
    group_members_max: usize,
    /// Most linked devices per user [default: 5].
    devices_per_user_max: usize,
    /// Unlink a device not connected for this long, seconds [default: 2592000].
    device_idle_s: u64,
    /// Bearer token for the admin endpoint [default: generated into DATA_DIR/admin-token].
    admin_token: String,
    /// New conversations per sending device per hour; 0 = no limit [default: 200].
    abuse_new_conversations_per_h: u32,
    /// Messages per sending device per recipient per second; 0 = no limit [default: 50].
    abuse_messages_per_recipient_per_s: u32,
    /// Groups a device may create per day; 0 = no limit [default: 100].
    abuse_group_creates_per_day: u32,
    /// Push wake-ups go to this URL as POSTed JSON batches [default: none, no pushes].
    push_webhook_url: String,
    /// At most one wake-up per device per this many seconds [default: 60].
    push_interval_s: u64,
    /// Wake-ups waiting for the webhook before the oldest are dropped [default: 10000].
    push_queue_max: usize,
}

impl Overrides {
    /// The settings: defaults, then the file (if any), then the flags.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        self.apply(&mut settings);
        if !self.verifying_keys.is_empty() {
            settings.verifying_keys.clone_from(&self.verifying_keys);
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// Smallest log segment: the largest record fits.
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
/// Smallest frame limit: a `Receipt` of 256 ids and a `GroupCreate` fit.
pub const FRAME_BYTES_MIN: u32 = 4 << 10;
/// Largest frame limit: a message record (payload, plus 20 bytes per
/// recipient device) must stay far below the log's 1 MiB record limit.
pub const FRAME_BYTES_MAX: u32 = 256 << 10;

impl Settings {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let settings: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and pairs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together");
        }
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&self.frame_bytes_max) {
            return bad("frame_bytes_max must be within 4 KiB..256 KiB");
        }
        if self.window == 0 || self.conns_per_shard == 0 || self.sends_per_s == 0 {
            return bad("window, conns_per_shard and sends_per_s must be positive");
        }
        if self.listen_backlog == 0 || self.startup_timeout_s == 0 {
            return bad("listen_backlog and startup_timeout_s must be positive");
        }
        if self.allocator_purge_delay_ms < -1 {
            return bad("allocator_purge_delay_ms must be -1 (never) or at least 0");
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return bad("segment_bytes must be at least 1 MiB (a record's limit)");
        }
        if !(2..=shard_router::GROUP_MEMBERS_MAX_LIMIT).contains(&self.group_members_max) {
            return bad("group_members_max must be within 2..=8192");
        }
        if self.devices_per_user_max == 0 || self.device_idle_s == 0 {
            return bad("devices_per_user_max and device_idle_s must be positive");
        }
        if self.out_bytes_max < self.frame_bytes_max as usize {
            return bad("out_bytes_max must hold at least one frame");
        }
        if let Some(url) = &self.push_webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("push_webhook_url must be an http:// or https:// URL");
        }
        if self.push_interval_s == 0 || self.push_queue_max == 0 {
            return bad("push_interval_s and push_queue_max must be positive");
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 8) {
            return bad("admin_token must be at least 8 characters");
        }
        for key in &self.verifying_keys {
            crate::token::parse_verifying_key(key).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The per-shard settings.
    pub fn shard_config(&self) -> ShardConfig {
        let limits = wire_format::Limits::with_frame_bytes_max(self.frame_bytes_max);
        let session = SessionConfig {
            payload_bytes_max: limits.payload_bytes_max(),
            handshake_timeout_ms: self.handshake_timeout_ms,
            auth_timeout_ms: self.auth_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            drain_timeout_ms: self.drain_timeout_ms,
            sends_per_s: self.sends_per_s,
            send_bytes_per_s: self.send_bytes_per_s,
            burst_s: self.burst_s,
            ..SessionConfig::default()
        };
        ShardConfig {
            session,
            limits,
            window: self.window,
            out_bytes_max: self.out_bytes_max,
            conns_max: self.conns_per_shard,
            log_unsynced_bytes_max: self.log_unsynced_bytes_max,
            peer_held_batches_max: self.peer_held_batches_max,
            group_members_max: self.group_members_max,
            devices_per_user_max: self.devices_per_user_max,
            device_idle_ms: self.device_idle_s.saturating_mul(1000),
            id_seed: 0,
            abuse: crate::abuse::AbuseConfig {
                new_conversations_per_h: self.abuse_new_conversations_per_h,
                messages_per_recipient_per_s: self.abuse_messages_per_recipient_per_s,
                group_creates_per_day: self.abuse_group_creates_per_day,
            },
            push_interval_ms: self
                .push_webhook_url
                .as_ref()
                .map(|_| self.push_interval_s.saturating_mul(1000)),
        }
    }

    /// The queue engine's settings.
    pub fn engine_config(&self) -> queue_engine::EngineConfig {
        queue_engine::EngineConfig {
            queue_messages_max: self.queue_messages_max,
            queue_receipts_max: self.queue_receipts_max,
            ttl_default_ms: self.ttl_default_s.saturating_mul(1000),
            dedup_ids_ms: self.dedup_ids_s.saturating_mul(1000),
            log: queue_engine::LogConfig {
                segment_bytes_max: self.segment_bytes,
                ..queue_engine::LogConfig::default()
            },
            ..queue_engine::EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_frame(frame_bytes_max: u32) -> Settings {
        Settings {
            frame_bytes_max,
            out_bytes_max: 64 << 20,
            ..Settings::default()
        }
    }

    #[test]
    fn frame_limits_that_a_record_cannot_hold_are_refused() {
        assert!(with_frame(64 << 10).validate().is_ok());
        assert!(with_frame(FRAME_BYTES_MAX).validate().is_ok());
        for too_big in [FRAME_BYTES_MAX + 1, 1 << 20, 2 << 20, 16 << 20] {
            let error = with_frame(too_big).validate().unwrap_err();
            assert!(error.to_string().contains("frame_bytes_max"), "{error}");
        }
        assert!(with_frame(FRAME_BYTES_MIN - 1).validate().is_err());
    }

    #[test]
    fn a_purge_delay_is_never_or_at_least_zero() {
        let with = |ms| Settings {
            allocator_purge_delay_ms: ms,
            ..Settings::default()
        };
        assert_eq!(
            Settings::default().allocator_purge_delay_ms,
            1_000,
            "mimalloc's own default"
        );
        for ok in [-1, 0, 1_000] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        let error = with(-2).validate().unwrap_err();
        assert!(
            error.to_string().contains("allocator_purge_delay_ms"),
            "{error}"
        );
    }

    #[test]
    fn the_session_accepts_what_a_deliver_can_carry() {
        let shard = with_frame(128 << 10).shard_config();
        assert_eq!(
            shard.session.payload_bytes_max,
            shard.limits.payload_bytes_max()
        );
        assert_eq!(shard.limits.frame_bytes_max, 128 << 10);
    }
}
