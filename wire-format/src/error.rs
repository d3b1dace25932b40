//! [`WireError`]: everything that can be wrong with a frame's bytes, and
//! the stable [`ErrorCode`] each case puts in an `Error` frame.

use flatbuffers::InvalidFlatbuffer;

use crate::{ErrorCode, FrameKind};

/// A frame could not be decoded or encoded.
///
/// Decoding errors are fatal for the connection: the peer gets an `Error`
/// frame with [`WireError::code`] and the connection closes, because the
/// byte stream can no longer be split into frames with confidence.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    // ---- malformed input -------------------------------------------------
    /// The length prefix, or the prefix plus the payload length the header
    /// states, exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Bytes the frame would occupy (prefix + header + payload).
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The header's length prefix is below the smallest valid header or
    /// above the header limit.
    #[error("header length {len} is outside {min}..={max}")]
    HeaderLength {
        /// The length prefix as received.
        len: u32,
        /// The smallest header that can be valid.
        min: u32,
        /// The header limit in force.
        max: u32,
    },
    /// A buffer that must hold exactly one frame ends before the frame does.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs, as far as its prefix and header tell.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The header failed FlatBuffers verification (an offset out of bounds,
    /// misaligned data, an inconsistent union, a verifier limit, …).
    #[error("invalid frame header: {0}")]
    InvalidHeader(InvalidFlatbuffer),
    /// The header is valid but names a frame kind this version does not
    /// know (or none).
    #[error("unknown frame kind {kind}")]
    UnknownFrameKind {
        /// The union discriminant found.
        kind: u8,
    },
    /// A buffer that must hold exactly one frame has bytes after it.
    #[error("{extra} bytes after the end of the frame")]
    TrailingBytes {
        /// How many bytes follow the frame.
        extra: usize,
    },
    /// A frame kind that carries no payload states a non-zero payload length.
    #[error("{kind:?} frames carry no payload, this one states {len} bytes")]
    UnexpectedPayload {
        /// The frame kind.
        kind: FrameKind,
        /// The payload length its header states.
        len: u32,
    },
    // ---- API misuse (encoding) --------------------------------------------
    /// A frame to encode would exceed the frame limit.
    #[error("a {kind:?} frame of {len} bytes would exceed the limit of {max} bytes")]
    EncodeTooLarge {
        /// The frame kind.
        kind: FrameKind,
        /// Bytes the frame would occupy.
        len: u64,
        /// The limit in force.
        max: u32,
    },
}

impl WireError {
    /// The stable code for an `Error` frame. Several variants share a code
    /// where a peer would act the same way on either.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } | Self::EncodeTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::HeaderLength { .. } | Self::InvalidHeader(_) => ErrorCode::InvalidHeader,
            Self::Truncated { .. } => ErrorCode::Truncated,
            Self::UnknownFrameKind { .. } => ErrorCode::UnknownFrameKind,
            Self::TrailingBytes { .. } => ErrorCode::TrailingBytes,
            Self::UnexpectedPayload { .. } => ErrorCode::UnexpectedPayload,
        }
    }
}

/// Whether the sender of an `Error` with `code` closes the connection
/// after it: one answer per code, the "fatal" column of the error table in
/// `docs/protocol.md` (a test holds the two together). `RateLimited` is
/// the one code sent both ways: non-fatal, and fatal once a connection has
/// been refused too many times in a row.
pub fn is_fatal(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::InvalidAddress
            | ErrorCode::NotGroupAdmin
            | ErrorCode::UnknownGroup
            | ErrorCode::RetryTooOld
            | ErrorCode::UnknownDevice
            | ErrorCode::RateLimited
            | ErrorCode::RecipientQueueFull
            | ErrorCode::TooManyItems
            | ErrorCode::GroupFull
            | ErrorCode::TtlTooLong
            | ErrorCode::PayloadTooLarge
            | ErrorCode::ConversationLimit
            | ErrorCode::RecipientRateLimit
            | ErrorCode::GroupCreateLimit
            | ErrorCode::StorageUnavailable
            | ErrorCode::Draining
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        let cases = [
            (WireError::FrameTooLarge { len: 1, max: 0 }, 100),
            (WireError::Truncated { need: 1, have: 0 }, 101),
            (
                WireError::HeaderLength {
                    len: 1,
                    min: 12,
                    max: 16,
                },
                102,
            ),
            (
                WireError::InvalidHeader(InvalidFlatbuffer::TooManyTables),
                102,
            ),
            (WireError::UnknownFrameKind { kind: 0 }, 103),
            (WireError::TrailingBytes { extra: 1 }, 104),
            (
                WireError::UnexpectedPayload {
                    kind: FrameKind::Ping,
                    len: 1,
                },
                105,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code().0, code, "{error}");
        }
    }
}
