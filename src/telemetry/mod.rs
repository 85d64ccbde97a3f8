//! Metrics: the process's Prometheus recorder (the `metrics` facade with
//! `metrics-exporter-prometheus`), the names of every family bindgate exports, and the small
//! handles the data and control paths count with.
//!
//! A leaf: it imports nothing from the rest of the crate, so any module may count without
//! depending on the admin server, which only renders [`render`]'s text at `/metrics`. There is no
//! exporter HTTP listener or push gateway.
//!
//! Handles are registered once (per listener, cluster, or for the process) and kept, so counting
//! on the hot path is an atomic add, not a registry lookup. Label values are configuration names,
//! filter names, reasons and status codes: bounded sets, never client addresses.

mod cluster;
mod listener;
mod process;
/// An error and its causes on one line, each cause left out when the text so far already says
/// it (many of this crate's errors quote their source in their own message, and hyper's
/// `Display` omits it): "admin server: bind 127.0.0.1:9901: Address already in use (os error
/// 98)", once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub use cluster::{BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, ClusterMetrics};
pub use listener::ListenerMetrics;

// The families that existed before the facade: unlabelled, registered at install so they render
// (as 0) before anything happened.
/// Gauge: listeners of the snapshot in force that could not bind.
pub const LISTENERS_FAILED: &str = "bindgate_listeners_failed";
/// Counter: connections admitted by listeners.
pub const CONNECTIONS_ACCEPTED: &str = "bindgate_connections_accepted_total";
/// Gauge: connections open now.
pub const CONNECTIONS_ACTIVE: &str = "bindgate_connections_active";
/// Counter: connections refused by listener limits (network filters).
pub const CONNECTIONS_REFUSED: &str = "bindgate_connections_refused_total";
/// Counter: connections closed because the upstream could not be reached.
pub const UPSTREAM_CONNECT_FAILURES: &str = "bindgate_upstream_connect_failures_total";
/// Counter: snapshots applied.
pub const CONFIG_APPLIED: &str = "bindgate_config_applied_total";
/// Counter: configuration updates rejected.
pub const CONFIG_REJECTED: &str = "bindgate_config_rejected_total";
/// Gauge: version of the snapshot in force.
pub const SNAPSHOT_VERSION: &str = "bindgate_snapshot_version";
/// Gauge: settings the config file changed that are read at start-up only (in force again
/// after a restart).
pub const CONFIG_RESTART_PENDING: &str = "bindgate_config_restart_pending";
/// Counter: access log lines that could not be written, by log (its path, `-` for stdout).
pub const ACCESS_LOG_LOST: &str = "bindgate_access_log_lines_lost_total";
/// Counter: bound-endpoint polls of the ngrok API.
pub const DISCOVERY_POLLS: &str = "bindgate_discovery_polls_total";
/// Counter: failed bound-endpoint polls.
pub const DISCOVERY_FAILURES: &str = "bindgate_discovery_failures_total";
/// Gauge: bound endpoints in the last good discovery.
pub const DISCOVERED_ENDPOINTS: &str = "bindgate_discovered_endpoints";
/// Gauge: Unix time of the last successful bound-endpoint poll (0 before the first).
pub const DISCOVERY_LAST_SUCCESS: &str = "bindgate_discovery_last_success_timestamp_seconds";
/// Gauge: 1 when discovery has stopped because the API refused the key.
pub const DISCOVERY_STOPPED: &str = "bindgate_discovery_stopped";
/// Counter: client certificate renewals that succeeded.
pub const CERT_RENEWALS: &str = "bindgate_client_certificate_renewals_total";
/// Counter: client certificate renewals that failed (API, key or state write).
pub const CERT_RENEWAL_FAILURES: &str = "bindgate_client_certificate_renewal_failures_total";
/// Gauge: expiry of the client certificate in force (registered or from `ngrok.identity_dir`),
/// in Unix seconds.
pub const CERT_EXPIRY: &str = "bindgate_client_certificate_expiry_timestamp_seconds";

