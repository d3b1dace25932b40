//! `peer-driver`: drives a peer of the comparison in `benchmarks/peers`
//! (core NATS, or MQTT with QoS 1) in the shape `loadgen chat` drives the
//! gateway: `--pairs` 1:1 pairs, each a sending and a receiving
//! connection over TLS on loopback, 100-byte payloads.
//!
//! - **Closed loop** (no `--rate`): each sender keeps `--window` messages
//!   in flight, counted from send to delivery (core NATS has no
//!   acknowledgment to count on).
//! - **Open loop** (`--rate`, messages/s in all): each sender sends on a
//!   fixed schedule, and latency counts from the *scheduled* time, so a
//!   stalled server shows up as latency. Sends scheduled in the first
//!   `--warmup` are delivered and verified but not timed.
//! - **Verified:** every payload carries (stream, counter, schedule time);
//!   each receiver counts lost, duplicated and reordered messages.
//!
//! - **Kill -9** (`--survive fill|drain`): see `survive.rs`.
//!
//! It prints one JSON object (the schema `benchmarks/src/peers.rs` reads)
//! and exits 1 if anything was lost, duplicated or reordered.

mod survive;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// Core NATS: publish/subscribe, nothing stored, no acknowledgment.
    Nats,
    /// MQTT 3.1.1 with QoS 1 (PUBACK once the broker has it).
    Mqtt,
}

#[derive(Debug, Parser)]
struct Args {
    /// Which peer.
    #[arg(long, value_enum)]
    system: System,
    /// The server's TLS address (host:port; host "localhost" for the
    /// certificate's name).
    #[arg(long)]
    addr: String,
    /// The CA certificate (PEM) that signed the server's.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Sender/receiver pairs (two connections each).
    #[arg(long, default_value_t = 100)]
    pairs: u32,
    /// Messages/s over all senders: open loop. None: closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Messages in flight per sender (closed loop).
    #[arg(long, default_value_t = 32)]
    window: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Worker threads of the driver's runtime (as `loadgen --threads`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds at the start whose latencies are not recorded.
    #[arg(long, default_value_t = 1)]
    warmup_s: u64,
    /// Instead of sending: open this many idle connections and report the
    /// server's memory per connection (needs `--server-pid`).
    #[arg(long)]
    idle_conns: Option<u32>,
    /// The server process, whose RSS `--idle-conns` reads.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds after all `--idle-conns` are open that the server's RSS is
    /// read (as loadgen's `idle --settle`).
    #[arg(long, default_value_t = 2)]
    idle_settle_s: u64,
    /// Instead of sending: one phase of the kill -9 check (see
    /// `survive.rs`).
    #[arg(long, value_enum)]
    survive: Option<survive::Phase>,
    /// Offline receivers in the kill -9 check.
    #[arg(long, default_value_t = 100)]
    receivers: u32,
    /// Messages sent to each of them.
    #[arg(long, default_value_t = 1000)]
    per_receiver: u64,
}

/// Bytes of every payload (as loadgen sends).
const PAYLOAD_BYTES: usize = 100;

/// What one receiver saw of its stream.
#[derive(Debug, Default)]
struct Seen {
    /// Bit per counter received.
    bits: Vec<u64>,
    high: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
}

impl Seen {
    fn record(&mut self, counter: u64) {
        let (word, bit) = ((counter / 64) as usize, counter % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.bits[word] |= 1 << bit;
        self.delivered += 1;
        if counter < self.high {
            self.reordered += 1;
        }
        self.high = self.high.max(counter + 1);
    }
}

/// The whole run's shared state.
struct Run {
    /// When sending began: once every connection is up, so no sender's
    /// schedule starts before its connection exists.
    start: std::sync::OnceLock<Instant>,
    warmup_ns: u64,
    acked: AtomicU64,
    /// Senders connected and waiting for `go`.
    connected: AtomicU64,
    go: tokio::sync::watch::Receiver<bool>,
}

impl Run {
    /// ns since sending began.
    fn now_ns(&self) -> u64 {
        self.start
            .get()
            .map_or(0, |s| s.elapsed().as_nanos() as u64)
    }
}

/// What one receiver ends with.
struct Received {
    seen: Seen,
    latency: Histogram<u64>,
}

/// A receiver's side of its stream: what it saw, the latencies, and the
/// sender's window to open.
struct Stream {
    received: Received,
    window: Arc<Semaphore>,
}

impl Stream {
    fn new(window: Arc<Semaphore>) -> Self {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        Self {
            received: Received {
                seen: Seen::default(),
                latency,
            },
            window,
        }
    }

