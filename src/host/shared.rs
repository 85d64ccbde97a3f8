//! `expose.mode: shared`: every endpoint listens on `expose.address` at its URL's own port, and
//! endpoints on the same address share one listener, grouped after overrides:
//!
//! - `http` endpoints: one http listener, routed by Host (`service.namespace`);
//! - `https` and `tls` endpoints: one tls listener, routed by SNI (passthrough);
//! - a `tcp` endpoint has nothing to route by, so it cannot share its port.
//!
//! The first endpoint in canonical URL order decides what a port is; every later endpoint that
//! does not fit (another tcp endpoint, another family, a name already routed there) is skipped
//! with an error naming both. A listener's protocol follows the scheme only, never the number of
//! endpoints sharing it, so a second endpoint arriving never rebinds the first one's socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::allocations::{Placement, override_for, override_ip};
use crate::bound_url::{BoundUrl, Scheme};
use crate::config::{ExposeOverride, Protocol};

/// A shared address: what it is, who came first, and which names it routes.
struct Port {
    protocol: Protocol,
    first: String,
    /// Host (http) or server name (tls) → the endpoint it routes to.
    routes: BTreeMap<String, String>,
}

/// The listener protocol an endpoint needs in this mode.
pub fn protocol_of(scheme: Scheme) -> Protocol {
    match scheme {
        Scheme::Http => Protocol::Http,
        Scheme::Https | Scheme::Tls => Protocol::Tls,
        Scheme::Tcp => Protocol::Tcp,
    }
}

/// "an http", "a tcp": every word here that starts with `h` is read out letter by letter.
fn article(word: &str) -> &'static str {
    if word.starts_with('h') { "an" } else { "a" }
}

fn name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Tls => "tls",
    }
}

pub(super) fn place(
    endpoints: &BTreeSet<BoundUrl>,
    default_ip: IpAddr,
    overrides: &[ExposeOverride],
    taken: &BTreeSet<SocketAddr>,
) -> (Vec<Placement>, Vec<String>) {
    let mut order: Vec<(String, &BoundUrl)> =
        endpoints.iter().map(|u| (u.to_string(), u)).collect();
    order.sort();
    let mut ports: BTreeMap<SocketAddr, Port> = BTreeMap::new();
    let mut placed = Vec::with_capacity(endpoints.len());
    let mut errors = Vec::new();
    for (text, url) in order {
        let o = override_for(overrides, url);
        let ip = match override_ip(o) {
            Ok(ip) => ip.unwrap_or(default_ip),
            Err(e) => {
                errors.push(format!("{text}: {e}"));
                continue;
            }
        };
        let port = o.and_then(|o| o.port).unwrap_or(url.port);
        let address = SocketAddr::new(ip, port);
        let protocol = protocol_of(url.scheme);
        if taken.contains(&address) {
            errors.push(format!("{text}: {address} is used by a static listener"));
            continue;
        }
        let shared_name = format!("{}@{address}", name(protocol));
        let listener = match protocol {
            // Port 0 (an override): the OS picks a port at bind time, so there is nothing to share.
            _ if port == 0 => text.clone(),
            Protocol::Tcp => text.clone(),
            Protocol::Http | Protocol::Tls => shared_name,
        };
        match ports.get_mut(&address) {
            _ if port == 0 => {}
            None => {
                ports.insert(
                    address,
                    Port {
                        protocol,
                        first: text.clone(),
                        routes: [(url.host.clone(), text.clone())].into(),
                    },
                );
            }
            Some(p) if p.protocol != protocol => {
                let (theirs, ours, scheme) =
                    (name(p.protocol), name(protocol), url.scheme.as_str());
                errors.push(format!(
                    "{text}: {address} is taken by {} ({} {theirs} listener); {} {scheme} endpoint needs {} {ours} listener (move one of them with an override)",
                    p.first,
                    article(theirs),
                    article(scheme),
                    article(ours),
                ));
                continue;
            }
            Some(p) if protocol == Protocol::Tcp => {
                errors.push(format!(
                    "{text}: {address} is taken by {}; a tcp listener cannot be shared (move one of them with an override)",
                    p.first
                ));
                continue;
            }
            Some(p) => {
                if let Some(other) = p.routes.get(&url.host) {
                    let by = if protocol == Protocol::Http {
                        "Host"
                    } else {
                        "SNI"
                    };
                    errors.push(format!(
                        "{text}: {address} already routes {by} `{}` to {other}",
                        url.host
                    ));
                    continue;
                }
                p.routes.insert(url.host.clone(), text.clone());
            }
        }
        placed.push(Placement {
            url: url.clone(),
            address,
            protocol,
            listener,
        });
    }
    (placed, errors)
}

#[cfg(test)]
mod tests {
    use super::super::allocations::{Allocations, Exposure, place};
    use super::*;

