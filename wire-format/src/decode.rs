//! Splitting a byte stream into verified frames: the streaming
//! [`FrameDecoder`] and [`decode_exact`] for a buffer that holds one frame.
//!
//! Both run the same steps: read the length prefix, bound it, wait for the
//! header, verify it, bound prefix + header + payload, wait for the payload.
//! A header is verified once, however many reads its payload takes.

use bytes::{Buf, Bytes, BytesMut};
use flatbuffers::VerifierOptions;

use crate::frame::{HeaderInfo, verify_header};
use crate::{Frame, FrameRef, Limits, PREFIX_BYTES, WireError};

/// Where the frame at the front of a buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The frame cannot be judged before the buffer holds this many bytes.
    NeedBytes(usize),
    /// The header is verified; the frame spans `frame_len` bytes.
    Header {
        header_end: usize,
        frame_len: usize,
        info: HeaderInfo,
    },
}

/// Judges the frame at the front of `buf` as far as its bytes allow.
/// Lengths are `u32` on the wire and `usize` here: no sum can overflow.
fn parse_front(buf: &[u8], limits: &Limits, opts: &VerifierOptions) -> Result<Progress, WireError> {
    let frame_bytes_max = limits.frame_bytes_max;
    let Some(prefix) = buf.first_chunk::<PREFIX_BYTES>() else {
        return Ok(Progress::NeedBytes(PREFIX_BYTES));
    };
    let header_len = u32::from_le_bytes(*prefix);
    let header_end = PREFIX_BYTES + header_len as usize;
    if header_end > frame_bytes_max as usize {
        return Err(WireError::FrameTooLarge {
            len: header_end as u64,
            max: frame_bytes_max,
        });
    }
    if !(Limits::HEADER_BYTES_MIN..=limits.header_bytes_max).contains(&header_len) {
        return Err(WireError::HeaderLength {
            len: header_len,
            min: Limits::HEADER_BYTES_MIN,
            max: limits.header_bytes_max,
        });
    }
    let Some(prefixed) = buf.get(..header_end) else {
        return Ok(Progress::NeedBytes(header_end));
    };
    let info = verify_header(prefixed, opts)?;
    let frame_len = header_end + info.payload_len as usize;
    if frame_len > frame_bytes_max as usize {
        return Err(WireError::FrameTooLarge {
            len: frame_len as u64,
            max: frame_bytes_max,
        });
    }
    Ok(Progress::Header {
        header_end,
        frame_len,
        info,
    })
}

/// Decodes a buffer that must hold exactly one frame (a datagram, a record,
/// a test vector). The frame shares `buf`'s memory.
pub fn decode_exact(buf: Bytes, limits: &Limits) -> Result<Frame, WireError> {
    match parse_front(&buf, limits, &limits.verifier_options())? {
        Progress::NeedBytes(need) => Err(WireError::Truncated {
            need,
            have: buf.len(),
        }),
        Progress::Header { frame_len, .. } if frame_len > buf.len() => Err(WireError::Truncated {
            need: frame_len,
            have: buf.len(),
        }),
        Progress::Header { frame_len, .. } if frame_len < buf.len() => {
            Err(WireError::TrailingBytes {
                extra: buf.len() - frame_len,
            })
        }
        Progress::Header {
            header_end, info, ..
        } => Ok(Frame::new_verified(buf, header_end, info.kind)),
    }
}

