//! The `loadgen` binary: drives a real gateway over real TLS through the
//! `client` crate and reports what it holds.
//!
//! Scenarios built: `chat` (1:1 pairs, closed or open loop, verified end to
//! end), `handshake` (new authenticated TLS connections per second) and
//! `idle` (hold N authenticated connections; with `--gateway-pid`, the
//! gateway's memory per connection). Each worker thread runs one glommio
//! executor; results merge at the end.
//!
//! It must not know about server internals.

mod chat;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use client::token::SigningKey;
use client::{ClientCore, ClientEvent, Connection};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Capacity tests against a running gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// The gateway's TLS address.
    #[arg(long, global = true, default_value = "127.0.0.1:7443")]
    addr: SocketAddr,
    /// The gateway's data directory: its development certificate
    /// (`dev-cert.pem`) and token key (`dev-token-key.pk8`) are used
    /// unless --cert / --token-key are given.
    #[arg(long, global = true, default_value = "data")]
    data_dir: PathBuf,
    /// PEM certificate to trust.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Token signing key (PKCS#8, from `gateway token keygen`), key id 1.
    #[arg(long, global = true)]
    token_key: Option<PathBuf>,
    /// Worker threads (one glommio executor each).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Pin worker i to CPU `pin + i` (default: unpinned).
    #[arg(long, global = true)]
    pin: Option<usize>,
    /// First user id: give concurrent loadgen processes disjoint ranges.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    user_base: u64,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 1:1 pairs: each sender sends numbered messages to its receiver, which
    /// checks each arrives exactly once and in order. Exits 1 if any ✓'d
    /// message was lost, duplicated or reordered.
    Chat {
        /// Sender/receiver pairs (two connections each).
        #[arg(long, default_value_t = 100)]
        pairs: u64,
        /// Unanswered sends per sender (closed loop), or the cap in open loop.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Total messages per second across all senders (open loop,
        /// latency from the scheduled send time). Omit for closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Payload bytes (≥ 24: pair, counter, send time).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// How long senders send, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// New TLS connections that authenticate and leave, as fast as
    /// `concurrency` connections at a time allow.
    Handshake {
        /// Connections in total.
        #[arg(long, default_value_t = 10_000)]
        conns: u64,
        /// Connections in progress at once, per thread.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
    },
    /// Hold N authenticated, silent connections; with --gateway-pid, report
    /// the gateway's resident memory per connection.
    Idle {
        /// Connections (keep under the open-file limit per process).
        #[arg(long, default_value_t = 1_000)]
        conns: u64,
        /// Connections being opened at once, per thread.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// How long to hold them.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// The gateway's process id (its /proc/PID/status is read).
        #[arg(long)]
        gateway_pid: Option<u32>,
    },
}

/// Where to connect and how to authenticate (cheap to clone: one per
/// worker).
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    key: Arc<SigningKey>,
}

impl Target {
    /// Connects user/device and waits for `Welcome`.
    pub async fn login(&self, user: u64, device: u32) -> Connection {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 24 * 3600;
        let core = ClientCore::new(&self.key.issue(user, device, expires), 0, 1);
        let mut conn = Connection::connect(self.addr, self.tls.clone(), "localhost", core)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
        match conn.next_event_within(Duration::from_secs(30)).await {
            Ok(Some(ClientEvent::Welcome { .. })) => conn,
            other => panic!("user {user}: expected Welcome, got {other:?}"),
        }
    }
}