// Labelled families: a series appears once its listener, cluster or ingress first counts.
/// Counter `{listener}`: connections admitted by this listener.
pub const LISTENER_ACCEPTED: &str = "bindgate_listener_connections_accepted_total";
/// Gauge `{listener}`: this listener's connections open now.
pub const LISTENER_ACTIVE: &str = "bindgate_listener_connections_active";
/// Counter `{listener}`: bytes received from clients.
pub const LISTENER_RECEIVED_BYTES: &str = "bindgate_listener_received_bytes_total";
/// Counter `{listener}`: bytes sent to clients.
pub const LISTENER_SENT_BYTES: &str = "bindgate_listener_sent_bytes_total";
/// Counter `{listener,filter,reason}`: connections or requests a filter turned away.
pub const FILTER_REJECTIONS: &str = "bindgate_filter_rejections_total";
/// Counter `{listener,status}`: HTTP answers bindgate gave itself (no upstream response).
pub const HTTP_LOCAL_RESPONSES: &str = "bindgate_http_local_responses_total";
/// Histogram `{listener}`: HTTP request durations, seconds.
pub const HTTP_REQUEST_DURATION: &str = "bindgate_http_request_duration_seconds";
/// Histogram `{cluster}`: time to an upstream connection, seconds.
pub const UPSTREAM_CONNECT_DURATION: &str = "bindgate_upstream_connect_duration_seconds";
/// Counter `{cluster}`: connections closed because this cluster could not be reached.
pub const CLUSTER_CONNECT_FAILURES: &str = "bindgate_cluster_connect_failures_total";
/// Counter `{cluster}`: connect attempts retried.
pub const CLUSTER_RETRIES: &str = "bindgate_cluster_retries_total";
/// Counter `{cluster}`: retries not made because the retry budget was spent.
pub const CLUSTER_RETRY_BUDGET_EXHAUSTED: &str = "bindgate_cluster_retry_budget_exhausted_total";
/// Gauge `{cluster}`: circuit breaker state, 0 closed, 1 open, 2 half open.
pub const BREAKER_STATE: &str = "bindgate_circuit_breaker_state";
/// Counter `{cluster}`: connects refused by an open circuit breaker.
pub const BREAKER_REJECTIONS: &str = "bindgate_circuit_breaker_rejections_total";
/// Histogram `{ingress}`: binding upgrades (`ConnRequest` to accepted `ConnResponse`), seconds.
pub const BINDING_UPGRADE_DURATION: &str = "bindgate_binding_upgrade_duration_seconds";
/// Histogram `{ingress}`: time to take a connection from the warm pool (or find none), seconds.
pub const POOL_CHECKOUT_DURATION: &str = "bindgate_pool_checkout_duration_seconds";
/// Counter `{source}`: client identities read from files (`identity_dir`, `client_cert`) that
/// were swapped in after a rotation.
pub const IDENTITY_ROTATIONS: &str = "bindgate_identity_rotations_total";
/// Counter `{source}`: rotated identity files refused (unreadable, half-written, mismatched).
pub const IDENTITY_REFUSED: &str = "bindgate_identity_refused_total";
/// Counter `{source,result}`: config source updates `applied` (ACKed) or `rejected` (NACKed).
pub const SOURCE_UPDATES: &str = "bindgate_config_source_updates_total";
/// Counter `{source,result}`: fetches of a config source: `changed` (a new document),
/// `unchanged` (a REST `304`, or the same content) or `failed`.
pub const SOURCE_FETCHES: &str = "bindgate_config_source_fetches_total";
/// Gauge `{source}`: Unix time of the config source's last applied update.
pub const SOURCE_LAST_SUCCESS: &str = "bindgate_config_source_last_success_timestamp_seconds";
/// Gauge `{source,kind}`: listeners and clusters in force from the config source.
pub const SOURCE_RESOURCES: &str = "bindgate_config_source_resources";

