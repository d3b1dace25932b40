//! Golden vectors: `golden/*.bin` frames with a readable `*.txt` beside each.
//!
//! * Every valid vector decodes to the exact fields written below and
//!   re-encodes bit for bit.
//! * Every malformed vector fails with the exact error written below.
//! * `vectors_are_current` rebuilds every vector with today's encoder and
//!   compares: run `UPDATE_GOLDEN=1 cargo test -p wire-format --test golden`
//!   to rewrite them after a deliberate format change (and say why in the
//!   commit).

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};
use wire_format::fb::{self, AckStatus, ErrorCode, ReceiptKind};
use wire_format::{
    Body, DeliverHeader, Encoder, Frame, FrameKind, Limits, WireError, decode_exact,
    device_address, user_address,
};

const PAYLOAD: &[u8] = b"\x8e\x01opaque-ciphertext-the-server-never-reads";

macro_rules! golden {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/golden/",
            $name,
            ".bin"
        ))
    };
}

fn decode(bytes: &'static [u8]) -> Result<Frame, WireError> {
    decode_exact(Bytes::from_static(bytes), &Limits::default())
}

/// Decodes a valid vector and checks it re-encodes to the same bytes.
fn decode_valid(bytes: &'static [u8]) -> Frame {
    let frame = decode(bytes).expect("a valid vector decodes");
    let again = Encoder::new(Limits::default())
        .encode_owned(&frame.to_owned_header(), frame.payload_bytes())
        .unwrap();
    assert_eq!(again.to_vec(), bytes, "re-encodes bit for bit");
    frame
}

// ---- valid vectors ---------------------------------------------------------

#[test]
fn hello() {
    let frame = decode_valid(golden!("hello"));
    let Body::Hello(h) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(h.protocol_version(), 1);
    assert_eq!(h.token().unwrap().bytes(), b"token-bytes");
    assert_eq!(h.last_acked_seq(), 41);
    assert_eq!(h.client_name(), Some("golden/1.0"));
}

#[test]
fn send() {
    let frame = decode_valid(golden!("send"));
    let Body::Send(s) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(s.to(), Some(&user_address(42)));
    assert_eq!(s.client_msg_id(), 7);
    assert_eq!(s.ttl_s(), 3600);
    assert_eq!(frame.header().payload_len() as usize, PAYLOAD.len());
    assert_eq!(frame.payload(), PAYLOAD);
}

#[test]
fn deliver() {
    let frame = decode_valid(golden!("deliver"));
    let Body::Deliver(d) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(d.from(), Some(&device_address(1, 0)));
    assert_eq!(d.to(), Some(&user_address(42)));
    assert_eq!(
        (d.seq(), d.message_id(), d.server_time_ms()),
        (5, 1_000_001, 1_767_225_600_000)
    );
    assert_eq!(frame.payload(), PAYLOAD);
}

#[test]
fn server_ack() {
    let frame = decode_valid(golden!("server_ack"));
    let Body::ServerAck(a) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!((a.client_msg_id(), a.message_id()), (7, 1_000_001));
    assert_eq!(a.server_time_ms(), 1_767_225_600_000);
    assert_eq!(a.status(), AckStatus::Duplicate);
}

#[test]
fn delivery_ack() {
    let frame = decode_valid(golden!("delivery_ack"));
    let Body::DeliveryAck(a) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!((a.seq(), a.cumulative()), (5, true));
}

#[test]
fn receipt_read() {
    let frame = decode_valid(golden!("receipt_read"));
    let Body::Receipt(r) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(r.kind(), ReceiptKind::Read);
    assert_eq!(r.to(), Some(&device_address(1, 0)));
    assert_eq!(r.from(), Some(&user_address(42)));
    assert_eq!(
        r.message_ids().unwrap().iter().collect::<Vec<_>>(),
        [1_000_001, 1_000_002]
    );
    assert_eq!(r.at_ms(), 1_767_225_601_000);
}

#[test]
fn error() {
    let frame = decode_valid(golden!("error"));
    let Body::Error(e) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(e.code(), ErrorCode::RecipientQueueFull);
    assert_eq!((e.client_msg_id(), e.fatal()), (7, false));
    assert_eq!(e.message(), Some("recipient queue full"));
}

#[test]
fn error_limit() {
    let frame = decode_valid(golden!("error_limit"));
    let Body::Error(e) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(e.code(), ErrorCode::RecipientRateLimit);
    assert_eq!((e.client_msg_id(), e.fatal()), (9, false));
    assert_eq!(e.retry_after_ms(), 750);
}

#[test]
fn settings_set() {
    let frame = decode_valid(golden!("settings_set"));
    let Body::SettingsSet(s) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(s.request_id(), 3);
    assert_eq!(s.last_seen(), fb::LastSeenVisibility::Nobody);
    assert_eq!(s.read_receipts(), fb::Switch::Unchanged);
}

