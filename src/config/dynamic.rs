//! `dynamic_resources:` what discovered bound endpoints become, and how they are exposed locally.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::listener::{default_drain_timeout, default_idle_timeout};
use super::{HumanDuration, Limits};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicResources {
    /// Bound endpoints discovered from the ngrok API, each exposed as a local listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_endpoints: Option<BoundEndpoints>,
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
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expose {
    /// `port_range`: one local port per endpoint, from `ports`, kept across restarts.
    pub mode: ExposeMode,
    /// The local IP listeners bind.
    #[serde(default = "default_expose_address")]
    pub address: String,
    /// Inclusive port range `first-last` endpoints are allocated from.
    pub ports: String,
    /// Per-endpoint placement, first match wins: `host` is a glob on `service.namespace`.
    #[serde(default)]
    pub overrides: Vec<ExposeOverride>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExposeMode {
    PortRange,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeOverride {
    /// Glob on `service.namespace` (`*` matches any run of characters).
    pub host: String,
    /// The local IP for matching endpoints (default: `expose.address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A fixed port (default: allocated from `expose.ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
}

impl Default for DiscoveredListener {
    fn default() -> Self {
        DiscoveredListener {
            limits: None,
            idle_timeout: default_idle_timeout(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_selectors() -> Vec<String> {
    vec!["true".into()]
}
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
