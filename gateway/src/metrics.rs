//! The gateway's Prometheus metrics (`prometheus-client`), one series per
//! shard. Shards publish their counters once per tick (a few times a
//! second), so the hot path touches no shared cache line; I/O timings
//! (fdatasync, batch sizes) are observed where they happen, once per batch.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::shard::Stats;

/// Labels of per-shard series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// The shard.
    pub shard: u16,
}

/// Labels of error counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// The shard.
    pub shard: u16,
    /// The protocol error code.
    pub code: u16,
}

/// Labels of backpressure counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    /// The shard.
    pub shard: u16,
    /// The spent budget (`log_unsynced`, `peer_outbox`).
    pub budget: String,
}

type Counters = Family<ShardLabel, Counter>;
type Gauges = Family<ShardLabel, Gauge>;
type Histograms = Family<ShardLabel, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    conns: Gauges,
    conns_opened: Counters,
    handshakes: Counters,
    tls_errors: Counters,
    tls_keys_slept: Counters,
    frames_in: Counters,
    frames_out: Counters,
    messages_stored: Counters,
    messages_delivered: Counters,
    duplicates: Counters,
    receipts_stored: Counters,
    receipts_deferred: Counters,
    group_changes: Counters,
    group_skipped: Counters,
    devices_unlinked: Counters,
    anomalies: Counters,
    log_failures: Counters,
    mesh_doorbells: Counters,
    commit_holds: Counters,
    errors: Family<ErrorLabel, Counter>,
    reads_paused: Family<BudgetLabel, Counter>,
    queued_messages: Gauges,
    log_bytes: Gauges,
    live_bytes: Gauges,
    recovery_records: Gauges,
    recovery_from_checkpoint: Gauges,
    batch_bytes: Histograms,
    fdatasync_seconds: Histograms,
    /// Per-shard counters published straight from one [`Stats`] field.
    plain: Vec<(Counters, StatField)>,
    /// Sends and requests refused by a per-device abuse limit.
    abuse_refused: Family<LimitLabel, Counter>,
    /// The push notifier's counters (one notifier per process).
    pub push: PushCounters,
}

/// Labels of abuse-limit counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The shard.
    pub shard: u16,
    /// `new_conversations`, `messages_per_recipient` or `group_creates`.
    pub limit: String,
}

/// What the push notifier did (`gateway_push_*`).
#[derive(Debug, Default, Clone)]
pub struct PushCounters {
    /// Wake-ups delivered to the push service (in accepted batches).
    pub sent: Counter,
    /// Batch attempts that failed (connection error or a non-2xx answer).
    pub failed: Counter,
    /// Wake-ups dropped: the oldest when the queue was full, or given up
    /// after the retry deadline.
    pub dropped: Counter,
    /// Tokens the push service rejected (forgotten by the server).
    pub rejected: Counter,
}

/// Reads one counter of a shard's [`Stats`].
type StatField = fn(&Stats) -> u64;

/// The per-shard counters that are one [`Stats`] field each: (name, help,
/// field).
const PLAIN: &[(&str, &str, StatField)] = &[
    (
        "settings_changed",
        "Privacy settings changes stored (SettingsSet)",
        |s| s.settings_changed,
    ),
    (
        "read_receipts_suppressed",
        "Read receipts not relayed because their user turned read receipts off",
        |s| s.read_receipts_suppressed,
    ),
    (
        "push_tokens_set",
        "Push tokens registered or cleared by devices",
        |s| s.push_tokens_set,
    ),
    (
        "sessions_kicked",
        "Sessions the operator closed (Kicked)",
        |s| s.kicked,
    ),
    ("bans", "Bans the operator set", |s| s.banned),
    (
        "push_wakes",
        "Push wake-ups handed to the notifier (coalesced per device and interval)",
        |s| s.push_wakes,
    ),
    (
        "gap_messages",
        "Messages dropped before their device read them (TTL, a full queue for a group message), each told in a gap notice",
        |s| s.gap_messages,
    ),
    ("gap_notices", "Gap notices stored", |s| s.gap_notices),
];

