//! `circuit_breaker`: protects a failing upstream and the proxy from each other.
//! - `max_connections`: upstream connections open at once; a connect over it fails fast.
//! - after `consecutive_failures` failed connects the breaker opens: connects fail fast for
//!   `cool_down`; then one probe is let through (half-open): its success closes the breaker,
//!   its failure opens it for another `cool_down`.
//!
//! The state is retained across reloads by cluster name and config, and shown in `/clusters`,
//! `bindgate status` and `bindgate_circuit_breaker_state`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::config::HumanDuration;
use crate::telemetry::ClusterMetrics;
use crate::upstream::{ConnectRequest, UpstreamConn, UpstreamError};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Upstream connections open at once (default 1024); a connect over it fails fast.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Failed connects in a row that open the breaker (default 5).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long an open breaker fails connects fast before letting one probe through
    /// (default 10s).
    #[serde(default = "default_cool_down")]
    pub cool_down: HumanDuration,
}

fn default_max_connections() -> u32 {
    1024
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_cool_down() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl CircuitBreakerConfig {
    /// Problems by field (under `circuit_breaker`).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.max_connections == 0 {
            issues.push(("max_connections".into(), "must be at least 1".into()));
        }
        if self.consecutive_failures == 0 {
            issues.push(("consecutive_failures".into(), "must be at least 1".into()));
        }
        if self.cool_down.get().is_zero() {
            issues.push(("cool_down".into(), "must be more than 0s".into()));
        }
        issues
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// One cluster's breaker.
pub struct Breaker {
    cluster: Arc<str>,
    metrics: Arc<ClusterMetrics>,
    max_connections: u32,
    threshold: u32,
    cool_down: Duration,
    open_connections: Arc<Semaphore>,
    state: AtomicU8,
    failures: AtomicU32,
    origin: Instant,
    /// When it last opened, in ms since `origin`.
    opened_at_ms: AtomicU64,
    opened_total: AtomicU64,
    rejected_total: AtomicU64,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("cluster", &self.cluster)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub fn new(cluster: &str, cfg: &CircuitBreakerConfig, metrics: Arc<ClusterMetrics>) -> Self {
        metrics.breaker_state(BreakerState::Closed as u8);
        Breaker {
            metrics,
            cluster: Arc::from(cluster),
            max_connections: cfg.max_connections,
            threshold: cfg.consecutive_failures.max(1),
            cool_down: cfg.cool_down.get(),
            open_connections: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            state: AtomicU8::new(BreakerState::Closed as u8),
            failures: AtomicU32::new(0),
            origin: Instant::now(),
            opened_at_ms: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn set(&self, s: BreakerState) {
        self.state.store(s as u8, Ordering::Release);
        self.metrics.breaker_state(s as u8);
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn open(&self) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        if self.state() != BreakerState::Open {
            tracing::warn!(cluster = %self.cluster, failures = self.failures.load(Ordering::Relaxed), "circuit breaker open: failing connects fast for {:?}", self.cool_down);
        }
        self.set(BreakerState::Open);
    }

    /// Whether a connect may go ahead: `Ok(probe)` (`probe`: it is the half-open probe).
    fn admit(&self) -> Result<bool, &'static str> {
        match self.state() {
            BreakerState::Closed => Ok(false),
            BreakerState::HalfOpen => Err("circuit open (a probe is in flight)"),
            BreakerState::Open => {
                let since = self
                    .now_ms()
                    .saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
                if since < self.cool_down.as_millis() as u64 {
                    return Err("circuit open");
                }
                // The first caller after the cool-down probes; the others still fail fast.
                match self.state.compare_exchange(
                    BreakerState::Open as u8,
                    BreakerState::HalfOpen as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.metrics.breaker_state(BreakerState::HalfOpen as u8);
                        Ok(true)
                    }
                    Err(_) => Err("circuit open (a probe is in flight)"),
                }
            }
        }
    }

    fn record(&self, ok: bool, probe: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            if probe || self.state() != BreakerState::Closed {
                tracing::info!(cluster = %self.cluster, "circuit breaker closed: the upstream answered");
                self.set(BreakerState::Closed);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if probe || (self.state() == BreakerState::Closed && failures >= self.threshold) {
            self.open();
        }
    }

    fn reject(&self, why: &'static str) -> UpstreamError {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.breaker_rejected();
        UpstreamError::CircuitOpen {
            cluster: self.cluster.to_string(),
            reason: why,
        }
    }

    /// For `/clusters`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "consecutive_failures": self.failures.load(Ordering::Relaxed),
            "open_connections": self.max_connections as usize - self.open_connections.available_permits(),
            "max_connections": self.max_connections,
            "opened_total": self.opened_total.load(Ordering::Relaxed),
            "rejected_total": self.rejected_total.load(Ordering::Relaxed),
        })
    }
}

