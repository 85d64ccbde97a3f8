//! The sandbox's own configuration (`sandbox.yaml`): what it listens on, which account it serves,
//! which endpoints exist and what faults they inject.
//!
//! Parsing is strict (`deny_unknown_fields`) so a typo fails loudly; cross-field checks (endpoint
//! URLs, targets, duplicates) happen in [`SandboxConfig::validate`], which every constructor runs.
//! This module does not touch sockets or files beyond reading the config itself.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::endpoints::{EndpointError, EndpointRegistry};

#[derive(Debug, thiserror::Error)]
pub enum SandboxConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Yaml {
        origin: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

/// The whole `sandbox.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Where the CA key and certificate persist (created 0700; the key is 0600).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The one account this sandbox serves: client certificates must name it as first DNS SAN.
    #[serde(default = "default_account_id")]
    pub account_id: String,
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub backends: BackendsConfig,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// The emulated ngrok API; absent means the sandbox serves the ingress only.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// A raw mTLS echo port: the ingress's TLS and client-certificate check, then an echo of
    /// every byte, without the binding upgrade. It lets generic TLS proxies (HAProxy, stunnel)
    /// make the same hop as bindgate in benchmarks. Absent: not served.
    #[serde(default)]
    pub raw_echo: Option<RawEchoConfig>,
}

/// The raw mTLS echo port (see [`SandboxConfig::raw_echo`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEchoConfig {
    #[serde(default = "loopback_any_port")]
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    #[serde(default = "loopback_any_port")]
    pub address: SocketAddr,
    /// DNS SANs of the ingress server certificate; the bound IP is added as an IP SAN.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Bounds the TLS handshake plus the arrival of the `ConnRequest` frame, and the dial to the
    /// endpoint's target.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
    /// Offer HTTP/2 by ALPN (`h2`) for bindgate's multiplexed transport: CONNECT streams instead
    /// of one connection per upgrade. Clients that offer no ALPN (ngrok's own) get the plain
    /// binding upgrade either way. `false` emulates an ingress without HTTP/2.
    #[serde(default = "yes")]
    pub h2: bool,
    /// Test knob: after this many streams on one HTTP/2 connection, send GOAWAY (graceful:
    /// those streams finish, new ones must go to another connection).
    #[serde(default)]
    pub h2_goaway_after_streams: Option<u64>,
    /// TLS 1.3 session tickets sent after each handshake (ingress and raw echo port). The
    /// default, 1, is what Go's `crypto/tls` sends, and ngrok's ingress is written in Go;
    /// rustls's own default is 2. Each ticket resumes one later session.
    #[serde(default = "default_tls13_tickets")]
    pub tls13_tickets: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            address: loopback_any_port(),
            server_names: default_server_names(),
            handshake_timeout: default_handshake_timeout(),
            h2: true,
            h2_goaway_after_streams: None,
            tls13_tickets: default_tls13_tickets(),
        }
    }
}

fn default_tls13_tickets() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// Addresses of the built-in backends, each a real local listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    #[serde(default = "loopback_any_port")]
    pub echo: SocketAddr,
    #[serde(default = "loopback_any_port")]
    pub http: SocketAddr,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            echo: loopback_any_port(),
            http: loopback_any_port(),
        }
    }
}

/// One bound endpoint the ingress serves (and, in phase 2, the API lists).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Canonical `scheme://service.namespace:port`.
    pub url: String,
    /// `echo`, `http`, `inline_echo` (an echo the ingress serves itself, without a backend
    /// connection, as the raw echo port does), or a `host:port` TCP address.
    pub target: String,
    #[serde(default)]
    pub faults: FaultsConfig,
}

/// Per-endpoint fault knobs for tests; all optional. See `faults.rs` for their exact behaviour.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Delay before the ingress answers the `ConnResponse`.
    pub latency: Option<ConfigDuration>,
    /// Answer every upgrade with an error instead of connecting.
    pub refuse: bool,
    /// Abort the connection (TCP RST, no close_notify) once this many bytes went client→backend.
    pub reset_after_bytes: Option<u64>,
    /// Cap, in bytes per second, on reading from the client after the upgrade.
    pub read_rate: Option<u64>,
}

/// The emulated ngrok API (PROTOCOL.md §3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "loopback_any_port")]
    pub address: SocketAddr,
    /// Accepted bearer tokens; at least one.
    pub api_keys: Vec<String>,
    /// Lifetime of certificates signed from operator CSRs.
    #[serde(default = "default_cert_lifetime")]
    pub cert_lifetime: ConfigDuration,
    /// Largest accepted `limit`; also the default page size.
    #[serde(default = "default_page_limit_max")]
    pub page_limit_max: u32,
    /// `binding.ingress_endpoint` returned to operators; default: the ingress's own `host:port`.
    #[serde(default)]
    pub ingress_endpoint: Option<String>,
    #[serde(default)]
    pub faults: ApiFaultsConfig,
}