fn bytes_buckets() -> Histogram {
    Histogram::new(exponential_buckets(256.0, 2.0, 14))
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `gateway_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let m = Self {
            conns: Gauges::default(),
            conns_opened: Counters::default(),
            handshakes: Counters::default(),
            tls_errors: Counters::default(),
            tls_keys_slept: Counters::default(),
            frames_in: Counters::default(),
            frames_out: Counters::default(),
            messages_stored: Counters::default(),
            messages_delivered: Counters::default(),
            duplicates: Counters::default(),
            receipts_stored: Counters::default(),
            receipts_deferred: Counters::default(),
            group_changes: Counters::default(),
            group_skipped: Counters::default(),
            devices_unlinked: Counters::default(),
            anomalies: Counters::default(),
            log_failures: Counters::default(),
            mesh_doorbells: Counters::default(),
            commit_holds: Counters::default(),
            errors: Family::default(),
            reads_paused: Family::default(),
            queued_messages: Gauges::default(),
            log_bytes: Gauges::default(),
            live_bytes: Gauges::default(),
            recovery_records: Gauges::default(),
            recovery_from_checkpoint: Gauges::default(),
            batch_bytes: Histograms::new_with_constructor(bytes_buckets),
            fdatasync_seconds: Histograms::new_with_constructor(seconds_buckets),
            plain: Vec::new(),
            abuse_refused: Family::default(),
            push: PushCounters::default(),
            registry: Registry::default(),
        };
        let mut m = m;
        let r = &mut registry;
        r.register("connections", "Open connections", m.conns.clone());
        r.register(
            "connections_opened",
            "Connections accepted",
            m.conns_opened.clone(),
        );
        r.register(
            "handshakes",
            "TLS handshakes completed",
            m.handshakes.clone(),
        );
        r.register(
            "tls_errors",
            "Connections closed by a TLS error",
            m.tls_errors.clone(),
        );
        r.register(
            "tls_keys_slept",
            "Times a quiet connection let its TLS keys' expanded form go",
            m.tls_keys_slept.clone(),
        );
        r.register("frames_in", "Frames decoded", m.frames_in.clone());
        r.register("frames_out", "Frames encoded", m.frames_out.clone());
        r.register(
            "messages_stored",
            "Messages made durable (home shard)",
            m.messages_stored.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages and receipts handed to devices",
            m.messages_delivered.clone(),
        );
        r.register(
            "duplicates",
            "Retries answered with the original",
            m.duplicates.clone(),
        );
        r.register(
            "receipts_stored",
            "Receipt records stored (each covers the acks coalesced into it)",
            m.receipts_stored.clone(),
        );
        r.register(
            "receipts_deferred",
            "Receipts kept for a retry because a recipient's queue was full",
            m.receipts_deferred.clone(),
        );
        r.register(
            "group_changes",
            "Group membership changes stored (at the group's home)",
            m.group_changes.clone(),
        );
        r.register(
            "group_skipped",
            "Member devices a group message or change skipped because their queue was full",
            m.group_skipped.clone(),
        );
        r.register(
            "devices_unlinked",
            "Devices unlinked (by another device, the operator or idleness)",
            m.devices_unlinked.clone(),
        );
        r.register(
            "internal_errors",
            "Broken invariants, counted and logged instead of crashing",
            m.anomalies.clone(),
        );
        r.register(
            "log_failures",
            "I/O errors on the log (fail-stop: the process exits)",
            m.log_failures.clone(),
        );
        r.register(
            "mesh_doorbells",
            "Times another shard rang this one's doorbell to hand it a batch (each a write to a socket, and a thread wake-up if this shard was asleep)",
            m.mesh_doorbells.clone(),
        );
        r.register(
            "commit_holds",
            "Log writes held back by commit_delay_us because the shard's writes kept following each other",
            m.commit_holds.clone(),
        );
        r.register("errors", "Error frames sent, by code", m.errors.clone());
        r.register(
            "reads_paused",
            "Socket reads put off because a shard budget was spent (TCP backpressure), by budget",
            m.reads_paused.clone(),
        );
        r.register(
            "queued_messages",
            "Message records still referenced by a queue",
            m.queued_messages.clone(),
        );
        r.register(
            "log_bytes",
            "Bytes in the log's segments",
            m.log_bytes.clone(),
        );
        r.register(
            "recovery_records",
            "Log records replayed when the shard started",
            m.recovery_records.clone(),
        );
        r.register(
            "recovery_from_checkpoint",
            "1 if the shard started from its checkpoint, 0 if from the whole log",
            m.recovery_from_checkpoint.clone(),
        );
        r.register(
            "live_bytes",
            "Bytes of the log's records still needed (reclaim keeps log_bytes within 2 x this + 2 segments)",
            m.live_bytes.clone(),
        );
        r.register(
            "group_commit_batch_bytes",
            "Bytes per group-commit batch",
            m.batch_bytes.clone(),
        );
        r.register(
            "fdatasync_seconds",
            "Write + fdatasync latency per batch",
            m.fdatasync_seconds.clone(),
        );
        for (name, help, field) in PLAIN {
            let counters = Counters::default();
            r.register(*name, *help, counters.clone());
            m.plain.push((counters, *field));
        }
        r.register(
            "abuse_refused",
            "Sends and requests refused by a per-device abuse limit, by limit",
            m.abuse_refused.clone(),
        );
        let p = &m.push;
        r.register(
            "push_sent",
            "Push wake-ups the push service accepted",
            p.sent.clone(),
        );
        r.register(
            "push_failed",
            "Push batch attempts that failed (retried with backoff)",
            p.failed.clone(),
        );
        r.register(
            "push_dropped",
            "Push wake-ups dropped (queue full: the oldest; or past the retry deadline)",
            p.dropped.clone(),
        );
        r.register(
            "push_rejected",
            "Push tokens the push service rejected (forgotten)",
            p.rejected.clone(),
        );
        Self { registry, ..m }
    }

    /// A send or request on `shard` was refused by abuse `limit`.
    pub fn abuse_refused(&self, shard: u16, limit: &str, n: u64) {
        let label = LimitLabel {
            shard,
            limit: limit.to_owned(),
        };
        self.abuse_refused.get_or_create(&label).inc_by(n);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// A TLS handshake completed on `shard`.
    pub fn handshake(&self, shard: u16) {
        self.handshakes.get_or_create(&ShardLabel { shard }).inc();
    }

    /// A connection on `shard` ended in a TLS error.
    pub fn tls_error(&self, shard: u16) {
        self.tls_errors.get_or_create(&ShardLabel { shard }).inc();
    }

    /// A quiet connection on `shard` let its TLS keys sleep.
    pub fn tls_keys_slept(&self, shard: u16) {
        self.tls_keys_slept
            .get_or_create(&ShardLabel { shard })
            .inc();
    }

    /// How the shard's start went: records replayed, and whether from a
    /// checkpoint.
    pub fn recovered(&self, shard: u16, records: u64, from_checkpoint: bool) {
        let l = ShardLabel { shard };
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        self.recovery_records.get_or_create(&l).set(records);
        let from = i64::from(from_checkpoint);
        self.recovery_from_checkpoint.get_or_create(&l).set(from);
    }

    /// A connection put off a read because `budget` was spent.
    pub fn read_paused(&self, shard: u16, budget: &str) {
        let label = BudgetLabel {
            shard,
            budget: budget.to_owned(),
        };
        self.reads_paused.get_or_create(&label).inc();
    }

    /// One group-commit batch of `bytes` took `seconds` to write and sync.
    pub fn flushed(&self, shard: u16, bytes: usize, seconds: f64) {
        let l = ShardLabel { shard };
        self.batch_bytes.get_or_create(&l).observe(bytes as f64);
        self.fdatasync_seconds.get_or_create(&l).observe(seconds);
    }

    /// `shard` held a log write back (`commit_delay_us`).
    pub fn commit_held(&self, shard: u16) {
        self.commit_holds.get_or_create(&ShardLabel { shard }).inc();
    }

    /// `shard`'s doorbell has been rung `total` times since the start.
    pub fn doorbells(&self, shard: u16, total: u64) {
        let counter = self.mesh_doorbells.get_or_create(&ShardLabel { shard });
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// An I/O error on `shard`'s log: the process is about to exit.
    pub fn log_failed(&self, shard: u16) {
        self.log_failures.get_or_create(&ShardLabel { shard }).inc();
    }

    /// Publishes a shard's counters: the change since `last`.
    pub fn publish(&self, shard: u16, now: &Stats, last: &Stats, gauges: [u64; 4]) {
        let l = ShardLabel { shard };
        let add = |c: &Counters, new: u64, old: u64| {
            c.get_or_create(&l).inc_by(new.saturating_sub(old));
        };
        add(&self.conns_opened, now.conns_opened, last.conns_opened);
        add(&self.frames_in, now.frames_in, last.frames_in);
        add(&self.frames_out, now.frames_out, last.frames_out);
        add(
            &self.messages_stored,
            now.messages_stored,
            last.messages_stored,
        );
        add(
            &self.messages_delivered,
            now.messages_delivered,
            last.messages_delivered,
        );
        add(&self.duplicates, now.duplicates, last.duplicates);
        add(
            &self.receipts_stored,
            now.receipts_stored,
            last.receipts_stored,
        );
        add(
            &self.receipts_deferred,
            now.receipts_deferred,
            last.receipts_deferred,
        );
        add(&self.group_changes, now.group_changes, last.group_changes);
        add(&self.group_skipped, now.group_skipped, last.group_skipped);
        add(
            &self.devices_unlinked,
            now.devices_unlinked,
            last.devices_unlinked,
        );
        add(&self.anomalies, now.anomalies, last.anomalies);
        for (counters, field) in &self.plain {
            add(counters, field(now), field(last));
        }
        for (i, limit) in crate::abuse::Limit::ALL.iter().enumerate() {
            let n = now.abuse_refused[i].saturating_sub(last.abuse_refused[i]);
            if n > 0 {
                self.abuse_refused(shard, limit.name(), n);
            }
        }
        for (code, n) in &now.errors {
            let old = last.errors.get(code).copied().unwrap_or(0);
            let label = ErrorLabel { shard, code: *code };
            self.errors
                .get_or_create(&label)
                .inc_by(n.saturating_sub(old));
        }
        let [conns, queued, log_bytes, live_bytes] =
            gauges.map(|g| i64::try_from(g).unwrap_or(i64::MAX));
        self.live_bytes.get_or_create(&l).set(live_bytes);
        self.conns.get_or_create(&l).set(conns);
        self.queued_messages.get_or_create(&l).set(queued);
        self.log_bytes.get_or_create(&l).set(log_bytes);
    }
}
