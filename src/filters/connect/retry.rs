//! `retry`: a failed connect is tried again, up to `attempts` in all, with exponential backoff
//! and equal jitter, while the cluster's retry budget allows. Nothing has reached the upstream
//! before the connect stack returns, so every failure here is safe to retry; an open circuit
//! breaker is not retried (it already decided).
//!
//! The budget is tower's `TpsBudget`: each connection deposits, each retry withdraws; retries may
//! add `budget_percent` of the connection rate, plus a floor of 1 per second (10 over the
//! budget's 10 s window) so an idle proxy can still retry its first failures. It is retained
//! across reloads by cluster name and retry config.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::RetryConfig;
use crate::retained::{Retained, StateKey};
use crate::telemetry::ClusterMetrics;
use crate::upstream::{ConnectRequest, UpstreamConn, UpstreamError};

/// The window the budget remembers deposits for.
const BUDGET_TTL: Duration = Duration::from_secs(10);
/// Retries per second allowed whatever the traffic.
const BUDGET_FLOOR_PER_SEC: u32 = 1;

/// The cluster's budget, retained across reloads while its retry config is unchanged.
pub fn budget_for(cluster: &str, cfg: &RetryConfig, retained: &Retained) -> Arc<TpsBudget> {
    retained.get_or_insert(StateKey::new("cluster/retry_budget", cluster, cfg), || {
        TpsBudget::new(
            BUDGET_TTL,
            BUDGET_FLOOR_PER_SEC,
            cfg.budget_percent as f32 / 100.0,
        )
    })
}

/// One connection's retry state (cloned per connection from the cluster's policy).
#[derive(Clone)]
pub struct RetryPolicy {
    cluster: Arc<str>,
    attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    budget: Arc<TpsBudget>,
    metrics: Arc<ClusterMetrics>,
    /// Attempts made so far by this connection.
    tried: u32,
    deposited: bool,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("base_backoff", &self.base_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    pub fn new(
        cluster: &str,
        cfg: &RetryConfig,
        budget: Arc<TpsBudget>,
        metrics: Arc<ClusterMetrics>,
    ) -> Self {
        RetryPolicy {
            cluster: Arc::from(cluster),
            attempts: cfg.attempts.max(1),
            base_backoff: cfg.base_backoff.get(),
            max_backoff: cfg.max_backoff.get(),
            budget,
            metrics,
            tried: 0,
            deposited: false,
        }
    }

    /// Backoff before retry number `retry` (1-based): half fixed, half random ("equal jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        };
        half + Duration::from_millis(jitter)
    }
}

impl Policy<ConnectRequest, UpstreamConn, UpstreamError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut ConnectRequest,
        result: &mut Result<UpstreamConn, UpstreamError>,
    ) -> Option<Self::Future> {
        let e = match result {
            Ok(_) | Err(UpstreamError::CircuitOpen { .. }) => return None,
            Err(e) => e,
        };
        self.tried += 1;
        if self.tried >= self.attempts {
            return None;
        }
        if !self.budget.withdraw() {
            self.metrics.retry_budget_exhausted();
            tracing::debug!(cluster = %self.cluster, "retry budget exhausted, not retrying: {e}");
            return None;
        }
        self.metrics.retry();
        let wait = self.backoff(self.tried);
        tracing::debug!(cluster = %self.cluster, retry = self.tried, ?wait, "upstream connect failed, retrying: {e}");
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, _req: &ConnectRequest) -> Option<ConnectRequest> {
        // Called once when the connection starts, then once per retry: deposit only once.
        if !self.deposited {
            self.deposited = true;
            self.budget.deposit();
        }
        Some(ConnectRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::filters::connect::testing::{count, scripted};
    use tower::Layer;
    use tower::ServiceExt;
    use tower::retry::RetryLayer;

    fn cfg(attempts: u32, budget: u32) -> RetryConfig {
        RetryConfig {
            attempts,
            base_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_millis(1000),
            budget_percent: budget,
        }
    }

    fn metrics() -> Arc<ClusterMetrics> {
        Arc::new(ClusterMetrics::new("c"))
    }

    fn policy(attempts: u32, budget: u32) -> RetryPolicy {
        let c = cfg(attempts, budget);
        RetryPolicy::new("c", &c, budget_for("c", &c, &Retained::new()), metrics())
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let p = policy(5, 20);
        for (retry, cap) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let b = p.backoff(retry).as_millis() as u64;
            assert!(
                b >= cap / 2 && b <= cap,
                "retry {retry}: {b}ms not in [{}, {cap}]",
                cap / 2
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_bound_the_tries() {
        let (transport, tried) = scripted(usize::MAX);
        let svc = RetryLayer::new(policy(3, 20)).layer(transport);
        assert!(svc.oneshot(ConnectRequest).await.is_err());
        assert_eq!(count(&tried), 3);
        let (transport, tried) = scripted(2);
        let svc = RetryLayer::new(policy(3, 20)).layer(transport);
        assert!(svc.oneshot(ConnectRequest).await.is_ok());
        assert_eq!(count(&tried), 3);
        let (transport, tried) = scripted(usize::MAX);
        let svc = RetryLayer::new(policy(1, 20)).layer(transport);
        assert!(svc.oneshot(ConnectRequest).await.is_err());
        assert_eq!(count(&tried), 1, "attempts: 1 means no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_runs_out_and_is_retained_across_builds() {
        let store = Retained::new();
        let c = cfg(100, 0);
        // With no traffic credit (0%), only the floor of 10 retries is there.
        let (transport, tried) = scripted(usize::MAX);
        let p = RetryPolicy::new("c", &c, budget_for("c", &c, &store), metrics());
        let svc = RetryLayer::new(p).layer(transport);
        assert!(svc.oneshot(ConnectRequest).await.is_err());
        assert_eq!(count(&tried), 11, "1 try + the 10 retries of the floor");
        store.commit();
        // A rebuild with the same config gets the same (spent) budget: no retry at all.
        let (transport, tried) = scripted(usize::MAX);
        let p = RetryPolicy::new("c", &c, budget_for("c", &c, &store), metrics());
        let svc = RetryLayer::new(p).layer(transport);
        assert!(svc.oneshot(ConnectRequest).await.is_err());
        assert_eq!(count(&tried), 1);
    }
}
