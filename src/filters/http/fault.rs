//! `fault`: injects failures to test how clients cope. `delay` holds a share of requests before
//! forwarding them; `abort` answers a share with a status instead of forwarding. Each draws
//! its own chance per request; a delayed request may also be aborted (after its delay).

use std::convert::Infallible;

use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService, answer};
use crate::config::HumanDuration;
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer with `status` instead of forwarding, for `percent` of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Wait `duration` before forwarding, for `percent` of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The status to answer, 200 to 599.
    pub status: u16,
    /// Share of requests, 0 to 100 (fractions allowed).
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub duration: HumanDuration,
    /// Share of requests, 0 to 100 (fractions allowed).
    pub percent: f64,
}

fn check_percent(field: &str, p: f64, issues: &mut Vec<FilterIssue>) {
    if !(0.0..=100.0).contains(&p) {
        issues.push((
            field.into(),
            format!("{p} is not a percentage from 0 to 100"),
        ));
    }
}

impl HttpFilter for Fault {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        let mut issues = Vec::new();
        if let Some(a) = &self.abort {
            if !(200..=599).contains(&a.status) {
                issues.push((
                    "abort.status".into(),
                    format!("{} is not a status from 200 to 599", a.status),
                ));
            }
            check_percent("abort.percent", a.percent, &mut issues);
        }
        if let Some(d) = &self.delay {
            check_percent("delay.percent", d.percent, &mut issues);
        }
        if self.abort.is_none() && self.delay.is_none() {
            issues.push((String::new(), "set `abort`, `delay` or both".into()));
        }
        issues
    }

    fn layer(&self, inner: HttpService, _ctx: &BuildCtx<'_>) -> HttpService {
        HttpService::new(
            FaultLayer {
                abort: self
                    .abort
                    .as_ref()
                    .and_then(|a| Some((StatusCode::from_u16(a.status).ok()?, a.percent))),
                delay: self.delay.as_ref().map(|d| (d.duration.get(), d.percent)),
            }
            .layer(inner),
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FaultLayer {
    pub abort: Option<(StatusCode, f64)>,
    pub delay: Option<(Duration, f64)>,
}

crate::filters::around_layer!(FaultLayer => FaultService, Request<RequestBody>, Response<ProxyBody>);

impl FaultLayer {
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
        let delay = self.delay.filter(|(_, p)| chance(*p)).map(|(d, _)| d);
        let abort = self.abort.filter(|(_, p)| chance(*p)).map(|(s, _)| s);
        let inner = next;
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if let Some(status) = abort {
                return Ok(answer(status, "fault", "bindgate: fault injected\n"));
            }
            inner.oneshot(req).await
        })
    }
}

/// Whether a request falls in `percent`: 0 never, 100 always.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::rng().random_range(0.0..100.0) < percent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::testing::{echo_leaf, reached, request};

    #[tokio::test]
    async fn abort_at_100_and_0_percent() {
        let (leaf, n) = echo_leaf();
        let always = FaultLayer {
            abort: Some((StatusCode::SERVICE_UNAVAILABLE, 100.0)),
            delay: None,
        }
        .layer(leaf.clone());
        let never = FaultLayer {
            abort: Some((StatusCode::SERVICE_UNAVAILABLE, 0.0)),
            delay: None,
        }
        .layer(leaf);
        for _ in 0..20 {
            assert_eq!(
                always.clone().oneshot(request("")).await.unwrap().status(),
                503
            );
            assert_eq!(
                never.clone().oneshot(request("")).await.unwrap().status(),
                200
            );
        }
        assert_eq!(reached(&n), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_the_request() {
        let (leaf, _) = echo_leaf();
        let svc = FaultLayer {
            abort: None,
            delay: Some((Duration::from_millis(100), 100.0)),
        }
        .layer(leaf);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.oneshot(request("")).await.unwrap().status(), 200);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[test]
    fn out_of_range_values_are_named() {
        let f = Fault {
            abort: Some(FaultAbort {
                status: 99,
                percent: 101.0,
            }),
            delay: Some(FaultDelay {
                duration: HumanDuration::from_millis(1),
                percent: -1.0,
            }),
        };
        let fields: Vec<String> = f
            .check(&CheckCtx::any())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["abort.status", "abort.percent", "delay.percent"]);
    }
}
