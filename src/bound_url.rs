//! Bound endpoint URLs → `(scheme, service.namespace, port)`, per PROTOCOL.md §2.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
    Tls,
    Tcp,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "tls" => Some(Scheme::Tls),
            "tcp" => Some(Scheme::Tcp),
            _ => None,
        }
    }

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

/// A canonical bound endpoint: `scheme://service.namespace:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundUrl {
    pub scheme: Scheme,
    /// `service.namespace`, lowercase: the ConnRequest's `host`.
    pub host: String,
    /// The endpoint URL's port: the ConnRequest's `port`.
    pub port: u16,
}

impl fmt::Display for BoundUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

impl BoundUrl {
    /// Parses `url` (with `proto` from the API when known). Errors say what rule was broken.
    pub fn parse(url: &str, proto: Option<&str>) -> Result<BoundUrl, String> {
        let proto = proto.filter(|p| !p.is_empty());
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) => {
                let scheme = Scheme::parse(s).ok_or_else(|| {
                    format!("`{url}`: scheme `{s}` is not one of http, https, tls, tcp")
                })?;
                if let Some(p) = proto {
                    if !p.eq_ignore_ascii_case(s) {
                        return Err(format!("`{url}`: scheme `{s}` differs from proto `{p}`"));
                    }
                }
                (scheme, rest)
            }
            None => {
                let s = proto.unwrap_or("https");
                let scheme = Scheme::parse(s).ok_or_else(|| {
                    format!("`{url}`: proto `{s}` is not one of http, https, tls, tcp")
                })?;
                (scheme, url)
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{url}`: a bound endpoint URL has no path, query or user part"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("`{url}`: port `{p}` is not a number from 1 to 65535")
                })?;
                (h, port)
            }
            None => {
                let port = scheme.default_port().ok_or_else(|| {
                    format!(
                        "`{url}`: a {} endpoint needs an explicit port",
                        scheme.as_str()
                    )
                })?;
                (authority, port)
            }
        };
        let host = host.to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() != 2 || !labels.iter().all(|l| is_dns_label(l)) {
            return Err(format!(
                "`{url}`: the host must be exactly `service.namespace` (two DNS labels), got `{host}`"
            ));
        }
        Ok(BoundUrl { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str, proto: Option<&str>) -> String {
        BoundUrl::parse(url, proto).unwrap().to_string()
    }

    #[test]
    fn canonical_forms_and_default_ports() {
        assert_eq!(ok("http://shop.default", None), "http://shop.default:80");
        assert_eq!(
            ok("https://shop.default/", None),
            "https://shop.default:443"
        );
        assert_eq!(ok("tls://db.prod", None), "tls://db.prod:443");
        assert_eq!(
            ok("tcp://Orders.Default:5432", None),
            "tcp://orders.default:5432"
        );
        assert_eq!(
            ok("orders.default:5432", Some("tcp")),
            "tcp://orders.default:5432"
        );
        assert_eq!(ok("shop.default", None), "https://shop.default:443");
    }

    #[test]
    fn rule_breaks_are_named() {
        let cases = [
            ("tcp://orders.default", None, "explicit port"),
            ("http://a.b.c", None, "exactly `service.namespace`"),
            ("http://single", None, "exactly `service.namespace`"),
            ("ftp://a.b", None, "not one of"),
            ("http://a.b", Some("tcp"), "differs from proto"),
            ("http://a.b:0", None, "1 to 65535"),
            ("http://a.b:99999", None, "1 to 65535"),
            ("http://a.b/path", None, "no path"),
            ("http://-a.b", None, "exactly `service.namespace`"),
        ];
        for (url, proto, want) in cases {
            let e = BoundUrl::parse(url, proto).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
        }
    }
}
