//! One connection's TLS, over rustls's caller-buffered ("unbuffered")
//! server API, sans-IO: bytes read from the socket go in, plaintext and
//! events come out through a callback, and the bytes to send are appended
//! to a buffer the caller lends. The shell does the socket.
//!
//! rustls keeps only the session's state and keys here; the bytes in
//! flight live in the caller's buffers (the shard's read scratch and a
//! pooled write buffer), so an idle connection holds no buffer at all.
//! The one exception is a record cut off at the end of a read: its bytes
//! are copied into the connection's `partial` buffer until the rest
//! arrives, and the buffer is freed once it is used up.
//!
//! rustls's main branch is replacing this API with caller-owned input
//! buffers; this is the only module that names it.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// Bytes a TLS record adds to its plaintext, at most (TLS 1.2 AES-GCM:
/// header, explicit nonce, tag); a first guess at the room to encrypt
/// into, corrected by rustls if short.
const RECORD_OVERHEAD: usize = 32;
/// Plaintext bytes per record.
const RECORD_PLAINTEXT: usize = 16 * 1024;
/// Most bytes kept between reads: more than one whole record (rustls
/// refuses larger ones), so only a peer that goes on sending after its
/// `close_notify`, which rustls no longer reads, reaches it.
const PARTIAL_MAX: usize = 64 * 1024;

/// What a read produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsEvent<'a> {
    /// The handshake completed; application data may flow both ways.
    HandshakeDone,
    /// Decrypted application data.
    Plaintext(&'a [u8]),
    /// The peer sent `close_notify`: nothing more will come from it.
    PeerClosed,
}

/// Why a connection's TLS failed. After a failure the connection is
/// over: write what was appended to the output (the alert), then close.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnError {
    /// The peer broke the protocol, or a record failed to decrypt.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Data was to be written while the handshake was still running.
    #[error("tls: the handshake has not completed")]
    Handshaking,
    /// Data was to be written after both sides closed.
    #[error("tls: the connection is closed")]
    Closed,
    /// The peer went on sending after its `close_notify`.
    #[error("tls: data after close_notify")]
    AfterClose,
    /// The record sequence ran out (2^64 records): the keys are spent.
    #[error("tls: the traffic keys are exhausted")]
    Exhausted,
}

