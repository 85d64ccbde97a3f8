//! Bytes from an http listener's client → hyper HTTP/1 server → route selection and http filters.
//! The body is `bindgate::fuzzing::http_head` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::http_head(data));
