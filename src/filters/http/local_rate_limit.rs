//! Http `local_rate_limit`: caps the request rate of a route with a token bucket, for the whole
//! route or (`per_source_ip`) per client address. A request over the rate gets `429 Too Many
//! Requests` with `Retry-After` and never reaches the upstream.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService, RequestInfo, too_many_requests};
use crate::filters::rate::TokenBucket;
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRateLimit {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests admitted at once above the rate (default: `requests_per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per client address (IPv6: per /64) instead of one for the route; the table
    /// is bounded and pruned.
    #[serde(default)]
    pub per_source_ip: bool,
}

impl HttpRateLimit {
    fn bucket(&self) -> Option<TokenBucket> {
        let rate = NonZeroU32::new(self.requests_per_second)?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.requests_per_second))?;
        Some(TokenBucket::new(rate, burst, self.per_source_ip))
    }
}

impl HttpFilter for HttpRateLimit {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        let mut issues = Vec::new();
        if self.requests_per_second == 0 {
            issues.push(("requests_per_second".into(), "must be at least 1".into()));
        }
        if self.burst == Some(0) {
            issues.push(("burst".into(), "must be at least 1".into()));
        }
        issues
    }

    fn layer(&self, inner: HttpService, ctx: &BuildCtx<'_>) -> HttpService {
        let Some(bucket) = self.bucket() else {
            return inner; // refused by `check`; never built
        };
        let bucket = ctx.state("http/local_rate_limit", self, || bucket);
        HttpService::new(HttpRateLimitLayer { bucket }.layer(inner))
    }
}

#[derive(Clone)]
pub struct HttpRateLimitLayer {
    pub bucket: Arc<TokenBucket>,
}

crate::filters::around_layer!(HttpRateLimitLayer => HttpRateLimitService, Request<RequestBody>, Response<ProxyBody>);

impl HttpRateLimitLayer {
    fn around<S>(
        &self,
        next: S,
        req: Request<RequestBody>,
    ) -> BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>
    where
        S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send,
    {
        let client = req
            .extensions()
            .get::<RequestInfo>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |i| i.peer.ip());
        match self.bucket.check(client) {
            Ok(()) => Box::pin(next.oneshot(req)),
            Err(wait) => {
                Box::pin(async move { Ok(too_many_requests("rejected:local_rate_limit", wait)) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::testing::{echo_leaf, reached, request};

    #[tokio::test]
    async fn over_the_rate_gets_429_with_retry_after() {
        let cfg = HttpRateLimit {
            requests_per_second: 1,
            burst: Some(2),
            per_source_ip: false,
        };
        let (leaf, n) = echo_leaf();
        let svc = HttpRateLimitLayer {
            bucket: Arc::new(cfg.bucket().unwrap()),
        }
        .layer(leaf);
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..3 {
            let r = svc.clone().oneshot(request("")).await.unwrap();
            statuses.push(r.status().as_u16());
            if let Some(v) = r.headers().get(http::header::RETRY_AFTER) {
                retry_after = Some(v.to_str().unwrap().to_owned());
            }
        }
        assert_eq!(statuses, [200, 200, 429]);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(reached(&n), 2);
    }
}
