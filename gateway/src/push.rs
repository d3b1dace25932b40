//! The push notifier: the shell between the shards' wake-ups
//! ([`crate::shard::Wake`]) and the operator's webhook. The shards' tickers
//! [`Notifier::submit`] what is due into a bounded queue (past
//! `queue_max`, the oldest are dropped and counted); one thread of its own
//! POSTs them as JSON batches with `ureq` (blocking, so it never runs on a
//! shard's executor), retries a failed batch with exponential backoff (1 s,
//! doubling to 1 h) and gives it up 24 h after its first try.
//!
//! The request body:
//!
//! ```json
//! {"wakeups": [{"user": 42, "device": 1, "platform": "fcm",
//!               "token_hex": "…", "count": 3, "at_ms": 1767225600000}]}
//! ```
//!
//! A 2xx answer accepts the batch. Its body may name tokens the push
//! service no longer takes, `{"rejected": [{"user": 42, "device": 1,
//! "token_hex": "…"}]}`; the server then forgets them (unless the device
//! registered another since). Any other answer, or no answer within 10 s,
//! fails the batch, which is retried. Never any message content.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::PushCounters;
use crate::shard::Wake;

/// How the notifier talks to the webhook.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The webhook.
    pub url: String,
    /// Wake-ups waiting at most; past it the oldest are dropped.
    pub queue_max: usize,
    /// Wake-ups per POST at most.
    pub batch_max: usize,
    /// The first retry's delay; each next one doubles, up to `backoff_max`.
    pub backoff_first: Duration,
    /// The longest delay between retries.
    pub backoff_max: Duration,
    /// A batch still failing this long after its first try is dropped.
    pub give_up_after: Duration,
    /// One request's deadline.
    pub timeout: Duration,
}

impl PushConfig {
    /// The documented defaults for `url`, holding `queue_max`.
    pub fn new(url: String, queue_max: usize) -> Self {
        Self {
            url,
            queue_max,
            batch_max: 500,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A token the push service rejected: the device's home forgets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The device's user.
    pub user: u64,
    /// The device.
    pub device: u32,
    /// The rejected token.
    pub token: Vec<u8>,
}

/// The queue the shards fill and the notifier thread empties.
#[derive(Debug)]
pub struct Notifier {
    queue: Mutex<VecDeque<Wake>>,
    ready: Condvar,
    config: PushConfig,
    counters: PushCounters,
}

impl Notifier {
    /// Starts the notifier thread; `rejected` is called (on it) for each
    /// token the push service rejected.
    pub fn start(
        config: PushConfig,
        counters: PushCounters,
        rejected: impl Fn(Rejected) + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let notifier = Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            config,
            counters,
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(notifier.config.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let worker = notifier.clone();
        std::thread::Builder::new()
            .name("push".into())
            .spawn(move || worker.run(&agent, &rejected))?;
        Ok(notifier)
    }

    /// Queues `wakes`; past `queue_max` the oldest are dropped (counted).
    pub fn submit(&self, wakes: Vec<Wake>) {
        if wakes.is_empty() {
            return;
        }
        let mut queue = self.lock();
        queue.extend(wakes);
        let over = queue.len().saturating_sub(self.config.queue_max);
        if over > 0 {
            queue.drain(..over);
            self.counters.dropped.inc_by(over as u64);
        }
        drop(queue);
        self.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Wake>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next batch, waiting for one.
    fn next_batch(&self) -> Vec<Wake> {
        let mut queue = self.lock();
        while queue.is_empty() {
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let n = queue.len().min(self.config.batch_max);
        queue.drain(..n).collect()
    }

    fn run(&self, agent: &ureq::Agent, rejected: &dyn Fn(Rejected)) {
        loop {
            let batch = self.next_batch();
            self.deliver(agent, &batch, rejected);
        }
    }

    /// POSTs `batch` until it is accepted or given up.
    fn deliver(&self, agent: &ureq::Agent, batch: &[Wake], rejected: &dyn Fn(Rejected)) {
        let body = batch_json(batch).to_string();
        let first_try = Instant::now();
        let mut delay = self.config.backoff_first;
        loop {
            match self.post(agent, &body) {
                Ok(gone) => {
                    self.counters.sent.inc_by(batch.len() as u64);
                    for r in gone {
                        self.counters.rejected.inc();
                        rejected(r);
                    }
                    return;
                }
                Err(why) => {
                    self.counters.failed.inc();
                    tracing::warn!("push webhook: {why}; retrying in {delay:?}");
                }
            }
            if first_try.elapsed() + delay > self.config.give_up_after {
                tracing::warn!("push webhook: giving up a batch of {}", batch.len());
                self.counters.dropped.inc_by(batch.len() as u64);
                return;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.config.backoff_max);
        }
    }

    /// One POST: the tokens it says were rejected, or why it failed.
    fn post(&self, agent: &ureq::Agent, body: &str) -> Result<Vec<Rejected>, String> {
        let mut response = agent
            .post(&self.config.url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok(rejected_tokens(&text))
    }
}

/// The request body for `batch`.
pub fn batch_json(batch: &[Wake]) -> serde_json::Value {
    let wakeups: Vec<serde_json::Value> = batch
        .iter()
        .map(|w| {
            serde_json::json!({
                "user": w.user,
                "device": w.device,
                "platform": w.platform,
                "token_hex": hex::encode(&w.token),
                "count": w.count,
                "at_ms": w.at_ms,
            })
        })
        .collect();
    serde_json::json!({ "wakeups": wakeups })
}

/// The tokens a 2xx answer's body rejects (none if it says nothing).
pub fn rejected_tokens(body: &str) -> Vec<Rejected> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(list) = value.get("rejected").and_then(|r| r.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|r| {
            Some(Rejected {
                user: r.get("user")?.as_u64()?,
                device: u32::try_from(r.get("device")?.as_u64()?).ok()?,
                token: hex::decode(r.get("token_hex")?.as_str()?).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(user: u64) -> Wake {
        Wake {
            user,
            device: 0,
            platform: "fcm".into(),
            token: vec![1],
            count: 1,
            at_ms: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_them() {
        let counters = PushCounters::default();
        let n = Notifier {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            config: PushConfig::new("http://127.0.0.1:9/".into(), 3),
            counters: counters.clone(),
        };
        n.submit((1..=2).map(wake).collect());
        n.submit((3..=5).map(wake).collect());
        let users: Vec<u64> = n.next_batch().iter().map(|w| w.user).collect();
        assert_eq!(users, [3, 4, 5], "the newest kept");
        assert_eq!(counters.dropped.get(), 2);
    }

    #[test]
    fn the_answer_names_the_rejected_tokens() {
        let body = r#"{"rejected": [{"user": 7, "device": 2, "token_hex": "abcd"},
                                    {"user": 8, "device": 1, "token_hex": "not hex"}]}"#;
        let want = Rejected {
            user: 7,
            device: 2,
            token: vec![0xab, 0xcd],
        };
        assert_eq!(rejected_tokens(body), [want]);
        assert_eq!(rejected_tokens("ok"), []);
        assert_eq!(rejected_tokens("{}"), []);
    }

    #[test]
    fn a_batch_carries_no_content_only_who_and_how_many() {
        let wake = Wake {
            platform: "apns".into(),
            token: vec![1, 2],
            count: 5,
            at_ms: 9,
            ..wake(1)
        };
        let json = batch_json(&[wake]);
        assert_eq!(
            json,
            serde_json::json!({"wakeups": [{"user": 1, "device": 0, "platform": "apns",
                "token_hex": "0102", "count": 5, "at_ms": 9}]})
        );
    }
}