    fn on_delivery(&mut self, run: &Run, payload: &[u8]) {
        let Some((_, counter, at_ns)) = unstamp(payload) else {
            return;
        };
        self.received.seen.record(counter);
        let now = run.now_ns();
        if at_ns >= run.warmup_ns {
            let _ = self
                .received
                .latency
                .record(now.saturating_sub(at_ns) / 1000);
        }
        self.window.add_permits(1);
    }

    /// Whether the receiver is done: the sender's count is known and all
    /// of it arrived.
    fn done(&self, expected: &tokio::sync::watch::Receiver<Option<u64>>) -> bool {
        expected
            .borrow()
            .is_some_and(|n| self.received.seen.delivered + self.received.seen.duplicated >= n)
    }
}

/// How long a receiver waits for the rest once its sender is done.
const DRAIN: Duration = Duration::from_secs(5);

/// Resolves when the sender's count first becomes known; never again
/// after (the sender then drops its end, which must not wake the receiver
/// in a loop).
async fn sender_done(expected: &mut tokio::sync::watch::Receiver<Option<u64>>) {
    if expected.borrow().is_some() || expected.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long a receiver waits for its next message: [`DRAIN`] once its
/// sender is done, else as long as the run may take.
fn drain_wait(expected: &tokio::sync::watch::Receiver<Option<u64>>) -> Duration {
    match *expected.borrow() {
        Some(_) => DRAIN,
        None => Duration::from_secs(3600),
    }
}

fn stamp(stream: u32, counter: u64, at_ns: u64) -> Bytes {
    let mut p = vec![0xab; PAYLOAD_BYTES];
    p[..4].copy_from_slice(&stream.to_le_bytes());
    p[4..12].copy_from_slice(&counter.to_le_bytes());
    p[12..20].copy_from_slice(&at_ns.to_le_bytes());
    Bytes::from(p)
}

fn unstamp(p: &[u8]) -> Option<(u32, u64, u64)> {
    Some((
        u32::from_le_bytes(p.get(..4)?.try_into().ok()?),
        u64::from_le_bytes(p.get(4..12)?.try_into().ok()?),
        u64::from_le_bytes(p.get(12..20)?.try_into().ok()?),
    ))
}

fn tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("the CA certificate");
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a usable CA");
    }
    // The same provider as the gateway's; newer rustls marks it deprecated
    // (no post-quantum key exchange), which this comparison does not need.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// When sender `stream` sends its `counter`th message (ns from the start)
/// in open loop; `None` in closed loop (now, once the window has room).
fn schedule(args: &Args, stream: u32, counter: u64) -> Option<u64> {
    let rate = args.rate?;
    let per_sender = (rate as f64 / f64::from(args.pairs)).max(0.001);
    let gap_ns = 1e9 / per_sender;
    // Senders start spread over one gap, so the load is even.
    let offset = gap_ns * f64::from(stream) / f64::from(args.pairs);
    Some((offset + gap_ns * counter as f64) as u64)
}

/// Everything a pair's two tasks share.
#[derive(Clone)]
struct Pair {
    args: Arc<Args>,
    run: Arc<Run>,
    tls: Arc<rustls::ClientConfig>,
    stream: u32,
    window: Arc<Semaphore>,
}

fn main() {
    let args = Arc::new(Args::parse());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(drive(args));
}

async fn drive(args: Arc<Args>) {
    if let Some(conns) = args.idle_conns {
        return idle(args.clone(), conns).await;
    }
    if let Some(phase) = args.survive {
        return survive::run(args.clone(), phase).await;
    }
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let run = Arc::new(Run {
        start: std::sync::OnceLock::new(),
        warmup_ns: args.warmup_s * 1_000_000_000,
        acked: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        go,
    });
    let tls = tls(&args.ca);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for stream in 0..args.pairs {
        let pair = Pair {
            args: args.clone(),
            run: run.clone(),
            tls: tls.clone(),
            stream,
            window: Arc::new(Semaphore::new(args.window as usize)),
        };
        let (expected_tx, expected) = tokio::sync::watch::channel(None);
        let ready = Arc::new(tokio::sync::Notify::new());
        let receiver = match args.system {
            System::Nats => tokio::spawn(nats_receiver(pair.clone(), expected, ready.clone())),
            System::Mqtt => tokio::spawn(mqtt_receiver(pair.clone(), expected, ready.clone())),
        };
        ready.notified().await;
        receivers.push(receiver);
        senders.push(tokio::spawn(async move {
            let sent = match pair.args.system {
                System::Nats => nats_sender(pair).await,
                System::Mqtt => mqtt_sender(pair).await,
            };
            let _ = expected_tx.send(Some(sent));
            sent
        }));
    }
    // Every receiver subscribed; wait for every sender's connection, then
    // start the clock and the schedules together.
    while run.connected.load(Ordering::SeqCst) < u64::from(args.pairs) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.start.set(Instant::now()).expect("set once");
    go_tx.send(true).expect("senders wait");
    let mut sent = 0;
    for s in senders {
        sent += s.await.expect("a sender");
    }
    let mut received = Vec::new();
    for r in receivers {
        received.push(r.await.expect("a receiver"));
    }
    report(&args, &run, sent, &received);
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Connections opened at once by `idle` (a storm of TLS handshakes makes
/// servers drop some).
const IDLE_CONNECTING_MAX: usize = 64;

/// Opens `conns` idle connections (TLS, connected, subscribed to
/// nothing), `IDLE_CONNECTING_MAX` at a time, lets the server settle, and
/// prints its memory per connection as loadgen's `idle` does for the
/// gateway.
async fn idle(args: Arc<Args>, conns: u32) {
    let pid = args.server_pid.expect("--idle-conns needs --server-pid");
    let tls = tls(&args.ca);
    let before = rss_kib(pid);
    let connecting = Arc::new(Semaphore::new(IDLE_CONNECTING_MAX));
    let opened = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for i in 0..conns {
        let permit = connecting.clone().acquire_owned().await.expect("open");
        let (args, tls, opened) = (args.clone(), tls.clone(), opened.clone());
        held.push(tokio::spawn(async move {
            match args.system {
                System::Nats => {
                    let client = nats_connect(&args, tls).await;
                    client.flush().await.expect("flush");
                    opened.fetch_add(1, Ordering::SeqCst);
                    drop(permit);
                    std::future::pending::<()>().await; // held until the end
                    drop(client);
                }
                System::Mqtt => {
                    let id = format!("idle{i}-{}", std::process::id());
                    let (client, mut events) =
                        rumqttc::AsyncClient::new(mqtt_options(&args, tls, id), 16);
                    let _client = client;
                    let mut permit = Some(permit);
                    loop {
                        match events.poll().await {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                opened.fetch_add(1, Ordering::SeqCst);
                                permit.take();
                            }
                            Ok(_) => {}
                            Err(e) => panic!("MQTT idle connection: {e}"),
                        }
                    }
                }
            }
        }));
    }
    while opened.load(Ordering::SeqCst) < u64::from(conns) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // As loadgen's `idle`: let the server settle, then read.
    tokio::time::sleep(Duration::from_secs(args.idle_settle_s)).await;
    let after = rss_kib(pid);
    let json = serde_json::json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "idle_conns": conns,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_conn": (after.saturating_sub(before) * 1024) as f64 / f64::from(conns),
    });
    println!("{json}");
    std::process::exit(0);
}

