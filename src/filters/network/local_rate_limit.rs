//! Network `local_rate_limit`: caps the rate of new connections with a token bucket, for the
//! whole listener or (`per_source_ip`) per client address. A connection over the rate is turned
//! away at accept (http listeners: `503` with `Retry-After`).

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{Conn, ConnOutcome, ConnService, NetworkFilter};
use crate::filters::rate::TokenBucket;
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRateLimit {
    /// Sustained rate of new connections admitted per second.
    pub connections_per_second: u32,
    /// Connections admitted at once above the rate (default: `connections_per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per client address (IPv6: per /64) instead of one for the listener; the
    /// table is bounded and pruned.
    #[serde(default)]
    pub per_source_ip: bool,
}

impl NetworkRateLimit {
    fn bucket(&self) -> Option<TokenBucket> {
        let rate = NonZeroU32::new(self.connections_per_second)?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.connections_per_second))?;
        Some(TokenBucket::new(rate, burst, self.per_source_ip))
    }
}

impl NetworkFilter for NetworkRateLimit {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        let mut issues = Vec::new();
        if self.connections_per_second == 0 {
            issues.push(("connections_per_second".into(), "must be at least 1".into()));
        }
        if self.burst == Some(0) {
            issues.push(("burst".into(), "must be at least 1".into()));
        }
        issues
    }

    fn layer(&self, inner: ConnService, ctx: &BuildCtx<'_>) -> ConnService {
        let Some(bucket) = self.bucket() else {
            return inner; // refused by `check`; never built
        };
        let bucket = ctx.state("network/local_rate_limit", self, || bucket);
        ConnService::new(NetworkRateLimitLayer { bucket }.layer(inner))
    }
}

#[derive(Clone)]
pub struct NetworkRateLimitLayer {
    pub bucket: Arc<TokenBucket>,
}

crate::filters::around_layer!(NetworkRateLimitLayer => NetworkRateLimitService, Conn, ConnOutcome);

impl NetworkRateLimitLayer {
    fn around<S>(&self, next: S, conn: Conn) -> BoxFuture<'static, Result<ConnOutcome, Infallible>>
    where
        S: Service<Conn, Response = ConnOutcome, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let verdict = self.bucket.check(conn.peer.ip());
        let inner = next;
        Box::pin(async move {
            match verdict {
                Ok(()) => inner.oneshot(conn).await,
                Err(wait) => Ok(conn
                    .reject("local_rate_limit", "connection rate exceeded", Some(wait))
                    .await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::filters::network::Outcome;
    use crate::filters::network::testing::{conn_pair_from, counting_leaf};
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn per_source_ip_isolates_clients() {
        let cfg = NetworkRateLimit {
            connections_per_second: 1,
            burst: Some(2),
            per_source_ip: true,
        };
        let (leaf, reached) = counting_leaf();
        let svc = NetworkRateLimitLayer {
            bucket: Arc::new(cfg.bucket().unwrap()),
        }
        .layer(leaf);
        let mut outcomes = Vec::new();
        for from in [
            "127.0.0.2:1",
            "127.0.0.2:2",
            "127.0.0.2:3",
            "127.0.0.3:1",
            "127.0.0.3:2",
        ] {
            let (c, _k) = conn_pair_from(Protocol::Tcp, Some(from.parse().unwrap())).await;
            outcomes.push(svc.clone().oneshot(c).await.unwrap().outcome);
        }
        let rejected = Outcome::Rejected {
            filter: "local_rate_limit",
            reason: "connection rate exceeded",
        };
        assert_eq!(
            outcomes,
            [Outcome::Ok, Outcome::Ok, rejected, Outcome::Ok, Outcome::Ok]
        );
        assert_eq!(reached.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn zero_rate_is_refused_by_field() {
        let cfg = NetworkRateLimit {
            connections_per_second: 0,
            burst: Some(0),
            per_source_ip: false,
        };
        let fields: Vec<String> = cfg
            .check(&CheckCtx::any())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["connections_per_second", "burst"]);
    }
}
