//! Bytes from a client → the SNI of a TLS ClientHello: must never panic.
#![no_main]

use bindgate::proxy::sni;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sni::parse(data);
});
