//! The process's life, on the real binary: it refuses to start on a data
//! directory another gateway holds or on a port another process listens
//! on, and a start-up stuck in recovery (a log segment that is a FIFO, so
//! its read blocks like a hung disk) is ended by SIGTERM or SIGINT, or by
//! the start-up watchdog naming the shard. Under systemd (`NOTIFY_SOCKET`)
//! it reports READY=1 once serving and STOPPING=1 when it drains.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Gateway, temp_dir};

/// A gateway process whose stderr lines are collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["serve", "--shards", "1", "--listen", listen])
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--segment-bytes", "1048576"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 60 s) for a stderr line containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        panic!("no line with {text:?}; saw:\n{}", self.seen.join("\n"));
    }

    /// Waits (at most 60 s) for the process to exit.
    fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            // A line is the only event to wait on; collect it meanwhile.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        }
        let _ = self.child.kill();
        panic!("the gateway did not exit; saw:\n{}", self.seen.join("\n"));
    }

    /// The rest of stderr, once the process has exited.
    fn rest(&mut self) -> String {
        self.seen.extend(self.lines.iter());
        self.seen.join("\n")
    }
}

/// A data directory whose shard 0 log starts with a FIFO: recovery blocks
/// opening it, as on a disk that stopped answering.
fn stuck_dir(name: &str) -> support::ScratchDir {
    let dir = temp_dir(name);
    let shard = dir.join("shard-0");
    std::fs::create_dir_all(&shard).unwrap();
    let fifo = shard.join(format!("{:020}.log", 0));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    dir
}

#[test]
fn a_second_gateway_on_the_same_data_directory_refuses_to_start() {
    let dir = temp_dir("life-lock");
    let first = Gateway::start(&dir, &[]);
    let mut second = Proc::start(&dir, "127.0.0.1:0", &[]);
    let status = second.exit();
    assert!(!status.success(), "{status}");
    let said = second.rest();
    assert!(said.contains("is in use by another gateway"), "{said}");
    // The first one still serves.
    assert_eq!(first.admin("GET", "/ready").0, 200);
}

#[test]
fn a_port_another_process_listens_on_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("life-port");
    let mut gw = Proc::start(&dir, &listen, &[]);
    let status = gw.exit();
    assert!(!status.success(), "{status}");
    let said = gw.rest();
    assert!(said.contains("in use by another process"), "{said}");
}

#[test]
fn sigterm_or_sigint_during_recovery_stops_the_process() {
    for signal in ["-TERM", "-INT"] {
        let dir = stuck_dir("life-signal");
        let mut gw = Proc::start(&dir, "127.0.0.1:0", &[]);
        gw.wait_for("recovering the log");
        let pid = gw.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = gw.exit();
        assert_eq!(status.code(), Some(0), "{signal}: {status}");
        let said = gw.rest();
        assert!(said.contains("stopped during start-up"), "{signal}: {said}");
        assert!(said.contains("recovering its log"), "{signal}: {said}");
    }
}

#[test]
fn a_start_that_hangs_is_ended_by_the_watchdog_naming_the_shard() {
    let dir = stuck_dir("life-watchdog");
    let mut gw = Proc::start(&dir, "127.0.0.1:0", &["--startup-timeout-s", "1"]);
    let status = gw.exit();
    assert_eq!(status.code(), Some(75), "{status}");
    let said = gw.rest();
    assert!(
        said.contains("shard 0 is still recovering its log after 1s"),
        "{said}"
    );
}

#[test]
fn systemd_hears_ready_once_serving_and_stopping_at_drain() {
    use std::os::unix::net::UnixDatagram;
    let dir = temp_dir("life-notify");
    let socket_path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--shards", "2", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A failed assertion below must not leave the gateway running.
    let guard = KillOnDrop(child.id());
    let mut message = [0; 256];
    let n = systemd.recv(&mut message).expect("READY=1 within 60 s");
    assert_eq!(&message[..n], b"READY=1\n");
    // By then the ready line is out too.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready "), "{line}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let n = systemd.recv(&mut message).expect("STOPPING=1 within 60 s");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert_eq!(child.wait().unwrap().code(), Some(0), "drained and exited");
    std::mem::forget(guard); // reaped
}

/// Sends SIGKILL to a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}
