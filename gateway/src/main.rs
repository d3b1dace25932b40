//! The `gateway` binary: the messaging edge server and its tools.
//!
//! `gateway serve` (the default) runs the thread-per-core TLS server (see
//! `server.rs`); `gateway check-config FILE` validates a configuration;
//! `gateway token keygen` and `gateway token issue` make signing keys and
//! tokens for development, tests and load generation (production tokens
//! come from the identity service; gateways hold only verifying keys).
//!
//! It must not know how the queue engine lays out bytes on disk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use gateway::config::{Overrides, Settings};
use gateway::metrics::Metrics;
use gateway::server::{Control, ServerSpec};
use gateway::token::{SigningKey, Verifier};
use mimalloc::MiMalloc;

/// The development token signing key's file name in the data directory.
const DEV_TOKEN_KEY: &str = "dev-token-key.pk8";

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// The messaging edge gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default). Every flag overrides the --config
    /// file's key of the same name (with `_` for `-`).
    Serve(Box<Overrides>),
    /// Validate a TOML configuration file and print the settings it makes.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Make signing keys and tokens for development, tests and loadgen.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Generate an Ed25519 signing key; prints the verifying key for the
    /// gateway's configuration as `KEY_ID:HEX`.
    Keygen {
        /// Key id tokens will carry (rotate by adding a new id).
        #[arg(long, default_value_t = 1)]
        key_id: u16,
        /// Folder to write `token-signing-key-<id>.pk8` into (mode 0600).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Issue a token (printed as hex) for one device of one user.
    Issue {
        /// A signing key from `gateway token keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The key's id.
        #[arg(long, default_value_t = 1)]
        key_id: u16,
        /// User id.
        #[arg(long)]
        user: u64,
        /// Device number within the user.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let command = Cli::parse()
        .command
        .unwrap_or_else(|| Command::Serve(Box::default()));
    let result = match command {
        Command::Serve(overrides) => serve(&overrides),
        Command::CheckConfig { file } => Settings::load(&file)
            .map(|s| println!("{file:?} is valid:\n{s:#?}"))
            .map_err(|e| e.to_string()),
        Command::Token(command) => token(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(overrides: &Overrides) -> Result<(), String> {
    init_logs();
    let mut settings = overrides.settings().map_err(|e| e.to_string())?;
    allocator::set_purge_delay(settings.allocator_purge_delay_ms);
    if !settings.allocator_huge_pages {
        allocator::refuse_huge_pages();
    }
    if settings.shards == 0 {
        settings.shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| format!("{}: {e}", settings.data_dir.display()))?;
    // Held until the process ends (the kernel drops it on any exit).
    let _lock = gateway::listen::lock_data_dir(&settings.data_dir)?;
    let control = Arc::new(Control::new(settings.shards));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once (status 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.drain.clone())
            .and_then(|_| signal_hook::flag::register(signal, control.drain.clone()))
            .map_err(|e| format!("signal {signal} handler: {e}"))?;
    }
    let (listen, listeners) =
        gateway::listen::listeners(settings.listen, settings.shards, settings.listen_backlog)?;
    let tls = tls_config(&settings)?;
    let verifier = Arc::new(verifier(&settings)?);
    let metrics = Arc::new(Metrics::new());
    let admin_token = admin_token(&settings)?;
    let admin = gateway::admin::start(
        settings.admin_listen,
        settings.shards,
        admin_token,
        metrics.clone(),
        control.clone(),
    )
    .map_err(|e| format!("admin endpoint {}: {e}", settings.admin_listen))?;
    let notifier = notifier(&settings, &metrics, &control)?;
    let spec = ServerSpec {
        shards: settings.shards,
        data_dir: settings.data_dir.clone(),
        tls,
        verifier,
        shard: gateway::shard::ShardConfig {
            id_seed: id_seed(),
            ..settings.shard_config()
        },
        engine: settings.engine_config(),
        metrics,
        control: control.clone(),
        notifier,
        tls_keys_idle: (settings.tls_keys_idle_ms > 0)
            .then(|| Duration::from_millis(settings.tls_keys_idle_ms)),
        pin_shards: settings.pin_shards,
        commit_delay: Duration::from_micros(settings.commit_delay_us),
    };
    let shards = spec.shards;
    let _handles = gateway::server::start(spec, listeners).map_err(|e| e.to_string())?;
    await_start(&control, Duration::from_secs(settings.startup_timeout_s));
    tracing::info!(
        "gateway {} serving TLS on {listen} with {shards} shards; admin on http://{admin}",
        env!("CARGO_PKG_VERSION"),
    );
    println!("ready listen={listen} admin={admin}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    while !control.drain.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    while control.drained.load(Ordering::SeqCst) < shards {
        std::thread::sleep(POLL);
    }
    tracing::info!("drained; exiting");
    std::process::exit(0);
}

/// How often the main thread looks at the shards' progress and the flags.
const POLL: Duration = Duration::from_millis(5);
/// Exit status when a shard did not start in time (EX_TEMPFAIL).
const EXIT_START_STUCK: i32 = 75;

/// Returns once every shard serves. Exits the process if a signal asks it
/// to stop first (status 0: nothing was ✓'d that is not durable), or if a
/// shard is still not serving after `timeout` (status 75, naming it).
fn await_start(control: &Control, timeout: Duration) {
    let started = std::time::Instant::now();
    while let Some((shard, stage)) = control.not_serving() {
        if control.drain.load(Ordering::SeqCst) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            tracing::info!(
                "stopped during start-up, as asked (shard {shard} was {})",
                stage.doing()
            );
            std::process::exit(0);
        }
        if started.elapsed() >= timeout {
            tracing::error!(
                "start-up watchdog: shard {shard} is still {} after {timeout:?}; exiting",
                stage.doing()
            );
            std::process::exit(EXIT_START_STUCK);
        }
        std::thread::sleep(POLL);
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn tls_config(settings: &Settings) -> Result<Arc<rustls::ServerConfig>, String> {
    let files = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => gateway::tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            generated: false,
        },
        _ => {
            let files =
                gateway::tls::dev_certificate(&settings.data_dir).map_err(|e| e.to_string())?;
            tracing::warn!(
                "no tls_cert configured: using the DEVELOPMENT certificate {} (clients must trust it explicitly; never use it in production)",
                files.cert.display()
            );
            files
        }
    };
    gateway::tls::server_config(&files, settings.allow_tls12).map_err(|e| e.to_string())
}

/// The push notifier, if a webhook is configured: tokens it rejects are
/// forgotten by their devices' home shards.
fn notifier(
    settings: &Settings,
    metrics: &Metrics,
    control: &Arc<Control>,
) -> Result<Option<Arc<gateway::push::Notifier>>, String> {
    let Some(url) = &settings.push_webhook_url else {
        return Ok(None);
    };
    let config = gateway::push::PushConfig::new(url.clone(), settings.push_queue_max);
    let control = control.clone();
    let shards = u16::try_from(settings.shards).map_err(|_| "too many shards".to_owned())?;
    let placement = shard_router::Placement::single_node(shards);
    let forget = move |r: gateway::push::Rejected| {
        let home = placement.user_shard(shard_router::UserId(r.user)).0 as usize;
        let (reply, _) = std::sync::mpsc::channel();
        let op = gateway::server::AdminOp::ForgetPushToken {
            device: r.device,
            token: r.token,
        };
        let job = gateway::server::AdminJob {
            user: r.user,
            op,
            reply,
        };
        control.submit(home, job);
    };
    tracing::info!("push wake-ups go to {url}");
    gateway::push::Notifier::start(config, metrics.push.clone(), forget)
        .map(Some)
        .map_err(|e| format!("push notifier: {e}"))
}

/// File in the data directory holding the generated admin token.
const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The configured admin bearer token, or one generated into the data
/// directory (kept across restarts; readable by its owner only).
fn admin_token(settings: &Settings) -> Result<String, String> {
    if let Some(token) = &settings.admin_token {
        return Ok(token.clone());
    }
    let path = settings.data_dir.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no randomness for the admin token".to_owned())?;
        gateway::tls::write_private(&path, hex::encode(bytes).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let token = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::warn!(
        "no admin_token configured: the admin endpoint wants the token in {} (Authorization: Bearer ...)",
        path.display()
    );
    Ok(token.trim().to_owned())
}

/// The configured verifying keys, or a development signing key generated
/// into the data directory (its public half trusted).
fn verifier(settings: &Settings) -> Result<Verifier, String> {
    let mut keys = Vec::new();
    for text in &settings.verifying_keys {
        keys.push(gateway::token::parse_verifying_key(text)?);
    }
    if keys.is_empty() {
        let path = settings.data_dir.join(DEV_TOKEN_KEY);
        if !path.exists() {
            let (_, pkcs8) = SigningKey::generate(1);
            gateway::tls::write_private(&path, &pkcs8)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let pkcs8 = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key =
            SigningKey::from_pkcs8(1, &pkcs8).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::warn!(
            "no verifying_keys configured: trusting the DEVELOPMENT token key {} (issue tokens with `gateway token issue --key {}`)",
            path.display(),
            path.display()
        );
        keys.push((1, key.public_key()));
    }
    Ok(Verifier::new(keys))
}

fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Keygen { key_id, out } => {
            let (key, pkcs8) = SigningKey::generate(key_id);
            let path = out.join(format!("token-signing-key-{key_id}.pk8"));
            gateway::tls::write_private(&path, &pkcs8)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("signing key written to {}", path.display());
            println!("{key_id}:{}", hex::encode(key.public_key()));
        }
        TokenCommand::Issue {
            key,
            key_id,
            user,
            device,
            ttl,
        } => {
            let pkcs8 = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            let signing = SigningKey::from_pkcs8(key_id, &pkcs8)
                .map_err(|e| format!("{}: not an Ed25519 PKCS#8 key: {e}", key.display()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            println!(
                "{}",
                hex::encode(signing.issue(user, device, (now + ttl).as_secs()))
            );
        }
    }
    Ok(())
}

/// A seed for the group ids this process gives out: the clock and the
/// process id, so two runs never start the same sequence.
fn id_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 32);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// The global allocator's options.
mod allocator {
    /// mimalloc's `mi_option_purge_delay` (v3 `mimalloc.h`; the Rust
    /// binding names no constant for it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// Its default in that version: seeing it confirms the option's number.
    const PURGE_DELAY_DEFAULT: std::ffi::c_long = 1000;

    /// Sets how long freed memory stays with the process before mimalloc
    /// purges it (-1: never). Purged pages that are needed again come
    /// back faulted in and zeroed by the kernel: never purging is worth
    /// about 2% of closed-loop throughput, and keeps the high-water mark.
    #[allow(unsafe_code)]
    pub fn set_purge_delay(ms: i64) {
        // SAFETY: reading and setting an option are plain calls into
        // mimalloc, valid at any time from any thread.
        let current = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        if ms == current {
            return;
        }
        if current != PURGE_DELAY_DEFAULT {
            tracing::warn!(
                "mimalloc's purge delay (option {PURGE_DELAY}) reads {current}, not its default \
                 {PURGE_DELAY_DEFAULT} (MIMALLOC_PURGE_DELAY is set, or mimalloc numbers its \
                 options differently): allocator_purge_delay_ms={ms} not applied"
            );
            return;
        }
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms as std::ffi::c_long) };
    }

    /// Keeps the process's memory off transparent huge pages, whatever
    /// the allocator asks for (`PR_SET_THP_DISABLE`, which overrides
    /// `MADV_HUGEPAGE`; mimalloc advises its arenas huge). With them, on a
    /// host whose THP mode is `madvise` or `always`, the first touch of
    /// each 2 MiB zeroed it inside a shard's turn, `khugepaged` stalled
    /// the process for milliseconds at a time, and idle connections cost
    /// about 500 B more each in partly used huge pages (see
    /// `benchmarks/idle-memory.sh`). Pages already huge stay so.
    #[allow(unsafe_code)]
    pub fn refuse_huge_pages() {
        // SAFETY: a plain prctl on the calling process, no pointers.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if done != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(
                "transparent huge pages not refused ({error}); memory may be backed by them"
            );
        }
    }
}