/// Fault knobs of the API.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiFaultsConfig {
    /// The next N requests (after auth) answer 500.
    pub fail_next: u32,
    /// Added before every answer.
    pub delay: Option<ConfigDuration>,
    /// The next N requests (after auth) answer `200` with a body that is not JSON.
    pub garbage_next: u32,
    /// The next N requests (after auth) are never answered: the connection stays open and
    /// silent until the client gives up.
    pub hang_next: u32,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./.bindgate-sandbox")
}

fn default_account_id() -> String {
    "ac_sandbox".to_string()
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_server_names() -> Vec<String> {
    vec![
        "localhost".to_string(),
        "kubernetes-binding-ingress.sandbox.local".to_string(),
    ]
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn default_cert_lifetime() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(24 * 3600))
}

fn default_page_limit_max() -> u32 {
    100
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            state_dir: default_state_dir(),
            account_id: default_account_id(),
            ingress: IngressConfig::default(),
            backends: BackendsConfig::default(),
            endpoints: Vec::new(),
            api: None,
            raw_echo: None,
        }
    }
}

impl SandboxConfig {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, SandboxConfigError> {
        Self::parse(text, "sandbox config")
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, SandboxConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SandboxConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, SandboxConfigError> {
        let config: SandboxConfig =
            serde_yaml_ng::from_str(text).map_err(|source| SandboxConfigError::Yaml {
                origin: origin.to_string(),
                source,
            })?;
        config
            .validate()
            .map_err(|(field, reason)| SandboxConfigError::Invalid {
                origin: origin.to_string(),
                field,
                reason,
            })?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express. Errors name the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.account_id.is_empty() {
            return Err(("account_id".into(), "must not be empty".into()));
        }
        // The account id becomes a DNS SAN of every client certificate.
        if !is_dns_like(&self.account_id) {
            return Err((
                "account_id".into(),
                "must be a DNS-style name (letters, digits, `-`, `_`, dot-separated)".into(),
            ));
        }
        if self.ingress.server_names.is_empty() {
            return Err((
                "ingress.server_names".into(),
                "needs at least one name".into(),
            ));
        }
        if self.ingress.h2_goaway_after_streams == Some(0) {
            return Err((
                "ingress.h2_goaway_after_streams".into(),
                "must be at least 1".into(),
            ));
        }
        if self.ingress.handshake_timeout.0.is_zero() {
            return Err((
                "ingress.handshake_timeout".into(),
                "must be greater than zero".into(),
            ));
        }
        // The registry's own checks, on a throwaway registry: one code path decides what a
        // valid endpoint set is, at load time and for runtime additions alike.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let registry = EndpointRegistry::new(unbound, unbound, &[])
            .map_err(|e| ("endpoints".to_string(), e.to_string()))?;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            registry.add(endpoint).map_err(|e| {
                let field = match &e {
                    EndpointError::Target { .. } => format!("endpoints[{i}].target"),
                    EndpointError::Faults { field, .. } => format!("endpoints[{i}].faults.{field}"),
                    _ => format!("endpoints[{i}].url"),
                };
                (field, e.to_string())
            })?;
        }
        if let Some(api) = &self.api {
            if api.api_keys.is_empty() || api.api_keys.iter().any(|k| k.is_empty()) {
                return Err((
                    "api.api_keys".into(),
                    "needs at least one non-empty key".into(),
                ));
            }
            if api.cert_lifetime.0.is_zero() {
                return Err((
                    "api.cert_lifetime".into(),
                    "must be greater than zero".into(),
                ));
            }
            if !(1..=100).contains(&api.page_limit_max) {
                return Err(("api.page_limit_max".into(), "must be in 1..=100".into()));
            }
        }
        Ok(())
    }
}

