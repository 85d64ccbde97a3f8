//! Config text → what `bindgate validate` does: parse, snapshot build, filter chains.
//! The body is `bindgate::fuzzing::config_parse` (also replayed on stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::config_parse(data));
