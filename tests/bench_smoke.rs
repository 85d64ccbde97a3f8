//! CI smoke run of the load benchmark's harness (`benches/harness`, shared with
//! `cargo bench --bench load`): tiny counts against the debug binary. It asserts only that every
//! mode this build supports produced numbers for every measurement, and that the peers (HAProxy,
//! stunnel) were measured when installed and skipped when not (CI has neither), and likewise for
//! the http_peers group (nginx, HAProxy, wrk, ab); speed is measured in `benches/`, never
//! asserted here. The harness's own unit tests (the wrk and ab output parsers) run in this
//! binary too.

#[path = "../benches/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::http_peers::HttpPeer;
use harness::peers::Peer;
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
    for t in report.targets.iter().filter(|t| t.target.peer().is_some()) {
        let peer = t.target.peer().expect("a peer target");
        match peer.find() {
            Some(_) => {
                assert_eq!(t.support, Support::Measured, "{} is installed", peer.name());
                assert!(
                    t.peer.is_some(),
                    "{}: the report names the program",
                    peer.name()
                );
            }
            None => assert!(
                matches!(t.support, Support::NotInstalled { .. }),
                "{} is not installed: {:?}",
                peer.name(),
                t.support
            ),
        }
    }
    // Every proxy process, bindgate's or a peer's, has its CPU per connection and RSS; the
    // baseline has no proxy process.
    for t in report
        .targets
        .iter()
        .filter(|t| t.support == Support::Measured)
    {
        let proxied = t.target != Target::Baseline;
        assert_eq!(t.proxy_rss_kib.is_some(), proxied, "{}", t.target.name());
        assert_eq!(t.proxy_cpu.is_some(), proxied, "{}", t.target.name());
        let short = t.short_connections.as_ref().expect("short was measured");
        assert!(short.latency_under_load.is_some(), "{}", t.target.name());
    }
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

    // The http_peers group: skipped as a whole without nginx; else its four rows, HAProxy's
    // measured when installed, and every proxy with its CPU per keep-alive request and RSS
    // (`missing_numbers` above already covers every installed load generator's columns).
    let http_peers = report
        .http_peers
        .as_ref()
        .expect("http_peers runs by default");
    match &http_peers.support {
        Support::NotInstalled { .. } => assert!(http_peers.targets.is_empty()),
        Support::Measured => {
            let rows: Vec<HttpPeer> = http_peers.targets.iter().map(|t| t.target).collect();
            assert_eq!(
                rows,
                [
                    HttpPeer::NginxDirect,
                    HttpPeer::BindgateHttp,
                    HttpPeer::BindgateHttpLowercase,
                    HttpPeer::HaproxyHttp
                ]
            );
            for t in &http_peers.targets {
                let measured = t.support == Support::Measured;
                if matches!(
                    t.target,
                    HttpPeer::BindgateHttp | HttpPeer::BindgateHttpLowercase
                ) {
                    assert!(measured, "{}: {:?}", t.target.name(), t.support);
                }
                if t.target == HttpPeer::HaproxyHttp {
                    assert_eq!(measured, Peer::Haproxy.find().is_some(), "{:?}", t.support);
                }
                if !measured || t.target == HttpPeer::NginxDirect {
                    continue;
                }
                assert!(t.proxy_rss_kib.is_some(), "{}", t.target.name());
                let keep_alive = t.client_keep_alive.as_ref().expect("keep-alive ran");
                assert!(
                    keep_alive.total.proxy_cpu_seconds.is_some(),
                    "{}",
                    t.target.name()
                );
            }
        }
        other => panic!("http_peers: {other:?}"),
    }
    assert!(json.get("http_peers").is_some());
}

/// `--quick --rtt 5 --only connect,paced`: every gateway dials the relay, the baseline goes
/// through its own, and only the asked-for measurements run. The one timing check is a lower
/// bound the relay itself imposes (every path crosses it at least once), never a speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_mode_measures_what_was_asked_through_the_relay() {
    let rtt = Duration::from_millis(5);
    let mut settings = harness::Settings::new(
        PathBuf::from(env!("CARGO_BIN_EXE_bindgate")),
        "CARGO_BIN_EXE_bindgate, the debug build",
        true,
    )
    .with_rtt(rtt);
    settings
        .select(Some("connect,paced"), None)
        .expect("a valid selection");
    let report = harness::run(&settings)
        .await
        .expect("the load harness runs");
    println!("{}", report.table());

    let missing = report.missing_numbers();
    assert!(
        missing.is_empty(),
        "no numbers for {missing:?}; failures: {:#?}",
        report.failures()
    );
    for t in report
        .targets
        .iter()
        .filter(|t| t.support == Support::Measured)
    {
        let connect = t.connect_latency.as_ref().expect("connect was measured");
        assert!(
            connect.p50_ms >= rtt.as_secs_f64() * 1000.0,
            "{}: a new connection through the relay took {} ms, less than the RTT",
            t.target.name(),
            connect.p50_ms
        );
        assert!(t.paced_connect_latency.is_some(), "paced was measured");
        assert!(t.short_connections.is_none(), "short was not asked for");
        assert!(t.throughput.is_none(), "no throughput with an RTT");
    }
    assert!(report.http_peers.is_none(), "http_peers was not asked for");
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert_eq!(json["rtt_ms"], 5);
    assert!(
        json["targets"][0].get("short_connections").is_none(),
        "measurements not run are left out of the JSON"
    );
    assert!(
        report
            .table()
            .starts_with("RTT 5 ms emulated between gateway and ingress (relay)")
    );
}
