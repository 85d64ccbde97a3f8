//! The recorder is one per process and unit tests share it, so each test counts on series of its
//! own (a listener or cluster name no other test uses) and compares those exactly; the
//! unlabelled totals, which other tests may bump concurrently, are compared as lower bounds.

use std::time::Duration;

use super::process::{self, Process};
use super::*;

/// The value of the sample `name{labels}` (`labels` as rendered, without braces; "" for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{series}: {v}: {e}")))
}

fn value(name: &str, labels: &str) -> f64 {
    let text = handle().render();
    sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
}

#[test]
fn handle_installs_once_from_many_threads() {
    let handles: Vec<usize> = (0..8)
        .map(|_| std::thread::spawn(|| handle() as *const PrometheusHandle as usize))
        .map(|t| t.join().unwrap())
        .collect();
    assert!(handles.iter().all(|h| *h == handles[0]));
    assert!(std::ptr::eq(handle(), handle()));
}

#[test]
fn a_recorder_installed_elsewhere_first_leaves_ours_counting_on_its_own() {
    // `handle()` has put the process's recorder in the global slot; a second install finds it
    // taken, does not panic, and its handles count on its own recorder.
    let _ = handle();
    let other = install();
    let counter = metrics::with_local_recorder(other.recorder, || {
        metrics::counter!("bindgate_unit_fallback_total")
    });
    counter.increment(2);
    other.totals.config_rejected.increment(1);
    let text = other.handle.render();
    assert_eq!(sample(&text, "bindgate_unit_fallback_total", ""), Some(2.0));
    assert_eq!(sample(&text, CONFIG_REJECTED, ""), Some(1.0));
    assert_eq!(
        sample(&handle().render(), "bindgate_unit_fallback_total", ""),
        None
    );
}

#[test]
fn the_families_that_predate_the_facade_render_unlabelled_before_anything_happens() {
    let text = render();
    for (name, kind, help) in &FAMILIES[..16] {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => unreachable!("{name}"),
        };
        assert!(
            text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")),
            "{name}: {text}"
        );
        assert!(sample(&text, name, "").is_some(), "{name}: {text}");
    }
}

