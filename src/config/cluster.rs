//! `static_resources.clusters`: where routes send traffic.
//!
//! One flat struct for every `type`, validated per type when the snapshot is built: that gives
//! errors like "field `endpoints` does not apply to type binding_upstream" with the exact line.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name routes refer to.
    pub name: String,
    /// `static` (plain TCP addresses) or `binding_upstream` (an ngrok bound endpoint).
    #[serde(rename = "type")]
    pub kind: ClusterKind,
    /// static: `host:port` addresses, used round-robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// binding_upstream: the bound endpoint URL, `scheme://service.namespace[:port]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// binding_upstream: the name of the ingress to reach it through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    /// static: TCP connect timeout (binding_upstream uses its ingress's `connect_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// Retries of failed connects and upgrades, before any byte went upstream.
    #[serde(default)]
    pub retry: RetryConfig,
    /// A cap on open upstream connections, and fail-fast after consecutive connect failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<crate::filters::connect::CircuitBreakerConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    Static,
    BindingUpstream,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries per connection, the first included (1 = no retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First backoff; doubles each retry, with jitter.
    #[serde(default = "default_base_backoff")]
    pub base_backoff: HumanDuration,
    /// Cap on one backoff.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Retries may add at most this percentage of load (beyond a small reserve of 10).
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            base_backoff: default_base_backoff(),
            max_backoff: default_max_backoff(),
            budget_percent: default_budget_percent(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_base_backoff() -> HumanDuration {
    HumanDuration::from_millis(50)
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_budget_percent() -> u32 {
    20
}
