//! Fuzzing entry points, kept in the library so every fuzz target (and the
//! property tests that double as fuzzers) is a few lines calling these.
//!
//! Each entry point must never panic on any input; a panic is a finding.

use bytes::Bytes;

use crate::{Encoder, Frame, FrameDecoder, Limits, WireError, decode_exact};

/// Feeds `data` to a streaming decoder and checks every frame it yields.
///
/// The first byte picks the read size (1 to 256 bytes), so the fuzzer also
/// explores frames split across reads. Every decoded frame is read in full,
/// re-encoded from its owned form and decoded again: the result must be the
/// same header and payload.
pub fn decode_stream(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let mut decoder = FrameDecoder::new(limits);
    let mut encoder = Encoder::new(limits);
    for chunk in stream.chunks(usize::from(split) + 1) {
        decoder.extend_from_slice(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => check_round_trip(&frame, &mut encoder, &limits),
                Ok(None) => break,
                Err(error) => {
                    assert_ne!(error.code().0, 0, "every error has a code");
                    return;
                }
            }
        }
    }
}

/// Decodes `data` as exactly one frame; a frame that decodes must round-trip.
pub fn decode_one(data: &[u8]) {
    let limits = Limits::default();
    if let Ok(frame) = decode_exact(Bytes::copy_from_slice(data), &limits) {
        assert_eq!(
            frame.len(),
            data.len(),
            "an exact frame spans the whole buffer"
        );
        check_round_trip(&frame, &mut Encoder::new(limits), &limits);
    }
}

/// Reads every field of `frame`, re-encodes it and decodes the result.
fn check_round_trip(frame: &Frame, encoder: &mut Encoder, limits: &Limits) {
    let _ = format!("{frame:?}"); // touches every field through the view
    let owned = frame.to_owned_header();
    let out = match encoder.encode_owned(&owned, frame.payload_bytes()) {
        Ok(out) => out,
        // A hostile header may share bytes between fields (a DAG) that the
        // canonical encoding writes twice; growing past the limit is fine.
        Err(WireError::EncodeTooLarge { .. }) => return,
        Err(error) => panic!("a decoded frame must re-encode: {error}"),
    };
    let again = decode_exact(Bytes::from(out.to_vec()), limits).expect("re-encoded frame decodes");
    assert_eq!(again.kind(), frame.kind());
    assert_eq!(again.to_owned_header(), owned);
    assert_eq!(again.payload(), frame.payload());
}