#[test]
fn gap() {
    let frame = decode_valid(golden!("gap"));
    let Body::Gap(g) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!((g.cause(), g.seq()), (fb::GapCause::Expired, 12));
    let senders: Vec<_> = g.senders().unwrap().iter().copied().collect();
    assert_eq!(senders, [gap_sender()]);
}

fn gap_sender() -> fb::GapSender {
    fb::GapSender::new(1_767_225_600_000, 1_767_225_660_000, 42, 17, 1)
}

#[test]
fn ping() {
    let frame = decode_valid(golden!("ping"));
    let Body::Ping(p) = frame.body() else {
        panic!("{frame:?}")
    };
    assert_eq!(p.nonce(), 0x0102_0304_0506_0708);
    assert_eq!(frame.len(), golden!("ping").len());
}

// ---- malformed vectors -----------------------------------------------------

#[test]
fn truncated() {
    let bytes = golden!("truncated");
    assert_eq!(
        decode(bytes).unwrap_err(),
        WireError::Truncated {
            need: golden!("send").len(),
            have: bytes.len()
        }
    );
}

#[test]
fn oversized_length() {
    assert_eq!(
        decode(golden!("oversized_length")).unwrap_err(),
        WireError::FrameTooLarge {
            len: 4 + 0x0010_0000,
            max: 65_536
        }
    );
}

#[test]
fn bad_verifier_offset() {
    let error = decode(golden!("bad_offset")).unwrap_err();
    assert_eq!(
        error,
        WireError::InvalidHeader(InvalidFlatbuffer::RangeOutOfBounds {
            range: 0x7000_0004..0x7000_0008,
            error_trace: Default::default(),
        })
    );
    assert_eq!(error.code(), ErrorCode::InvalidHeader);
}

#[test]
fn trailing_bytes() {
    assert_eq!(
        decode(golden!("trailing_bytes")).unwrap_err(),
        WireError::TrailingBytes { extra: 3 }
    );
}

#[test]
fn unknown_frame_kind() {
    assert_eq!(
        decode(golden!("unknown_kind")).unwrap_err(),
        WireError::UnknownFrameKind { kind: 99 }
    );
}

#[test]
fn payload_on_a_ping() {
    assert_eq!(
        decode(golden!("payload_on_ping")).unwrap_err(),
        WireError::UnexpectedPayload {
            kind: FrameKind::Ping,
            len: 5
        }
    );
}

// ---- the generator ---------------------------------------------------------

struct Vector {
    name: &'static str,
    about: &'static str,
    expect: &'static str,
    bytes: Vec<u8>,
}

fn v(name: &'static str, about: &'static str, expect: &'static str, bytes: Vec<u8>) -> Vector {
    Vector {
        name,
        about,
        expect,
        bytes,
    }
}

/// A frame whose root names union value `kind` with a `Ping` table as body.
fn frame_with_kind(kind: u8, payload_len: u32) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let ping = fb::Ping::create(&mut fbb, &fb::PingArgs { nonce: 1 }).as_union_value();
    let args = fb::FrameArgs {
        body_type: fb::Body(kind),
        body: Some(ping),
        payload_len,
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fbb.finish_size_prefixed(root, None);
    fbb.finished_data().to_vec()
}

