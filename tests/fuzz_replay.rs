//! Replays the fuzzer's committed inputs on stable: for every target in
//! `bindgate::fuzzing::TARGETS`, every file of `fuzz/corpus/<target>/` (the minimized seed corpus)
//! and every `fuzz/regressions/<target>-*` (a crash once found, now fixed) runs through the
//! target's body, the same function the cargo-fuzz target calls. A panic names the input.

use std::path::{Path, PathBuf};

use bindgate::fuzzing::{TARGETS, Target};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn replay(target: &str, body: fn(&[u8]), inputs: &[PathBuf]) {
    for path in inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(
            outcome.is_ok(),
            "target `{target}` panicked on {}",
            path.display()
        );
    }
}

#[test]
fn every_corpus_input_replays_without_a_panic() {
    for &Target { name: target, run } in TARGETS {
        let corpus = files(&Path::new(FUZZ_DIR).join("corpus").join(target), |_| true);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target}/ has no seed inputs"
        );
        replay(target, run, &corpus);
    }
}

#[test]
fn every_regression_input_replays_without_a_panic() {
    let regressions = Path::new(FUZZ_DIR).join("regressions");
    let mut claimed = 0;
    for &Target { name: target, run } in TARGETS {
        let prefix = format!("{target}-");
        let inputs = files(&regressions, |name| name.starts_with(&prefix));
        claimed += inputs.len();
        replay(target, run, &inputs);
    }
    // A regression named after no target would silently never run.
    let all = files(&regressions, |name| !name.starts_with('.'));
    assert_eq!(
        claimed,
        all.len(),
        "every file in fuzz/regressions/ is named `<target>-<what>`: {all:?}"
    );
}