fn report(args: &Args, run: &Run, sent: u64, received: &[Received]) {
    let (mut delivered, mut duplicated, mut reordered) = (0, 0, 0);
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for r in received {
        delivered += r.seen.delivered;
        duplicated += r.seen.duplicated;
        reordered += r.seen.reordered;
        lat.add(&r.latency).expect("same bounds");
    }
    let q = |p: f64| lat.value_at_quantile(p);
    let json = serde_json::json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "pairs": args.pairs,
        "rate": args.rate,
        "window": args.window,
        "duration_s": args.duration_s,
        "sent": sent,
        "acked": run.acked.load(Ordering::Relaxed),
        "delivered": delivered,
        "lost": sent.saturating_sub(delivered),
        "duplicated": duplicated,
        "reordered": reordered,
        "delivered_per_s": delivered as f64 / args.duration_s as f64,
        "send_to_delivered_us": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": lat.max(), "count": lat.len()},
    });
    println!("{json}");
    if sent > delivered || duplicated > 0 || reordered > 0 {
        std::process::exit(1);
    }
}

/// Sends the pair's messages until the duration is over, each with
/// `publish`; returns how many.
async fn send_loop<F, Fut>(pair: &Pair, mut publish: F) -> u64
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (args, run) = (&pair.args, &pair.run);
    let end_ns = args.duration_s * 1_000_000_000;
    run.connected.fetch_add(1, Ordering::SeqCst);
    let mut go = run.go.clone();
    go.wait_for(|go| *go).await.expect("main starts the run");
    for counter in 0.. {
        let at_ns = match schedule(args, pair.stream, counter) {
            Some(at) => {
                let now = run.now_ns();
                if at > now {
                    tokio::time::sleep(Duration::from_nanos(at - now)).await;
                }
                at
            }
            None => {
                pair.window.acquire().await.expect("open").forget();
                run.now_ns()
            }
        };
        if at_ns >= end_ns {
            return counter;
        }
        publish(stamp(pair.stream, counter, at_ns)).await;
    }
    unreachable!("the loop returns at the end of the duration")
}

