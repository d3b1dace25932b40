//! The `loadgen` binary: drives a real gateway over real TLS through the
//! `client` crate and reports what it holds.
//!
//! Each worker thread runs one glommio executor with its own connections
//! and [`live::Recorder`]; `--procs N` runs N worker processes (the
//! open-file limit is per process) and merges their reports, as
//! `loadgen merge` does for runs on several machines. It must not know
//! about server internals.

mod chat;
mod conns;
mod gate;
mod group;
mod live;
mod offline;
mod plot;
mod report;
mod target;
mod verify;

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use client::token::SigningKey;
use glommio::{LocalExecutorBuilder, Placement};
use mimalloc::MiMalloc;

use crate::live::{Live, Recorder};
use crate::report::{Latency, Report};
use crate::target::{Target, TargetSpec};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Capacity tests against a running gateway: every scenario drives real
/// TLS connections through the client library, verifies what it can, and
/// writes a table, report.json, .hgrm percentile files and report.svg.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

const AFTER_HELP: &str = "\
Exit status: 0 when verification passed, 1 when any ✓'d message was lost,
duplicated or reordered, 2 on a usage or setup error.

Examples (a gateway started with `cargo run --release -p gateway` in the same
directory, so data/ holds its development certificate and token key):
  loadgen chat --pairs 1000 --duration 30s                 # closed loop: the maximum
  loadgen chat --pairs 1000 --rate 50000 --duration 30s    # open loop: latency at a rate
  loadgen --procs 2 --source 127.0.0.2,127.0.0.3 idle --conns 18000 --gateway-pid PID
  loadgen offline --devices 10000 --messages 100           # reconnect storm
  loadgen merge a/report.json b/report.json --out merged";

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
    /// Worker threads per process (one glommio executor each).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Worker processes, each with --threads workers; their reports are
    /// merged. Use it to go past the open-file limit of one process.
    #[arg(long, global = true, default_value_t = 1)]
    procs: usize,
    /// Pin worker i to CPU `pin + i` (default: unpinned).
    #[arg(long, global = true)]
    pin: Option<usize>,
    /// First user id: give concurrent loadgen runs disjoint ranges.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    user_base: u64,
    /// Local addresses to connect from, in turn (e.g.
    /// 127.0.0.2,127.0.0.3): each has its own ~28,000 ephemeral ports.
    #[arg(long, global = true, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// New connections per second across the whole run (0 = no limit).
    /// Default 5000, except `handshake` and `churn`, which are unlimited.
    #[arg(long, global = true)]
    ramp: Option<f64>,
    /// Connections being opened at once, per worker.
    #[arg(long, global = true, default_value_t = 64)]
    concurrency: usize,
    /// How long a client holds a delivery ack back for another frame to
    /// ride before writing it on its own, in ms (the client crate's
    /// default is 100).
    #[arg(long, global = true)]
    ack_delay_ms: Option<u64>,
    /// Directory for report.json, *.hgrm and report.svg.
    #[arg(long, global = true, default_value = "loadgen-report")]
    out: PathBuf,
    /// Also write every send whose ✓ or delivery took at least this many
    /// µs to OUT/slow-<worker>.tsv, with the kernel's monotonic time of
    /// the scheduled send and of the answer (the clock of `perf record -k
    /// CLOCK_MONOTONIC`): to line stalls up with a trace.
    #[arg(long, global = true)]
    slow_us: Option<u64>,
    /// No progress line.
    #[arg(long, global = true)]
    quiet: bool,
    /// (set by --procs) this process's index among `proc_count`.
    #[arg(long, global = true, hide = true, default_value_t = 0)]
    proc_index: usize,
    /// (set by --procs) how many worker processes there are.
    #[arg(long, global = true, hide = true)]
    proc_count: Option<usize>,
}

