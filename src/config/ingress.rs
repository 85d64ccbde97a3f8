//! `ingresses:` ngrok binding ingresses (or the sandbox's): address, TLS identity and trust, and
//! the transport that carries proxied connections to them (`direct`, `pool`, `multiplex`).

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
    /// How proxied connections reach the ingress: `pool` (default), `multiplex` or `direct`.
    #[serde(default)]
    pub transport: Transport,
    /// Warm pool settings: used by `transport: pool`, and by `multiplex` when it falls back.
    #[serde(default)]
    pub pool: PoolConfig,
    /// HTTP/2 multiplexing settings, used by `transport: multiplex`.
    #[serde(default)]
    pub multiplex: MultiplexConfig,
    /// Send the client's first bytes right behind the `ConnRequest` instead of waiting for the
    /// `ConnResponse` (like Envoy's tunnelling early data): a new connection then costs no round
    /// trip of its own on a warm pooled connection. Applies to every transport (for `multiplex`
    /// the bytes follow the CONNECT's headers). Off by default: whether ngrok's ingress keeps
    /// bytes that arrive before its answer is UNCONFIRMED (the sandbox does), and a refused
    /// upgrade is then reported after the fact (the client is closed) instead of being retried.
    #[serde(default)]
    pub early_data: bool,
    /// Resume TLS sessions (TLS 1.3 PSK, TLS 1.2 tickets) on new connections to the ingress
    /// (default true): the handshake then skips both certificate checks. Set false for a full
    /// handshake on every connection, as ngrok's operator forwarder and ngrokd do (HAProxy's
    /// `no-ssl-reuse`, Envoy's `max_session_keys: 0`).
    #[serde(default = "yes")]
    pub session_resumption: bool,
}

/// Transport to the ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// One fresh TCP + TLS dial and binding upgrade per proxied connection.
    Direct,
    /// Connections already TCP- and TLS-handshaked wait for their `ConnRequest`: a proxied
    /// connection costs one upgrade round trip. Works with ngrok's ingress today.
    #[default]
    Pool,
    /// A few persistent mTLS HTTP/2 connections (ALPN `h2`), one CONNECT stream per proxied
    /// connection; for ingresses that speak HTTP/2 (the sandbox does). See `multiplex.fallback`.
    Multiplex,
}

/// The warm pool of handshaked connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Connections kept handshaked and idle, ready for a proxied connection (at least 1).
    #[serde(default = "default_min_idle")]
    pub min_idle: u32,
    /// After bursts the pool keeps more idle connections, up to this many.
    #[serde(default = "default_max_idle")]
    pub max_idle: u32,
    /// An idle connection older than this is closed and replaced, never handed out.
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: default_min_idle(),
            max_idle: default_max_idle(),
            max_age: default_max_age(),
        }
    }
}

/// HTTP/2 multiplexing to the ingress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiplexConfig {
    /// Persistent HTTP/2 connections kept open (at least 1).
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// Streams (proxied connections) per HTTP/2 connection; when every connection is full,
    /// another one is opened, up to `max_connections`.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// HTTP/2 connections open at most, counting those opened because all were full (default
    /// 128, at least `connections`). When all are open and full, a new proxied connection waits
    /// for a free stream up to the ingress's `connect_timeout`.
    #[serde(default = "default_max_mux_connections")]
    pub max_connections: u32,
    /// What to do when the ingress does not agree to HTTP/2 (ALPN `h2`).
    #[serde(default)]
    pub fallback: MultiplexFallback,
}

impl Default for MultiplexConfig {
    fn default() -> Self {
        MultiplexConfig {
            connections: default_connections(),
            max_streams: default_max_streams(),
            max_connections: default_max_mux_connections(),
            fallback: MultiplexFallback::default(),
        }
    }
}

/// Fallback when the ingress does not negotiate HTTP/2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MultiplexFallback {
    /// Use the warm pool (with the `pool` settings); logged once at info.
    #[default]
    Pool,
    /// Fail every connection with an error saying the ingress refused HTTP/2.
    #[serde(rename = "none")]
    Fail,
}

fn yes() -> bool {
    true
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_min_idle() -> u32 {
    2
}

fn default_max_idle() -> u32 {
    32
}

fn default_max_age() -> HumanDuration {
    HumanDuration::from_secs(300)
}

fn default_connections() -> u32 {
    2
}

fn default_max_streams() -> u32 {
    100
}

fn default_max_mux_connections() -> u32 {
    128
}
