//! Building frames: [`Encoder`] writes headers with one reused FlatBuffers
//! builder; an [`OutFrame`] is that header (inline when it fits, as every
//! header on the message path does, else cut from a chunked scratch buffer)
//! plus the caller's payload [`Bytes`], written with one vectored write.
//!
//! The frames on the message path have dedicated methods that allocate
//! nothing: fixed-layout headers (send, deliver, acks, typing, presence,
//! ping) are copied from a template and patched (see `template.rs`);
//! receipts and errors go through the builder. Any frame can also be encoded
//! from the owned object API with [`Encoder::encode_owned`]. All paths
//! produce identical bytes for equal values (a property test holds them to
//! it) because the builder always runs with `force_defaults`: every scalar
//! is written, so a header's layout never depends on its values.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::template::{Field, Template, Templates};
use crate::{Address, FrameKind, Limits, PREFIX_BYTES, WireError, fb};

/// Headers too long to hold inline are written into scratch chunks of this
/// size; each chunk is shared by the headers cut from it, so there is one
/// allocation per chunk, not per frame.
const SCRATCH_CHUNK_BYTES: usize = 16 * 1024;

/// Header bytes an [`OutFrame`] holds inline: every templated header (the
/// largest, `Deliver`, is 112 B) and a receipt for up to three messages
/// (136 B for one, 8 B more for each other).
const INLINE_HEADER_BYTES: usize = 160;

/// An encoded header (with its length prefix). Inline, it costs no
/// allocation and no reference count to take, clone or drop: a shared
/// count is an atomic operation, tens of ns on a VM, for each.
#[derive(Clone)]
enum Header {
    Inline {
        len: u8,
        bytes: [u8; INLINE_HEADER_BYTES],
    },
    Cut(Bytes),
}

impl std::ops::Deref for Header {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Header::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Header::Cut(bytes) => bytes,
        }
    }
}

impl PartialEq for Header {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Header {}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Header").field(&&self[..]).finish()
    }
}

/// A frame ready to write: header (with its length prefix) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    header: Header,
    payload: Bytes,
}

impl OutFrame {
    /// Length prefix and header.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The payload exactly as handed to the encoder (same memory).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Bytes the frame occupies on the wire.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }

    /// Never true: a frame has a header.
    pub fn is_empty(&self) -> bool {
        self.header.is_empty()
    }

    /// Both parts for a vectored write.
    pub fn io_slices(&self) -> [IoSlice<'_>; 2] {
        [IoSlice::new(&self.header), IoSlice::new(&self.payload)]
    }

    /// The two parts, header first (an inline header is copied out).
    pub fn into_parts(self) -> (Bytes, Bytes) {
        let header = match self.header {
            Header::Cut(bytes) => bytes,
            Header::Inline { .. } => Bytes::copy_from_slice(&self.header),
        };
        (header, self.payload)
    }

    /// The frame as one contiguous buffer (copies; for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.header[..], &self.payload[..]].concat()
    }
}

/// The fields of an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorHeader<'a> {
    /// Why.
    pub code: fb::ErrorCode,
    /// The `Send` it is about, or 0.
    pub client_msg_id: u64,
    /// The request it is about, or 0.
    pub request_id: u64,
    /// Whether the sender closes the connection after it.
    pub fatal: bool,
    /// Detail for logs.
    pub message: &'a str,
    /// Try again no sooner than this, ms (0: does not apply).
    pub retry_after_ms: u64,
}

/// The fields of a `GroupChanged` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupChangedHeader<'a> {
    /// The request it answers (on the requesting device), else 0.
    pub request_id: u64,
    /// The group.
    pub group: u64,
    /// What changed.
    pub change: fb::GroupChange,
    /// Who changed it.
    pub actor: u64,
    /// The users it is about.
    pub members: &'a [u64],
    /// Its seq in the device's queue.
    pub seq: u64,
}