fn subject(stream: u32) -> String {
    format!("pair.{stream}")
}

async fn nats_connect(args: &Args, tls: Arc<rustls::ClientConfig>) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .tls_client_config((*tls).clone())
        .require_tls(true)
        .connect(format!("tls://{}", args.addr))
        .await
        .expect("a NATS connection")
}

async fn nats_receiver(
    pair: Pair,
    expected: tokio::sync::watch::Receiver<Option<u64>>,
    ready: Arc<tokio::sync::Notify>,
) -> Received {
    let client = nats_connect(&pair.args, pair.tls.clone()).await;
    let mut sub = client
        .subscribe(subject(pair.stream))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    ready.notify_one();
    let mut stream = Stream::new(pair.window.clone());
    let mut expected = expected;
    while !stream.done(&expected) {
        tokio::select! {
            msg = tokio::time::timeout(drain_wait(&expected), sub.next()) => match msg {
                Ok(Some(msg)) => stream.on_delivery(&pair.run, &msg.payload),
                Ok(None) | Err(_) => break,
            },
            // The sender is done: look again whether all arrived.
            _ = sender_done(&mut expected) => {}
        }
    }
    stream.received
}

async fn nats_sender(pair: Pair) -> u64 {
    let client = nats_connect(&pair.args, pair.tls.clone()).await;
    let subject = subject(pair.stream);
    let run = pair.run.clone();
    let sent = send_loop(&pair, |payload| {
        let (client, subject, run) = (client.clone(), subject.clone(), run.clone());
        async move {
            client.publish(subject, payload).await.expect("publish");
            run.acked.fetch_add(1, Ordering::Relaxed); // no acknowledgment: sent
        }
    })
    .await;
    client.flush().await.expect("flush");
    sent
}

fn mqtt_options(args: &Args, tls: Arc<rustls::ClientConfig>, id: String) -> rumqttc::MqttOptions {
    let (host, port) = args.addr.rsplit_once(':').expect("host:port");
    let mut o = rumqttc::MqttOptions::new(id, host, port.parse().expect("a port"));
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_inflight(u16::try_from(args.window.max(1)).unwrap_or(u16::MAX));
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    o
}

async fn mqtt_receiver(
    pair: Pair,
    expected: tokio::sync::watch::Receiver<Option<u64>>,
    ready: Arc<tokio::sync::Notify>,
) -> Received {
    let id = format!("r{}-{}", pair.stream, std::process::id());
    let options = mqtt_options(&pair.args, pair.tls.clone(), id);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1024);
    client
        .subscribe(subject(pair.stream), rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut stream = Stream::new(pair.window.clone());
    let mut expected = expected;
    while !stream.done(&expected) {
        tokio::select! {
            event = tokio::time::timeout(drain_wait(&expected), events.poll()) => match event {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => ready.notify_one(),
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                    stream.on_delivery(&pair.run, &p.payload);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("MQTT receiver {}: {e}", pair.stream),
                Err(_) => break,
            },
            _ = sender_done(&mut expected) => {}
        }
    }
    stream.received
}

async fn mqtt_sender(pair: Pair) -> u64 {
    let id = format!("s{}-{}", pair.stream, std::process::id());
    let options = mqtt_options(&pair.args, pair.tls.clone(), id);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1024);
    let (acks, stream) = (pair.run.clone(), pair.stream);
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acks.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => panic!("MQTT sender {stream}: {e}"),
            }
        }
    });
    let topic = subject(pair.stream);
    let sent = send_loop(&pair, |payload| {
        let (client, topic) = (client.clone(), topic.clone());
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
                .await
                .expect("publish");
        }
    })
    .await;
    // The PUBACKs of the last sends come in while the receivers finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    poller.abort();
    sent
}