    /// (url, address, protocol, listener name)
    type Row = (String, String, Protocol, String);

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn run(urls: &[&str], overrides: &[ExposeOverride], taken: &[&str]) -> (Vec<Row>, Vec<String>) {
        let set = urls
            .iter()
            .map(|u| BoundUrl::parse(u, None).unwrap())
            .collect();
        let taken = taken.iter().map(|a| a.parse().unwrap()).collect();
        let (p, e) = place(
            &set,
            &Exposure::Shared { ip: IP },
            overrides,
            &taken,
            &mut Allocations::load(None),
        );
        let p = p
            .into_iter()
            .map(|p| {
                (
                    p.url.to_string(),
                    p.address.to_string(),
                    p.protocol,
                    p.listener,
                )
            })
            .collect();
        (p, e)
    }

    fn row(
        url: &str,
        addr: &str,
        protocol: Protocol,
        listener: &str,
    ) -> (String, String, Protocol, String) {
        (url.into(), addr.into(), protocol, listener.into())
    }

    #[test]
    fn one_listener_per_port_by_family() {
        let (p, e) = run(
            &[
                "http://shop.default:8080",
                "http://cart.default:8080",
                "https://pay.default",
                "tls://db.prod:443",
                "tcp://orders.default:5432",
            ],
            &[],
            &[],
        );
        assert!(e.is_empty(), "{e:?}");
        use Protocol::*;
        assert_eq!(
            p,
            [
                row(
                    "http://cart.default:8080",
                    "127.0.0.1:8080",
                    Http,
                    "http@127.0.0.1:8080"
                ),
                row(
                    "http://shop.default:8080",
                    "127.0.0.1:8080",
                    Http,
                    "http@127.0.0.1:8080"
                ),
                row(
                    "https://pay.default:443",
                    "127.0.0.1:443",
                    Tls,
                    "tls@127.0.0.1:443"
                ),
                row(
                    "tls://db.prod:443",
                    "127.0.0.1:443",
                    Tls,
                    "tls@127.0.0.1:443"
                ),
                row(
                    "tcp://orders.default:5432",
                    "127.0.0.1:5432",
                    Tcp,
                    "tcp://orders.default:5432"
                ),
            ]
        );
        // Alone on its port, an http endpoint still gets the http listener it would share.
        let (p, _) = run(&["http://shop.default:8080"], &[], &[]);
        assert_eq!(p[0].3, "http@127.0.0.1:8080");
    }

    #[test]
    fn conflicts_skip_the_later_endpoint_naming_both() {
        let (p, e) = run(
            &[
                "tcp://b.ns:7100",
                "tcp://a.ns:7100",
                "tcp://c.ns:7000",
                "http://web.ns:7000",
                "https://x.ns:9443",
                "tls://x.ns:9443",
                "http://free.ns:80",
            ],
            &[],
            &["127.0.0.1:80"],
        );
        let urls: Vec<&str> = p.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            urls,
            ["http://web.ns:7000", "https://x.ns:9443", "tcp://a.ns:7100"]
        );
        assert_eq!(
            e,
            [
                "http://free.ns:80: 127.0.0.1:80 is used by a static listener",
                "tcp://b.ns:7100: 127.0.0.1:7100 is taken by tcp://a.ns:7100; a tcp listener cannot be shared (move one of them with an override)",
                "tcp://c.ns:7000: 127.0.0.1:7000 is taken by http://web.ns:7000 (an http listener); a tcp endpoint needs a tcp listener (move one of them with an override)",
                "tls://x.ns:9443: 127.0.0.1:9443 already routes SNI `x.ns` to https://x.ns:9443",
            ]
        );
    }

    #[test]
    fn overrides_move_endpoints_before_grouping() {
        let o = [
            ExposeOverride {
                host: "b.*".into(),
                address: None,
                port: Some(7001),
            },
            ExposeOverride {
                host: "c.*".into(),
                address: Some("127.0.0.2".into()),
                port: Some(8080),
            },
            ExposeOverride {
                host: "d.*".into(),
                address: None,
                port: Some(8080),
            },
        ];
        let (p, e) = run(
            &[
                "tcp://a.ns:7000",
                "tcp://b.ns:7000",
                "http://c.ns:80",
                "http://d.ns:80",
            ],
            &o,
            &[],
        );
        assert!(e.is_empty(), "{e:?}");
        let addrs: Vec<(&str, &str, &str)> = p
            .iter()
            .map(|r| (r.0.as_str(), r.1.as_str(), r.3.as_str()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("http://c.ns:80", "127.0.0.2:8080", "http@127.0.0.2:8080"),
                ("http://d.ns:80", "127.0.0.1:8080", "http@127.0.0.1:8080"),
                ("tcp://a.ns:7000", "127.0.0.1:7000", "tcp://a.ns:7000"),
                ("tcp://b.ns:7000", "127.0.0.1:7001", "tcp://b.ns:7000"),
            ]
        );
    }
}