/// Upper bounds (seconds) of every histogram's buckets: 100 µs to 10 s, about 2.5× apart, so a
/// loopback hop and a slow cross-region dial both land in a bucket of their own.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A family's Prometheus type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family the recorder holds: name, type, help. Described at install; the README's
/// metrics reference lists each of them (a test checks).
pub const FAMILIES: [(&str, Kind, &str); 39] = [
    (
        LISTENERS_FAILED,
        Kind::Gauge,
        "Listeners of the snapshot in force that could not bind.",
    ),
    (
        CONNECTIONS_ACCEPTED,
        Kind::Counter,
        "Connections admitted by listeners.",
    ),
    (CONNECTIONS_ACTIVE, Kind::Gauge, "Connections open now."),
    (
        CONNECTIONS_REFUSED,
        Kind::Counter,
        "Connections refused by listener limits.",
    ),
    (
        UPSTREAM_CONNECT_FAILURES,
        Kind::Counter,
        "Connections closed because the upstream could not be reached.",
    ),
    (CONFIG_APPLIED, Kind::Counter, "Snapshots applied."),
    (
        CONFIG_REJECTED,
        Kind::Counter,
        "Configuration updates rejected (the last good one stayed in force).",
    ),
    (
        SNAPSHOT_VERSION,
        Kind::Gauge,
        "Version of the snapshot in force.",
    ),
    (
        DISCOVERY_POLLS,
        Kind::Counter,
        "Bound-endpoint polls of the ngrok API.",
    ),
    (
        DISCOVERY_FAILURES,
        Kind::Counter,
        "Failed bound-endpoint polls.",
    ),
    (
        DISCOVERED_ENDPOINTS,
        Kind::Gauge,
        "Bound endpoints in the last good discovery.",
    ),
    (
        DISCOVERY_LAST_SUCCESS,
        Kind::Gauge,
        "Unix time of the last successful bound-endpoint poll (0 before the first).",
    ),
    (
        DISCOVERY_STOPPED,
        Kind::Gauge,
        "1 when discovery has stopped because the API refused the key.",
    ),
    (
        CERT_RENEWALS,
        Kind::Counter,
        "Client certificate renewals that succeeded.",
    ),
    (
        CERT_RENEWAL_FAILURES,
        Kind::Counter,
        "Client certificate renewals that failed (API, key or state write).",
    ),
    (
        CERT_EXPIRY,
        Kind::Gauge,
        "Expiry of the client certificate in force (registered or from ngrok.identity_dir), in Unix seconds (0 without one).",
    ),
    (
        LISTENER_ACCEPTED,
        Kind::Counter,
        "Connections admitted, by listener.",
    ),
    (
        LISTENER_ACTIVE,
        Kind::Gauge,
        "Connections open now, by listener.",
    ),
    (
        LISTENER_RECEIVED_BYTES,
        Kind::Counter,
        "Bytes received from clients, by listener.",
    ),
    (
        LISTENER_SENT_BYTES,
        Kind::Counter,
        "Bytes sent to clients, by listener.",
    ),
    (
        FILTER_REJECTIONS,
        Kind::Counter,
        "Connections or requests turned away by a filter, by listener, filter and reason.",
    ),
    (
        HTTP_LOCAL_RESPONSES,
        Kind::Counter,
        "HTTP responses bindgate answered itself (not from the upstream), by listener and status.",
    ),
    (
        HTTP_REQUEST_DURATION,
        Kind::Histogram,
        "HTTP request durations in seconds, by listener.",
    ),
    (
        UPSTREAM_CONNECT_DURATION,
        Kind::Histogram,
        "Time to an upstream connection in seconds (retries included), by cluster.",
    ),
    (
        CLUSTER_CONNECT_FAILURES,
        Kind::Counter,
        "Connections closed because the upstream could not be reached, by cluster.",
    ),
    (
        CLUSTER_RETRIES,
        Kind::Counter,
        "Upstream connect attempts retried, by cluster.",
    ),
    (
        CLUSTER_RETRY_BUDGET_EXHAUSTED,
        Kind::Counter,
        "Retries not made because the retry budget was spent, by cluster.",
    ),
    (
        BREAKER_STATE,
        Kind::Gauge,
        "Circuit breaker state: 0 closed, 1 open, 2 half open.",
    ),
    (
        BREAKER_REJECTIONS,
        Kind::Counter,
        "Connects refused by an open circuit breaker, by cluster.",
    ),
    (
        BINDING_UPGRADE_DURATION,
        Kind::Histogram,
        "Binding upgrades (ConnRequest sent to ConnResponse accepted) in seconds, by ingress.",
    ),
    (
        POOL_CHECKOUT_DURATION,
        Kind::Histogram,
        "Time to take a connection from the warm pool, or find none, in seconds, by ingress.",
    ),
    (
        IDENTITY_ROTATIONS,
        Kind::Counter,
        "Client identities read from files that were swapped in after a rotation, by source.",
    ),
    (
        IDENTITY_REFUSED,
        Kind::Counter,
        "Rotated client identity files refused (unreadable, half-written, mismatched), by source.",
    ),
    (
        SOURCE_UPDATES,
        Kind::Counter,
        "Config source updates applied (ACKed) or rejected (NACKed), by source and result.",
    ),
    (
        SOURCE_FETCHES,
        Kind::Counter,
        "Fetches of a config source: changed, unchanged (304 or same content) or failed.",
    ),
    (
        SOURCE_LAST_SUCCESS,
        Kind::Gauge,
        "Unix time of the config source's last applied update.",
    ),
    (
        SOURCE_RESOURCES,
        Kind::Gauge,
        "Listeners and clusters in force from the config source, by kind.",
    ),
    (
        CONFIG_RESTART_PENDING,
        Kind::Gauge,
        "Settings the config file changed that are read at start-up only (they take effect at the next restart).",
    ),
    (
        ACCESS_LOG_LOST,
        Kind::Counter,
        "Access log lines that could not be written (a full disk, a missing directory, a queue full behind a slow disk), by log.",
    ),
];

