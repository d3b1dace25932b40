//! [`Frame`]: one decoded, verified frame viewed in place, its
//! [`FrameKind`], and the typed [`Body`] view of its header.
//!
//! A `Frame` can only be made by the decoder after the header passed the
//! FlatBuffers verifier; that is what makes the unchecked reads here sound.

use bytes::Bytes;
use flatbuffers::VerifierOptions;

use crate::{PREFIX_BYTES, WireError, fb};

macro_rules! frame_kinds {
    ($($name:ident => $accessor:ident,)*) => {
        /// The kind of a frame: which table its header's `body` holds. The
        /// discriminant is the union value on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameKind {
            $(
                #[doc = concat!("A `", stringify!($name), "` frame.")]
                $name = fb::Body::$name.0,
            )*
        }

        impl FrameKind {
            /// Every frame kind, in wire order.
            pub const ALL: &'static [FrameKind] = &[$(FrameKind::$name),*];

            /// The kind for a union discriminant, if this version knows it.
            pub fn from_wire(body: fb::Body) -> Option<Self> {
                match body {
                    $(fb::Body::$name => Some(Self::$name),)*
                    _ => None,
                }
            }
        }

        /// The header's body, typed by frame kind. Tables are read in place.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub enum Body<'a> {
            $(
                #[doc = concat!("The header of a `", stringify!($name), "` frame.")]
                $name(fb::$name<'a>),
            )*
        }

        fn body_of(kind: FrameKind, header: fb::Frame<'_>) -> Body<'_> {
            const VERIFIED: &str = "the verifier rejects a union whose value is missing";
            match kind {
                $(FrameKind::$name => Body::$name(header.$accessor().expect(VERIFIED)),)*
            }
        }
    };
}

frame_kinds! {
    Hello => body_as_hello,
    Welcome => body_as_welcome,
    Send => body_as_send,
    ServerAck => body_as_server_ack,
    Deliver => body_as_deliver,
    DeliveryAck => body_as_delivery_ack,
    Receipt => body_as_receipt,
    Typing => body_as_typing,
    PresenceSubscribe => body_as_presence_subscribe,
    Presence => body_as_presence,
    GroupCreate => body_as_group_create,
    GroupAdd => body_as_group_add,
    GroupRemove => body_as_group_remove,
    GroupChanged => body_as_group_changed,
    Ping => body_as_ping,
    Pong => body_as_pong,
    GoAway => body_as_go_away,
    Error => body_as_error,
    DevicesGet => body_as_devices_get,
    Devices => body_as_devices,
    DeviceUnlink => body_as_device_unlink,
    DeviceChanged => body_as_device_changed,
    SettingsSet => body_as_settings_set,
    Settings => body_as_settings,
    PushRegister => body_as_push_register,
    Done => body_as_done,
    Gap => body_as_gap,
}

impl FrameKind {
    /// Whether frames of this kind may carry a payload.
    pub fn allows_payload(self) -> bool {
        matches!(self, Self::Send | Self::Deliver)
    }

    /// The union discriminant on the wire.
    pub fn to_wire(self) -> fb::Body {
        fb::Body(self as u8)
    }
}

/// A verified frame: the frame's bytes (prefix, header, payload) as one
/// slice of the buffer it was read into.
///
/// `B` is what holds the bytes: [`Bytes`] (the default) for a frame that
/// may outlive the read, a borrowed slice for one read where it lies
/// ([`FrameRef`], from [`crate::FrameDecoder::feed`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame<B = Bytes> {
    bytes: B,
    header_end: u32,
    kind: FrameKind,
}

/// A verified frame read where it lies, in the caller's buffer: no copy, no
/// reference count.
pub type FrameRef<'a> = Frame<&'a [u8]>;

/// What the header of a frame says, once it has passed the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderInfo {
    pub(crate) kind: FrameKind,
    pub(crate) payload_len: u32,
}

