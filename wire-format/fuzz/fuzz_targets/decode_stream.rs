//! Fuzz target: a byte stream split into reads, every decoded frame
//! round-tripped. The logic lives in `wire_format::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wire_format::fuzz::decode_stream(data));
