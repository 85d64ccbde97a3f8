//! `dynamic_resources:` what discovered bound endpoints become, and how they are exposed locally.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::listener::{
    default_drain_timeout, default_idle_timeout, default_request_headers_timeout,
};
use super::{HumanDuration, Limits};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicResources {
    /// Bound endpoints discovered from the ngrok API, each exposed as a local listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_endpoints: Option<BoundEndpoints>,
    /// Named sources of listeners and clusters (a watched directory, a polled REST API), merged
    /// with `static_resources` and the bound endpoints into one snapshot. Each source is ACKed
    /// or NACKed on its own: a bad update keeps that source's last good resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_sources: Vec<super::ConfigSourceConfig>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BoundEndpoints {
    /// The ingress (from `ingresses`) discovered endpoints are reached through.
    pub ingress: String,
    /// How often the API is asked for the bound endpoints.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// CEL selectors over `endpoint.*` sent at registration (ngrok applies them server side).
    #[serde(default = "default_selectors")]
    pub selectors: Vec<String>,
    /// Where each endpoint gets its local listener.
    pub expose: Expose,
    /// Settings for every discovered endpoint's listener.
    #[serde(default)]
    pub listener: DiscoveredListener,
    /// When `/ready` may say ready, besides every listener being bound: `cached` (a poll has
    /// succeeded, or the endpoint set saved by an earlier run was loaded at start), `discovered`
    /// (a poll has succeeded in this run), or `bound` (do not wait for discovery).
    #[serde(default)]
    pub ready_when: ReadyWhen,
}

/// What `/ready` waits for from discovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyWhen {
    /// A successful poll, or the endpoint set saved by an earlier run (loaded at start).
    #[default]
    Cached,
    /// A successful poll in this run.
    Discovered,
    /// Nothing from discovery: ready once listeners are bound.
    Bound,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expose {
    /// How endpoints get local addresses: `port_range`, `virtual` or `shared`.
    pub mode: ExposeMode,
    /// The local IP listeners bind in modes `port_range` and `shared` (ignored by `virtual`).
    #[serde(default = "default_expose_address")]
    pub address: String,
    /// Mode `port_range` (required there; ignored by the other modes): the inclusive range
    /// `first-last` endpoints are allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Mode `virtual` (ignored by the others): the IPv4 or IPv6 network (`127.77.0.0/16` when
    /// unset) each `service.namespace` gets its own address from (network and broadcast
    /// addresses are skipped). On Linux all of `127.0.0.0/8` is local without setup; elsewhere
    /// add the addresses to the loopback interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A hosts file (e.g. `/etc/hosts`) where bindgate keeps a managed block with one
    /// `IP service.namespace` line per exposed endpoint, so in-cluster names resolve locally.
    /// Lines outside the block are left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// Per-endpoint placement, first match wins: `host` is a glob on `service.namespace`.
    #[serde(default)]
    pub overrides: Vec<ExposeOverride>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExposeMode {
    /// One local port per endpoint on `address`, allocated from `ports` and kept across
    /// restarts. Every endpoint is a tcp listener (a byte pipe).
    PortRange,
    /// One local IP per `service.namespace`, allocated from `cidr` and kept across restarts;
    /// each endpoint listens there on its own URL's port (`tcp://orders.default:5432` →
    /// `127.77.0.1:5432`), so clients use the in-cluster port. Every endpoint is a tcp listener.
    Virtual,
    /// Every endpoint listens on `address` at its own URL's port. Endpoints on the same port share
    /// a listener: `http` endpoints an http listener routing by Host, `https` and `tls` endpoints
    /// a tls listener routing by SNI (passthrough); a `tcp` endpoint cannot share its port.
    Shared,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeOverride {
    /// Glob on `service.namespace` (`*` matches any run of characters).
    pub host: String,
    /// The local IP for matching endpoints (default: `expose.address`; in mode `virtual`, pins
    /// the endpoint's address instead of allocating one from `cidr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A fixed port (default: allocated from `expose.ports` in mode `port_range`, the endpoint
    /// URL's port in modes `virtual` and `shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Network filters of every discovered listener, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<crate::filters::network::NetworkFilterConfig>,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// http endpoints: the time to send a request head, or to start the next one on a
    /// kept-alive connection (default 10s).
    #[serde(default = "default_request_headers_timeout")]
    pub request_headers_timeout: HumanDuration,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// http endpoints: whether header names keep the case they came in (default `true`; see
    /// the static listeners' `preserve_header_case`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_header_case: Option<bool>,
}

impl Default for DiscoveredListener {
    fn default() -> Self {
        DiscoveredListener {
            limits: None,
            filters: Vec::new(),
            idle_timeout: default_idle_timeout(),
            request_headers_timeout: default_request_headers_timeout(),
            drain_timeout: default_drain_timeout(),
            preserve_header_case: None,
        }
    }
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_selectors() -> Vec<String> {
    vec!["true".into()]
}
/// The network mode `virtual` allocates from when `expose.cidr` is not set.
pub const DEFAULT_VIRTUAL_CIDR: &str = "127.77.0.0/16";

fn default_expose_address() -> String {
    "127.0.0.1".into()
}
/// Parses `first-last` (inclusive) into a range.
pub fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let err = || format!("`{text}` is not a port range like `10000-10999`");
    let (a, b) = text.split_once('-').ok_or_else(err)?;
    let a: u16 = a.trim().parse().map_err(|_| err())?;
    let b: u16 = b.trim().parse().map_err(|_| err())?;
    if a == 0 || b < a {
        return Err(err());
    }
    Ok(a..=b)
}
