//! Per-cluster series: built once per cluster, counted on each upstream connect.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::{
    BREAKER_REJECTIONS, BREAKER_STATE, CLUSTER_CONNECT_FAILURES, CLUSTER_RETRIES,
    CLUSTER_RETRY_BUDGET_EXHAUSTED, UPSTREAM_CONNECT_DURATION, label, register, totals,
};

/// A cluster's series, labelled `cluster="<name>"`.
#[derive(Clone)]
pub struct ClusterMetrics {
    connect_duration: Histogram,
    connect_failures: Counter,
    retries: Counter,
    budget_exhausted: Counter,
    breaker_state: Gauge,
    breaker_rejections: Counter,
}

/// [`ClusterMetrics::breaker_state`]: connects pass.
pub const BREAKER_CLOSED: u8 = 0;
/// [`ClusterMetrics::breaker_state`]: connects are refused until the cool-down ends.
pub const BREAKER_OPEN: u8 = 1;
/// [`ClusterMetrics::breaker_state`]: a trial connect decides between closed and open.
pub const BREAKER_HALF_OPEN: u8 = 2;

impl ClusterMetrics {
    /// Registers the cluster's series; the breaker state starts closed.
    pub fn new(cluster: &str) -> ClusterMetrics {
        let cluster = label(cluster);
        register(|| ClusterMetrics {
            connect_duration: metrics::histogram!(
                UPSTREAM_CONNECT_DURATION, "cluster" => cluster.clone()
            ),
            connect_failures: metrics::counter!(
                CLUSTER_CONNECT_FAILURES, "cluster" => cluster.clone()
            ),
            retries: metrics::counter!(CLUSTER_RETRIES, "cluster" => cluster.clone()),
            budget_exhausted: metrics::counter!(
                CLUSTER_RETRY_BUDGET_EXHAUSTED, "cluster" => cluster.clone()
            ),
            breaker_state: metrics::gauge!(BREAKER_STATE, "cluster" => cluster.clone()),
            breaker_rejections: metrics::counter!(BREAKER_REJECTIONS, "cluster" => cluster),
        })
    }

    /// A connection reached its upstream after `d` (every attempt and backoff included).
    pub fn connect_duration(&self, d: Duration) {
        self.connect_duration.record(d);
    }

    /// A client connection given up because the upstream could not be reached (once per
    /// connection, after retries): by cluster and in `bindgate_upstream_connect_failures_total`.
    pub fn connect_failed(&self) {
        self.connect_failures.increment(1);
        totals().upstream_connect_failures.increment(1);
    }

    /// A failed connect attempt is tried again.
    pub fn retry(&self) {
        self.retries.increment(1);
    }

    /// A failed attempt is not retried because the retry budget is spent.
    pub fn retry_budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    /// The circuit breaker moved to `state`: [`BREAKER_CLOSED`], [`BREAKER_OPEN`] or
    /// [`BREAKER_HALF_OPEN`].
    pub fn breaker_state(&self, state: u8) {
        self.breaker_state.set(f64::from(state));
    }

    /// A connect refused at once because the breaker is open.
    pub fn breaker_rejected(&self) {
        self.breaker_rejections.increment(1);
    }
}

impl std::fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMetrics").finish_non_exhaustive()
    }
}
