//! A real gateway process for integration tests: started on a free
//! loopback port with a fresh data directory, killed (SIGKILL) on drop;
//! clients connect over real TLS trusting its development certificate.

#![allow(dead_code, clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::{ClientCore, ClientEvent, Connection};
use gateway::token::SigningKey;
pub use testkit::ScratchDir;

/// Flags for tests that send fast: no per-connection rate limit and no
/// per-device abuse limits.
pub const UNLIMITED: &[&str] = &[
    "--sends-per-s",
    "100000",
    "--abuse-new-conversations-per-h",
    "0",
    "--abuse-messages-per-recipient-per-s",
    "0",
    "--abuse-group-creates-per-day",
    "0",
];

/// A running gateway.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    extra: Vec<String>,
}

/// A small filesystem of the test's own: a tmpfs mounted on a directory,
/// unmounted on drop. Needs root (`mount`).
pub struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `kib` KiB on `dir`; `None` if this process may
    /// not mount (not root).
    pub fn mount(dir: &Path, kib: u64) -> Option<Self> {
        let size = format!("size={kib}k");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        assert!(
            out.status.success() || !root,
            "mount tmpfs on {} as root: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success().then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Grows (or shrinks) it to `kib` KiB, keeping its files.
    pub fn resize(&self, kib: u64) {
        let options = format!("remount,size={kib}k");
        let status = Command::new("mount")
            .args(["-o", &options])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount: {status}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A fresh directory under the target dir: removed when the test passes,
/// kept when it fails (for a look).
pub fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new_in(env!("CARGO_TARGET_TMPDIR"), name)
}

/// Log segment size of test gateways unless a test sets its own: the
/// smallest the gateway takes, so each shard allocates 1 MiB on disk up
/// front instead of the default 64 MiB.
const TEST_SEGMENT_BYTES: &str = "1048576";

/// `--segment-bytes` for a test gateway, unless `extra` sets it.
fn segment_default(extra: &[String]) -> &'static [&'static str] {
    if extra.iter().any(|a| a.starts_with("--segment-bytes")) {
        &[]
    } else {
        &["--segment-bytes", TEST_SEGMENT_BYTES]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    /// Starts a gateway with 2 shards on `dir` and `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::start_on(dir, free_port(), extra)
    }

    /// Starts a gateway whose files cannot grow past `kib` KiB (bash's
    /// `ulimit -f`, with SIGXFSZ ignored so a write past it fails with
    /// `EFBIG`): a disk that fills, for real.
    pub fn start_file_limited(dir: &Path, extra: &[&str], kib: u64) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut command = Command::new("bash");
        let script = format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\"");
        command.args(["-c", &script, env!("CARGO_BIN_EXE_gateway")]);
        Self::spawn(command, dir, free_port(), extra)
    }

    /// Starts a gateway as [`Gateway::start`] does, from `dir`'s parent
    /// directory, naming `dir` by a relative path (as the README's
    /// quickstart does with `data`).
    pub fn start_relative(dir: &Path, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command.current_dir(dir.parent().expect("a test dir has a parent"));
        Self::spawn(command, dir, free_port(), extra)
    }

    /// The process ended on its own: its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Starts again (without limits) on the same port and data directory,
    /// after the process ended.
    pub fn restart(&mut self) {
        let next = Self::start_on(&self.dir, self.addr.port(), self.extra.clone());
        let old = std::mem::replace(self, next);
        std::mem::forget(old); // its child is already reaped
    }

    fn start_on(dir: &Path, port: u16, extra: Vec<String>) -> Self {
        let command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        Self::spawn(command, dir, port, extra)
    }

    fn spawn(mut command: Command, dir: &Path, port: u16, extra: Vec<String>) -> Self {
        let listen = format!("127.0.0.1:{port}");
        // Relative to the working directory if one is set.
        let data_dir = match command.get_current_dir() {
            Some(cwd) => dir
                .strip_prefix(cwd)
                .expect("dir is under it")
                .to_path_buf(),
            None => dir.to_path_buf(),
        };
        let mut child = command
            .args(["serve", "--shards", "2", "--listen", &listen])
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            // A stuck start names its shard on stderr before the 60 s here.
            .args(["--startup-timeout-s", "45"])
            .args(&extra)
            .args(segment_default(&extra))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            // Not left running (and spinning) after the test fails.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway printed no ready line within 60 s");
        };
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .unwrap_or_else(|| panic!("no ready line, got {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr: listen.parse().unwrap(),
            admin,
            dir: dir.to_path_buf(),
            extra,
        }
    }

    /// SIGKILL, then start again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let next = Self::start_on(&self.dir, self.addr.port(), self.extra.clone());
        let old = std::mem::replace(self, next);
        std::mem::forget(old); // its child is already reaped
    }

    /// A token for `user`/`device`, valid for `ttl_s` (negative: expired).
    pub fn token(&self, user: u64, device: u32, ttl_s: i64) -> Vec<u8> {
        let pkcs8 = std::fs::read(self.dir.join("dev-token-key.pk8")).unwrap();
        let key = SigningKey::from_pkcs8(1, &pkcs8).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        key.issue(user, device, now.saturating_add_signed(ttl_s))
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        client::trust(&self.dir.join("dev-cert.pem")).unwrap()
    }

    /// Connects `user`/`device` resuming after `last_acked_seq` and waits for
    /// `Welcome`; returns the connection and the backlog count.
    pub async fn login(&self, user: u64, device: u32, last_acked_seq: u64) -> (Connection, u32) {
        let core = ClientCore::new(&self.token(user, device, 3600), last_acked_seq, 1);
        self.resume(core).await
    }

    /// Connects with an existing core (a reconnect).
    pub async fn resume(&self, core: ClientCore) -> (Connection, u32) {
        let mut conn = Connection::connect(self.addr, self.tls(), "localhost", core)
            .await
            .unwrap();
        match next(&mut conn).await {
            ClientEvent::Welcome { backlog_count, .. } => (conn, backlog_count),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// GET (or POST) on the admin endpoint with its bearer token (the one
    /// generated into the data directory): (status, body).
    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        let token = std::fs::read_to_string(self.dir.join("admin-token")).unwrap();
        self.admin_as(method, path, Some(token.trim()))
    }

    /// An admin request with `token` (or none): (status, body).
    pub fn admin_as(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Gateway {
    /// `/metrics` once it satisfies `ready` (shards publish every 100 ms
    /// tick); panics after 10 s.
    pub fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.admin("GET", "/metrics");
            assert_eq!(status, 200);
            if ready(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "metrics never got there:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(20)); // the next tick
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next event within 10 s (a hang fails the test instead of CI).
pub async fn next(conn: &mut Connection) -> ClientEvent {
    conn.next_event_within(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("an event within 10 s")
}

/// Runs `f` on a glommio executor on this thread's behalf.
pub fn run<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap()
}

/// The sum of one `/metrics` series over the shards.
pub fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
