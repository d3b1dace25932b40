//! Fixed-layout headers encoded by copy and patch.
//!
//! With `force_defaults` on, a header whose fields are all scalars or inline
//! structs has the same layout whatever the values: the builder writes the
//! same vtable and the same field positions. [`Template`] builds such a
//! header once with the FlatBuffers builder, finds each field's position
//! through the header's own vtable, and from then on encodes by copying the
//! bytes and writing the new values in place. A property test holds the
//! result equal to the builder's output for every value.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, VOffsetT, WIPOffset};

use crate::{Address, FrameKind, fb};

/// A value for one field of a template.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    U64(u64),
    U32(u32),
    U8(u8),
    Addr(&'a Address),
}

impl Field<'_> {
    fn width(&self) -> usize {
        match self {
            Self::U64(_) => 8,
            Self::U32(_) => 4,
            Self::U8(_) => 1,
            Self::Addr(_) => size_of::<Address>(),
        }
    }

    fn write(&self, dst: &mut [u8]) {
        match self {
            Self::U64(v) => dst.copy_from_slice(&v.to_le_bytes()),
            Self::U32(v) => dst.copy_from_slice(&v.to_le_bytes()),
            Self::U8(v) => dst[0] = *v,
            Self::Addr(a) => dst.copy_from_slice(&a.0),
        }
    }
}

/// Where one field lives in the template, and its width.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: usize,
    width: usize,
}

/// A finished header (with its length prefix) and the slots to patch.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    kind: FrameKind,
    bytes: Box<[u8]>,
    slots: Box<[Slot]>,
    payload_len: Slot,
}

impl Template {
    /// Builds the header of `kind` with `build` (which must write every
    /// field in `fields`: (vtable offset, width)) and records the slots.
    pub(crate) fn new(
        fbb: &mut FlatBufferBuilder<'static>,
        kind: FrameKind,
        fields: &[(VOffsetT, usize)],
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Self {
        let body = build(fbb);
        let args = fb::FrameArgs {
            body_type: kind.to_wire(),
            body: Some(body),
            payload_len: 0,
        };
        let root = fb::Frame::create(fbb, &args);
        fbb.finish_size_prefixed(root, None);
        let bytes: Box<[u8]> = fbb.finished_data().into();
        fbb.reset();

        let frame = flatbuffers::size_prefixed_root::<fb::Frame<'_>>(&bytes).expect("valid");
        let table = frame.body().expect("body written");
        let slot = |table: &flatbuffers::Table<'_>, (voffset, width): (VOffsetT, usize)| {
            let offset = table.vtable().get(voffset);
            assert_ne!(
                offset, 0,
                "{kind:?}: field at vtable offset {voffset} must be present"
            );
            Slot {
                at: table.loc() + usize::from(offset),
                width,
            }
        };
        let slots = fields.iter().map(|f| slot(&table, *f)).collect();
        let payload_len = slot(&frame._tab, (fb::Frame::VT_PAYLOAD_LEN, 4));
        Self {
            kind,
            bytes,
            slots,
            payload_len,
        }
    }

    /// The frame kind this template encodes.
    pub(crate) fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The header with its prefix, all values zero.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes `values` (in the order of `fields` at construction) and
    /// `payload_len` into `dst`, a copy of [`Template::bytes`].
    pub(crate) fn patch(&self, dst: &mut [u8], values: &[Field<'_>], payload_len: u32) {
        assert_eq!(
            values.len(),
            self.slots.len(),
            "{:?}: one value per field",
            self.kind
        );
        debug_assert_eq!(dst.len(), self.bytes.len());
        for (slot, value) in self.slots.iter().zip(values) {
            debug_assert_eq!(slot.width, value.width(), "{:?}: field width", self.kind);
            value.write(&mut dst[slot.at..slot.at + slot.width]);
        }
        Field::U32(payload_len).write(&mut dst[self.payload_len.at..self.payload_len.at + 4]);
    }
}

/// The templates of the frames on the message path.
#[derive(Debug, Clone)]
pub(crate) struct Templates {
    pub(crate) send: Template,
    pub(crate) deliver: Template,
    pub(crate) server_ack: Template,
    pub(crate) delivery_ack: Template,
    pub(crate) typing: Template,
    pub(crate) presence: Template,
    pub(crate) ping: Template,
    pub(crate) pong: Template,
}

const ADDR: usize = size_of::<Address>();

impl Templates {
    /// Builds every template with `fbb` (left reset).
    pub(crate) fn new(fbb: &mut FlatBufferBuilder<'static>) -> Self {
        let zero = Address::default();
        let z = Some(&zero);
        use fb::*;
        Self {
            send: Template::new(
                fbb,
                FrameKind::Send,
                &[
                    (Send::VT_TO, ADDR),
                    (Send::VT_CLIENT_MSG_ID, 8),
                    (Send::VT_TTL_S, 4),
                ],
                |b| {
                    Send::create(
                        b,
                        &SendArgs {
                            to: z,
                            ..Default::default()
                        },
                    )
                    .as_union_value()
                },
            ),
            deliver: Template::new(
                fbb,
                FrameKind::Deliver,
                &[
                    (Deliver::VT_FROM, ADDR),
                    (Deliver::VT_TO, ADDR),
                    (Deliver::VT_SEQ, 8),
                    (Deliver::VT_MESSAGE_ID, 8),
                    (Deliver::VT_SERVER_TIME_MS, 8),
                ],
                |b| {
                    let args = DeliverArgs {
                        from: z,
                        to: z,
                        ..Default::default()
                    };
                    Deliver::create(b, &args).as_union_value()
                },
            ),
            server_ack: Template::new(
                fbb,
                FrameKind::ServerAck,
                &[
                    (ServerAck::VT_CLIENT_MSG_ID, 8),
                    (ServerAck::VT_MESSAGE_ID, 8),
                    (ServerAck::VT_SERVER_TIME_MS, 8),
                    (ServerAck::VT_STATUS, 1),
                ],
                |b| ServerAck::create(b, &ServerAckArgs::default()).as_union_value(),
            ),
            delivery_ack: Template::new(
                fbb,
                FrameKind::DeliveryAck,
                &[(DeliveryAck::VT_SEQ, 8), (DeliveryAck::VT_CUMULATIVE, 1)],
                |b| DeliveryAck::create(b, &DeliveryAckArgs::default()).as_union_value(),
            ),
            typing: Template::new(
                fbb,
                FrameKind::Typing,
                &[
                    (Typing::VT_TO, ADDR),
                    (Typing::VT_FROM, ADDR),
                    (Typing::VT_STATE, 1),
                ],
                |b| {
                    let args = TypingArgs {
                        to: z,
                        from: z,
                        ..Default::default()
                    };
                    Typing::create(b, &args).as_union_value()
                },
            ),
            presence: Template::new(
                fbb,
                FrameKind::Presence,
                &[
                    (Presence::VT_USER, 8),
                    (Presence::VT_STATE, 1),
                    (Presence::VT_LAST_SEEN_MS, 8),
                ],
                |b| Presence::create(b, &PresenceArgs::default()).as_union_value(),
            ),
            ping: Template::new(fbb, FrameKind::Ping, &[(Ping::VT_NONCE, 8)], |b| {
                Ping::create(b, &PingArgs::default()).as_union_value()
            }),
            pong: Template::new(fbb, FrameKind::Pong, &[(Pong::VT_NONCE, 8)], |b| {
                Pong::create(b, &PongArgs::default()).as_union_value()
            }),
        }
    }
}