/// One server-side TLS session.
pub struct TlsConn {
    conn: UnbufferedServerConnection,
    /// The start of a record cut off at the end of the last read (empty,
    /// holding no allocation, between whole records).
    partial: Vec<u8>,
    handshaking: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("partial", &self.partial.len())
            .field("handshaking", &self.handshaking)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// A session waiting for the client's first flight.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            handshaking: true,
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Takes `input`, bytes just read from the socket (decrypted in
    /// place), and runs the session until it needs more: each event goes
    /// to `on`, in order, and what must be sent in answer (handshake
    /// messages, key updates, an alert after a failure) is appended to
    /// `out`.
    pub fn read(
        &mut self,
        input: &mut [u8],
        out: &mut Vec<u8>,
        mut on: impl FnMut(TlsEvent<'_>),
    ) -> Result<(), TlsConnError> {
        if self.partial.is_empty() {
            let used = self.process(input, out, &mut on)?;
            keep_at_most(input.len() - used)?;
            self.partial.extend_from_slice(&input[used..]);
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut self.partial);
        buffer.extend_from_slice(input);
        let used = self.process(&mut buffer, out, &mut on)?;
        keep_at_most(buffer.len() - used)?;
        if used < buffer.len() {
            buffer.drain(..used);
            self.partial = buffer;
        }
        Ok(())
    }

    /// Lets the traffic keys' expanded form go (1,088 bytes with
    /// AES-GCM) until the connection next reads or writes, which builds
    /// it again (about 140 ns): for a connection that has gone quiet.
    pub fn hibernate(&mut self) {
        if !self.handshaking {
            self.conn.hibernate_keys();
        }
    }

    /// Encrypts `plain` into records appended to `out`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsConnError> {
        let records = plain.len() / RECORD_PLAINTEXT + 1;
        let guess = plain.len() + records * RECORD_OVERHEAD;
        self.write(out, guess, |traffic, buf| traffic.encrypt(plain, buf))
    }

    /// Appends a `close_notify` alert to `out`.
    pub fn close(&mut self, out: &mut Vec<u8>) -> Result<(), TlsConnError> {
        self.write(out, RECORD_OVERHEAD, |traffic, buf| {
            traffic.queue_close_notify(buf)
        })
    }

    /// Runs rustls over `buffer` until it needs more bytes; returns how
    /// many from the front it is done with.
    fn process(
        &mut self,
        buffer: &mut [u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(TlsEvent<'_>),
    ) -> Result<usize, TlsConnError> {
        let mut used = 0;
        loop {
            let Self {
                conn, handshaking, ..
            } = self;
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buffer[used..]);
            let more = match state {
                Ok(state) => step(state, handshaking, out, on),
                Err(e) => Err(e.into()),
            };
            used += discard;
            let more = match more {
                Ok(more) => more,
                Err(e) => {
                    self.take_alert(out);
                    return Err(e);
                }
            };
            if self.handshaking && !self.conn.is_handshaking() {
                self.handshaking = false;
                on(TlsEvent::HandshakeDone);
            }
            if !more {
                return Ok(used);
            }
        }
    }

    /// After a failure rustls may hold an alert: appends it to `out`.
    fn take_alert(&mut self, out: &mut Vec<u8>) {
        // Bounded: each turn takes one queued message; a failed session
        // answers with its error once nothing is left.
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if append(out, RECORD_OVERHEAD, |buf| encode.encode(buf)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Gets to the state where application data may be written, doing
    /// what rustls asks on the way, and lets `write` fill `out` (first
    /// with `guess` bytes of room).
    fn write(
        &mut self,
        out: &mut Vec<u8>,
        guess: usize,
        mut write: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), TlsConnError> {
        if self.handshaking {
            return Err(TlsConnError::Handshaking);
        }
        loop {
            // `partial` holds no whole record (every read runs to the
            // end), so nothing is decrypted here and nothing discarded.
            let status = self.conn.process_tls_records(&mut self.partial);
            debug_assert_eq!(status.discard, 0, "a whole record was left unread");
            match status.state.map_err(TlsConnError::from)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    return append(out, guess, |buf| write(&mut traffic, buf));
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(out, RECORD_OVERHEAD, |buf| encode.encode(buf))?;
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::Closed => return Err(TlsConnError::Closed),
                _ => return Err(TlsConnError::Handshaking),
            }
        }
    }
}

/// Refuses to keep more than [`PARTIAL_MAX`] bytes between reads.
fn keep_at_most(left: usize) -> Result<(), TlsConnError> {
    match left > PARTIAL_MAX {
        true => Err(TlsConnError::AfterClose),
        false => Ok(()),
    }
}

/// Handles one state rustls stopped in; whether to go on processing.
fn step(
    state: ConnectionState<'_, '_, ServerConnectionData>,
    handshaking: &mut bool,
    out: &mut Vec<u8>,
    on: &mut impl FnMut(TlsEvent<'_>),
) -> Result<bool, TlsConnError> {
    match state {
        ConnectionState::ReadTraffic(mut traffic) => {
            if std::mem::take(handshaking) {
                on(TlsEvent::HandshakeDone);
            }
            while let Some(record) = traffic.next_record() {
                on(TlsEvent::Plaintext(record?.payload));
            }
            Ok(true)
        }
        ConnectionState::EncodeTlsData(mut encode) => {
            append(out, RECORD_OVERHEAD, |buf| encode.encode(buf))?;
            Ok(true)
        }
        // The caller writes `out` when the read is done: in order, and
        // before anything encrypted later.
        ConnectionState::TransmitTlsData(transmit) => {
            transmit.done();
            Ok(true)
        }
        ConnectionState::PeerClosed => {
            on(TlsEvent::PeerClosed);
            Ok(true)
        }
        ConnectionState::WriteTraffic(_)
        | ConnectionState::BlockedHandshake
        | ConnectionState::Closed => Ok(false),
        // Early data is off (the config's `max_early_data_size` is 0), so
        // this is a state this code does not know.
        _ => Err(rustls::Error::General("unexpected TLS state".into()).into()),
    }
}

/// Why rustls did not write into the room it was given.
enum Short {
    /// It needs this many bytes.
    Room(usize),
    /// Anything else: the connection is over.
    Failed(TlsConnError),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => Short::Room(s.required_size),
            e => Short::Failed(rustls::Error::General(e.to_string()).into()),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => Short::Room(s.required_size),
            _ => Short::Failed(TlsConnError::Exhausted),
        }
    }
}

/// Lets `fill` write into the end of `out`, first with `guess` bytes of
/// room and then with what it says it needs.
fn append<E: Into<Short>>(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), TlsConnError> {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        let filled = fill(&mut out[start..]);
        out.truncate(start + *filled.as_ref().unwrap_or(&0));
        match filled.map_err(Into::into) {
            Ok(_) => return Ok(()),
            Err(Short::Room(needed)) if needed > room => room = needed,
            Err(Short::Room(needed)) => {
                let what = format!("rustls asked for {needed} bytes of {room}");
                return Err(rustls::Error::General(what).into());
            }
            Err(Short::Failed(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::ClientConnection;
    use rustls::pki_types::ServerName;

    use super::*;

    /// A real client and a `TlsConn` made from the gateway's own
    /// configuration and a fresh development certificate.
    fn pair(name: &str) -> (ClientConnection, TlsConn) {
        let dir = std::env::temp_dir().join(format!("tls-conn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = crate::tls::dev_certificate(&dir).unwrap();
        let server = crate::tls::server_config(&files, false).unwrap();
        let client_config = client::trust(&files.cert).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let host = ServerName::try_from("localhost").unwrap();
        let client = ClientConnection::new(client_config, host).unwrap();
        (client, TlsConn::new(server).unwrap())
    }

    /// What the server side saw, flattened.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Seen {
        handshake_done: usize,
        plaintext: Vec<u8>,
        peer_closed: bool,
        /// Plaintext bytes that came before `HandshakeDone`.
        early: usize,
    }

    impl Seen {
        fn on(&mut self, event: TlsEvent<'_>) {
            match event {
                TlsEvent::HandshakeDone => self.handshake_done += 1,
                TlsEvent::Plaintext(bytes) => {
                    if self.handshake_done == 0 {
                        self.early += bytes.len();
                    }
                    self.plaintext.extend_from_slice(bytes);
                }
                TlsEvent::PeerClosed => self.peer_closed = true,
            }
        }
    }

    /// The client's pending bytes, all of them.
    fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Gives `bytes` to the client, reading its plaintext as it goes (its
    /// buffer is small); the plaintext, or the client's error.
    fn to_client(client: &mut ClientConnection, bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut slice = bytes;
        let mut plain = Vec::new();
        while !slice.is_empty() {
            client.read_tls(&mut slice).unwrap();
            client.process_new_packets()?;
            if let Err(e) = client.reader().read_to_end(&mut plain) {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
            }
        }
        Ok(plain)
    }

    /// A pair whose client has sent `close_notify`, which the server saw.
    fn closed_by_client(name: &str) -> (ClientConnection, TlsConn, Seen) {
        let (mut client, mut server) = pair(name);
        let mut seen = Seen::default();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        client.send_close_notify();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        assert!(seen.peer_closed);
        (client, server, seen)
    }

    /// What the client reads of `plain` encrypted by the server.
    fn server_says(server: &mut TlsConn, client: &mut ClientConnection, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        server.encrypt(plain, &mut out).unwrap();
        to_client(client, &out).unwrap()
    }

    /// Runs both sides until neither has anything to say, feeding the
    /// server `piece` bytes per read.
    fn pump(client: &mut ClientConnection, server: &mut TlsConn, seen: &mut Seen, piece: usize) {
        loop {
            let wire = client_bytes(client);
            let mut out = Vec::new();
            for chunk in wire.chunks(piece) {
                let mut chunk = chunk.to_vec();
                server.read(&mut chunk, &mut out, |e| seen.on(e)).unwrap();
            }
            to_client(client, &out).unwrap();
            if wire.is_empty() && out.is_empty() {
                return;
            }
        }
    }

    #[test]
    fn a_handshake_then_data_both_ways() {
        let (mut client, mut server) = pair("both-ways");
        let mut seen = Seen::default();
        // The client's Finished and its first data leave in one flight.
        client.writer().write_all(b"hello").unwrap();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        assert_eq!(seen.handshake_done, 1);
        assert_eq!(seen.early, 0, "data came before the handshake ended");
        assert_eq!(seen.plaintext, b"hello");
        assert!(!server.is_handshaking());

        assert_eq!(
            server_says(&mut server, &mut client, b"welcome"),
            b"welcome"
        );
    }

    #[test]
    fn records_cut_anywhere_are_joined_and_the_buffer_freed() {
        let (mut client, mut server) = pair("cut");
        let mut seen = Seen::default();
        pump(&mut client, &mut server, &mut seen, 7);
        assert_eq!(seen.handshake_done, 1);
        let message: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&message).unwrap();
        pump(&mut client, &mut server, &mut seen, 1000);
        assert_eq!(seen.plaintext, message);
        assert_eq!(
            server.partial.capacity(),
            0,
            "a whole-record idle conn holds a buffer"
        );
    }

    #[test]
    fn large_writes_become_several_records_the_client_reads_back() {
        let (mut client, mut server) = pair("large");
        let mut seen = Seen::default();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        server.encrypt(&message, &mut out).unwrap();
        // 100,000 bytes need seven records of at most 16 KiB.
        assert!(out.len() >= message.len() + 7 * 22, "{}", out.len());
        assert_eq!(to_client(&mut client, &out).unwrap(), message);
    }

    #[test]
    fn a_key_update_from_the_client_is_answered_and_data_still_flows() {
        let (mut client, mut server) = pair("key-update");
        let mut seen = Seen::default();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"after").unwrap();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        assert_eq!(seen.plaintext, b"after");
        assert_eq!(server_says(&mut server, &mut client, b"answer"), b"answer");
    }

    #[test]
    fn hibernated_keys_wake_for_data_both_ways_and_a_key_update() {
        let (mut client, mut server) = pair("hibernate");
        let mut seen = Seen::default();
        server.hibernate(); // while handshaking: nothing to let go yet
        client.writer().write_all(b"one").unwrap();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        assert_eq!(seen.plaintext, b"one");
        for round in 0..3u8 {
            server.hibernate();
            assert_eq!(
                server_says(&mut server, &mut client, &[round; 40]),
                [round; 40]
            );
            server.hibernate();
            client.writer().write_all(&[round; 30]).unwrap();
            seen.plaintext.clear();
            pump(&mut client, &mut server, &mut seen, usize::MAX);
            assert_eq!(seen.plaintext, [round; 30]);
        }
        server.hibernate();
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"after").unwrap();
        seen.plaintext.clear();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        assert_eq!(seen.plaintext, b"after");
        server.hibernate();
        assert_eq!(server_says(&mut server, &mut client, b"answer"), b"answer");
    }

    #[test]
    fn close_notify_goes_both_ways() {
        let (mut client, mut server, _) = closed_by_client("close");
        let mut out = Vec::new();
        server.close(&mut out).unwrap();
        assert_eq!(to_client(&mut client, &out).unwrap(), b"");
        let mut plain = Vec::new();
        // End of stream (not "would block"): the close arrived.
        assert_eq!(client.reader().read_to_end(&mut plain).unwrap(), 0);
    }

    #[test]
    fn bytes_after_close_notify_are_bounded() {
        let (_client, mut server, mut seen) = closed_by_client("after-close");
        // rustls reads nothing after close_notify: the bytes would pile up.
        let mut out = Vec::new();
        let mut refused = None;
        for _ in 0..100 {
            let mut more = vec![0x17; 4096];
            if let Err(e) = server.read(&mut more, &mut out, |e| seen.on(e)) {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(refused, Some(TlsConnError::AfterClose)),
            "{refused:?}"
        );
        assert!(server.partial.len() <= PARTIAL_MAX);
    }

    #[test]
    fn garbage_fails_with_an_alert_the_client_understands() {
        let (mut client, mut server) = pair("garbage");
        let mut seen = Seen::default();
        pump(&mut client, &mut server, &mut seen, usize::MAX);
        // A well-formed application-data record that does not decrypt.
        let mut garbage = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        garbage.extend_from_slice(&[0xAB; 32]);
        let mut out = Vec::new();
        let err = server
            .read(&mut garbage, &mut out, |e| seen.on(e))
            .unwrap_err();
        assert!(
            matches!(err, TlsConnError::Rustls(rustls::Error::DecryptError)),
            "{err:?}"
        );
        let alert = to_client(&mut client, &out).unwrap_err();
        assert!(
            matches!(alert, rustls::Error::AlertReceived(_)),
            "{alert:?}"
        );
    }

    #[test]
    fn nothing_is_written_before_the_handshake_ends() {
        let (_client, mut server) = pair("early-write");
        let mut out = Vec::new();
        let err = server.encrypt(b"too soon", &mut out).unwrap_err();
        assert!(matches!(err, TlsConnError::Handshaking), "{err:?}");
        assert!(out.is_empty());
    }
}
