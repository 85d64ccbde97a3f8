//! `static_resources.listeners`: local sockets, their limits and routes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;
use crate::filters::http::HttpFilterConfig;
use crate::filters::network::NetworkFilterConfig;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// `ip:port` to bind; port 0 lets the OS choose (see the admin `/listeners` view).
    pub address: String,
    /// What the listener speaks.
    #[serde(default)]
    pub protocol: Protocol,
    /// Ordered routes. tcp: exactly one route, no `match`. http: matched per request by `host`
    /// and `path_prefix`, first match wins. tls: matched per connection by `sni` (exact names
    /// first, then the longest `*.suffix`, then the route without `match`).
    pub routes: Vec<RouteConfig>,
    /// Admission limits, checked at accept: shorthand for a `connection_limit` and a
    /// `local_rate_limit` filter placed before `filters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Network filters, in order: run once per accepted connection, before any upstream work.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<NetworkFilterConfig>,
    /// A connection with no bytes moving either way for this long is closed; for http, a request
    /// or response body that stops for this long ends its request.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// http listeners: how long a client has to send a whole request head, and how long a
    /// kept-alive connection may wait for its next request; then the connection is closed
    /// (HAProxy's `timeout http-request`, Envoy's `request_headers_timeout`). Default 10s.
    #[serde(default = "default_request_headers_timeout")]
    pub request_headers_timeout: HumanDuration,
    /// On removal or shutdown, how long open connections may finish before they are closed.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// http listeners: how long an upstream may take to send its response headers, counted from
    /// the end of the request (its last body byte forwarded); past it the client gets `504`
    /// (default 60s). Shorthand for a `timeout` http filter on every route that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<HumanDuration>,
    /// http listeners: whether header names go on in the case they came in (a request's to the
    /// upstream, a response's to the client). Default `true`. `false` sends them in lower case,
    /// as HAProxy and Envoy do by default (HTTP/1.1 names are case-insensitive), and saves
    /// recording each message's spelling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_header_case: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Raw TCP: every connection goes to the one route's cluster.
    #[default]
    Tcp,
    /// HTTP/1.1: each request is routed by Host and path; upstream connections are pooled per
    /// cluster and reused across client connections; `Upgrade` (WebSocket) is supported.
    Http,
    /// TLS passthrough: each connection is routed by the SNI of its ClientHello; the TLS stream
    /// is not terminated.
    Tls,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and access logs (default `routes[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What a connection or request must match (absent for tcp listeners).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub route_match: Option<RouteMatch>,
    /// The cluster traffic goes to.
    pub cluster: String,
    /// http listeners: http filters, in order, run per request before it is forwarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilterConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// http listeners: the request's host, case-insensitive, without its port (`shop.default`
    /// matches `Host: shop.default:8080`); `*.example.com` matches any name ending in
    /// `.example.com`. Absent: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// http listeners: a prefix of the request path, compared byte for byte with the path after
    /// normalisation (escapes of unreserved characters decoded, `//` merged, `.` and `..`
    /// resolved; an escaped `/` is refused with `400`). `/api` matches `/api`, `/api/v1` and
    /// `/apis`. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// tls listeners: the ClientHello's server name, case-insensitive; `*.example.com` matches
    /// any name ending in `.example.com`. Absent: the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections open at once; further ones are closed at accept (http: `503`). Default
    /// 10,000 unless a `connection_limit` filter sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Sustained rate of new connections accepted per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_second: Option<u32>,
    /// Burst above `connections_per_second` (default: equal to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

pub(super) fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

pub(super) fn default_request_headers_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

pub(super) fn default_drain_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
