//! Http filters: run per request, in order, around the forwarding of the request to its route's
//! cluster. Only routes of http listeners carry them.
//!
//! The router puts a [`RequestInfo`] in each request's extensions before calling the route's
//! stack. A response bindgate writes itself carries a [`LocalAnswer`] extension saying why, so
//! access logs and metrics can tell it from the upstream's.

mod access_log;
mod fault;
mod header_mutation;
mod local_rate_limit;
mod max_request_body;
mod timeout;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tower::util::BoxCloneSyncService;

pub use access_log::HttpAccessLog;
pub use fault::{Fault, FaultAbort, FaultDelay};
pub use header_mutation::{HeaderMutation, HeaderOps};
pub use local_rate_limit::HttpRateLimit;
pub use max_request_body::MaxRequestBody;
pub use timeout::{RequestTimeout, TimeoutLayer};

use super::{BuildCtx, CheckCtx, FilterIssue, registry};
use crate::http_body::{ProxyBody, RequestBody, local};

/// A route's whole stack: its filters around the forwarder.
pub type HttpService = BoxCloneSyncService<Request<RequestBody>, Response<ProxyBody>, Infallible>;

/// An http filter's config: checks itself and wraps a stack in its layer.
pub trait HttpFilter: Send + Sync {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        Vec::new()
    }
    fn layer(&self, inner: HttpService, ctx: &BuildCtx<'_>) -> HttpService;
}

registry! {
    /// An http filter (a one-key map: the filter's name, then its config). Runs per request,
    /// in order, on the routes of http listeners.
    pub enum HttpFilterConfig: HttpFilter {
        /// Caps the request rate (token bucket), for the route or per client IP: `429` with
        /// `Retry-After` past it.
        local_rate_limit => HttpRateLimit,
        /// Sets and removes request headers (before forwarding) and response headers.
        header_mutation => HeaderMutation,
        /// Refuses request bodies over a size: `413`.
        max_request_body => MaxRequestBody,
        /// Injects failures for testing resilience: aborts with a status, or delays, each for a
        /// percentage of requests.
        fault => Fault,
        /// How long the upstream may take to answer, from the end of the request: `504` past it.
        timeout => RequestTimeout,
        /// One JSON line per request, written when its response ends.
        access_log => HttpAccessLog,
    }
}

/// Wraps `leaf` in `filters`, the first filter outermost; an `access_log` is placed outermost
/// wherever it is listed (so it records requests other filters answered). With no `timeout`
/// filter, one with `default_timeout` is added innermost: every request has a deadline.
pub fn build_chain(
    filters: &[HttpFilterConfig],
    leaf: HttpService,
    default_timeout: Duration,
    owner: &str,
    retained: &crate::retained::Retained,
    base_dir: &std::path::Path,
) -> HttpService {
    let mut svc = leaf;
    if !filters
        .iter()
        .any(|f| matches!(f, HttpFilterConfig::timeout(_)))
    {
        svc = HttpService::new(tower::Layer::layer(
            &TimeoutLayer::new(default_timeout),
            svc,
        ));
    }
    let mut order: Vec<(usize, &HttpFilterConfig)> = filters.iter().enumerate().collect();
    order.sort_by_key(|(_, f)| !matches!(f, HttpFilterConfig::access_log(_)));
    for (index, f) in order.into_iter().rev() {
        let ctx = BuildCtx {
            retained,
            base_dir,
            owner,
            index,
            protocol: crate::config::Protocol::Http,
        };
        svc = f.filter().layer(svc, &ctx);
    }
    svc
}

/// What the router knows about a request, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    /// The route's name (`name`, else `routes[i]`).
    pub route: Arc<str>,
    pub cluster: Arc<str>,
}

/// Why bindgate answered a request itself, in the response's extensions: `rejected:<filter>`,
/// `fault`, `no_route`, `upstream_error`, `upstream_unavailable`, `timeout`, `bad_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAnswer(pub &'static str);

/// A response bindgate writes itself, tagged with why.
pub fn answer(
    status: StatusCode,
    why: &'static str,
    text: impl Into<bytes::Bytes>,
) -> Response<ProxyBody> {
    let mut r = local(status, text);
    r.extensions_mut().insert(LocalAnswer(why));
    r
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, at least 1).
pub fn too_many_requests(filter_outcome: &'static str, wait: Duration) -> Response<ProxyBody> {
    let mut r = answer(
        StatusCode::TOO_MANY_REQUESTS,
        filter_outcome,
        "bindgate: too many requests\n",
    );
    let secs = super::rate::retry_after_secs(wait);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A leaf answering 200 with the request's headers echoed as `x-seen-<name>` and its body.
    pub fn echo_leaf() -> (HttpService, Arc<AtomicUsize>) {
        let reached = Arc::new(AtomicUsize::new(0));
        let r = reached.clone();
        let svc = tower::service_fn(move |req: Request<RequestBody>| {
            let r = r.clone();
            async move {
                use http_body_util::BodyExt;
                r.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return Ok::<_, Infallible>(answer(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            e.to_string(),
                        ));
                    }
                };
                let mut resp = Response::new(ProxyBody::local(body));
                for (k, v) in &parts.headers {
                    if let Ok(name) =
                        http::HeaderName::from_bytes(format!("x-seen-{}", k.as_str()).as_bytes())
                    {
                        resp.headers_mut().append(name, v.clone());
                    }
                }
                Ok::<_, Infallible>(resp)
            }
        });
        (HttpService::new(svc), reached)
    }

    pub fn request(body: &'static str) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::full(body));
        req.extensions_mut().insert(RequestInfo {
            peer: "127.0.0.2:5000".parse().unwrap(),
            listener: Arc::from("web"),
            route: Arc::from("routes[0]"),
            cluster: Arc::from("api"),
        });
        req
    }

    pub fn reached(n: &Arc<AtomicUsize>) -> usize {
        n.load(Ordering::SeqCst)
    }
}
