//! `ingresses:` ngrok binding ingresses (or the sandbox's): address, TLS identity and trust.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Name clusters use to refer to this ingress.
    pub name: String,
    /// `host:port` of the binding ingress; `:443` is appended when no port is given.
    /// Default: the `ingress_endpoint` returned by ngrok registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TLS server name (SNI and certificate check). Default: the host part of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file or directory of PEM files trusted in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Trust the system's root certificates too (default true). Set false to trust only `ca`.
    #[serde(default = "yes")]
    pub system_roots: bool,
    /// Client certificate (PEM chain) presented to the ingress. Omit it and `client_key` to use
    /// the identity bindgate obtains by registering with the ngrok API (`ngrok:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Private key for `client_cert` (PEM; EC keys are accepted under any `* PRIVATE KEY` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Bound on TCP connect + TLS handshake + binding upgrade.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How connections reach the ingress.
    #[serde(default)]
    pub transport: Transport,
}

/// Transport to the ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// One fresh TCP + TLS dial and binding upgrade per proxied connection.
    #[default]
    Direct,
}

fn yes() -> bool {
    true
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