/// A streaming decoder: feed it bytes as they arrive (any split, any number
/// of frames per read), take frames out with [`FrameDecoder::decode`].
///
/// Frames are slices of the decoder's buffer, so decoding allocates nothing
/// per frame. [`FrameDecoder::feed`] does without even that buffer for
/// the frames a read holds whole: they are read where they lie, and only a
/// frame cut by the end of the read is copied, to be finished by the next.
///
/// The first error is final: the byte stream can no longer be split with
/// confidence, so every later call returns the same error and the
/// connection should be closed after an `Error` frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// (The verifier's options are made from these per frame: cheaper
    /// than 32 more bytes on every idle connection.)
    limits: Limits,
    /// The verified header of the frame at the front, while its payload
    /// is still arriving.
    pending: Option<Progress>,
    /// Boxed: the error is 72 bytes, and only a dead stream has one.
    failed: Option<Box<WireError>>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`. Holds no memory until bytes arrive.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: BytesMut::new(),
            limits,
            pending: None,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends bytes that arrived (for example plaintext out of TLS).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Reserves room for at least `additional` more bytes (a shell that
    /// knows the next read's size). There is deliberately no mutable access
    /// to the buffer itself: the header of the frame in progress is
    /// verified once, and [`FrameDecoder::decode`] relies on those bytes not
    /// changing afterwards.
    ///
    /// ```compile_fail
    /// let mut decoder = wire_format::FrameDecoder::new(wire_format::Limits::default());
    /// decoder.buffer_mut().clear(); // no such method: verified bytes stay as verified
    /// ```
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Bytes the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the decoder needs in total before it can make progress (at
    /// least the prefix); a hint for sizing the next read.
    pub fn bytes_wanted(&self) -> usize {
        match self.pending {
            Some(Progress::Header { frame_len, .. }) => frame_len,
            _ => match parse_front(&self.buf, &self.limits, &self.limits.verifier_options()) {
                Ok(Progress::NeedBytes(need)) => need,
                Ok(Progress::Header { frame_len, .. }) => frame_len,
                Err(_) => 0,
            },
        }
    }

    /// Lets go of the buffer's memory if no partial frame is held, so an
    /// idle connection costs nothing here. Returns whether it held any.
    ///
    /// An empty buffer with no capacity left may still share memory with
    /// the frames split off it (one that a frame filled exactly): it is let
    /// go of too, so a frame the core dropped is freed.
    pub fn release_if_empty(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let held = self.buf.capacity() > 0;
        self.buf = BytesMut::new();
        held
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, WireError> {
        self.check_failed()?;
        let progress = match self.pending.take() {
            Some(progress) => progress,
            None => parse_front(&self.buf, &self.limits, &self.limits.verifier_options())
                .map_err(|e| self.fail(e))?,
        };
        match progress {
            Progress::NeedBytes(_) => Ok(None),
            Progress::Header { frame_len, .. } if frame_len > self.buf.len() => {
                self.pending = Some(progress);
                Ok(None)
            }
            Progress::Header {
                header_end,
                frame_len,
                info,
            } => {
                let bytes = self.buf.split_to(frame_len).freeze();
                Ok(Some(Frame::new_verified(bytes, header_end, info.kind)))
            }
        }
    }
}

impl FrameDecoder {
    /// Decodes every frame `input` completes, handing each to `on_frame`
    /// in order, read in place: a frame that `input` holds whole is a slice
    /// of `input` (no copy, no count); only bytes of a frame cut by the end
    /// of `input` are copied in, and the call that completes it hands it
    /// out of the decoder's buffer. Same checks and same errors as
    /// [`FrameDecoder::decode`], whose buffered bytes it continues; frames
    /// before an error are handed out first.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(FrameRef<'_>),
    ) -> Result<(), WireError> {
        self.check_failed()?;
        if !self.buf.is_empty() && !self.finish_buffered(&mut input, &mut on_frame)? {
            return Ok(());
        }
        while !input.is_empty() {
            let opts = self.limits.verifier_options();
            let progress = parse_front(input, &self.limits, &opts).map_err(|e| self.fail(e))?;
            let Progress::Header {
                header_end,
                frame_len,
                info,
            } = progress
            else {
                break;
            };
            let Some((frame, rest)) = input.split_at_checked(frame_len) else {
                self.pending = Some(progress);
                break;
            };
            on_frame(Frame::new_verified(frame, header_end, info.kind));
            input = rest;
        }
        self.buf.extend_from_slice(input);
        Ok(())
    }

    /// Completes what the buffer holds with bytes from the front of
    /// `input`, hands out each frame it then holds whole (bytes may have
    /// been buffered by `extend_from_slice` too) and empties it. `false`:
    /// `input` ran out first, and all of it is buffered.
    fn finish_buffered(
        &mut self,
        input: &mut &[u8],
        on_frame: &mut impl FnMut(FrameRef<'_>),
    ) -> Result<bool, WireError> {
        while !self.buf.is_empty() {
            let progress = match self.pending.take() {
                Some(progress) => progress,
                None => parse_front(&self.buf, &self.limits, &self.limits.verifier_options())
                    .map_err(|e| self.fail(e))?,
            };
            let need = match progress {
                Progress::NeedBytes(need) => need,
                Progress::Header { frame_len, .. } => frame_len,
            };
            let (take, rest) = input.split_at(input.len().min(need.saturating_sub(self.buf.len())));
            self.buf.extend_from_slice(take);
            *input = rest;
            if self.buf.len() < need {
                if matches!(progress, Progress::Header { .. }) {
                    self.pending = Some(progress);
                }
                return Ok(false);
            }
            if let Progress::Header {
                header_end, info, ..
            } = progress
            {
                on_frame(Frame::new_verified(
                    &self.buf[..need],
                    header_end,
                    info.kind,
                ));
                self.buf.advance(need);
            }
        }
        Ok(true)
    }

    fn check_failed(&self) -> Result<(), WireError> {
        match &self.failed {
            Some(error) => Err(WireError::clone(error)),
            None => Ok(()),
        }
    }

    /// Records the stream's first error, which every later call returns.
    fn fail(&mut self, error: WireError) -> WireError {
        self.failed = Some(Box::new(error.clone()));
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoder, FrameKind, user_address};

    fn send_frame(payload: &'static [u8]) -> Vec<u8> {
        let mut enc = Encoder::new(Limits::default());
        enc.send(user_address(7), 1, 0, Bytes::from_static(payload))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn frames_split_across_reads_byte_by_byte() {
        let wire: Vec<u8> = [send_frame(b"first"), send_frame(b"second")].concat();
        let mut dec = FrameDecoder::new(Limits::default());
        let mut payloads = Vec::new();
        for byte in &wire {
            dec.extend_from_slice(std::slice::from_ref(byte));
            while let Some(frame) = dec.decode().unwrap() {
                payloads.push(frame.payload().to_vec());
            }
        }
        assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(dec.buffered_len(), 0);
    }

    /// Whether `inner` lies inside `outer` (the same memory, not a copy).
    fn within(inner: &[u8], outer: &[u8]) -> bool {
        outer.as_ptr_range().contains(&inner.as_ptr())
    }

    #[test]
    fn feed_reads_whole_frames_in_place_and_buffers_only_a_cut_one() {
        let (a, b, c) = (send_frame(b"one"), send_frame(b"two"), send_frame(b"three"));
        let wire: Vec<u8> = [a.clone(), b, c.clone()].concat();
        let cut = wire.len() - c.len() / 2;
        let mut dec = FrameDecoder::new(Limits::default());
        let mut seen = Vec::new();
        dec.feed(&wire[..cut], |f| {
            assert!(within(f.payload(), &wire[..cut]), "read in place");
            seen.push(f.payload().to_vec());
        })
        .unwrap();
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(
            dec.buffered_len(),
            cut - 2 * a.len(),
            "only the cut frame is kept"
        );
        dec.feed(&wire[cut..], |f| seen.push(f.payload().to_vec()))
            .unwrap();
        assert_eq!(seen.last().unwrap(), b"three");
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn feed_finishes_frames_that_extend_from_slice_buffered() {
        let wire: Vec<u8> = [send_frame(b"first"), send_frame(b"second")].concat();
        let mut dec = FrameDecoder::new(Limits::default());
        dec.extend_from_slice(&wire[..wire.len() - 3]);
        let mut seen = Vec::new();
        dec.feed(&wire[wire.len() - 3..], |f| seen.push(f.payload().to_vec()))
            .unwrap();
        assert_eq!(seen, [b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn feed_hands_out_frames_before_an_error_and_then_only_the_error() {
        let good = send_frame(b"ok");
        let mut wire = good.clone();
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut dec = FrameDecoder::new(Limits::default());
        let mut seen = 0;
        let first = dec.feed(&wire, |_| seen += 1).unwrap_err();
        assert!(
            matches!(first, WireError::FrameTooLarge { .. }),
            "{first:?}"
        );
        assert_eq!(seen, 1);
        assert_eq!(dec.feed(&good, |_| seen += 1), Err(first));
        assert_eq!(seen, 1, "nothing after the error");
    }

    #[test]
    fn many_frames_in_one_read_share_the_buffer() {
        let wire: Vec<u8> = (0..10).flat_map(|_| send_frame(b"x")).collect();
        let mut dec = FrameDecoder::new(Limits::default());
        dec.extend_from_slice(&wire);
        let base = dec.buf.as_ptr() as usize;
        let mut offset = 0;
        while let Some(frame) = dec.decode().unwrap() {
            assert_eq!(frame.kind(), FrameKind::Send);
            assert_eq!(
                frame.as_bytes().as_ptr() as usize,
                base + offset,
                "a slice, not a copy"
            );
            offset += frame.len();
        }
        assert_eq!(offset, wire.len());
    }

    #[test]
    fn bytes_wanted_follows_the_frame_in_progress() {
        let wire = send_frame(b"hello");
        let mut dec = FrameDecoder::new(Limits::default());
        assert_eq!(dec.bytes_wanted(), PREFIX_BYTES);
        dec.extend_from_slice(&wire[..PREFIX_BYTES]);
        assert_eq!(dec.bytes_wanted(), wire.len() - 5, "prefix + header");
        dec.extend_from_slice(&wire[PREFIX_BYTES..wire.len() - 1]);
        assert_eq!(dec.decode().unwrap(), None);
        assert_eq!(dec.bytes_wanted(), wire.len());
        dec.extend_from_slice(&wire[wire.len() - 1..]);
        assert!(dec.decode().unwrap().is_some());
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = FrameDecoder::new(Limits::default());
        dec.extend_from_slice(&u32::MAX.to_le_bytes());
        let first = dec.decode().unwrap_err();
        assert_eq!(
            first,
            WireError::FrameTooLarge {
                len: 4 + u64::from(u32::MAX),
                max: 65536
            }
        );
        dec.buf.clear();
        dec.extend_from_slice(&send_frame(b"ok"));
        assert_eq!(
            dec.decode().unwrap_err(),
            first,
            "no resync after a bad frame"
        );
    }

    #[test]
    fn a_frame_that_filled_the_buffer_exactly_is_let_go_of_too() {
        // A buffer made for exactly one frame (the first read of a
        // connection, its `Hello`) has no room left once the frame is split
        // off, yet still shares the frame's memory: releasing only buffers
        // with spare capacity kept every idle connection's `Hello` (232 B).
        let wire = send_frame(b"payload");
        let mut dec = FrameDecoder::new(Limits::default());
        dec.extend_from_slice(&wire);
        let frame = dec.decode().unwrap().unwrap();
        let bytes = frame.as_bytes().clone();
        drop(frame);
        assert!(!bytes.is_unique(), "the decoder still shares the buffer");
        dec.release_if_empty();
        assert!(bytes.is_unique(), "the decoder let go of the buffer");
        assert_eq!(dec.capacity(), 0);
    }

    #[test]
    fn release_if_empty_keeps_partial_frames() {
        let wire = send_frame(b"payload");
        let mut dec = FrameDecoder::new(Limits::default());
        dec.reserve(4096);
        dec.extend_from_slice(&wire[..10]);
        assert!(!dec.release_if_empty(), "a partial frame stays");
        dec.extend_from_slice(&wire[10..]);
        let frame = dec.decode().unwrap().unwrap();
        assert!(dec.release_if_empty());
        assert_eq!(dec.capacity(), 0);
        assert_eq!(
            frame.payload(),
            b"payload",
            "returned frames outlive the release"
        );
    }

    #[test]
    fn header_length_bounds() {
        let limits = Limits::default();
        let too_small = 11u32.to_le_bytes();
        assert_eq!(
            decode_exact(Bytes::copy_from_slice(&too_small), &limits).unwrap_err(),
            WireError::HeaderLength {
                len: 11,
                min: 12,
                max: 16384
            }
        );
        let above_header_max = 20_000u32.to_le_bytes();
        assert_eq!(
            decode_exact(Bytes::copy_from_slice(&above_header_max), &limits).unwrap_err(),
            WireError::HeaderLength {
                len: 20_000,
                min: 12,
                max: 16384
            }
        );
    }
}
