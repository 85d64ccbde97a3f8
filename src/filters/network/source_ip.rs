//! `source_ip`: admits connections by client address. `deny` wins over `allow`; when `allow` is
//! given, every address outside it is denied. A denied connection is closed at accept (http
//! listeners: `503`), never answered `403`: this acts on connections, not requests.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{Conn, ConnOutcome, ConnService, NetworkFilter};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIp {
    /// Networks (`10.0.0.0/8`, `::1/128`, or a bare address) whose clients are admitted; when
    /// set, every other client is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Networks whose clients are denied, even when `allow` covers them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A network to match client addresses against; IPv4-mapped IPv6 clients match as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: u128,
    mask: u128,
    v4: bool,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, String> {
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text.trim(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a network like `10.0.0.0/8`"))?;
        let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u32 =
            match prefix {
                None => bits,
                Some(p) => p.parse().ok().filter(|p| *p <= bits).ok_or_else(|| {
                    format!("`{text}`: the prefix must be a number from 0 to {bits}")
                })?,
            };
        let (value, v4) = to_bits(ip);
        let mask = if prefix == 0 {
            0
        } else {
            (u128::MAX << (128 - prefix)) >> (128 - bits)
        };
        if value & !mask != 0 {
            return Err(format!(
                "`{text}` has host bits set; write the network address (prefix {prefix})"
            ));
        }
        Ok(Network {
            addr: value,
            mask,
            v4,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (value, v4) = to_bits(ip);
        v4 == self.v4 && value & self.mask == self.addr
    }
}

fn to_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), true),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(v6), false),
        },
    }
}

/// The compiled lists.
#[derive(Debug, Default)]
pub struct Acl {
    allow: Option<Vec<Network>>,
    deny: Vec<Network>,
}

impl Acl {
    pub fn admits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|n| n.contains(ip)))
    }
}

impl SourceIp {
    pub fn compile(&self) -> Result<Acl, Vec<FilterIssue>> {
        let mut issues = Vec::new();
        let mut list = |field: &str, items: &[String]| -> Vec<Network> {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    Network::parse(t)
                        .map_err(|e| issues.push((format!("{field}[{i}]"), e)))
                        .ok()
                })
                .collect()
        };
        let allow = list("allow", &self.allow);
        let deny = list("deny", &self.deny);
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Acl {
            allow: (!self.allow.is_empty()).then_some(allow),
            deny,
        })
    }
}

impl NetworkFilter for SourceIp {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        let mut issues = self.compile().err().unwrap_or_default();
        if self.allow.is_empty() && self.deny.is_empty() {
            issues.push((String::new(), "set `allow`, `deny` or both".into()));
        }
        issues
    }

    fn layer(&self, inner: ConnService, _ctx: &BuildCtx<'_>) -> ConnService {
        let acl = Arc::new(self.compile().unwrap_or_default());
        ConnService::new(SourceIpLayer { acl }.layer(inner))
    }
}

#[derive(Clone)]
pub struct SourceIpLayer {
    pub acl: Arc<Acl>,
}

crate::filters::around_layer!(SourceIpLayer => SourceIpService, Conn, ConnOutcome);

impl SourceIpLayer {
    fn around<S>(&self, next: S, conn: Conn) -> BoxFuture<'static, Result<ConnOutcome, Infallible>>
    where
        S: Service<Conn, Response = ConnOutcome, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let admitted = self.acl.admits(conn.peer.ip());
        let inner = next;
        Box::pin(async move {
            if admitted {
                inner.oneshot(conn).await
            } else {
                Ok(conn
                    .reject("source_ip", "source address denied", None)
                    .await)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        SourceIp {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
        .compile()
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_allow_excludes_the_rest() {
        let a = acl(
            &["127.0.0.0/8", "10.0.0.0/8"],
            &["10.9.0.0/16", "127.0.0.4"],
        );
        assert!(a.admits(ip("127.0.0.1")));
        assert!(!a.admits(ip("127.0.0.4")));
        assert!(a.admits(ip("10.1.2.3")));
        assert!(!a.admits(ip("10.9.2.3")));
        assert!(!a.admits(ip("192.168.1.1")));
        assert!(!a.admits(ip("::1")));
        assert!(
            a.admits(ip("::ffff:127.0.0.1")),
            "IPv4-mapped matches as IPv4"
        );
    }

    #[test]
    fn deny_alone_admits_everything_else() {
        let a = acl(&[], &["0.0.0.0/0"]);
        assert!(!a.admits(ip("127.0.0.1")));
        assert!(a.admits(ip("::1")));
        let a = acl(&[], &["::/0"]);
        assert!(a.admits(ip("127.0.0.1")));
        assert!(!a.admits(ip("2001:db8::1")));
    }

    #[test]
    fn bad_networks_are_named_by_field() {
        let issues = SourceIp {
            allow: vec!["10.0.0.1/8".into(), "10.0.0.0/8".into()],
            deny: vec!["nope".into(), "::1/129".into()],
        }
        .check(&CheckCtx::any());
        let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["allow[0]", "deny[0]", "deny[1]"]);
    }
}