#[test]
fn listener_handles_count_exactly_and_refine_the_totals() {
    let m = ListenerMetrics::new("unit-listener", false);
    let l = r#"listener="unit-listener""#;
    let accepted_before = value(CONNECTIONS_ACCEPTED, "");
    let refused_before = value(CONNECTIONS_REFUSED, "");

    m.accepted();
    m.accepted();
    let a = m.open();
    let b = m.open();
    assert_eq!(value(LISTENER_ACCEPTED, l), 2.0);
    assert_eq!(value(LISTENER_ACTIVE, l), 2.0);
    assert!(value(CONNECTIONS_ACCEPTED, "") >= accepted_before + 2.0);
    drop(a);
    assert_eq!(value(LISTENER_ACTIVE, l), 1.0);
    drop(b);
    assert_eq!(value(LISTENER_ACTIVE, l), 0.0);

    m.bytes(10, 250);
    m.bytes(5, 0);
    assert_eq!(value(LISTENER_RECEIVED_BYTES, l), 15.0);
    assert_eq!(value(LISTENER_SENT_BYTES, l), 250.0);

    m.refused("connection_limit", "max_connections");
    m.rejected("local_rate_limit", "rate");
    m.rejected("local_rate_limit", "rate");
    let rejections = |filter: &str, reason: &str| {
        value(
            FILTER_REJECTIONS,
            &format!(r#"{l},filter="{filter}",reason="{reason}""#),
        )
    };
    assert_eq!(rejections("connection_limit", "max_connections"), 1.0);
    assert_eq!(rejections("local_rate_limit", "rate"), 2.0);
    assert!(value(CONNECTIONS_REFUSED, "") > refused_before);

    m.local_response(503);
    m.local_response(503);
    m.local_response(404);
    let local = |status: &str| value(HTTP_LOCAL_RESPONSES, &format!(r#"{l},status="{status}""#));
    assert_eq!(local("503"), 2.0);
    assert_eq!(local("404"), 1.0);

    // A second handle for the same listener (a reload) counts on the same series.
    ListenerMetrics::new("unit-listener", false).accepted();
    assert_eq!(value(LISTENER_ACCEPTED, l), 3.0);
}

#[test]
fn the_unlabelled_guard_counts_the_total_only() {
    let before = value(CONNECTIONS_ACCEPTED, "");
    let guard = connection_accepted();
    assert!(value(CONNECTIONS_ACCEPTED, "") > before);
    assert!(value(CONNECTIONS_ACTIVE, "") >= 1.0);
    drop(guard);
}

#[test]
fn cluster_handles_count_exactly() {
    let m = ClusterMetrics::new("unit-cluster");
    let c = r#"cluster="unit-cluster""#;
    assert_eq!(value(BREAKER_STATE, c), f64::from(BREAKER_CLOSED));
    let failures_before = value(UPSTREAM_CONNECT_FAILURES, "");

    m.connect_failed();
    m.retry();
    m.retry();
    m.retry_budget_exhausted();
    m.breaker_state(BREAKER_OPEN);
    m.breaker_rejected();
    assert_eq!(value(CLUSTER_CONNECT_FAILURES, c), 1.0);
    assert_eq!(value(CLUSTER_RETRIES, c), 2.0);
    assert_eq!(value(CLUSTER_RETRY_BUDGET_EXHAUSTED, c), 1.0);
    assert_eq!(value(BREAKER_STATE, c), 1.0);
    assert_eq!(value(BREAKER_REJECTIONS, c), 1.0);
    assert!(value(UPSTREAM_CONNECT_FAILURES, "") > failures_before);
    m.breaker_state(BREAKER_HALF_OPEN);
    assert_eq!(value(BREAKER_STATE, c), 2.0);
}

#[test]
fn histograms_render_buckets_sum_and_count_in_seconds() {
    let m = ClusterMetrics::new("unit-histogram");
    m.connect_duration(Duration::from_millis(3));
    m.connect_duration(Duration::from_millis(3));
    m.connect_duration(Duration::from_secs(2));
    let text = render();
    let name = UPSTREAM_CONNECT_DURATION;
    assert!(
        text.contains(&format!("# TYPE {name} histogram\n")),
        "{text}"
    );
    let bucket = |le: &str| {
        sample(
            &text,
            &format!("{name}_bucket"),
            &format!(r#"cluster="unit-histogram",le="{le}""#),
        )
    };
    for le in BUCKETS {
        assert!(bucket(&le.to_string()).is_some(), "le={le}: {text}");
    }
    assert_eq!(bucket("0.0025"), Some(0.0));
    assert_eq!(bucket("0.005"), Some(2.0));
    assert_eq!(bucket("1"), Some(2.0));
    assert_eq!(bucket("2.5"), Some(3.0));
    assert_eq!(bucket("+Inf"), Some(3.0));
    let l = r#"cluster="unit-histogram""#;
    let sum = sample(&text, &format!("{name}_sum"), l).unwrap();
    assert!((sum - 2.006).abs() < 1e-9, "{sum}");
    assert_eq!(sample(&text, &format!("{name}_count"), l), Some(3.0));
}

#[test]
fn ingress_histograms_are_labelled_by_ingress() {
    binding_upgrade_duration("unit-ingress", Duration::from_micros(700));
    pool_checkout_duration("unit-ingress", Duration::from_micros(50));
    pool_checkout_duration("unit-ingress", Duration::from_micros(50));
    let i = r#"ingress="unit-ingress""#;
    let count = |name: &str| value(&format!("{name}_count"), i);
    assert_eq!(count(BINDING_UPGRADE_DURATION), 1.0);
    assert_eq!(count(POOL_CHECKOUT_DURATION), 2.0);
    assert_eq!(
        value(
            &format!("{BINDING_UPGRADE_DURATION}_bucket"),
            &format!(r#"{i},le="0.001""#)
        ),
        1.0
    );
}

#[test]
fn label_values_are_escaped_exactly() {
    // A quote, a lone backslash, a backslash before a quote, two backslashes, a newline.
    let name = "a\"b\\c\\\"d\\\\e\nf";
    ListenerMetrics::new(name, false).accepted();
    let text = handle().render();
    let want = r#"listener="a\"b\\c\\\"d\\\\e\nf""#;
    assert_eq!(sample(&text, LISTENER_ACCEPTED, want), Some(1.0), "{text}");
}

#[test]
fn control_path_functions_set_their_series() {
    // Other tests do not touch these two gauges.
    set_snapshot_version(41);
    set_snapshot_version(42);
    assert_eq!(value(SNAPSHOT_VERSION, ""), 42.0);
    set_discovered_endpoints(7);
    assert_eq!(value(DISCOVERED_ENDPOINTS, ""), 7.0);
    let before = value(CONFIG_REJECTED, "");
    config_rejected();
    assert!(value(CONFIG_REJECTED, "") > before);
}

#[test]
fn the_whole_text_parses() {
    ListenerMetrics::new("unit-parse", true).request_duration(Duration::from_millis(12));
    let text = render();
    for line in text.lines() {
        assert_ne!(
            prometheus_parse::LineInfo::parse(line),
            prometheus_parse::LineInfo::Ignored,
            "unparsable line {line:?} in\n{text}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let hist = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == HTTP_REQUEST_DURATION && s.labels.get("listener") == Some("unit-parse")
        })
        .unwrap_or_else(|| panic!("{text}"));
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("{hist:?}");
    };
    assert_eq!(buckets.len(), BUCKETS.len() + 1);
}

/// A tcp listener has no requests: it exports no request-duration histogram (17 empty buckets
/// per listener were half of a scrape with many discovered tcp endpoints), an http one does.
#[test]
fn only_http_listeners_export_the_request_duration_histogram() {
    let tcp = ListenerMetrics::new("unit-tcp-only", false);
    tcp.request_duration(Duration::from_millis(3));
    ListenerMetrics::new("unit-http-only", true);
    let text = render();
    let with = |listener: &str| {
        text.lines()
            .filter(|l| l.starts_with(HTTP_REQUEST_DURATION))
            .filter(|l| l.contains(&format!("listener=\"{listener}\"")))
            .count()
    };
    assert_eq!(with("unit-tcp-only"), 0, "{text}");
    assert_eq!(with("unit-http-only"), BUCKETS.len() + 1 + 2, "{text}");
}

#[cfg(target_os = "linux")]
#[test]
fn process_families_render_on_linux() {
    let text = render();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = sample(&text, name, "").unwrap_or_else(|| panic!("{name}: {text}"));
        assert!(v >= 0.0, "{name} {v}");
    }
    assert!(sample(&text, "process_resident_memory_bytes", "").unwrap() > 0.0);
    assert!(sample(&text, "process_start_time_seconds", "").unwrap() > 1.5e9);
}

#[test]
fn proc_files_are_parsed_and_missing_fields_left_out() {
    // A command name with spaces and a parenthesis; fields 14, 15, 22 are 250, 50, 12345.
    let stat = "4242 (bind gate) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 \
                12345 100000 2000 18446744073709551615";
    let parsed = process::parse_stat(stat).unwrap();
    assert_eq!(
        (parsed.utime, parsed.stime, parsed.starttime),
        (250, 50, 12345)
    );
    assert_eq!(process::parse_stat("4242 (short) S 1 2"), None);
    assert_eq!(
        process::parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
        Some(1_700_000_000)
    );
    assert_eq!(
        process::parse_rss("Name:\tbindgate\nVmRSS:\t   2048 kB\n"),
        Some(2048 * 1024)
    );
    assert_eq!(
        process::parse_max_fds(
            "Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 4096                 files\n"
        ),
        Some(1024)
    );
    assert_eq!(
        process::parse_max_fds("Max open files  unlimited  unlimited  files\n"),
        None
    );

    let mut out = String::new();
    process::write_families(
        &mut out,
        &Process {
            cpu_seconds: Some(3.0),
            open_fds: Some(12),
            ..Process::default()
        },
    );
    assert_eq!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time of the process, in seconds.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n\n\
         # HELP process_open_fds File descriptors the process has open.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds 12\n\n"
    );
}

#[test]
fn the_readme_documents_every_family() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split_once("## Metrics reference")
        .map(|(_, r)| r)
        .expect("README has a Metrics reference section");
    let names = FAMILIES.iter().map(|(n, _, _)| *n).chain([
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ]);
    for name in names {
        assert!(
            reference.contains(&format!("`{name}`")),
            "README misses `{name}`"
        );
    }
}
