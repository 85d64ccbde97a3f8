//! A config source's answer (REST JSON or YAML, or a `path` source's file) → parse, build with a
//! config file, error report. The body is `bindgate::fuzzing::source_document` (also replayed on
//! stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::source_document(data));
