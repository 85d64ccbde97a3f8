//! `max_request_body`: refuses request bodies over a size with `413 Content Too Large`. A
//! declared `Content-Length` over the limit is refused before anything goes upstream; a
//! streamed (chunked) body is cut where it crosses the limit and, when the upstream has not
//! answered yet, the client gets `413`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService, answer};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxRequestBody {
    /// The largest request body accepted, in bytes.
    pub bytes: u64,
}

impl HttpFilter for MaxRequestBody {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        Vec::new()
    }

    fn layer(&self, inner: HttpService, _ctx: &BuildCtx<'_>) -> HttpService {
        HttpService::new(MaxRequestBodyLayer { bytes: self.bytes }.layer(inner))
    }
}

#[derive(Clone, Copy)]
pub struct MaxRequestBodyLayer {
    pub bytes: u64,
}

crate::filters::around_layer!(MaxRequestBodyLayer => MaxRequestBodyService, Request<RequestBody>, Response<ProxyBody>);

impl MaxRequestBodyLayer {
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
        let limit = self.bytes;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Box::pin(async move { Ok(too_large(limit)) });
        }
        req.body_mut().limit(limit);
        let state = req.body().state();
        let call = next.oneshot(req);
        Box::pin(async move {
            let Ok(resp) = call.await;
            // The body crossed the limit mid-stream and the forwarder failed for it.
            if state.too_large.load(Ordering::Relaxed)
                && resp.extensions().get::<super::LocalAnswer>().is_some()
            {
                return Ok(too_large(limit));
            }
            Ok(resp)
        })
    }
}

fn too_large(limit: u64) -> Response<ProxyBody> {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        "rejected:max_request_body",
        format!("bindgate: the request body is larger than {limit} bytes\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::testing::{echo_leaf, reached, request};

    #[tokio::test]
    async fn a_declared_length_over_the_limit_never_reaches_the_upstream() {
        let (leaf, n) = echo_leaf();
        let svc = MaxRequestBodyLayer { bytes: 4 }.layer(leaf);
        let mut req = request("hello");
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("5"),
        );
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reached(&n), 0);
        let ok = svc.oneshot(request("four")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_gets_413() {
        let (leaf, n) = echo_leaf();
        let svc = MaxRequestBodyLayer { bytes: 4 }.layer(leaf);
        let resp = svc.oneshot(request("hello")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            reached(&n),
            1,
            "it was streamed before the limit was crossed"
        );
    }
}
