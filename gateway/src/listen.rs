//! The process's claims on the machine, taken before any shard starts:
//! the data directory's lock and the client port.
//!
//! glommio's own `TcpListener::bind` sets `SO_REUSEPORT` and a backlog of
//! 1024; with it, a second gateway (or anything else with `SO_REUSEPORT`)
//! on the same port would silently share the connections. Here the port
//! is first bound alone, which fails if anyone holds it (retried for a
//! few seconds: the listener of a gateway killed a moment ago lingers
//! until the kernel tears down its io_uring); then one
//! `SO_REUSEPORT` listener per shard is made with the configured backlog.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "gateway.lock";

/// Takes the data directory's exclusive lock (`flock`), held until the
/// process ends. Fails if another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<File, String> {
    let path = dir.join(LOCK_FILE);
    let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data directory {} is in use by another gateway (it holds {})",
            dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// One listener per shard on `addr` (port 0: one free port for all).
/// Fails if any socket already holds the address, `SO_REUSEPORT` or not.
pub fn listeners(
    addr: SocketAddr,
    shards: usize,
    backlog: u32,
) -> Result<(SocketAddr, Vec<TcpListener>), String> {
    let probe = probe(addr)?;
    let addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| format!("listen {addr}: no local address"))?;
    drop(probe);
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    let mut all = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = socket(addr, true).map_err(|e| format!("listen {addr}: {e}"))?;
        socket
            .listen(backlog)
            .map_err(|e| format!("listen {addr}: {e}"))?;
        all.push(TcpListener::from(socket));
    }
    Ok((addr, all))
}

/// How long a port in use is retried. A gateway killed a moment ago keeps
/// its listener in the kernel until its io_uring is torn down, which the
/// kernel does asynchronously after the process is gone.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// `addr` bound without `SO_REUSEPORT`: proof that nobody else holds it.
fn probe(addr: SocketAddr) -> Result<Socket, String> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        match socket(addr, false) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "listen {addr}: the address is in use by another process"
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("listen {addr}: {e}")),
        }
    }
}

/// A TCP socket bound to `addr`, not yet listening.
fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?; // restart past TIME_WAIT
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_someone_holds_is_refused_and_a_free_one_is_shared_by_the_shards() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = listeners(addr, 2, 128).unwrap_err();
        assert!(error.contains("in use by another process"), "{error}");
        let (ours, all) = listeners("127.0.0.1:0".parse().unwrap(), 2, 128).unwrap();
        assert_ne!(ours.port(), 0);
        assert!(all.iter().all(|l| l.local_addr().unwrap() == ours));
        // And now ours is refused to anyone else, SO_REUSEPORT or not.
        assert!(listeners(ours, 1, 128).is_err());
    }

    #[test]
    fn a_second_lock_on_a_data_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("gw-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = lock_data_dir(&dir).unwrap();
        let error = lock_data_dir(&dir).unwrap_err();
        assert!(error.contains("in use by another gateway"), "{error}");
        drop(held);
        lock_data_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