/// The recorder, its handle, and the unlabelled series, registered once per process.
struct Telemetry {
    recorder: &'static PrometheusRecorder,
    handle: PrometheusHandle,
    totals: Totals,
}

/// The unlabelled series, kept so counting is an atomic add.
struct Totals {
    listeners_failed: Gauge,
    connections_accepted: Counter,
    connections_active: Gauge,
    connections_refused: Counter,
    upstream_connect_failures: Counter,
    config_applied: Counter,
    config_rejected: Counter,
    snapshot_version: Gauge,
    discovery_polls: Counter,
    discovery_failures: Counter,
    discovered_endpoints: Gauge,
    discovery_last_success: Gauge,
    discovery_stopped: Gauge,
    cert_renewals: Counter,
    cert_renewal_failures: Counter,
    cert_expiry: Gauge,
    restart_pending: Gauge,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

fn telemetry() -> &'static Telemetry {
    TELEMETRY.get_or_init(install)
}

/// Builds the recorder, registers every family, and installs it as the global recorder when no
/// other is (a test harness or an embedding program may have one): bindgate's own handles are
/// registered on this recorder directly, so they count and render either way.
fn install() -> Telemetry {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map(PrometheusBuilder::build_recorder)
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
    // One recorder for the life of the process, shared by the global slot and our handles.
    let recorder: &'static PrometheusRecorder = Box::leak(Box::new(recorder));
    let handle = recorder.handle();
    let totals = metrics::with_local_recorder(recorder, || {
        for (name, kind, help) in FAMILIES {
            match kind {
                Kind::Counter => metrics::describe_counter!(name, help),
                Kind::Gauge => metrics::describe_gauge!(name, help),
                Kind::Histogram => metrics::describe_histogram!(name, help),
            }
        }
        Totals {
            listeners_failed: metrics::gauge!(LISTENERS_FAILED),
            connections_accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
            connections_active: metrics::gauge!(CONNECTIONS_ACTIVE),
            connections_refused: metrics::counter!(CONNECTIONS_REFUSED),
            upstream_connect_failures: metrics::counter!(UPSTREAM_CONNECT_FAILURES),
            config_applied: metrics::counter!(CONFIG_APPLIED),
            config_rejected: metrics::counter!(CONFIG_REJECTED),
            snapshot_version: metrics::gauge!(SNAPSHOT_VERSION),
            discovery_polls: metrics::counter!(DISCOVERY_POLLS),
            discovery_failures: metrics::counter!(DISCOVERY_FAILURES),
            discovered_endpoints: metrics::gauge!(DISCOVERED_ENDPOINTS),
            discovery_last_success: metrics::gauge!(DISCOVERY_LAST_SUCCESS),
            discovery_stopped: metrics::gauge!(DISCOVERY_STOPPED),
            cert_renewals: metrics::counter!(CERT_RENEWALS),
            cert_renewal_failures: metrics::counter!(CERT_RENEWAL_FAILURES),
            cert_expiry: metrics::gauge!(CERT_EXPIRY),
            restart_pending: metrics::gauge!(CONFIG_RESTART_PENDING),
        }
    });
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a global metrics recorder was already installed; bindgate keeps its own");
    }
    spawn_upkeep(handle.clone());
    Telemetry {
        recorder,
        handle,
        totals,
    }
}