/// The header fields of a `Deliver` frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliverHeader {
    /// The sending device.
    pub from: Address,
    /// What the sender addressed (this user, this device, or a group).
    pub to: Address,
    /// Position in the receiving device's queue.
    pub seq: u64,
    /// Server-wide message id.
    pub message_id: u64,
    /// When the server accepted the message, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// Builds frames, reusing one FlatBuffers builder and one scratch chunk.
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
    templates: Templates,
    scratch: BytesMut,
    limits: Limits,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("limits", &self.limits)
            .field(
                "scratch_free_bytes",
                &(self.scratch.capacity() - self.scratch.len()),
            )
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder refusing frames beyond `limits`.
    pub fn new(limits: Limits) -> Self {
        let mut fbb = FlatBufferBuilder::with_capacity(1024);
        fbb.force_defaults(true);
        let templates = Templates::new(&mut fbb);
        Self {
            fbb,
            templates,
            scratch: BytesMut::new(),
            limits,
        }
    }

    /// `Send` of `payload` to `to`.
    pub fn send(
        &mut self,
        to: Address,
        client_msg_id: u64,
        ttl_s: u32,
        payload: Bytes,
    ) -> Result<OutFrame, WireError> {
        let values = [
            Field::Addr(&to),
            Field::U64(client_msg_id),
            Field::U32(ttl_s),
        ];
        self.stamp(|t| &t.send, &values, payload)
    }

    /// `Deliver` of `payload`, typically the very `Bytes` a `Send` arrived
    /// with: the payload is never copied.
    pub fn deliver(&mut self, h: &DeliverHeader, payload: Bytes) -> Result<OutFrame, WireError> {
        let values = [
            Field::Addr(&h.from),
            Field::Addr(&h.to),
            Field::U64(h.seq),
            Field::U64(h.message_id),
            Field::U64(h.server_time_ms),
        ];
        self.stamp(|t| &t.deliver, &values, payload)
    }

    /// `ServerAck` (✓) for the `Send` with `client_msg_id`.
    pub fn server_ack(
        &mut self,
        client_msg_id: u64,
        message_id: u64,
        server_time_ms: u64,
        status: fb::AckStatus,
    ) -> Result<OutFrame, WireError> {
        let values = [
            Field::U64(client_msg_id),
            Field::U64(message_id),
            Field::U64(server_time_ms),
            Field::U8(status.0),
        ];
        self.stamp(|t| &t.server_ack, &values, Bytes::new())
    }

    /// `DeliveryAck` of `seq` (and, if `cumulative`, of everything before).
    pub fn delivery_ack(&mut self, seq: u64, cumulative: bool) -> Result<OutFrame, WireError> {
        let values = [Field::U64(seq), Field::U8(u8::from(cumulative))];
        self.stamp(|t| &t.delivery_ack, &values, Bytes::new())
    }

    /// `Receipt` of `kind` for `message_ids` (`seq` 0 from clients).
    pub fn receipt(
        &mut self,
        kind: fb::ReceiptKind,
        to: Address,
        from: Address,
        message_ids: &[u64],
        at_ms: u64,
        seq: u64,
    ) -> Result<OutFrame, WireError> {
        let message_ids = Some(self.fbb.create_vector(message_ids));
        let args = fb::ReceiptArgs {
            kind,
            to: Some(&to),
            from: Some(&from),
            message_ids,
            at_ms,
            seq,
        };
        let body = fb::Receipt::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Receipt, body, Bytes::new())
    }

    /// `Typing` from `from` to `to`.
    pub fn typing(
        &mut self,
        to: Address,
        from: Address,
        state: fb::TypingState,
    ) -> Result<OutFrame, WireError> {
        let values = [Field::Addr(&to), Field::Addr(&from), Field::U8(state.0)];
        self.stamp(|t| &t.typing, &values, Bytes::new())
    }

    /// `Presence` of `user`.
    pub fn presence(
        &mut self,
        user: u64,
        state: fb::PresenceState,
        last_seen_ms: u64,
    ) -> Result<OutFrame, WireError> {
        let values = [
            Field::U64(user),
            Field::U8(state.0),
            Field::U64(last_seen_ms),
        ];
        self.stamp(|t| &t.presence, &values, Bytes::new())
    }

    /// `Ping` with `nonce`.
    pub fn ping(&mut self, nonce: u64) -> Result<OutFrame, WireError> {
        self.stamp(|t| &t.ping, &[Field::U64(nonce)], Bytes::new())
    }

    /// `Pong` answering the `Ping` with `nonce`.
    pub fn pong(&mut self, nonce: u64) -> Result<OutFrame, WireError> {
        self.stamp(|t| &t.pong, &[Field::U64(nonce)], Bytes::new())
    }

    /// `Error` with `code`; `client_msg_id` is 0 unless it is about a `Send`.
    pub fn error(
        &mut self,
        code: fb::ErrorCode,
        client_msg_id: u64,
        fatal: bool,
        message: &str,
    ) -> Result<OutFrame, WireError> {
        self.error_about(code, client_msg_id, 0, fatal, message)
    }

    /// `Error` with `code` about a `Send` (`client_msg_id`) or a group or
    /// device request (`request_id`); 0 for neither.
    pub fn error_about(
        &mut self,
        code: fb::ErrorCode,
        client_msg_id: u64,
        request_id: u64,
        fatal: bool,
        message: &str,
    ) -> Result<OutFrame, WireError> {
        let e = ErrorHeader {
            code,
            client_msg_id,
            request_id,
            fatal,
            message,
            retry_after_ms: 0,
        };
        self.error_full(&e)
    }

    /// `Error` with every field, `retry_after_ms` included.
    pub fn error_full(&mut self, e: &ErrorHeader<'_>) -> Result<OutFrame, WireError> {
        let message = Some(self.fbb.create_string(e.message));
        let args = fb::ErrorArgs {
            code: e.code,
            client_msg_id: e.client_msg_id,
            fatal: e.fatal,
            message,
            request_id: e.request_id,
            retry_after_ms: e.retry_after_ms,
        };
        let body = fb::Error::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Error, body, Bytes::new())
    }

    /// `GroupChanged` (queued at `seq`; `request_id` 0 except on the
    /// requesting device).
    pub fn group_changed(&mut self, g: &GroupChangedHeader<'_>) -> Result<OutFrame, WireError> {
        let members = Some(self.fbb.create_vector(g.members));
        let args = fb::GroupChangedArgs {
            request_id: g.request_id,
            group: g.group,
            change: g.change,
            actor: g.actor,
            members,
            seq: g.seq,
        };
        let body = fb::GroupChanged::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::GroupChanged, body, Bytes::new())
    }

    /// `Devices`: the answer to `DevicesGet` `request_id`.
    pub fn devices(
        &mut self,
        request_id: u64,
        devices: &[fb::DeviceInfo],
    ) -> Result<OutFrame, WireError> {
        let devices = Some(self.fbb.create_vector(devices));
        let args = fb::DevicesArgs {
            request_id,
            devices,
        };
        let body = fb::Devices::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Devices, body, Bytes::new())
    }

    /// `DeviceChanged` about `device`, queued at `seq`.
    pub fn device_changed(
        &mut self,
        request_id: u64,
        device: u32,
        change: fb::DeviceChange,
        seq: u64,
    ) -> Result<OutFrame, WireError> {
        let args = fb::DeviceChangedArgs {
            request_id,
            device,
            change,
            seq,
        };
        let body = fb::DeviceChanged::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::DeviceChanged, body, Bytes::new())
    }

    /// `SettingsSet` (client): `Unchanged` leaves a setting as it is.
    pub fn settings_set(
        &mut self,
        request_id: u64,
        last_seen: fb::LastSeenVisibility,
        read_receipts: fb::Switch,
    ) -> Result<OutFrame, WireError> {
        let args = fb::SettingsSetArgs {
            request_id,
            last_seen,
            read_receipts,
        };
        let body = fb::SettingsSet::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::SettingsSet, body, Bytes::new())
    }

    /// `Settings` (server): the user's settings as stored.
    pub fn settings(
        &mut self,
        request_id: u64,
        last_seen: fb::LastSeenVisibility,
        read_receipts: fb::Switch,
    ) -> Result<OutFrame, WireError> {
        let args = fb::SettingsArgs {
            request_id,
            last_seen,
            read_receipts,
        };
        let body = fb::Settings::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Settings, body, Bytes::new())
    }

    /// `PushRegister` (client): this device's push `token` (empty: none).
    pub fn push_register(
        &mut self,
        request_id: u64,
        token: &[u8],
        platform: &str,
    ) -> Result<OutFrame, WireError> {
        let token = Some(self.fbb.create_vector(token));
        let platform = Some(self.fbb.create_string(platform));
        let args = fb::PushRegisterArgs {
            request_id,
            token,
            platform,
        };
        let body = fb::PushRegister::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::PushRegister, body, Bytes::new())
    }

    /// `Done` (server): request `request_id` took effect.
    pub fn done(&mut self, request_id: u64) -> Result<OutFrame, WireError> {
        let args = fb::DoneArgs { request_id };
        let body = fb::Done::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Done, body, Bytes::new())
    }

    /// `Gap` (server): what this device missed, queued at `seq`.
    pub fn gap(
        &mut self,
        cause: fb::GapCause,
        senders: &[fb::GapSender],
        seq: u64,
    ) -> Result<OutFrame, WireError> {
        let senders = Some(self.fbb.create_vector(senders));
        let args = fb::GapArgs {
            cause,
            senders,
            seq,
        };
        let body = fb::Gap::create(&mut self.fbb, &args).as_union_value();
        self.finish(FrameKind::Gap, body, Bytes::new())
    }

    /// Any frame from the owned object API. `header.payload_len` is ignored:
    /// the payload's length is written.
    pub fn encode_owned(
        &mut self,
        header: &fb::FrameT,
        payload: Bytes,
    ) -> Result<OutFrame, WireError> {
        let body_type = header.body.body_type();
        let kind = FrameKind::from_wire(body_type)
            .ok_or(WireError::UnknownFrameKind { kind: body_type.0 })?;
        let body = header
            .body
            .pack(&mut self.fbb)
            .expect("a known kind has a table");
        self.finish(kind, body, payload)
    }

    /// Wraps `body` in the root table, finishes the header and cuts it from
    /// the scratch chunk. Leaves the builder reset whatever happens.
    fn finish(
        &mut self,
        kind: FrameKind,
        body: WIPOffset<UnionWIPOffset>,
        payload: Bytes,
    ) -> Result<OutFrame, WireError> {
        let result = self.finish_header(kind, body, &payload);
        self.fbb.reset();
        result.map(|header| OutFrame { header, payload })
    }

    fn finish_header(
        &mut self,
        kind: FrameKind,
        body: WIPOffset<UnionWIPOffset>,
        payload: &Bytes,
    ) -> Result<Header, WireError> {
        let payload_len = check_payload(kind, payload, &self.limits)?;
        let args = fb::FrameArgs {
            body_type: kind.to_wire(),
            body: Some(body),
            payload_len,
        };
        let root = fb::Frame::create(&mut self.fbb, &args);
        self.fbb.finish_size_prefixed(root, None);
        let header = self.fbb.finished_data();
        check_frame(kind, header.len(), payload.len(), &self.limits)?;
        Ok(cut(&mut self.scratch, header, |_| {}))
    }

    /// Encodes from the template `which` picks, patched with `values`.
    fn stamp(
        &mut self,
        which: fn(&Templates) -> &Template,
        values: &[Field<'_>],
        payload: Bytes,
    ) -> Result<OutFrame, WireError> {
        let template = which(&self.templates);
        let payload_len = check_payload(template.kind(), &payload, &self.limits)?;
        check_frame(
            template.kind(),
            template.bytes().len(),
            payload.len(),
            &self.limits,
        )?;
        let header = cut(&mut self.scratch, template.bytes(), |dst| {
            template.patch(dst, values, payload_len);
        });
        Ok(OutFrame { header, payload })
    }
}

