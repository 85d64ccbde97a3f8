//! An ngrok API response body → every model the client decodes, and what bindgate makes of it.
//! The body is `bindgate::fuzzing::api_models` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::api_models(data));