/// Nanoseconds since the Unix epoch of an `Instant` (one base per process).
pub fn epoch_ns(at: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (i0, e0) = *BASE.get_or_init(|| {
        let e = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970");
        (Instant::now(), u64::try_from(e.as_nanos()).expect("fits"))
    });
    match at.checked_duration_since(i0) {
        Some(d) => e0 + u64::try_from(d.as_nanos()).expect("fits"),
        None => e0 - u64::try_from((i0 - at).as_nanos()).expect("fits"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let c = &cli.common;
    let cert = c
        .cert
        .clone()
        .unwrap_or_else(|| c.data_dir.join("dev-cert.pem"));
    let key_path = c
        .token_key
        .clone()
        .unwrap_or_else(|| c.data_dir.join("dev-token-key.pk8"));
    let pkcs8 = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let key =
        SigningKey::from_pkcs8(1, &pkcs8).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let target = Target {
        addr: c.addr,
        tls: client::trust(&cert).map_err(|e| format!("{}: {e}", cert.display()))?,
        key: Arc::new(key),
    };
    epoch_ns(Instant::now());
    match cli.scenario {
        Scenario::Chat {
            pairs,
            window,
            rate,
            payload,
            duration,
        } => {
            let plan = chat::ChatPlan {
                first_pair: 0,
                pairs,
                window,
                rate_per_sender: rate.map(|r| r / pairs as f64),
                payload: payload.max(24),
                duration,
                user_base: c.user_base,
            };
            Ok(run_chat(c, &target, plan))
        }
        Scenario::Handshake { conns, concurrency } => {
            run_handshakes(c, &target, conns, concurrency);
            Ok(ExitCode::SUCCESS)
        }
        Scenario::Idle {
            conns,
            concurrency,
            hold,
            gateway_pid,
        } => {
            run_idle(c, &target, conns, concurrency, hold, gateway_pid);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `work(worker index)` on `threads` executors and collects results.
fn on_workers<T: Send + 'static>(
    c: &Common,
    spec: &Target,
    work: impl Fn(Rc<Target>, usize) -> Pin<Box<dyn Future<Output = T>>> + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = (0..c.threads)
        .map(|i| {
            let placement = c
                .pin
                .map_or(Placement::Unbound, |p| Placement::Fixed(p + i));
            let (spec, work) = (spec.clone(), work.clone());
            LocalExecutorBuilder::new(placement)
                .preempt_timer(Duration::from_millis(1)) // reap I/O often: latency is measured
                .spawn(move || async move { work(Rc::new(spec), i).await })
                .expect("executor")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect()
}

fn run_chat(c: &Common, spec: &Target, plan: chat::ChatPlan) -> ExitCode {
    let threads = c.threads as u64;
    let started = Instant::now();
    let results = on_workers(c, spec, move |target, i| {
        let i = i as u64;
        let per = plan.pairs / threads + u64::from(i < plan.pairs % threads);
        let first = (0..i)
            .map(|j| plan.pairs / threads + u64::from(j < plan.pairs % threads))
            .sum();
        Box::pin(chat::run(
            target,
            chat::ChatPlan {
                first_pair: first,
                pairs: per,
                ..plan
            },
        ))
    });
    let mut total = results[0].clone();
    for r in &results[1..] {
        total.merge(r);
    }
    let secs = plan.duration.as_secs_f64();
    println!(
        "chat: {} pairs, {} threads, payload {} B, {}",
        plan.pairs,
        c.threads,
        plan.payload,
        plan.rate_per_sender
            .map_or(format!("closed loop, window {}", plan.window), |r| format!(
                "open loop, {:.0} msgs/s offered",
                r * plan.pairs as f64
            ))
    );
    println!(
        "  ✓ acked        {:>12}  ({:.0}/s)",
        total.acked,
        total.acked as f64 / secs
    );
    println!(
        "  delivered      {:>12}  ({:.0}/s during the run)",
        total.received,
        total.received_in_window as f64 / secs
    );
    println!("  ✓✓ receipts    {:>12}", total.receipts);
    print_latency("send→✓", &total.ack_us);
    print_latency("send→delivered", &total.deliver_us);
    println!(
        "  verification: lost {} duplicated {} reordered {}  (wall {:.1}s)",
        total.lost,
        total.duplicated,
        total.reordered,
        started.elapsed().as_secs_f64()
    );
    if total.lost + total.duplicated + total.reordered > 0 {
        println!("  FAILED: messages were lost, duplicated or reordered");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn print_latency(what: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {what:<15} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
}

fn run_handshakes(c: &Common, spec: &Target, conns: u64, concurrency: u64) {
    let threads = c.threads as u64;
    let base = c.user_base;
    let started = Instant::now();
    let counts = on_workers(c, spec, move |target, i| {
        Box::pin(async move {
            let per_task = conns / threads / concurrency;
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let target = target.clone();
                    let user = base + i as u64 * concurrency + t;
                    glommio::spawn_local(async move {
                        for _ in 0..per_task {
                            drop(target.login(user, 0).await);
                        }
                        per_task
                    })
                })
                .collect();
            let mut done = 0;
            for t in tasks {
                done += t.await;
            }
            done
        })
    });
    let done: u64 = counts.iter().sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "handshake: {done} authenticated TLS connections in {secs:.2}s = {:.0}/s ({} threads × {concurrency} at once)",
        done as f64 / secs,
        c.threads
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run_idle(
    c: &Common,
    spec: &Target,
    conns: u64,
    concurrency: u64,
    hold: Duration,
    pid: Option<u32>,
) {
    let threads = c.threads as u64;
    let base = c.user_base;
    let before = pid.and_then(rss_kib);
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reported = opened.clone();
    let watcher = std::thread::spawn(move || {
        while reported.load(std::sync::atomic::Ordering::SeqCst) < conns {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2)); // let the gateway settle
        let after = pid.and_then(rss_kib);
        println!("idle: {conns} authenticated connections open");
        if let (Some(b), Some(a)) = (before, after) {
            let per = (a.saturating_sub(b) * 1024) as f64 / conns as f64;
            println!("  gateway RSS {b} KiB → {a} KiB: {per:.0} bytes per idle connection");
        }
    });
    on_workers(c, spec, move |target, i| {
        let opened = opened.clone();
        Box::pin(async move {
            let per_task = conns / threads / concurrency;
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (target, opened) = (target.clone(), opened.clone());
                    glommio::spawn_local(async move {
                        let mut held = Vec::new();
                        for k in 0..per_task {
                            let user = base + ((i as u64 * concurrency + t) * per_task + k);
                            held.push(target.login(user, 0).await);
                            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        glommio::timer::sleep(hold).await;
                        held.len()
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        })
    });
    let _ = watcher.join();
}
