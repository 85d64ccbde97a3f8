//! Http `access_log`: one JSON line per request, written when its response body ends: `time`
//! (RFC 3339), `listener`, `route`, `cluster`, `peer`, `method`, `host`, `path`, `status`,
//! `duration_ms` (request start to the response's last byte), `bytes_received` (request body
//! bytes from the client), `bytes_sent` (response body bytes to the client), `outcome` (`ok`
//! for an upstream's answer; else why bindgate answered: `rejected:<filter>`, `fault`,
//! `timeout`, `upstream_error`, ...).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService, LocalAnswer, RequestInfo};
use crate::filters::access_log::{AccessLogConfig, AccessLogWriter, now_rfc3339};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct HttpAccessLog(pub AccessLogConfig);

impl HttpFilter for HttpAccessLog {
    fn check(&self, ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        self.0.check(ctx.base_dir)
    }

    fn layer(&self, inner: HttpService, ctx: &BuildCtx<'_>) -> HttpService {
        HttpService::new(
            HttpAccessLogLayer {
                writer: self.0.writer(ctx),
            }
            .layer(inner),
        )
    }
}

#[derive(Clone)]
pub struct HttpAccessLogLayer {
    pub writer: Arc<AccessLogWriter>,
}

crate::filters::around_layer!(HttpAccessLogLayer => HttpAccessLogService, Request<RequestBody>, Response<ProxyBody>);

impl HttpAccessLogLayer {
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
        let start = Instant::now();
        let info = req.extensions().get::<RequestInfo>().cloned();
        let body = req.body().state();
        let method = req.method().to_string();
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let path = req.uri().path().to_owned();
        let writer = self.writer.clone();
        let call = next.oneshot(req);
        Box::pin(async move {
            let Ok(mut resp) = call.await;
            let status = resp.status().as_u16();
            let outcome = resp.extensions().get::<LocalAnswer>().map_or("ok", |a| a.0);
            resp.body_mut().on_end(Box::new(move |sent| {
                writer.write(&serde_json::json!({
                    "time": now_rfc3339(),
                    "listener": info.as_ref().map(|i| &*i.listener),
                    "route": info.as_ref().map(|i| &*i.route),
                    "cluster": info.as_ref().map(|i| &*i.cluster),
                    "peer": info.as_ref().map(|i| i.peer.to_string()),
                    "method": method,
                    "host": host,
                    "path": path,
                    "status": status,
                    "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
                    "bytes_received": body.received.load(Ordering::Relaxed),
                    "bytes_sent": sent,
                    "outcome": outcome,
                }));
            }));
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::access_log::Target;
    use crate::filters::http::testing::{echo_leaf, request};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn one_line_per_request_with_exact_byte_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http.log");
        let writer = Arc::new(AccessLogWriter::new(Target::File(path.clone())));
        let (leaf, _) = echo_leaf();
        let svc = HttpAccessLogLayer {
            writer: writer.clone(),
        }
        .layer(leaf);
        let mut req = request("twelve bytes");
        *req.uri_mut() = "/api/x?q=1".parse().unwrap();
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("shop.default"),
        );
        let resp = svc.oneshot(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 12);
        writer.flush_for_test(1);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["method"], "GET");
        assert_eq!(line["host"], "shop.default");
        assert_eq!(line["path"], "/api/x");
        assert_eq!(line["status"], 200);
        assert_eq!(line["route"], "routes[0]");
        assert_eq!(line["cluster"], "api");
        assert_eq!(line["peer"], "127.0.0.2:5000");
        assert_eq!(line["bytes_received"], 12);
        assert_eq!(line["bytes_sent"], 12);
        assert_eq!(line["outcome"], "ok");
    }
}
