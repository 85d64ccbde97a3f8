//! Bytes from a peer → framed ConnRequest / ConnResponse: must never panic.
#![no_main]

use bindgate::wire::{ConnRequest, ConnResponse, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<ConnRequest>(data);
    let _ = decode_frame::<ConnResponse>(data);
});
