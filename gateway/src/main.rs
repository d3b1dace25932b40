//! The `gateway` binary: the messaging edge server and its tools.
//!
//! `gateway serve` (the default) will run the thread-per-core TLS server;
//! at this step it reports what it is built from. `gateway token keygen`
//! and `gateway token issue` make signing keys and tokens for development,
//! tests and load generation (production tokens come from the identity
//! service; gateways hold only verifying keys).
//!
//! It must not know how the queue engine lays out bytes on disk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use gateway::token::SigningKey;
use mimalloc::MiMalloc;

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
    /// Run the gateway (the default).
    Serve,
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
    let result = match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            serve();
            Ok(())
        }
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

fn serve() {
    let limits = wire_format::Limits::default();
    println!("gateway {}", env!("CARGO_PKG_VERSION"));
    println!(
        "wire protocol v{}, frames up to {} bytes, headers up to {} bytes",
        wire_format::PROTOCOL_VERSION,
        limits.frame_bytes_max,
        limits.header_bytes_max
    );
    println!("not serving yet: the TLS server comes with the gateway issue (see README, Status)");
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
