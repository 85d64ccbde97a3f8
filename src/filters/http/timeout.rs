//! Http `timeout`: how long the upstream may take to send its response headers, counted from
//! the end of the request (its last body byte forwarded), so a long upload is not a slow
//! upstream. Past it the client gets `504`. A route without this filter gets one with its
//! listener's `request_timeout` (default 60s): every request has a deadline.

use std::convert::Infallible;

use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService, RequestInfo, answer};
use crate::config::HumanDuration;
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTimeout {
    /// From the end of the request until the response headers arrive.
    pub request: HumanDuration,
}

impl HttpFilter for RequestTimeout {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        if self.request.get().is_zero() {
            return vec![("request".into(), "must be more than 0s".into())];
        }
        Vec::new()
    }

    fn layer(&self, inner: HttpService, _ctx: &BuildCtx<'_>) -> HttpService {
        HttpService::new(TimeoutLayer::new(self.request.get()).layer(inner))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

crate::filters::around_layer!(TimeoutLayer => TimeoutService, Request<RequestBody>, Response<ProxyBody>);

impl TimeoutLayer {
    fn around<S>(
        &self,
        next: S,
        mut req: Request<RequestBody>,
    ) -> BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>
    where
        S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send,
    {
        let after = self.after;
        let mut sent = req.body_mut().on_sent();
        let cluster = req
            .extensions()
            .get::<RequestInfo>()
            .map(|i| i.cluster.clone());
        let response = next.oneshot(req);
        Box::pin(async move {
            tokio::pin!(response);
            tokio::select! {
                r = &mut response => return r,
                _ = sent.wait() => {}
            }
            match tokio::time::timeout(after, response).await {
                Ok(r) => r,
                Err(_) => {
                    let cluster = cluster.as_deref().unwrap_or("");
                    tracing::warn!(%cluster, "no response within {after:?}, answering 504");
                    Ok(answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        format!("bindgate: cluster `{cluster}` did not answer within {after:?}\n"),
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::testing::request;

    #[tokio::test(start_paused = true)]
    async fn a_slow_upstream_gets_504_after_the_request_was_sent() {
        let slow = tower::service_fn(|_req: Request<RequestBody>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, Infallible>(Response::new(ProxyBody::local("late")))
        });
        let svc = TimeoutLayer::new(Duration::from_secs(3)).layer(slow);
        let start = tokio::time::Instant::now();
        let resp = svc.oneshot(request("")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes() {
        let quick = tower::service_fn(|_req: Request<RequestBody>| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Infallible>(Response::new(ProxyBody::local("ok")))
        });
        let svc = TimeoutLayer::new(Duration::from_secs(3)).layer(quick);
        assert_eq!(
            svc.oneshot(request("x")).await.unwrap().status(),
            StatusCode::OK
        );
    }
}