/// Histogram samples queue in the recorder until drained; a render drains them, and so does
/// this thread, so an unscraped process does not grow without bound.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("metrics upkeep thread not started (histograms drain at scrapes only): {e}");
    }
}

/// Runs `f` (which registers series with the `metrics` macros) against bindgate's recorder,
/// whether or not it is the global one.
fn register<T>(f: impl FnOnce() -> T) -> T {
    metrics::with_local_recorder(telemetry().recorder, f)
}

fn totals() -> &'static Totals {
    &telemetry().totals
}

/// A label value as the exporter needs it. The exporter escapes `"` and newlines but reads a
/// backslash as the start of an escape already made, so backslashes are doubled here; the text
/// then carries the value exactly (tests check `\"` and `\\`).
/// Built on an `Arc<str>`, so the per-call lookups clone it without copying.
fn label(value: &str) -> SharedString {
    SharedString::from(Arc::<str>::from(value.replace('\\', "\\\\")))
}

/// The process's Prometheus handle; the first call installs the recorder (once per process,
/// safe from any thread and any number of tests).
pub fn handle() -> &'static PrometheusHandle {
    &telemetry().handle
}

/// Prometheus text of every family, process metrics (`process_*`, Linux only) included.
pub fn render() -> String {
    let mut out = handle().render();
    process::render(&mut out);
    out
}

/// Counts one connection admitted (unlabelled) and holds it as active until the guard drops.
/// [`ListenerMetrics::accepted`] and [`ListenerMetrics::open`] do the same and count by
/// listener too.
pub fn connection_accepted() -> ActiveGuard {
    totals().connections_accepted.increment(1);
    ActiveGuard::new(None)
}

/// A connection refused by listener limits, counted without a listener label.
/// [`ListenerMetrics::refused`] does the same and counts by listener and filter too.
pub fn connection_refused() {
    totals().connections_refused.increment(1);
}

/// A connection closed because its upstream could not be reached (call once per connection,
/// after retries). [`ClusterMetrics::connect_failed`] does the same and counts by cluster too.
pub fn upstream_connect_failed() {
    totals().upstream_connect_failures.increment(1);
}

/// Listeners of the snapshot in force that could not bind.
pub fn set_listeners_failed(n: usize) {
    totals().listeners_failed.set(n as f64);
}

/// A snapshot was applied.
pub fn config_applied() {
    totals().config_applied.increment(1);
}

/// A configuration update was rejected (the last good one stays in force).
pub fn config_rejected() {
    totals().config_rejected.increment(1);
}

/// How many settings read at start-up the config file in force changed.
pub fn set_restart_pending(n: usize) {
    totals().restart_pending.set(n as f64);
}

/// The counter of an access log's lost lines (`log`: the file's path, `-` for stdout), taken
/// once by its writer: the series exists at 0 from the writer's start.
pub fn access_log_lost_counter(log: &str) -> metrics::Counter {
    register(|| metrics::counter!(ACCESS_LOG_LOST, "log" => label(log)))
}

/// The version of the snapshot in force.
pub fn set_snapshot_version(version: u64) {
    totals().snapshot_version.set(version as f64);
}

/// One bound-endpoint poll of the ngrok API started.
pub fn discovery_poll() {
    totals().discovery_polls.increment(1);
}

