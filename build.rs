//! Release builds of the `bindgate` binary on x86_64 Linux lay out the functions that run first
//! and most often side by side (`link/symbol-order.txt`, read by the linker), so a gateway maps
//! a few MiB of its code instead of most of it. Why and how the list is made: `link/README.md`.
//! Any other build links as usual; so does one with `BINDGATE_NO_SYMBOL_ORDER` set.

use std::env;
use std::path::Path;
use std::process::Command;

const ORDER: &str = "link/symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=BINDGATE_NO_SYMBOL_ORDER");
    if env::var_os("BINDGATE_NO_SYMBOL_ORDER").is_some()
        || env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || !links_with_lld()
    {
        return;
    }
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = Path::new(&dir).join(ORDER);
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=bindgate=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names the build no longer has (a dependency or the compiler changed since the list was
    // made) are skipped; the listed ones that remain are still laid out first.
    println!("cargo:rustc-link-arg-bin=bindgate=-Wl,--no-warn-symbol-ordering");
}

/// Whether the link is rustc's default for this target from 1.90 on: its own `lld`, which reads
/// the ordering file (GNU ld does not). A linker chosen through `RUSTFLAGS` is not second-guessed.
fn links_with_lld() -> bool {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
