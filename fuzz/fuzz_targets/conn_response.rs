//! Bytes from a binding ingress → its ConnResponse, with and without early data.
//! The body is `bindgate::fuzzing::conn_response` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::conn_response(data));