/// Dot-separated non-empty labels of ASCII letters, digits, `-` and `_` (ngrok account ids such as
/// `ac_2abc` carry an underscore, so this is looser than a hostname).
fn is_dns_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d` (`50ms`, `10s`,
/// `5m`, `1h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        // The largest unit that represents the value exactly, so Display round-trips.
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms != 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(ConfigDuration)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest duration accepted: anything longer is a typo, and deadlines computed from it
/// (`Instant + d`, certificate validity) must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `<integer><unit>` up to [`MAX_DURATION`]; see [`ConfigDuration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || format!("invalid duration `{text}`: expected e.g. 50ms, 10s, 5m, 1h, 30d");
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("duration `{text}` is too large (at most 36500d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "10sec",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn duration_display_round_trips() {
        for text in ["50ms", "10s", "5m", "1h", "30d", "0ms", "1500ms"] {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn full_example_parses() {
        let config = SandboxConfig::from_yaml(
            r#"
state_dir: ./.bindgate-sandbox
account_id: ac_sandbox
ingress:
  address: 127.0.0.1:0
  server_names: [localhost, kubernetes-binding-ingress.sandbox.local]
  handshake_timeout: 10s
backends:
  echo: 127.0.0.1:0
  http: 127.0.0.1:0
endpoints:
  - url: tcp://echo.demo:7000
    target: echo
    faults: { latency: 0ms, refuse: false, reset_after_bytes: null, read_rate: null }
  - url: http://web.demo:80
    target: http
  - url: tcp://db.demo:5432
    target: 127.0.0.1:5432
    faults: { reset_after_bytes: 10, read_rate: 1000 }
"#,
        )
        .unwrap();
        assert_eq!(config.account_id, "ac_sandbox");
        assert_eq!(config.endpoints.len(), 3);
        assert_eq!(
            config.ingress.handshake_timeout.get(),
            Duration::from_secs(10)
        );
        assert_eq!(
            config.endpoints[0].faults.latency,
            Some(ConfigDuration(Duration::ZERO))
        );
        assert_eq!(config.endpoints[2].faults.reset_after_bytes, Some(10));
        assert!(config.api.is_none());
        assert!(config.raw_echo.is_none());
    }

    #[test]
    fn raw_echo_takes_an_address_or_the_default() {
        let config = SandboxConfig::from_yaml("raw_echo: { address: 127.0.0.1:7443 }\n").unwrap();
        assert_eq!(
            config.raw_echo.map(|r| r.address),
            Some(SocketAddr::from(([127, 0, 0, 1], 7443)))
        );
        let config = SandboxConfig::from_yaml("raw_echo: {}\n").unwrap();
        assert_eq!(
            config.raw_echo.map(|r| r.address),
            Some(loopback_any_port())
        );
        let err = SandboxConfig::from_yaml("raw_echo: { adress: 127.0.0.1:0 }\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn empty_document_takes_defaults() {
        let config = SandboxConfig::from_yaml("{}").unwrap();
        assert_eq!(config.account_id, "ac_sandbox");
        assert_eq!(config.ingress.address, loopback_any_port());
        assert!(config.endpoints.is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = SandboxConfig::from_yaml("acount_id: x\n").unwrap_err();
        assert!(err.to_string().contains("acount_id"), "{err}");
        let err = SandboxConfig::from_yaml(
            "endpoints:\n  - url: tcp://a.b:1\n    target: echo\n    faults: { latncy: 1s }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("latncy"), "{err}");
        let err = SandboxConfig::from_yaml("ingress: { adress: 127.0.0.1:0 }\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn invalid_endpoints_name_the_field() {
        let cases = [
            (
                "endpoints:\n  - { url: 'tcp://echo:7000', target: echo }\n",
                "endpoints[0].url",
            ),
            (
                "endpoints:\n  - { url: 'tcp://a.b', target: echo }\n",
                "endpoints[0].url",
            ),
            (
                "endpoints:\n  - { url: 'tcp://a.b:1', target: nowhere }\n",
                "endpoints[0].target",
            ),
            (
                "endpoints:\n  - { url: 'tcp://a.b:1', target: echo }\n  - { url: 'http://a.b:1', target: http }\n",
                "endpoints[1].url",
            ),
            (
                "endpoints:\n  - { url: 'tcp://a.b:1', target: echo, faults: { read_rate: 0 } }\n",
                "endpoints[0].faults.read_rate",
            ),
            (
                "ingress: { handshake_timeout: 0s }\n",
                "ingress.handshake_timeout",
            ),
            ("account_id: 'not a name'\n", "account_id"),
            ("api: { api_keys: [] }\n", "api.api_keys"),
            (
                "api: { api_keys: [k], page_limit_max: 101 }\n",
                "api.page_limit_max",
            ),
        ];
        for (yaml, field) in cases {
            match SandboxConfig::from_yaml(yaml) {
                Err(SandboxConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: expected an Invalid error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sandbox/sandbox.yaml");
        let config = SandboxConfig::load(&path).unwrap();
        assert_eq!(config.endpoints.len(), 4);
    }

    #[test]
    fn bad_duration_is_a_yaml_error_with_position() {
        let err = SandboxConfig::from_yaml("ingress:\n  handshake_timeout: 10\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("invalid duration `10`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }
}
