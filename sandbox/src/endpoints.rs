//! The bound endpoints this sandbox serves: their canonical URLs, targets and faults, and the
//! registry the ingress looks them up in (and the API lists and edits).
//!
//! The registry is an `ArcSwap` of an immutable list: lookups on the connection path never lock,
//! and runtime add/remove publish a new list. This module does not dial targets.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use time::OffsetDateTime;

use super::config::EndpointConfig;
use super::faults::Faults;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("endpoint target `{target}`: {reason}")]
    Target { target: String, reason: String },
    #[error("endpoint `{url}`: faults.{field}: {reason}")]
    Faults {
        url: String,
        field: &'static str,
        reason: String,
    },
    #[error("endpoint `{url}`: {host}:{port} is already served by `{existing}`")]
    Duplicate {
        url: String,
        host: String,
        port: u16,
        existing: String,
    },
    #[error("no endpoint with url `{0}`")]
    NotFound(String),
}

/// The schemes ngrok allows for kubernetes-bound endpoints (PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
    Tls,
    Tcp,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tls => "tls",
            Scheme::Tcp => "tcp",
        }
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https | Scheme::Tls => Some(443),
            Scheme::Tcp => None,
        }
    }
}

/// A canonical endpoint URL: `scheme://service.namespace:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl {
    pub scheme: Scheme,
    /// `service.namespace`: exactly two lowercase DNS labels.
    pub host: String,
    pub port: u16,
}

impl EndpointUrl {
    /// `host:port`, as the API's `hostport` field shows it.
    pub fn hostport(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

impl FromStr for EndpointUrl {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, EndpointError> {
        let err = |reason: &str| EndpointError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| err("expected scheme://service.namespace:port"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "tls" => Scheme::Tls,
            "tcp" => Scheme::Tcp,
            _ => return Err(err("scheme must be http, https, tls or tcp")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err(
                "only scheme://service.namespace:port is allowed (no path, query or user)",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| err("port must be a number in 1..=65535"))?;
                if port == 0 {
                    return Err(err("port must be a number in 1..=65535"));
                }
                (host, port)
            }
            None => (
                rest,
                scheme
                    .default_port()
                    .ok_or_else(|| err("a tcp endpoint needs an explicit port"))?,
            ),
        };
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() != 2 || !labels.iter().all(|l| is_dns_label(l)) {
            return Err(err(
                "host must be exactly `service.namespace` (two lowercase DNS labels)",
            ));
        }
        Ok(EndpointUrl {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

/// An RFC 1123 label as Kubernetes names use it: lowercase alphanumerics and inner `-`.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Where an endpoint's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in echo backend.
    Echo,
    /// The built-in HTTP backend.
    Http,
    /// An echo the ingress serves in place, on the upgraded connection itself, with no
    /// connection to a backend: what the raw echo port does after its handshake. Benchmarks
    /// point their endpoint here so bindgate's hop ends where the peers' hop ends. Like the raw
    /// echo port, it reads only while its answer can be written: a client must read while it
    /// writes once more than the buffers on the way hold.
    InlineEcho,
    /// Any TCP address, `host:port`.
    Address(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Echo => f.write_str("echo"),
            Target::Http => f.write_str("http"),
            Target::InlineEcho => f.write_str("inline_echo"),
            Target::Address(addr) => f.write_str(addr),
        }
    }
}

impl FromStr for Target {
    type Err = EndpointError;

    fn from_str(target: &str) -> Result<Self, EndpointError> {
        match target {
            "echo" => return Ok(Target::Echo),
            "http" => return Ok(Target::Http),
            "inline_echo" => return Ok(Target::InlineEcho),
            _ => {}
        }
        let ok = target.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            return Err(EndpointError::Target {
                target: target.to_string(),
                reason: "expected `echo`, `http`, `inline_echo` or a `host:port` address"
                    .to_string(),
            });
        }
        Ok(Target::Address(target.to_string()))
    }
}

/// One endpoint as the ingress and the API see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundEndpoint {
    /// `ep_` + 16 hex digits of a hash of the canonical URL: stable across restarts.
    pub id: String,
    pub url: EndpointUrl,
    pub target: Target,
    pub faults: Faults,
    pub created_at: OffsetDateTime,
    /// The address the ingress dials, with built-in targets resolved to their listeners; none
    /// for `inline_echo`.
    dial: Option<String>,
}

impl BoundEndpoint {
    /// Where the ingress connects this endpoint's connections; `None`: it serves them itself.
    pub fn dial_address(&self) -> Option<&str> {
        self.dial.as_deref()
    }
}

/// A stable id for a canonical URL: FNV-1a 64 (fixed by its spec, unlike std's `DefaultHasher`).
pub fn endpoint_id(url: &EndpointUrl) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in url.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("ep_{hash:016x}")
}

/// The live set of endpoints, shared by the ingress (lookups) and the API (list, add, remove).
#[derive(Debug)]
pub struct EndpointRegistry {
    table: ArcSwap<Vec<Arc<BoundEndpoint>>>,
    echo: SocketAddr,
    http: SocketAddr,
}

impl EndpointRegistry {
    /// A registry resolving `echo`/`http` targets to the given backend addresses.
    pub fn new(
        echo: SocketAddr,
        http: SocketAddr,
        endpoints: &[EndpointConfig],
    ) -> Result<Self, EndpointError> {
        let registry = EndpointRegistry {
            table: ArcSwap::from_pointee(Vec::new()),
            echo,
            http,
        };
        for endpoint in endpoints {
            registry.add(endpoint)?;
        }
        Ok(registry)
    }

