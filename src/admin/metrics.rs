//! Process-wide counters, rendered in Prometheus text format at `/stats/prometheus` and `/metrics`.
//!
//! A fixed set of atomics: cheap on the data path (one relaxed add), no registry, no locks. The
//! metrics + exporter crates would add an HTTP server and a registry for a dozen numbers.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_refused: AtomicU64,
    pub upstream_connect_failures: AtomicU64,
    pub config_applied: AtomicU64,
    pub config_rejected: AtomicU64,
    pub snapshot_version: AtomicU64,
    pub discovery_polls: AtomicU64,
    pub discovery_failures: AtomicU64,
    pub discovered_endpoints: AtomicU64,
    pub listeners_failed: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    connections_accepted: AtomicU64::new(0),
    connections_active: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    upstream_connect_failures: AtomicU64::new(0),
    config_applied: AtomicU64::new(0),
    config_rejected: AtomicU64::new(0),
    snapshot_version: AtomicU64::new(0),
    discovery_polls: AtomicU64::new(0),
    discovery_failures: AtomicU64::new(0),
    discovered_endpoints: AtomicU64::new(0),
    listeners_failed: AtomicU64::new(0),
};

pub fn incr(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Decrements `connections_active` when dropped.
pub struct ActiveConnection(());

impl ActiveConnection {
    pub fn open() -> ActiveConnection {
        incr(&METRICS.connections_accepted);
        incr(&METRICS.connections_active);
        ActiveConnection(())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        METRICS.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn render() -> String {
    let m = &METRICS;
    let rows: [(&str, &str, &str, &AtomicU64); 11] = [
        (
            "bindgate_listeners_failed",
            "gauge",
            "Listeners of the snapshot in force that could not bind.",
            &m.listeners_failed,
        ),
        (
            "bindgate_connections_accepted_total",
            "counter",
            "Connections admitted by listeners.",
            &m.connections_accepted,
        ),
        (
            "bindgate_connections_active",
            "gauge",
            "Connections open now.",
            &m.connections_active,
        ),
        (
            "bindgate_connections_refused_total",
            "counter",
            "Connections refused by listener limits.",
            &m.connections_refused,
        ),
        (
            "bindgate_upstream_connect_failures_total",
            "counter",
            "Connections closed because the upstream could not be reached.",
            &m.upstream_connect_failures,
        ),
        (
            "bindgate_config_applied_total",
            "counter",
            "Snapshots applied.",
            &m.config_applied,
        ),
        (
            "bindgate_config_rejected_total",
            "counter",
            "Configuration updates rejected (the last good one stayed in force).",
            &m.config_rejected,
        ),
        (
            "bindgate_snapshot_version",
            "gauge",
            "Version of the snapshot in force.",
            &m.snapshot_version,
        ),
        (
            "bindgate_discovery_polls_total",
            "counter",
            "Bound-endpoint polls of the ngrok API.",
            &m.discovery_polls,
        ),
        (
            "bindgate_discovery_failures_total",
            "counter",
            "Failed bound-endpoint polls.",
            &m.discovery_failures,
        ),
        (
            "bindgate_discovered_endpoints",
            "gauge",
            "Bound endpoints in the last good discovery.",
            &m.discovered_endpoints,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    out
}
