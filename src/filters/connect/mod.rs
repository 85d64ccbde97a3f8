//! The connect stack of a cluster: `retry` (outermost: only failures before any byte went
//! upstream, within a retry budget), `circuit_breaker` (a cap on open upstream connections,
//! and fail-fast after consecutive failures), and the connect `timeout` of each attempt, around
//! the cluster's transport (a static dial, or a binding ingress's pool, multiplexer or dial).
//!
//! `Cluster::connect` calls the stack; nothing before it has touched the upstream, so every
//! layer here may fail or retry freely.

mod circuit_breaker;
mod retry;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;

pub use circuit_breaker::{Breaker, BreakerState, CircuitBreakerConfig, CircuitBreakerLayer};
pub use retry::{RetryPolicy, budget_for};
pub use timeout::ConnectTimeoutLayer;

use crate::config::RetryConfig;
use crate::retained::{Retained, StateKey};
use crate::telemetry::ClusterMetrics;
use crate::upstream::ConnectService;
#[cfg(test)]
use crate::upstream::{ConnectRequest, UpstreamConn, UpstreamError};

/// What a cluster's connect stack is built from.
pub struct ConnectStack<'a> {
    pub cluster: &'a str,
    pub retry: &'a RetryConfig,
    pub circuit_breaker: Option<&'a CircuitBreakerConfig>,
    /// Each attempt's limit, and what a timeout names (an address or the ingress's).
    pub timeout: Duration,
    pub timeout_addr: String,
    /// The cluster's series (retries, budget, breaker).
    pub metrics: Arc<ClusterMetrics>,
}

/// The stack and the breaker it holds (for views), built around `transport`.
pub fn build(
    spec: ConnectStack<'_>,
    transport: ConnectService,
    retained: &Retained,
) -> (ConnectService, Option<Arc<Breaker>>) {
    let budget = budget_for(spec.cluster, spec.retry, retained);
    let policy = RetryPolicy::new(spec.cluster, spec.retry, budget, spec.metrics.clone());
    let breaker = spec.circuit_breaker.map(|cfg| {
        retained.get_or_insert(
            StateKey::new("cluster/circuit_breaker", spec.cluster, cfg),
            || Breaker::new(spec.cluster, cfg, spec.metrics.clone()),
        )
    });
    let svc = ServiceBuilder::new()
        .retry(policy)
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .layer(ConnectTimeoutLayer::new(spec.timeout, spec.timeout_addr))
        .service(transport);
    (ConnectService::new(svc), breaker)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A transport that fails or succeeds as told, counting attempts.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails the first `failures` attempts (then succeeds with a connected loopback socket).
    pub fn scripted(failures: usize) -> (ConnectService, Arc<AtomicUsize>) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let svc = tower::service_fn(move |_r: ConnectRequest| {
            let n = a.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < failures {
                    return Err(refused());
                }
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                    .await
                    .unwrap();
                Ok(UpstreamConn::new(crate::upstream::UpstreamStream::Tcp(tcp)))
            }
        });
        (ConnectService::new(svc), attempts)
    }

    pub fn refused() -> UpstreamError {
        UpstreamError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
    }

    pub fn count(n: &Arc<AtomicUsize>) -> usize {
        n.load(Ordering::SeqCst)
    }
}
