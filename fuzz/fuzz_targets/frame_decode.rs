//! Bytes from a peer → framed ConnRequest / ConnResponse.
//! The body is `bindgate::fuzzing::frame_decode` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::frame_decode(data));
