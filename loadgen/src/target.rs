//! [`Target`]: where a worker connects and how it authenticates, opening
//! connections at a bounded ramp rate, from several source addresses, a
//! bounded number at a time, retrying while the gateway is away (a
//! restart under load looks like refused connects for a while).

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::token::SigningKey;
use client::{ClientCore, ClientEvent, Connection};
use glommio::sync::Semaphore;

use crate::epoch_ns;
use crate::live::Recorder;
use crate::report::{Counter, Latency};

/// What every worker shares (cheap to clone).
#[derive(Clone)]
pub struct TargetSpec {
    /// The gateway's TLS address.
    pub addr: SocketAddr,
    /// Trusting the gateway's certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// Signs tokens for any user.
    pub key: Arc<SigningKey>,
    /// Local addresses to connect from, in turn.
    pub sources: Vec<IpAddr>,
    /// New connections per second for this worker; 0 = no limit.
    pub ramp_per_s: f64,
    /// Connections being opened at once by this worker.
    pub concurrency: usize,
    /// How long a held delivery ack waits for a frame to ride.
    pub ack_delay: Duration,
}

/// One worker's view of the gateway.
pub struct Target {
    spec: TargetSpec,
    next_open: Cell<Instant>,
    next_source: Cell<usize>,
    opening: Semaphore,
}

/// The connect gave up (the gateway stayed away past the deadline).
#[derive(Debug)]
pub struct GaveUp(pub String);

impl Target {
    /// A worker's target; `index` staggers its source addresses.
    pub fn new(spec: TargetSpec, index: usize) -> Rc<Self> {
        let permits = spec.concurrency.max(1) as u64;
        Rc::new(Self {
            next_source: Cell::new(index),
            spec,
            next_open: Cell::new(Instant::now()),
            opening: Semaphore::new(permits),
        })
    }

    /// A token for user/device, valid for a day.
    pub fn token(&self, user: u64, device: u32) -> Vec<u8> {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 24 * 3600;
        self.spec.key.issue(user, device, expires)
    }

    /// A new protocol core for user/device. Client message ids start from
    /// the current time in µs × 1024, so runs against the same gateway never
    /// reuse an id (the server would dedup it as a retry).
    pub fn core(&self, user: u64, device: u32) -> ClientCore {
        let first_id = (epoch_ns(Instant::now()) / 1000) << 10;
        ClientCore::new(&self.token(user, device), 0, first_id)
    }

    /// Opens a connection for `core` (a new one or a `reconnect`), waits
    /// for `Welcome`, retrying until `give_up`. Paced by the ramp rate
    /// unless `storm` (everyone at once, bounded only by concurrency).
    pub async fn open(
        &self,
        core: impl Fn() -> ClientCore,
        rec: &std::cell::RefCell<Recorder>,
        give_up: Instant,
        storm: bool,
    ) -> Result<(Connection, u32), GaveUp> {
        let mut backoff = Duration::from_millis(10);
        loop {
            if !storm {
                self.pace().await;
            }
            let (attempt, started) = {
                let _permit = self.opening.acquire_permit(1).await;
                let started = Instant::now(); // not counting the wait for a permit
                (self.attempt(core()).await, started)
            };
            match attempt {
                Ok((conn, backlog)) => {
                    let mut r = rec.borrow_mut();
                    r.latency(Latency::Connect, micros(started.elapsed()));
                    r.add(Counter::Connects, 1);
                    r.conns(1);
                    return Ok((conn, backlog));
                }
                Err(e) => {
                    rec.borrow_mut().add(Counter::ConnectErrors, 1);
                    if Instant::now() + backoff > give_up {
                        return Err(GaveUp(e));
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn attempt(&self, core: ClientCore) -> Result<(Connection, u32), String> {
        let sources = &self.spec.sources;
        let source = if sources.is_empty() {
            None
        } else {
            let i = self.next_source.get();
            self.next_source.set(i + 1);
            Some(sources[i % sources.len()])
        };
        let mut conn = Connection::connect_from(
            source,
            self.spec.addr,
            self.spec.tls.clone(),
            "localhost",
            core,
        )
        .await
        .map_err(|e| format!("connect to {}: {e}", self.spec.addr))?;
        conn.set_ack_delay(self.spec.ack_delay);
        match conn.next_event_within(Duration::from_secs(30)).await {
            Ok(Some(ClientEvent::Welcome { backlog_count, .. })) => Ok((conn, backlog_count)),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    /// Waits for this worker's next connection slot under the ramp rate.
    async fn pace(&self) {
        if self.spec.ramp_per_s <= 0.0 {
            return;
        }
        let now = Instant::now();
        let slot = self.next_open.get().max(now);
        self.next_open
            .set(slot + Duration::from_secs_f64(1.0 / self.spec.ramp_per_s));
        if slot > now {
            glommio::timer::sleep(slot - now).await;
        }
    }
}

/// A duration in whole µs.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