/// Runs the verifier over `prefixed` (length prefix + header, exactly) and
/// reads what framing needs from the header.
pub(crate) fn verify_header(
    prefixed: &[u8],
    opts: &VerifierOptions,
) -> Result<HeaderInfo, WireError> {
    let root = flatbuffers::size_prefixed_root_with_opts::<fb::Frame<'_>>(opts, prefixed)
        .map_err(WireError::InvalidHeader)?;
    let body_type = root.body_type();
    let kind =
        FrameKind::from_wire(body_type).ok_or(WireError::UnknownFrameKind { kind: body_type.0 })?;
    let payload_len = root.payload_len();
    if payload_len != 0 && !kind.allows_payload() {
        return Err(WireError::UnexpectedPayload {
            kind,
            len: payload_len,
        });
    }
    Ok(HeaderInfo { kind, payload_len })
}

impl<B: AsRef<[u8]>> Frame<B> {
    /// Wraps `bytes` whose first `header_end` bytes passed [`verify_header`]
    /// with result `kind`.
    pub(crate) fn new_verified(bytes: B, header_end: usize, kind: FrameKind) -> Self {
        debug_assert!(
            header_end <= bytes.as_ref().len(),
            "header inside the frame"
        );
        let header_end = u32::try_from(header_end).expect("frames are below 4 GiB");
        Self {
            bytes,
            header_end,
            kind,
        }
    }

    /// The frame kind.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The header's root table, read in place.
    pub fn header(&self) -> fb::Frame<'_> {
        let prefixed = &self.bytes.as_ref()[..self.header_end as usize];
        // SAFETY: a `Frame` is only built by `new_verified`, whose callers ran
        // `verify_header` over exactly these bytes, and both `Bytes` and a
        // shared slice are immutable.
        #[allow(unsafe_code)]
        unsafe {
            flatbuffers::size_prefixed_root_unchecked::<fb::Frame<'_>>(prefixed)
        }
    }

    /// The header's body, typed by kind.
    pub fn body(&self) -> Body<'_> {
        body_of(self.kind, self.header())
    }

    /// The opaque payload, borrowed.
    pub fn payload(&self) -> &[u8] {
        &self.bytes.as_ref()[self.header_end as usize..]
    }

    /// The whole frame as received (prefix, header and payload), borrowed.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// Bytes the frame occupies on the wire.
    pub fn len(&self) -> usize {
        self.bytes.as_ref().len()
    }

    /// Never true: a frame holds at least a prefix and a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.as_ref().is_empty()
    }

    /// Bytes of the length prefix plus the header.
    pub fn header_len(&self) -> usize {
        self.header_end as usize - PREFIX_BYTES
    }

    /// The header as an owned object tree (allocates; for tests and tools).
    pub fn to_owned_header(&self) -> fb::FrameT {
        self.header().unpack()
    }
}

impl Frame {
    /// The opaque payload as a new handle on the same memory (no copy). The
    /// handle keeps the whole read buffer alive: copy it if it is kept long.
    pub fn payload_bytes(&self) -> Bytes {
        self.bytes.slice(self.header_end as usize..)
    }

    /// The whole frame as received: prefix, header and payload.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl<B: AsRef<[u8]>> std::fmt::Debug for Frame<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("body", &self.body())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_kinds_match_the_schema_union() {
        let named: Vec<_> = fb::Body::ENUM_VALUES
            .iter()
            .filter(|b| **b != fb::Body::NONE)
            .collect();
        assert_eq!(named.len(), FrameKind::ALL.len());
        for body in named {
            let kind = FrameKind::from_wire(*body).expect("every union member is a kind");
            assert_eq!(kind.to_wire(), *body);
            assert_eq!(format!("{kind:?}"), body.variant_name().unwrap());
        }
        assert_eq!(FrameKind::from_wire(fb::Body::NONE), None);
        assert_eq!(FrameKind::from_wire(fb::Body(fb::Body::ENUM_MAX + 1)), None);
    }

    #[test]
    fn only_send_and_deliver_carry_payloads() {
        let with: Vec<_> = FrameKind::ALL
            .iter()
            .filter(|k| k.allows_payload())
            .collect();
        assert_eq!(with, [&FrameKind::Send, &FrameKind::Deliver]);
    }
}
