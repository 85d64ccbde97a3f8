//! `header_mutation`: sets and removes request headers before the request is forwarded, and
//! response headers before the response goes to the client (bindgate's own answers included).
//! `set` replaces every value of the header; `remove` runs first.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{HttpFilter, HttpService};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};
use crate::http_body::{ProxyBody, RequestBody};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutation {
    /// Applied to the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOps>,
    /// Applied to the response before it goes to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOps>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Header → value; replaces any value the message had.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Headers that describe the connection or the message framing: changing them here would
/// desynchronise the two hops, so they are refused.
const PROTECTED: [&str; 8] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "host",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-connection",
];

/// Compiled operations.
#[derive(Debug, Default)]
pub struct Ops {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Ops {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
    }
}

impl HeaderOps {
    fn compile(&self, field: &str, issues: &mut Vec<FilterIssue>) -> Ops {
        let mut ops = Ops::default();
        let mut name = |n: &str, at: String| -> Option<HeaderName> {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) if PROTECTED.contains(&h.as_str()) => {
                    issues.push((
                        at,
                        format!(
                            "`{n}` belongs to the connection or the framing and cannot be changed"
                        ),
                    ));
                    None
                }
                Ok(h) => Some(h),
                Err(_) => {
                    issues.push((at, format!("`{n}` is not a valid header name")));
                    None
                }
            }
        };
        for (i, n) in self.remove.iter().enumerate() {
            if let Some(h) = name(n, format!("{field}.remove[{i}]")) {
                ops.remove.push(h);
            }
        }
        let mut bad_values = Vec::new();
        for (n, v) in &self.set {
            let Some(h) = name(n, format!("{field}.set.{n}")) else {
                continue;
            };
            match HeaderValue::from_str(v) {
                Ok(v) => ops.set.push((h, v)),
                Err(_) => bad_values.push((
                    format!("{field}.set.{n}"),
                    "not a valid header value (control characters or non-ASCII)".to_owned(),
                )),
            }
        }
        issues.extend(bad_values);
        ops
    }
}

impl HeaderMutation {
    fn compile(&self) -> (Ops, Ops, Vec<FilterIssue>) {
        let mut issues = Vec::new();
        let req = self
            .request
            .as_ref()
            .map(|o| o.compile("request", &mut issues))
            .unwrap_or_default();
        let resp = self
            .response
            .as_ref()
            .map(|o| o.compile("response", &mut issues))
            .unwrap_or_default();
        (req, resp, issues)
    }
}

impl HttpFilter for HeaderMutation {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        self.compile().2
    }

    fn layer(&self, inner: HttpService, _ctx: &BuildCtx<'_>) -> HttpService {
        let (request, response, _) = self.compile();
        HttpService::new(
            HeaderMutationLayer {
                request: Arc::new(request),
                response: Arc::new(response),
            }
            .layer(inner),
        )
    }
}

#[derive(Clone)]
pub struct HeaderMutationLayer {
    pub request: Arc<Ops>,
    pub response: Arc<Ops>,
}

crate::filters::around_layer!(HeaderMutationLayer => HeaderMutationService, Request<RequestBody>, Response<ProxyBody>);

impl HeaderMutationLayer {
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
        self.request.apply(req.headers_mut());
        let response = self.response.clone();
        let call = next.oneshot(req);
        Box::pin(async move {
            let Ok(mut resp) = call.await;
            response.apply(resp.headers_mut());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::testing::{echo_leaf, request};

    #[tokio::test]
    async fn request_and_response_headers_are_changed() {
        let cfg: HeaderMutation = serde_yaml_ng::from_str(
            "request: { set: { x-gateway: gw-1 }, remove: [ x-debug ] }\nresponse: { set: { x-served-by: bindgate }, remove: [ x-seen-x-keep ] }",
        )
        .unwrap();
        assert!(cfg.check(&CheckCtx::any()).is_empty());
        let (req_ops, resp_ops, _) = cfg.compile();
        let (leaf, _) = echo_leaf();
        let svc = HeaderMutationLayer {
            request: Arc::new(req_ops),
            response: Arc::new(resp_ops),
        }
        .layer(leaf);
        let mut req = request("");
        req.headers_mut()
            .insert("x-debug", HeaderValue::from_static("1"));
        req.headers_mut()
            .insert("x-gateway", HeaderValue::from_static("spoofed"));
        req.headers_mut()
            .insert("x-keep", HeaderValue::from_static("k"));
        let resp = svc.oneshot(req).await.unwrap();
        let h = resp.headers();
        assert_eq!(h.get("x-seen-x-gateway").unwrap(), "gw-1");
        assert_eq!(h.get_all("x-seen-x-gateway").iter().count(), 1);
        assert!(h.get("x-seen-x-debug").is_none());
        assert!(
            h.get("x-seen-x-keep").is_none(),
            "removed from the response"
        );
        assert_eq!(h.get("x-served-by").unwrap(), "bindgate");
    }

    #[test]
    fn framing_headers_and_bad_names_are_refused_by_field() {
        let cfg: HeaderMutation = serde_yaml_ng::from_str(
            "request: { set: { content-length: '5', 'bad name': x }, remove: [ Host ] }",
        )
        .unwrap();
        let fields: Vec<String> = cfg
            .check(&CheckCtx::any())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "request.remove[0]",
                "request.set.bad name",
                "request.set.content-length"
            ]
        );
    }
}