/// One bound-endpoint poll failed.
pub fn discovery_failed() {
    totals().discovery_failures.increment(1);
}

/// A client identity read from files was rotated (`source`: `identity_dir`, `client_cert`).
pub fn identity_rotated(source: &'static str) {
    register(|| metrics::counter!(IDENTITY_ROTATIONS, "source" => source)).increment(1);
}

/// Rotated identity files were refused.
pub fn identity_refused(source: &'static str) {
    register(|| metrics::counter!(IDENTITY_REFUSED, "source" => source)).increment(1);
}

/// A config source update was applied (`true`) or rejected.
pub fn source_update(source: &str, applied: bool) {
    let result = if applied { "applied" } else { "rejected" };
    register(|| metrics::counter!(SOURCE_UPDATES, "source" => label(source), "result" => result))
        .increment(1);
}

/// A config source was fetched: `changed`, `unchanged` or `failed`.
pub fn source_fetch(source: &str, result: &'static str) {
    register(|| metrics::counter!(SOURCE_FETCHES, "source" => label(source), "result" => result))
        .increment(1);
}

/// A config source's update was applied at `unix_seconds`, leaving these resources in force.
pub fn source_applied(source: &str, unix_seconds: i64, listeners: usize, clusters: usize) {
    register(|| metrics::gauge!(SOURCE_LAST_SUCCESS, "source" => label(source)))
        .set(unix_seconds as f64);
    for (kind, n) in [("listeners", listeners), ("clusters", clusters)] {
        register(|| metrics::gauge!(SOURCE_RESOURCES, "source" => label(source), "kind" => kind))
            .set(n as f64);
    }
}

/// Bound endpoints in the last good discovery.
pub fn set_discovered_endpoints(n: usize) {
    totals().discovered_endpoints.set(n as f64);
}

/// A bound-endpoint poll succeeded at `unix_seconds`.
pub fn discovery_succeeded(unix_seconds: i64) {
    totals().discovery_last_success.set(unix_seconds as f64);
}

/// Discovery has stopped: the API refused the key.
pub fn discovery_stopped() {
    totals().discovery_stopped.set(1.0);
}

/// One client certificate renewal ended, well or not.
pub fn certificate_renewal(succeeded: bool) {
    let t = totals();
    if succeeded {
        t.cert_renewals.increment(1);
    } else {
        t.cert_renewal_failures.increment(1);
    }
}

/// The registered client certificate in force expires at `unix_seconds`.
pub fn set_certificate_expiry(unix_seconds: i64) {
    totals().cert_expiry.set(unix_seconds as f64);
}

/// Records one binding upgrade on an established ingress connection (`ConnRequest` written to
/// `ConnResponse` accepted). Looks the series up by name on each call: one per upstream
/// connection, next to a network round trip.
pub fn binding_upgrade_duration(ingress: &str, d: Duration) {
    register(|| metrics::histogram!(BINDING_UPGRADE_DURATION, "ingress" => label(ingress)))
        .record(d);
}

/// Records one checkout of the warm pool, hit or miss. Looked up by name on each call, as
/// [`binding_upgrade_duration`].
pub fn pool_checkout_duration(ingress: &str, d: Duration) {
    register(|| metrics::histogram!(POOL_CHECKOUT_DURATION, "ingress" => label(ingress))).record(d);
}

/// A connection counted as active (`bindgate_connections_active`, and its listener's series when
/// it came from [`ListenerMetrics::open`]) until dropped.
#[must_use = "the connection counts as active until the guard is dropped"]
pub struct ActiveGuard {
    listener: Option<Gauge>,
}

impl ActiveGuard {
    fn new(listener: Option<Gauge>) -> ActiveGuard {
        totals().connections_active.increment(1.0);
        if let Some(g) = &listener {
            g.increment(1.0);
        }
        ActiveGuard { listener }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        totals().connections_active.decrement(1.0);
        if let Some(g) = &self.listener {
            g.decrement(1.0);
        }
    }
}

impl std::fmt::Debug for ActiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveGuard")
            .field("by_listener", &self.listener.is_some())
            .finish()
    }
}