    /// The endpoint serving `(host, port)`, as a `ConnRequest` names them.
    pub fn lookup(&self, host: &str, port: i64) -> Option<Arc<BoundEndpoint>> {
        self.table
            .load()
            .iter()
            .find(|e| e.url.host == host && i64::from(e.url.port) == port)
            .cloned()
    }

    /// Every endpoint, oldest first.
    pub fn list(&self) -> Arc<Vec<Arc<BoundEndpoint>>> {
        self.table.load_full()
    }

    /// Adds an endpoint; its `(host, port)` must be free.
    pub fn add(&self, config: &EndpointConfig) -> Result<Arc<BoundEndpoint>, EndpointError> {
        let url: EndpointUrl = config.url.parse()?;
        let target: Target = config.target.parse()?;
        let faults =
            Faults::try_from(&config.faults).map_err(|(field, reason)| EndpointError::Faults {
                url: config.url.clone(),
                field,
                reason,
            })?;
        let dial = match &target {
            Target::Echo => Some(self.echo.to_string()),
            Target::Http => Some(self.http.to_string()),
            Target::InlineEcho => None,
            Target::Address(addr) => Some(addr.clone()),
        };
        let now = OffsetDateTime::now_utc();
        let endpoint = Arc::new(BoundEndpoint {
            id: endpoint_id(&url),
            url,
            target,
            faults,
            // The API shows RFC 3339 timestamps to the second.
            created_at: now.replace_nanosecond(0).unwrap_or(now),
            dial,
        });
        let mut outcome = Ok(());
        self.table.rcu(|current| {
            if let Some(existing) = current
                .iter()
                .find(|e| e.url.host == endpoint.url.host && e.url.port == endpoint.url.port)
            {
                outcome = Err(EndpointError::Duplicate {
                    url: endpoint.url.to_string(),
                    host: endpoint.url.host.clone(),
                    port: endpoint.url.port,
                    existing: existing.url.to_string(),
                });
                return Arc::clone(current);
            }
            outcome = Ok(());
            let mut next = Vec::clone(current);
            next.push(Arc::clone(&endpoint));
            Arc::new(next)
        });
        outcome.map(|()| endpoint)
    }