/// The payload's length as the header states it, if `kind` may carry it.
fn check_payload(kind: FrameKind, payload: &Bytes, limits: &Limits) -> Result<u32, WireError> {
    if !payload.is_empty() && !kind.allows_payload() {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        return Err(WireError::UnexpectedPayload { kind, len });
    }
    let max = limits.frame_bytes_max;
    u32::try_from(payload.len()).map_err(|_| WireError::EncodeTooLarge {
        kind,
        len: payload.len() as u64,
        max,
    })
}

/// Refuses a frame whose header (with prefix) or whole length is over the
/// limits.
fn check_frame(
    kind: FrameKind,
    prefixed_header_len: usize,
    payload_len: usize,
    limits: &Limits,
) -> Result<(), WireError> {
    let frame_len = prefixed_header_len + payload_len;
    let header_len = prefixed_header_len - PREFIX_BYTES;
    if frame_len > limits.frame_bytes_max as usize || header_len > limits.header_bytes_max as usize
    {
        let max = limits.frame_bytes_max;
        return Err(WireError::EncodeTooLarge {
            kind,
            len: frame_len as u64,
            max,
        });
    }
    Ok(())
}

/// Copies `header` inline if it fits, else appends it to the scratch chunk
/// and cuts it off as its own `Bytes` (sharing the chunk); lets `patch`
/// edit the copy.
fn cut(scratch: &mut BytesMut, header: &[u8], patch: impl FnOnce(&mut [u8])) -> Header {
    if let Ok(len) = u8::try_from(header.len())
        && header.len() <= INLINE_HEADER_BYTES
    {
        let mut bytes = [0; INLINE_HEADER_BYTES];
        bytes[..header.len()].copy_from_slice(header);
        patch(&mut bytes[..header.len()]);
        return Header::Inline { len, bytes };
    }
    if scratch.capacity() - scratch.len() < header.len() {
        scratch.reserve(SCRATCH_CHUNK_BYTES.max(header.len()));
    }
    let start = scratch.len();
    scratch.extend_from_slice(header);
    patch(&mut scratch[start..]);
    Header::Cut(scratch.split().freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_exact, device_address, user_address};

    #[test]
    fn message_path_headers_are_inline_and_long_ones_are_cut() {
        let limits = Limits::default();
        let mut enc = Encoder::new(limits);
        let (a, b) = (user_address(1), device_address(2, 3));
        let deliver = DeliverHeader {
            seq: 1,
            message_id: 2,
            from: b,
            to: a,
            server_time_ms: 3,
        };
        let inline = [
            enc.send(a, 1, 0, Bytes::from_static(b"p")).unwrap(),
            enc.deliver(&deliver, Bytes::from_static(b"p")).unwrap(),
            enc.server_ack(1, 2, 3, fb::AckStatus::Stored).unwrap(),
            enc.receipt(fb::ReceiptKind::Delivered, a, b, &[7], 1, 2)
                .unwrap(),
            enc.receipt(fb::ReceiptKind::Delivered, a, b, &[7, 8, 9], 1, 2)
                .unwrap(),
        ];
        for frame in &inline {
            assert!(matches!(frame.header, Header::Inline { .. }), "{frame:?}");
        }
        let ids: Vec<u64> = (0..64).collect();
        let long = enc
            .receipt(fb::ReceiptKind::Delivered, a, b, &ids, 1, 2)
            .unwrap();
        assert!(matches!(long.header, Header::Cut(_)));
        for frame in inline.iter().chain([&long]) {
            let decoded = decode_exact(Bytes::from(frame.to_vec()), &limits).unwrap();
            assert_eq!(
                decoded.as_slice(),
                frame.to_vec(),
                "either way, the same bytes"
            );
            let (header, payload) = frame.clone().into_parts();
            assert_eq!([header, payload].concat(), frame.to_vec());
        }
    }

    #[test]
    fn forwarding_keeps_the_payload_memory() {
        let limits = Limits::default();
        let mut enc = Encoder::new(limits);
        let sent = enc
            .send(user_address(2), 9, 60, Bytes::from(vec![0xAB; 100]))
            .unwrap();
        let send = decode_exact(Bytes::from(sent.to_vec()), &limits).unwrap();
        let inbound = send.payload_bytes();

        let header = DeliverHeader {
            from: device_address(1, 0),
            to: user_address(2),
            seq: 1,
            message_id: 77,
            server_time_ms: 1,
        };
        let out = enc.deliver(&header, inbound.clone()).unwrap();
        assert_eq!(
            out.payload().as_ptr(),
            inbound.as_ptr(),
            "same memory, not a copy"
        );
        assert_eq!(out.payload().as_ptr(), send.payload().as_ptr());
        let [head, body] = out.io_slices();
        assert_eq!(head.len() + body.len(), out.len());
    }

    #[test]
    fn headers_too_long_to_hold_inline_share_scratch_chunks() {
        let mut enc = Encoder::new(Limits::default());
        let (a, ids) = (user_address(1), [9; 40]);
        let first = enc
            .receipt(fb::ReceiptKind::Read, a, a, &ids, 1, 2)
            .unwrap();
        let second = enc
            .receipt(fb::ReceiptKind::Read, a, a, &ids, 3, 4)
            .unwrap();
        let gap = second.header().as_ptr() as usize - first.header().as_ptr() as usize;
        assert_eq!(
            gap,
            first.header().len(),
            "consecutive headers are adjacent in one chunk"
        );
    }

    #[test]
    fn oversized_payload_is_refused_and_the_encoder_stays_usable() {
        let limits = Limits::with_frame_bytes_max(1024);
        let mut enc = Encoder::new(limits);
        let error = enc
            .send(user_address(1), 1, 0, Bytes::from(vec![0; 1024]))
            .unwrap_err();
        assert!(matches!(
            error,
            WireError::EncodeTooLarge {
                kind: FrameKind::Send,
                max: 1024,
                ..
            }
        ));
        let ok = enc
            .send(user_address(1), 1, 0, Bytes::from(vec![0; 900]))
            .unwrap();
        assert_eq!(
            decode_exact(Bytes::from(ok.to_vec()), &limits)
                .unwrap()
                .payload()
                .len(),
            900
        );
    }

    #[test]
    fn payload_on_a_kind_without_one_is_refused() {
        let mut enc = Encoder::new(Limits::default());
        let header = fb::FrameT {
            body: fb::BodyT::Ping(Box::default()),
            ..Default::default()
        };
        let error = enc
            .encode_owned(&header, Bytes::from_static(b"x"))
            .unwrap_err();
        assert_eq!(
            error,
            WireError::UnexpectedPayload {
                kind: FrameKind::Ping,
                len: 1
            }
        );
    }
}
