//! CI smoke run of the load benchmark's harness (`benches/harness`, shared with
//! `cargo bench --bench load`): tiny counts against the debug binary. It asserts only that every
//! mode this build supports produced numbers for every measurement; speed is measured in
//! `benches/`, never asserted here.

#[path = "../benches/harness/mod.rs"]
mod harness;

use std::path::PathBuf;

use harness::{Support, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_mode_produces_numbers() {
    let settings = harness::Settings::new(
        PathBuf::from(env!("CARGO_BIN_EXE_bindgate")),
        "CARGO_BIN_EXE_bindgate, the debug build",
        true,
    );
    let report = harness::run(&settings)
        .await
        .expect("the load harness runs");
    println!("{}", report.table());

    for target in [Target::Baseline, Target::Direct] {
        let t = report
            .targets
            .iter()
            .find(|t| t.target == target)
            .expect("every target is reported");
        assert_eq!(
            t.support,
            Support::Measured,
            "{} is always supported",
            target.name()
        );
    }
    assert_eq!(report.targets.len(), Target::ALL.len());
    let missing = report.missing_numbers();
    assert!(
        missing.is_empty(),
        "no numbers for {missing:?}; failures: {:#?}",
        report.failures()
    );
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert_eq!(
        json["targets"].as_array().map(Vec::len),
        Some(Target::ALL.len())
    );
}
