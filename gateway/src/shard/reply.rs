//! Encoding what a session answers with into frames.

use bytes::Bytes;
use wire_format::fb;
use wire_format::{Encoder, Limits, OutFrame};

use crate::session::Reply;

pub(super) fn append(out: &mut Vec<u8>, frame: &OutFrame) {
    out.extend_from_slice(frame.header());
    out.extend_from_slice(frame.payload());
}

/// The frame for a session's reply.
pub fn encode_reply(
    e: &mut Encoder,
    reply: &Reply,
    now_ms: u64,
    limits: &Limits,
) -> Result<OutFrame, wire_format::WireError> {
    match *reply {
        Reply::Welcome {
            user,
            device,
            backlog_count,
            heartbeat_interval_ms,
            payload_bytes_max,
            resume_seq,
        } => {
            let mut w = fb::WelcomeT::default();
            w.user = user;
            w.device = device;
            w.backlog_count = backlog_count;
            w.heartbeat_interval_ms = heartbeat_interval_ms;
            w.server_time_ms = now_ms;
            w.protocol_version = wire_format::PROTOCOL_VERSION;
            w.frame_bytes_max = limits.frame_bytes_max;
            w.payload_bytes_max = payload_bytes_max;
            w.resume_seq = resume_seq;
            let mut header = fb::FrameT::default();
            header.body = fb::BodyT::Welcome(Box::new(w));
            e.encode_owned(&header, Bytes::new())
        }
        Reply::Pong { nonce } => e.pong(nonce),
        Reply::Ping { nonce } => e.ping(nonce),
        Reply::Error {
            code,
            client_msg_id,
            request_id,
            fatal,
            retry_after_ms,
        } => e.error_full(&wire_format::ErrorHeader {
            code,
            client_msg_id,
            request_id,
            fatal,
            message: code.variant_name().unwrap_or(""),
            retry_after_ms,
        }),
        Reply::GoAway {
            reason,
            reconnect_after_ms,
        } => {
            let mut g = fb::GoAwayT::default();
            g.reconnect_after_ms = reconnect_after_ms;
            g.reason = reason;
            let mut header = fb::FrameT::default();
            header.body = fb::BodyT::GoAway(Box::new(g));
            e.encode_owned(&header, Bytes::new())
        }
    }
}
