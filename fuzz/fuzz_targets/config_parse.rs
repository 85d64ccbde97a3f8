//! Config text → parsed and built snapshot: must never panic, whatever the text.
#![no_main]

use bindgate::{config, snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = config::parse(text, "fuzz.yaml", "/nonexistent".into(), |_| None) {
        let _ = snapshot::build(&loaded, 0);
    }
});
