//! [`Connection`]: the glommio + rustls shell around [`ClientCore`]. One
//! TLS connection to a gateway, trusting the certificates given (a
//! development certificate, for instance). Frames queued by the core are
//! written in one TLS write per [`Connection::flush`].

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::{ACK_DELAY, ClientCore, ClientEvent};

/// A client TLS configuration trusting the PEM certificates in `path`.
pub fn trust(path: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One connection to a gateway.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    tls: ClientConnection,
    core: ClientCore,
    buf: Vec<u8>,
    /// Plaintext of the frames one flush writes, then the records it
    /// makes: kept between flushes (up to [`SCRATCH_KEEP`] bytes) so a
    /// busy connection allocates nothing per write.
    plain: Vec<u8>,
    records: Vec<u8>,
    /// Since when the core holds an acknowledgment back (`ack_later`).
    ack_held_since: Option<Instant>,
    /// How long a held acknowledgment waits for a frame to ride.
    ack_delay: Duration,
}

impl Connection {
    /// Connects to `addr`, checks the server is `server_name`, and sends
    /// the core's `Hello` (and any sends it carries from a previous
    /// connection).
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
        core: ClientCore,
    ) -> io::Result<Self> {
        Self::connect_from(None, addr, config, server_name, core).await
    }

    /// [`Connection::connect`] from the local address `source` (say
    /// 127.0.0.2): each source address has its own ephemeral ports, so a
    /// client holding more connections than one address pair allows
    /// spreads them over several.
    pub async fn connect_from(
        source: Option<IpAddr>,
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
        core: ClientCore,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(io::Error::other)?;
        let tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let stream = match source {
            None => TcpStream::connect(addr).await?,
            Some(ip) => connect_bound(ip, addr)?,
        };
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream,
            tls,
            core,
            buf: vec![0; 16 * 1024],
            plain: Vec::new(),
            records: Vec::new(),
            ack_held_since: None,
            ack_delay: ACK_DELAY,
        };
        conn.handshake().await?;
        conn.flush().await?;
        Ok(conn)
    }

    /// Completes the TLS handshake (before it, rustls holds at most 64 KiB
    /// of plaintext, less than a reconnect may resend).
    async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.write_tls().await?;
            if self.tls.is_handshaking() && self.tls.wants_read() {
                let n = self.stream.read(&mut self.buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.take_input(n)?;
            }
        }
        self.write_tls().await
    }

    /// The protocol core: send, ack and read state through it.
    pub fn core(&mut self) -> &mut ClientCore {
        &mut self.core
    }

    /// The protocol core, read-only (to build the next connection's core
    /// with [`ClientCore::reconnect`]).
    pub fn core_ref(&self) -> &ClientCore {
        &self.core
    }

    /// Ends this connection, keeping the core for [`ClientCore::reconnect`].
    pub fn into_core(self) -> ClientCore {
        self.core
    }

    /// Writes every frame the core has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut plain = std::mem::take(&mut self.plain);
        while let Some(frame) = self.core.poll_transmit() {
            plain.extend_from_slice(frame.header());
            plain.extend_from_slice(frame.payload());
        }
        let written = self.write_raw(&plain).await;
        self.plain = reuse(plain);
        written
    }

    /// Writes `bytes` as plaintext, frames or not (for tests of bad input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(32 * 1024) {
            self.tls.writer().write_all(chunk)?; // under rustls's 64 KiB limit
            self.write_tls().await?;
        }
        self.write_tls().await
    }

    /// Flushes, then waits for the next event. A closed connection yields
    /// `ClientEvent::Closed` once, then `UnexpectedEof` errors.
    pub async fn next_event(&mut self) -> io::Result<ClientEvent> {
        loop {
            if let Some(event) = self.next_event_within(Duration::from_secs(3600)).await? {
                return Ok(event);
            }
        }
    }

    /// [`Connection::next_event`] with a deadline: `Ok(None)` when it passes.
    /// Only the wait for bytes is cut short, never a write, so the TLS
    /// stream stays whole. An acknowledgment the core holds back
    /// ([`ClientCore::ack_later`]) is written once it has waited
    /// [`ACK_DELAY`] (or [`Connection::set_ack_delay`]) for another frame
    /// to ride.
    pub async fn next_event_within(&mut self, limit: Duration) -> io::Result<Option<ClientEvent>> {
        let deadline = Instant::now() + limit;
        loop {
            self.flush().await?;
            if let Some(event) = self.core.poll_event() {
                return Ok(Some(event));
            }
            if self.core.is_closed() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let now = Instant::now();
            let ack_due = self.ack_due(now);
            if ack_due.is_some_and(|due| due <= now) {
                self.core.release_ack();
                continue;
            }
            let until = ack_due.map_or(deadline, |due| due.min(deadline));
            let left = until.saturating_duration_since(now);
            if left.is_zero() {
                return Ok(None);
            }
            let read = async { Some(self.stream.read(&mut self.buf).await) };
            let timer = async {
                glommio::timer::Timer::new(left).await;
                None
            };
            match read.or(timer).await {
                None if until == deadline => return Ok(None),
                None => {}
                Some(n) => self.take_input(n?)?,
            }
        }
    }

    /// When the acknowledgment the core holds back is to be written.
    fn ack_due(&mut self, now: Instant) -> Option<Instant> {
        if !self.core.ack_held() {
            self.ack_held_since = None;
            return None;
        }
        Some(*self.ack_held_since.get_or_insert(now) + self.ack_delay)
    }

    /// How long a held acknowledgment waits for another frame to ride
    /// before it is written on its own ([`ACK_DELAY`] unless set): longer
    /// coalesces more acks of a slower conversation, and delays its ✓✓ as
    /// much.
    pub fn set_ack_delay(&mut self, delay: Duration) {
        self.ack_delay = delay;
    }

    /// Writes what the core has queued, a held-back acknowledgment too:
    /// before closing.
    pub async fn finish(&mut self) -> io::Result<()> {
        self.core.release_ack();
        self.flush().await
    }

    /// Feeds `n` bytes of the read buffer through TLS to the core.
    fn take_input(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            self.core.handle_peer_closed();
            return Ok(());
        }
        let mut input = &self.buf[..n];
        while !input.is_empty() {
            self.tls.read_tls(&mut input)?;
            self.tls.process_new_packets().map_err(io::Error::other)?;
            // The core reads each record's plaintext where rustls holds it.
            let mut reader = self.tls.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => {
                        self.core.handle_peer_closed();
                        return Ok(());
                    }
                    Ok(plain) => {
                        let n = plain.len();
                        self.core.handle_bytes(plain);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn write_tls(&mut self) -> io::Result<()> {
        if !self.tls.wants_write() {
            return Ok(());
        }
        let mut records = std::mem::take(&mut self.records);
        while self.tls.wants_write() {
            self.tls.write_tls(&mut records)?;
        }
        let written = self.stream.write_all(&records).await;
        self.records = reuse(records);
        written
    }
}

/// Bytes of write scratch a connection keeps between writes; a larger
/// buffer (a burst) is freed, so an idle connection holds little.
const SCRATCH_KEEP: usize = 16 * 1024;

/// `buf` emptied for the next write, or freed if a burst grew it.
fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > SCRATCH_KEEP {
        return Vec::new();
    }
    buf.clear();
    buf
}

/// Starts a non-blocking connect from `source`; the first write waits for
/// it to complete (a write on a connecting socket polls for writability),
/// and a refused connect surfaces as that write's error.
fn connect_bound(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from(socket))
}

/// `EINPROGRESS` on Linux.
const fn libc_einprogress() -> i32 {
    115
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutor;
    use glommio::net::TcpListener;

    #[test]
    fn a_bound_connect_comes_from_the_source_address_and_carries_bytes() {
        LocalExecutor::default().run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let source: IpAddr = "127.0.0.2".parse().unwrap();
            let mut client = connect_bound(source, addr).unwrap();
            // Write before the accept: the write waits for the connect.
            client.write_all(b"hello").await.unwrap();
            let mut server = listener.accept().await.unwrap();
            assert_eq!(server.peer_addr().unwrap().ip(), source);
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
        });
    }

    #[test]
    fn a_bound_connect_to_a_closed_port_fails_on_first_use() {
        LocalExecutor::default().run(async {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            }; // closed again
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut client = connect_bound("127.0.0.3".parse().unwrap(), addr).unwrap();
            let err = client.write_all(b"x").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        });
    }
}