fn vectors() -> Vec<Vector> {
    let mut enc = Encoder::new(Limits::default());
    let payload = Bytes::from_static(PAYLOAD);
    let mut hello = fb::HelloT::default();
    hello.protocol_version = 1;
    hello.token = Some(b"token-bytes".to_vec());
    hello.last_acked_seq = 41;
    hello.client_name = Some("golden/1.0".into());
    let mut header = fb::FrameT::default();
    header.body = fb::BodyT::Hello(Box::new(hello));
    let hello = enc.encode_owned(&header, Bytes::new()).unwrap().to_vec();
    let send = enc
        .send(user_address(42), 7, 3600, payload.clone())
        .unwrap()
        .to_vec();
    let deliver_header = DeliverHeader {
        from: device_address(1, 0),
        to: user_address(42),
        seq: 5,
        message_id: 1_000_001,
        server_time_ms: 1_767_225_600_000,
    };
    let deliver = enc.deliver(&deliver_header, payload).unwrap().to_vec();
    let server_ack = enc
        .server_ack(7, 1_000_001, 1_767_225_600_000, AckStatus::Duplicate)
        .unwrap()
        .to_vec();
    let delivery_ack = enc.delivery_ack(5, true).unwrap().to_vec();
    let receipt = enc
        .receipt(
            ReceiptKind::Read,
            device_address(1, 0),
            user_address(42),
            &[1_000_001, 1_000_002],
            1_767_225_601_000,
            0,
        )
        .unwrap()
        .to_vec();
    let error = enc
        .error(
            ErrorCode::RecipientQueueFull,
            7,
            false,
            "recipient queue full",
        )
        .unwrap()
        .to_vec();
    let ping = enc.ping(0x0102_0304_0506_0708).unwrap().to_vec();
    let error_limit = enc
        .error_full(&wire_format::ErrorHeader {
            code: ErrorCode::RecipientRateLimit,
            client_msg_id: 9,
            request_id: 0,
            fatal: false,
            message: "messages per recipient per second",
            retry_after_ms: 750,
        })
        .unwrap()
        .to_vec();
    let settings_set = enc
        .settings_set(3, fb::LastSeenVisibility::Nobody, fb::Switch::Unchanged)
        .unwrap()
        .to_vec();
    let gap = enc
        .gap(fb::GapCause::Expired, &[gap_sender()], 12)
        .unwrap()
        .to_vec();

    let truncated = send[..send.len() - 10].to_vec();
    let mut oversized = ping.clone();
    oversized[..4].copy_from_slice(&0x0010_0000u32.to_le_bytes());
    let mut bad_offset = ping.clone();
    bad_offset[4..8].copy_from_slice(&0x7000_0000u32.to_le_bytes());
    let trailing = [&ping[..], b"\0\0\0"].concat();
    let mut payload_on_ping = frame_with_kind(fb::Body::Ping.0, 5);
    payload_on_ping.extend_from_slice(b"hello");

    vec![
        v(
            "hello",
            "Hello v1: token \"token-bytes\", last_acked_seq 41, client \"golden/1.0\"",
            "valid",
            hello,
        ),
        v(
            "send",
            "Send to user 42, client_msg_id 7, ttl 3600 s, 42-byte payload",
            "valid",
            send,
        ),
        v(
            "deliver",
            "Deliver from device 1/0 to user 42, seq 5, message 1000001, same payload",
            "valid",
            deliver,
        ),
        v(
            "server_ack",
            "ServerAck client_msg_id 7 -> message 1000001, status Duplicate",
            "valid",
            server_ack,
        ),
        v(
            "delivery_ack",
            "DeliveryAck seq 5, cumulative",
            "valid",
            delivery_ack,
        ),
        v(
            "receipt_read",
            "Receipt Read of messages 1000001 and 1000002, to device 1/0, from user 42",
            "valid",
            receipt,
        ),
        v(
            "error",
            "Error RecipientQueueFull (302) about client_msg_id 7, not fatal",
            "valid",
            error,
        ),
        v(
            "error_limit",
            "Error RecipientRateLimit (313) about client_msg_id 9, not fatal, retry after 750 ms",
            "valid",
            error_limit,
        ),
        v(
            "settings_set",
            "SettingsSet request 3: last seen Nobody, read receipts unchanged",
            "valid",
            settings_set,
        ),
        v(
            "gap",
            "Gap (Expired) at seq 12: 17 messages from device 42/1 accepted between two times",
            "valid",
            gap,
        ),
        v("ping", "Ping nonce 0x0102030405060708", "valid", ping),
        v(
            "truncated",
            "the send vector without its last 10 bytes",
            "Truncated (101)",
            truncated,
        ),
        v(
            "oversized_length",
            "the ping vector with its length prefix set to 1 MiB",
            "FrameTooLarge (100)",
            oversized,
        ),
        v(
            "bad_offset",
            "the ping vector with its root offset pointing far outside the header",
            "InvalidHeader (102)",
            bad_offset,
        ),
        v(
            "trailing_bytes",
            "the ping vector followed by 3 zero bytes",
            "TrailingBytes (104)",
            trailing,
        ),
        v(
            "unknown_kind",
            "a valid header whose body_type is 99",
            "UnknownFrameKind (103)",
            frame_with_kind(99, 0),
        ),
        v(
            "payload_on_ping",
            "a Ping header stating a 5-byte payload, and the payload",
            "UnexpectedPayload (105)",
            payload_on_ping,
        ),
    ]
}

fn describe(vector: &Vector) -> String {
    let mut out = format!(
        "{name}.bin: {about}\nexpected: {expect}\nlength: {len} bytes\n\n",
        name = vector.name,
        about = vector.about,
        expect = vector.expect,
        len = vector.bytes.len()
    );
    if let Ok(frame) = decode_exact(Bytes::from(vector.bytes.clone()), &Limits::default()) {
        out += &format!("decoded: {:#?}\n\n", frame.to_owned_header());
    }
    for (i, row) in vector.bytes.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        out += &format!("{:08x}  {}\n", i * 16, hex.join(" "));
    }
    out
}

#[test]
fn vectors_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for vector in vectors() {
        let bin = dir.join(format!("{}.bin", vector.name));
        let txt = dir.join(format!("{}.txt", vector.name));
        if update {
            std::fs::write(&bin, &vector.bytes).unwrap();
            std::fs::write(&txt, describe(&vector)).unwrap();
        }
        assert_eq!(
            std::fs::read(&bin).unwrap(),
            vector.bytes,
            "{} is stale",
            vector.name
        );
        assert_eq!(
            std::fs::read_to_string(&txt).unwrap(),
            describe(&vector),
            "{}.txt",
            vector.name
        );
    }
}