impl crate::upstream::ConnectView for Breaker {
    fn describe(&self) -> serde_json::Value {
        Breaker::describe(self)
    }
}

/// The breaker around each connect attempt (no breaker: passes through).
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Option<Arc<Breaker>>,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: Option<Arc<Breaker>>) -> Self {
        CircuitBreakerLayer { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Option<Arc<Breaker>>,
}

impl<S> Service<ConnectRequest> for CircuitBreaker<S>
where
    S: Service<ConnectRequest, Response = UpstreamConn, Error = UpstreamError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = UpstreamConn;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<UpstreamConn, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ConnectRequest) -> Self::Future {
        let inner = self.inner.clone();
        let Some(breaker) = self.breaker.clone() else {
            return Box::pin(inner.oneshot(req));
        };
        Box::pin(async move {
            let permit = match breaker.open_connections.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => return Err(breaker.reject("max_connections reached")),
            };
            let probe = match breaker.admit() {
                Ok(probe) => probe,
                Err(why) => return Err(breaker.reject(why)),
            };
            let result = inner.oneshot(req).await;
            breaker.record(result.is_ok(), probe);
            result.map(|conn| conn.holding(permit))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::connect::testing::{count, scripted};

    fn breaker(max: u32, failures: u32, cool_down_s: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "c",
            &CircuitBreakerConfig {
                max_connections: max,
                consecutive_failures: failures,
                cool_down: HumanDuration::from_secs(cool_down_s),
            },
            Arc::new(ClusterMetrics::new("c")),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_after_the_cool_down() {
        let b = breaker(10, 3, 10);
        let (transport, tried) = scripted(4);
        let svc = CircuitBreakerLayer::new(Some(b.clone())).layer(transport);
        for _ in 0..3 {
            let e = svc.clone().oneshot(ConnectRequest).await.err().unwrap();
            assert!(matches!(e, UpstreamError::Connect { .. }));
        }
        assert_eq!(b.state(), BreakerState::Open);
        let e = svc.clone().oneshot(ConnectRequest).await.err().unwrap();
        assert!(matches!(e, UpstreamError::CircuitOpen { .. }), "{e}");
        assert_eq!(count(&tried), 3, "fail fast: the transport was not tried");
        tokio::time::advance(Duration::from_secs(10)).await;
        // The probe fails (4th failure of the script): open again for another cool-down.
        assert!(svc.clone().oneshot(ConnectRequest).await.is_err());
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(
            svc.clone().oneshot(ConnectRequest).await.err().unwrap(),
            UpstreamError::CircuitOpen { .. }
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(svc.clone().oneshot(ConnectRequest).await.is_ok());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(count(&tried), 5);
    }

    #[tokio::test]
    async fn max_connections_caps_open_upstream_connections() {
        let b = breaker(1, 5, 10);
        let (transport, _) = scripted(0);
        let svc = CircuitBreakerLayer::new(Some(b.clone())).layer(transport);
        let held = svc.clone().oneshot(ConnectRequest).await.unwrap();
        let e = svc.clone().oneshot(ConnectRequest).await.err().unwrap();
        assert!(
            matches!(
                e,
                UpstreamError::CircuitOpen {
                    reason: "max_connections reached",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a full cap does not open the breaker"
        );
        drop(held);
        assert!(svc.oneshot(ConnectRequest).await.is_ok());
    }
}