    /// Removes the endpoint with this URL (canonicalised first, so `http://a.b` finds
    /// `http://a.b:80`).
    pub fn remove(&self, url: &str) -> Result<Arc<BoundEndpoint>, EndpointError> {
        let url: EndpointUrl = url.parse()?;
        let mut removed = None;
        self.table.rcu(|current| {
            removed = current.iter().find(|e| e.url == url).cloned();
            if removed.is_none() {
                return Arc::clone(current);
            }
            Arc::new(current.iter().filter(|e| e.url != url).cloned().collect())
        });
        removed.ok_or_else(|| EndpointError::NotFound(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FaultsConfig;

    fn endpoint(url: &str, target: &str) -> EndpointConfig {
        EndpointConfig {
            url: url.into(),
            target: target.into(),
            faults: FaultsConfig::default(),
        }
    }

    #[test]
    fn urls_canonicalise_with_default_ports() {
        let cases = [
            ("http://web.demo", "http://web.demo:80"),
            ("https://web.demo", "https://web.demo:443"),
            ("tls://web.demo", "tls://web.demo:443"),
            ("tcp://db.demo:5432", "tcp://db.demo:5432"),
            ("http://web.demo:8080", "http://web.demo:8080"),
        ];
        for (input, canonical) in cases {
            let url: EndpointUrl = input.parse().unwrap();
            assert_eq!(url.to_string(), canonical);
        }
    }

    #[test]
    fn urls_outside_the_protocol_are_rejected() {
        for bad in [
            "web.demo:80",
            "ftp://web.demo:21",
            "tcp://db.demo",
            "http://web:80",
            "http://a.b.c:80",
            "http://Web.demo:80",
            "http://-web.demo:80",
            "http://web.demo:0",
            "http://web.demo:70000",
            "http://web.demo:80/path",
            "http://user@web.demo:80",
            "http://.demo:80",
        ] {
            assert!(
                bad.parse::<EndpointUrl>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!("echo".parse::<Target>(), Ok(Target::Echo));
        assert_eq!("http".parse::<Target>(), Ok(Target::Http));
        assert_eq!("inline_echo".parse::<Target>(), Ok(Target::InlineEcho));
        assert_eq!(
            "localhost:5432".parse::<Target>(),
            Ok(Target::Address("localhost:5432".into()))
        );
        assert_eq!(
            "[::1]:80".parse::<Target>(),
            Ok(Target::Address("[::1]:80".into()))
        );
        for bad in ["", "echoo", "host", "host:", ":80", "host:0", "host:x"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a: EndpointUrl = "tcp://echo.demo:7000".parse().unwrap();
        let b: EndpointUrl = "tcp://echo.demo:7001".parse().unwrap();
        assert_eq!(endpoint_id(&a), endpoint_id(&a.clone()));
        assert_ne!(endpoint_id(&a), endpoint_id(&b));
        assert!(endpoint_id(&a).starts_with("ep_"));
        assert_eq!(endpoint_id(&a).len(), 3 + 16);
    }

    #[test]
    fn registry_resolves_builtins_and_rejects_duplicates() {
        let echo: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let registry = EndpointRegistry::new(
            echo,
            http,
            &[
                endpoint("tcp://echo.demo:7000", "echo"),
                endpoint("http://web.demo", "http"),
            ],
        )
        .unwrap();
        let e = registry.lookup("echo.demo", 7000).unwrap();
        assert_eq!(e.dial_address(), Some("127.0.0.1:1001"));
        assert_eq!(
            registry.lookup("web.demo", 80).unwrap().dial_address(),
            Some("127.0.0.1:1002")
        );
        let inline = registry
            .add(&endpoint("tcp://inline.demo:7000", "inline_echo"))
            .unwrap();
        assert_eq!(inline.target, Target::InlineEcho);
        assert_eq!(inline.dial_address(), None);
        registry.remove("tcp://inline.demo:7000").unwrap();
        assert!(registry.lookup("echo.demo", 7001).is_none());
        assert!(registry.lookup("echo.demo", 7000 + 65536).is_none());
        assert!(matches!(
            registry.add(&endpoint("http://echo.demo:7000", "echo")),
            Err(EndpointError::Duplicate { .. })
        ));
        let removed = registry.remove("http://web.demo").unwrap();
        assert_eq!(removed.url.to_string(), "http://web.demo:80");
        assert!(registry.lookup("web.demo", 80).is_none());
        assert_eq!(
            registry.remove("http://web.demo:80"),
            Err(EndpointError::NotFound("http://web.demo:80".into()))
        );
        registry
            .add(&endpoint("tcp://db.demo:5432", "127.0.0.1:5432"))
            .unwrap();
        let urls: Vec<String> = registry.list().iter().map(|e| e.url.to_string()).collect();
        assert_eq!(urls, ["tcp://echo.demo:7000", "tcp://db.demo:5432"]);
    }
}
