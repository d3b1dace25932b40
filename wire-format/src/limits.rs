//! Size limits of frames and the FlatBuffers verifier options derived from
//! them.
//!
//! The `flatbuffers` crate's default verifier options accept a 2 GiB buffer
//! with a million tables; ours follow from the largest header we accept, so a
//! hostile header costs at most a few microseconds to reject.

use flatbuffers::VerifierOptions;

use crate::PREFIX_BYTES_U32;

/// Limits on one frame. Both sides of a connection must agree; the server
/// announces `frame_bytes_max` in `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame: prefix + header + payload.
    pub frame_bytes_max: u32,
    /// Largest header (the FlatBuffers part, without its prefix).
    pub header_bytes_max: u32,
}

impl Limits {
    /// 64 KiB frames: media never travels on the message path.
    pub const DEFAULT_FRAME_BYTES_MAX: u32 = 64 * 1024;
    /// 16 KiB headers: room for a `GroupCreate` listing 1,024 members.
    pub const DEFAULT_HEADER_BYTES_MAX: u32 = 16 * 1024;
    /// Smallest header the verifier could accept: a root offset, a vtable
    /// and a table.
    pub const HEADER_BYTES_MIN: u32 = 12;
    /// Room a `Deliver` frame needs besides its payload (prefix + header,
    /// every field at its largest), with a margin; a test checks it.
    pub const DELIVER_OVERHEAD_BYTES: u32 = 128;
    /// Nesting of our schema: Frame -> body table -> vector or struct.
    const DEPTH_MAX: usize = 8;

    /// Limits with the given frame size and a header limit no larger than it.
    pub fn with_frame_bytes_max(frame_bytes_max: u32) -> Self {
        let header_room = frame_bytes_max.saturating_sub(PREFIX_BYTES_U32);
        Self {
            frame_bytes_max,
            header_bytes_max: Self::DEFAULT_HEADER_BYTES_MAX.min(header_room),
        }
    }

    /// Largest `Send` payload whose `Deliver` still fits in a frame: what
    /// the server accepts and announces in `Welcome.payload_bytes_max`.
    pub fn payload_bytes_max(&self) -> u32 {
        self.frame_bytes_max
            .saturating_sub(Self::DELIVER_OVERHEAD_BYTES)
    }

    /// Verifier options for headers within these limits. Every table costs
    /// at least 4 bytes in a buffer, so `header_bytes_max / 4` bounds how
    /// many a valid header can hold; the apparent size of a DAG-free header
    /// is its length.
    pub fn verifier_options(&self) -> VerifierOptions {
        let header_bytes_max = self.header_bytes_max as usize;
        VerifierOptions {
            max_depth: Self::DEPTH_MAX,
            max_tables: header_bytes_max / 4,
            max_apparent_size: header_bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: Self::DEFAULT_FRAME_BYTES_MAX,
            header_bytes_max: Self::DEFAULT_HEADER_BYTES_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_options_are_far_below_the_crate_defaults() {
        let opts = Limits::default().verifier_options();
        let crate_defaults = VerifierOptions::default();
        assert_eq!(opts.max_apparent_size, 16 * 1024);
        assert_eq!(opts.max_tables, 4 * 1024);
        assert!(opts.max_apparent_size < crate_defaults.max_apparent_size / 1000);
        assert!(opts.max_depth < crate_defaults.max_depth);
    }

    #[test]
    fn a_deliver_of_the_largest_payload_fits_the_frame_limit() {
        let limits = Limits::default();
        let mut e = crate::Encoder::new(limits);
        let big = crate::device_address(u64::MAX, u32::MAX);
        let h = crate::DeliverHeader {
            from: big,
            to: crate::group_address(u64::MAX),
            seq: u64::MAX,
            message_id: u64::MAX,
            server_time_ms: u64::MAX,
        };
        let payload = bytes::Bytes::from(vec![0; limits.payload_bytes_max() as usize]);
        let frame = e.deliver(&h, payload).expect("fits");
        assert!(frame.len() <= limits.frame_bytes_max as usize);
        let overhead = frame.header().len();
        assert!(
            overhead <= Limits::DELIVER_OVERHEAD_BYTES as usize,
            "{overhead}"
        );
        // A Send of the same payload is smaller, so it is always accepted.
        let send = e.send(big, u64::MAX, u32::MAX, frame.payload().clone());
        assert!(send.expect("fits").len() < frame.len());
    }

    #[test]
    fn small_frame_limits_shrink_the_header_limit() {
        let limits = Limits::with_frame_bytes_max(1024);
        assert_eq!(limits.header_bytes_max, 1020);
        assert_eq!(
            Limits::with_frame_bytes_max(1 << 20).header_bytes_max,
            16 * 1024
        );
    }
}
