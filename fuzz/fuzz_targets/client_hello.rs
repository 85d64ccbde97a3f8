//! Bytes from a client → the SNI of a TLS ClientHello.
//! The body is `bindgate::fuzzing::client_hello` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::client_hello(data));