#[derive(Debug, Clone, Subcommand)]
enum Scenario {
    /// 1:1 pairs: each sender sends stamped messages to its receiver, which
    /// checks each arrives exactly once and in order. Closed loop (a
    /// window of unanswered sends) finds the maximum; --rate runs open loop
    /// with latency from the scheduled send time. Both ends reconnect and
    /// resume if the gateway restarts. Reports send→✓, send→delivered and
    /// send→✓✓.
    Chat(ChatArgs),
    /// Groups of --size members, --senders of each sending stamped
    /// messages to the group; every online member device verifies it gets
    /// each ✓'d message once and in order. Reports send→delivered (every
    /// member device) and send→last member (every message); --offline
    /// members are linked first and stay away.
    Group(GroupArgs),
    /// Reconnect storm: --devices devices log in once and leave; senders
    /// queue --messages for each; then every device reconnects at once.
    /// Reports the time until every backlog was read, verified.
    Offline {
        /// Recipient devices in the run.
        #[arg(long, default_value_t = 1_000)]
        devices: u64,
        /// Messages queued per device.
        #[arg(long, default_value_t = 100)]
        messages: u64,
        /// Sender connections in the run.
        #[arg(long, default_value_t = 100)]
        senders: u64,
        /// Unanswered sends per sender.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// How long any one phase may take.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        limit: Duration,
        /// Between the fill and the storm, write `<out>/filled` and wait
        /// (up to --limit) until `<out>/go` exists, so a script can kill
        /// the gateway with SIGKILL and restart it in between: every ✓'d
        /// message must still arrive (`benchmarks/peers`' kill -9 check).
        #[arg(long)]
        pause_before_storm: bool,
    },
    /// Hold --conns authenticated, silent connections; with --gateway-pid,
    /// report the gateway's resident memory per connection (from /proc).
    Idle {
        /// Connections in the run (each process stays under its open-file
        /// limit: use --procs).
        #[arg(long, default_value_t = 1_000)]
        conns: u64,
        /// How long to hold them once all are open.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// When, after all are open, the gateway's memory is read (also read
        /// at 2 s, as `gateway_bytes_per_conn_at_2s`); keep it below --hold.
        /// The gateway's `tls_keys_idle_ms` (10 s) to twice it after the
        /// last byte, an idle connection's TLS keys sleep.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// The gateway's process id (its /proc/PID/status is read).
        #[arg(long)]
        gateway_pid: Option<u32>,
    },
    /// --conns connection slots that connect, stay for a random time
    /// (exponential, mean --hold) and leave, over and over.
    Churn {
        /// Connection slots in the run.
        #[arg(long, default_value_t = 1_000)]
        conns: u64,
        /// Mean time connected.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// How long to churn.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// New authenticated TLS connections, closed at once, with
    /// --concurrency in progress per worker: the server's handshake rate at
    /// saturation, and connect→Welcome latency.
    Handshake {
        /// Connections in the run.
        #[arg(long, default_value_t = 10_000)]
        conns: u64,
    },
    /// Merges report.json files from several processes or machines into
    /// one report (written to --out).
    Merge {
        /// report.json files.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

/// The `group` scenario's flags.
#[derive(Debug, Clone, Args)]
struct GroupArgs {
    /// Groups in the run.
    #[arg(long, default_value_t = 4)]
    groups: u64,
    /// Members per group, the creator included.
    #[arg(long, default_value_t = 256)]
    size: u64,
    /// Members of each group that send.
    #[arg(long, default_value_t = 1)]
    senders: u64,
    /// Members of each group that link their device and stay offline.
    #[arg(long, default_value_t = 0)]
    offline: u64,
    /// Unanswered sends per sender (closed loop), or the cap in open loop.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Messages per second per sender (open loop). Omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Messages per sender at most.
    #[arg(long, default_value_t = u64::MAX)]
    messages: u64,
    /// Payload bytes (at least 32).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long senders send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After sending stops, how long to wait for ✓ and deliveries.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

/// The `chat` scenario's flags.
#[derive(Debug, Clone, Args)]
struct ChatArgs {
    /// Sender/receiver pairs in the run (two connections each).
    #[arg(long, default_value_t = 100)]
    pairs: u64,
    /// Unanswered sends per sender (closed loop), or the cap in open loop.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Messages per second across all senders (open loop). Omit for
    /// closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Open-loop gaps are exponential (a Poisson process) instead of fixed.
    #[arg(long)]
    poisson: bool,
    /// Payload bytes (at least 32: run, pair, counter, send time).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long senders send, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Latencies of sends scheduled in this first stretch are not
    /// recorded (every message is still verified).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// After sending stops, how long to wait for ✓, deliveries and ✓✓
    /// (and for the gateway to come back, if it is restarting).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
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
    refuse_huge_pages();
    match run(&cli) {
        Ok(report) => finish(&cli.common, &report),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Keeps loadgen's memory off transparent huge pages (mimalloc advises
/// its arenas huge), as the gateway does by default: zeroing a fresh 2 MiB
/// page or `khugepaged` collapsing some stalls a worker for milliseconds,
/// which would show up in the latencies it measures.
#[allow(unsafe_code)]
fn refuse_huge_pages() {
    // SAFETY: a plain prctl on the calling process, no pointers.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Prints the table, writes the outputs, exits by the verdict.
fn finish(c: &Common, report: &Report) -> ExitCode {
    if c.proc_count.is_none() {
        print!("{}", report.table());
    }
    if let Err(e) = report.write(&c.out) {
        eprintln!("loadgen: writing {}: {e}", c.out.display());
        return ExitCode::from(2);
    }
    if c.proc_count.is_none() {
        println!(
            "  report: {}/report.json, *.hgrm, report.svg",
            c.out.display()
        );
    }
    if report.verdict().ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(cli: &Cli) -> Result<Report, String> {
    let c = &cli.common;
    if let Scenario::Merge { reports } = &cli.scenario {
        return merge(reports);
    }
    if let Scenario::Idle { settle, hold, .. } = &cli.scenario
        && settle >= hold
    {
        return Err(
            "idle: --settle must be below --hold (memory is read while all are open)".into(),
        );
    }
    if c.procs > 1 && c.proc_count.is_none() {
        return run_procs(c, &cli.scenario);
    }
    let spec = target_spec(c, &cli.scenario)?;
    epoch_ns(Instant::now());
    match &cli.scenario {
        Scenario::Chat(args) => Ok(run_chat(c, spec, args)),
        Scenario::Group(args) => run_group(c, spec, args),
        Scenario::Offline { .. } => Ok(run_offline(c, spec, &cli.scenario)),
        Scenario::Idle { .. } => Ok(run_idle(c, spec, &cli.scenario)),
        Scenario::Churn {
            conns,
            hold,
            duration,
        } => {
            let (conns, hold, duration) = (*conns, *hold, *duration);
            let mut r = on_workers(c, spec, "churn", Latency::Connect, move |t, rec, part| {
                let (first, n) = part.share(conns);
                let user = part.user_base + first;
                Box::pin(conns::churn(t, rec, user, n, hold, duration))
            });
            r.send_s = duration.as_secs_f64();
            Ok(r)
        }
        Scenario::Handshake { conns } => {
            let (conns, tasks) = (*conns, c.concurrency as u64);
            Ok(on_workers(
                c,
                spec,
                "handshake",
                Latency::Connect,
                move |t, rec, part| {
                    let (_, n) = part.share(conns);
                    let user = part.user_base + part.index as u64 * tasks;
                    Box::pin(conns::handshakes(t, rec, user, n, tasks))
                },
            ))
        }
        Scenario::Merge { .. } => unreachable!("handled above"),
    }
}

fn target_spec(c: &Common, scenario: &Scenario) -> Result<TargetSpec, String> {
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
    let unlimited = matches!(
        scenario,
        Scenario::Handshake { .. } | Scenario::Churn { .. }
    );
    let ramp = c.ramp.unwrap_or(if unlimited { 0.0 } else { 5000.0 });
    let workers = (c.threads * c.proc_count.unwrap_or(1)) as f64;
    Ok(TargetSpec {
        addr: c.addr,
        tls: client::trust(&cert).map_err(|e| format!("{}: {e}", cert.display()))?,
        key: Arc::new(key),
        sources: c.source.clone(),
        ramp_per_s: ramp / workers,
        concurrency: c.concurrency,
        ack_delay: c
            .ack_delay_ms
            .map_or(client::ACK_DELAY, Duration::from_millis),
    })
}

/// Which share of the run a worker drives.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// This worker among all workers of all processes.
    pub index: usize,
    /// All workers of all processes.
    pub of: usize,
    /// The run's first user id.
    pub user_base: u64,
    /// The run's id (the same in every process of one `--procs` run).
    pub run: u64,
}

impl Part {
    /// This worker's `(first, count)` of `total` items.
    pub fn share(&self, total: u64) -> (u64, u64) {
        let (i, n) = (self.index as u64, self.of as u64);
        let first = i * (total / n) + i.min(total % n);
        (first, total / n + u64::from(i < total % n))
    }
}

type Work = Pin<Box<dyn Future<Output = ()>>>;

/// Runs `work` on every worker thread with its own target and recorder,
/// shows the progress line meanwhile, and merges the workers' reports.
fn on_workers(
    c: &Common,
    spec: TargetSpec,
    scenario: &'static str,
    main: Latency,
    work: impl Fn(Rc<Target>, Rc<RefCell<Recorder>>, Part) -> Work + Send + Sync + Clone + 'static,
) -> Report {
    let live = Live::new(c.threads);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = (!c.quiet).then(|| live.clone().show(stop.clone()));
    let run = run_id();
    let handles: Vec<_> = (0..c.threads)
        .map(|i| {
            let placement = c
                .pin
                .map_or(Placement::Unbound, |p| Placement::Fixed(p + i));
            let (spec, work, live) = (spec.clone(), work.clone(), live.clone());
            let (slow_us, out) = (c.slow_us, c.out.clone());
            let part = Part {
                index: c.proc_index * c.threads + i,
                of: c.threads * c.proc_count.unwrap_or(1),
                user_base: c.user_base,
                run,
            };
            LocalExecutorBuilder::new(placement)
                .preempt_timer(Duration::from_millis(1)) // reap I/O often: latency is measured
                .spawn(move || async move {
                    let mut recorder = Recorder::new(scenario, main, live, i);
                    if let Some(us) = slow_us {
                        recorder.log_slow(us, out.join(format!("slow-{}.tsv", part.index)));
                    }
                    let rec = Rc::new(RefCell::new(recorder));
                    work(Target::new(spec, part.index), rec.clone(), part).await;
                    Rc::try_unwrap(rec)
                        .ok()
                        .expect("work is done")
                        .into_inner()
                        .finish(0.0)
                })
                .expect("executor")
        })
        .collect();
    let reports: Vec<Report> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut total = reports[0].clone();
    for r in &reports[1..] {
        total.merge(r);
    }
    total.commands.truncate(1);
    total
}

/// The run id stamped into payloads: set by a `--procs` parent through the
/// environment so every worker process shares it, else the start time.
fn run_id() -> u64 {
    std::env::var("LOADGEN_RUN_ID")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| epoch_ns(Instant::now()))
}

fn run_chat(c: &Common, spec: TargetSpec, a: &ChatArgs) -> Report {
    let pairs = a.pairs;
    let plan = chat::ChatPlan {
        first_pair: 0,
        pairs,
        window: a.window,
        rate_per_sender: a.rate.map(|r| r / pairs as f64),
        poisson: a.poisson,
        payload: a.payload.max(verify::HEADER),
        duration: a.duration,
        drain: a.drain,
        user_base: c.user_base,
        run: 0,
        warmup: a.warmup,
        measure_from_ns: 0,
    };
    let ready = Arc::new(gate::Gate::new(c.threads));
    let mut r = on_workers(c, spec, "chat", Latency::Delivered, move |t, rec, part| {
        let (first_pair, pairs) = part.share(plan.pairs);
        let plan = chat::ChatPlan {
            first_pair,
            pairs,
            run: part.run,
            ..plan
        };
        Box::pin(chat::run(t, plan, rec, ready.clone()))
    });
    r.send_s = a.duration.as_secs_f64();
    r
}

fn run_offline(c: &Common, spec: TargetSpec, s: &Scenario) -> Report {
    let Scenario::Offline {
        devices,
        messages,
        senders,
        window,
        payload,
        limit,
        pause_before_storm,
    } = *s
    else {
        unreachable!("offline")
    };
    let barrier = Arc::new(gate::Gate::new(c.threads));
    let pause = pause_before_storm.then(|| {
        std::fs::create_dir_all(&c.out).expect("create --out");
        let _ = std::fs::remove_file(c.out.join("filled"));
        let _ = std::fs::remove_file(c.out.join("go"));
        c.out.clone()
    });
    let mut r = on_workers(c, spec, "offline", Latency::Backlog, move |t, rec, part| {
        let (first, n) = part.share(devices);
        let plan = offline::OfflinePlan {
            first,
            devices: n,
            messages,
            senders: part.share(senders).1.max(1),
            window,
            payload: payload.max(verify::HEADER),
            user_base: part.user_base,
            all_devices: devices,
            run: part.run,
            limit,
        };
        Box::pin(offline::run(t, rec, plan, barrier.clone(), pause.clone()))
    });
    if let Some(s) = r.extra.get("storm_s").copied() {
        let delivered = r.count(report::Counter::Delivered) as f64;
        r.extra
            .insert("storm_msgs_per_s".into(), delivered / s.max(1e-9));
    }
    r
}

fn run_idle(c: &Common, spec: TargetSpec, s: &Scenario) -> Report {
    let Scenario::Idle {
        conns,
        hold,
        settle,
        gateway_pid,
    } = *s
    else {
        unreachable!("idle")
    };
    std::fs::create_dir_all(&c.out).expect("create --out");
    let marker = c.out.join("all-open");
    let _ = std::fs::remove_file(&marker);
    let all_open = conns::AllOpen {
        left: Arc::new(AtomicUsize::new(c.threads)),
        marker: marker.clone(),
    };
    let watcher = (c.proc_count.is_none())
        .then(|| std::thread::spawn(move || measure_idle(gateway_pid, &[marker], conns, settle)));
    let mut r = on_workers(c, spec, "idle", Latency::Connect, move |t, rec, part| {
        let (first, n) = part.share(conns);
        Box::pin(conns::idle(
            t,
            rec,
            part.user_base + first,
            n,
            hold,
            all_open.clone(),
        ))
    });
    if let Some(w) = watcher {
        r.extra.extend(w.join().expect("watcher"));
    }
    r
}

/// Waits for every marker file, lets the gateway settle, and reads its
/// memory: bytes per connection over the RSS before any connected, at 2 s
/// and at `settle`.
fn measure_idle(
    pid: Option<u32>,
    markers: &[PathBuf],
    conns: u64,
    settle: Duration,
) -> Vec<(String, f64)> {
    let before = pid.and_then(conns::rss_kib);
    while !markers.iter().all(|m| m.exists()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let open = Instant::now();
    let early = Duration::from_secs(2);
    std::thread::sleep(early);
    let at_2s = pid.and_then(conns::rss_kib);
    std::thread::sleep(settle.saturating_sub(open.elapsed()));
    let after = pid.and_then(conns::rss_kib);
    let per_conn = |kib: u64, b: u64| (kib.saturating_sub(b) * 1024) as f64 / conns as f64;
    match (before, at_2s, after) {
        (Some(b), Some(a2), Some(a)) => vec![
            ("gateway_rss_before_kib".into(), b as f64),
            ("gateway_rss_after_kib".into(), a as f64),
            ("gateway_bytes_per_conn".into(), per_conn(a, b)),
            ("gateway_bytes_per_conn_at_2s".into(), per_conn(a2, b)),
        ],
        _ => Vec::new(),
    }
}

fn run_group(c: &Common, spec: TargetSpec, a: &GroupArgs) -> Result<Report, String> {
    if a.size < 2 || a.senders == 0 || a.senders + a.offline > a.size {
        return Err("group: --size ≥ 2, --senders ≥ 1, --senders + --offline ≤ --size".into());
    }
    let plan = group::GroupPlan {
        first_group: 0,
        groups: a.groups,
        size: a.size,
        senders: a.senders,
        offline: a.offline,
        window: a.window,
        rate_per_sender: a.rate,
        messages: a.messages,
        payload: a.payload.max(verify::HEADER),
        duration: a.duration,
        drain: a.drain,
        user_base: c.user_base,
        run: 0,
    };
    let mut r = on_workers(c, spec, "group", Latency::Delivered, move |t, rec, part| {
        let (first_group, groups) = part.share(plan.groups);
        let plan = group::GroupPlan {
            first_group,
            groups,
            run: part.run,
            ..plan
        };
        Box::pin(group::run(t, plan, rec))
    });
    r.send_s = a.duration.as_secs_f64();
    Ok(r)
}

/// Runs `--procs` copies of this command as worker processes and merges
/// their reports.
fn run_procs(c: &Common, scenario: &Scenario) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = strip_flags(&args, &["--procs", "--out", "--quiet"]);
    let run = epoch_ns(Instant::now()).to_string();
    let dirs: Vec<PathBuf> = (0..c.procs)
        .map(|i| c.out.join(format!("proc-{i}")))
        .collect();
    let mut children = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = Command::new(&exe)
            .args(&args)
            .arg("--quiet")
            .arg(format!("--proc-index={i}"))
            .arg(format!("--proc-count={}", c.procs))
            .arg("--out")
            .arg(dir)
            .env("LOADGEN_RUN_ID", &run)
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        children.push(child);
    }
    let idle_figures = match scenario {
        Scenario::Idle {
            gateway_pid,
            conns,
            settle,
            ..
        } => {
            let markers: Vec<_> = dirs.iter().map(|d| d.join("all-open")).collect();
            measure_idle(*gateway_pid, &markers, *conns, *settle)
        }
        _ => Vec::new(),
    };
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.code() == Some(2) || status.code().is_none() {
            return Err(format!("a worker process failed: {status}"));
        }
    }
    let files: Vec<PathBuf> = dirs.iter().map(|d| d.join("report.json")).collect();
    let mut report = merge(&files)?;
    report.extra.extend(idle_figures);
    report.commands = vec![std::env::args().collect()];
    Ok(report)
}

/// `args` without the named flags (and their values).
fn strip_flags(args: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let name = a.split('=').next().unwrap_or(a);
        if flags.contains(&name) {
            skip_value = !a.contains('=') && name != "--quiet";
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// `loadgen merge`: one report from several.
fn merge(files: &[PathBuf]) -> Result<Report, String> {
    let mut reports = files.iter().map(|f| Report::read(Path::new(f)));
    let mut total = reports.next().ok_or("nothing to merge")??;
    for r in reports {
        let r = r?;
        if r.scenario != total.scenario {
            return Err(format!(
                "cannot merge {} with {}",
                r.scenario, total.scenario
            ));
        }
        total.merge(&r);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once() {
        for total in [0, 1, 7, 100, 1001] {
            let mut next = 0;
            for index in 0..6 {
                let part = Part {
                    index,
                    of: 6,
                    user_base: 0,
                    run: 0,
                };
                let (first, n) = part.share(total);
                assert_eq!(first, next);
                next += n;
            }
            assert_eq!(next, total);
        }
    }

    #[test]
    fn worker_processes_get_the_command_without_procs_and_out() {
        let args: Vec<String> = [
            "--procs",
            "2",
            "--out=x",
            "--threads",
            "2",
            "--quiet",
            "chat",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let kept = strip_flags(&args, &["--procs", "--out", "--quiet"]);
        assert_eq!(kept, vec!["--threads", "2", "chat"]);
    }
}
