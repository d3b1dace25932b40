//! Fuzz target: one buffer that must hold exactly one frame. The logic
//! lives in `wire_format::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wire_format::fuzz::decode_one(data));
