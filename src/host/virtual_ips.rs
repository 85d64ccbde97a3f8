//! `expose.mode: virtual`: each `service.namespace` gets a local IP of its own from `expose.cidr`
//! and its endpoints listen there on their URLs' own ports, so clients keep the in-cluster name
//! (through the hosts file) and port.
//!
//! The address belongs to the host name rather than to one endpoint URL: a hosts file maps a name
//! to one address, so `http://web.ns:80` and `tcp://web.ns:5432` must share it to both resolve.
//! The address is remembered in `allocations.json`, and stays reserved for a departed host while
//! other addresses are free, so a returning endpoint finds its old address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::allocations::{Allocations, Placement, override_for, override_ip};
use super::cidr::Cidr;
use crate::bound_url::BoundUrl;
use crate::config::ExposeOverride;

pub(super) fn place(
    endpoints: &BTreeSet<BoundUrl>,
    cidr: &Cidr,
    overrides: &[ExposeOverride],
    taken: &BTreeSet<SocketAddr>,
    alloc: &mut Allocations,
) -> (Vec<Placement>, Vec<String>) {
    let mut errors = Vec::new();
    let hosts: BTreeSet<&str> = endpoints.iter().map(|u| u.host.as_str()).collect();
    // IPs a fresh allocation must not hand out: static listeners' and pinned ones.
    let mut used: BTreeSet<IpAddr> = taken.iter().map(|a| a.ip()).collect();
    let mut ip_of: BTreeMap<&str, IpAddr> = BTreeMap::new();
    let mut unplaceable: BTreeMap<&str, String> = BTreeMap::new();

    // Pinned by an override's `address` (overrides match on the host, so every endpoint of a
    // host gets the same one).
    let mut pending = Vec::new();
    for url in endpoints {
        if ip_of.contains_key(url.host.as_str()) || unplaceable.contains_key(url.host.as_str()) {
            continue;
        }
        match override_ip(override_for(overrides, url)) {
            Ok(Some(ip)) => {
                used.insert(ip);
                ip_of.insert(&url.host, ip);
            }
            Ok(None) => {
                if !pending.contains(&url.host.as_str()) {
                    pending.push(url.host.as_str());
                }
            }
            Err(e) => {
                unplaceable.insert(&url.host, e);
            }
        }
    }
    // Remembered addresses next, so a newcomer never takes an address an existing host had.
    let mut fresh = Vec::new();
    for host in pending {
        match alloc.address_of(host) {
            Some(ip) if cidr.contains(ip) && used.insert(ip) => {
                ip_of.insert(host, ip);
            }
            _ => fresh.push(host),
        }
    }
    if !fresh.is_empty() {
        let departed = alloc.departed_addresses(&hosts);
        // Allocation only moves forward, so one cursor serves every newcomer.
        let mut cursor = cidr.hosts();
        for host in fresh {
            // Never-used addresses first; then those departed hosts left, lowest first.
            let chosen = cursor
                .by_ref()
                .find(|ip| !used.contains(ip) && !departed.contains(ip))
                .or_else(|| {
                    departed
                        .iter()
                        .copied()
                        .find(|ip| cidr.contains(*ip) && !used.contains(ip))
                });
            match chosen {
                Some(ip) => {
                    used.insert(ip);
                    alloc.assign_address(host, ip);
                    ip_of.insert(host, ip);
                }
                None => {
                    unplaceable.insert(host, format!("no free address left in {cidr}"));
                }
            }
        }
    }

    // Sockets: the endpoint URL's port (or the override's) on its host's address.
    let mut sockets: BTreeMap<SocketAddr, String> = taken
        .iter()
        .map(|a| (*a, "a static listener".to_owned()))
        .collect();
    let mut placed = Vec::with_capacity(endpoints.len());
    for url in endpoints {
        let Some(ip) = ip_of.get(url.host.as_str()) else {
            let why = unplaceable
                .get(url.host.as_str())
                .map_or("no address", String::as_str);
            errors.push(format!("{url}: {why}"));
            continue;
        };
        let port = override_for(overrides, url)
            .and_then(|o| o.port)
            .unwrap_or(url.port);
        let addr = SocketAddr::new(*ip, port);
        // Port 0: the OS picks one at bind time, so it never clashes here.
        if port != 0 {
            if let Some(other) = sockets.get(&addr) {
                errors.push(format!("{url}: {addr} is already used by {other}"));
                continue;
            }
            sockets.insert(addr, url.to_string());
        }
        placed.push(Placement::own(url, addr));
    }
    (placed, errors)
}

#[cfg(test)]
mod tests {
    use super::super::allocations::{Exposure, place};
    use super::*;
    use crate::identity::StateStore;

    fn set(urls: &[&str]) -> BTreeSet<BoundUrl> {
        urls.iter()
            .map(|u| BoundUrl::parse(u, None).unwrap())
            .collect()
    }

    fn exposure(cidr: &str) -> Exposure {
        Exposure::Virtual {
            cidr: Cidr::parse(cidr).unwrap(),
        }
    }

    fn run(
        urls: &[&str],
        overrides: &[ExposeOverride],
        alloc: &mut Allocations,
    ) -> (Vec<(String, String)>, Vec<String>) {
        let (p, e) = place(
            &set(urls),
            &exposure("127.77.0.0/29"),
            overrides,
            &BTreeSet::new(),
            alloc,
        );
        let p = p
            .into_iter()
            .map(|p| (p.url.to_string(), p.address.to_string()))
            .collect();
        (p, e)
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn own_address_per_host_at_the_endpoint_port_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let load = || Allocations::load(Some(StateStore::open(dir.path()).unwrap()));
        let mut alloc = load();
        let (p, e) = run(
            &["tcp://a.ns:5432", "tcp://b.ns:5432", "http://a.ns:80"],
            &[],
            &mut alloc,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            p,
            pairs(&[
                ("http://a.ns:80", "127.77.0.1:80"),
                ("tcp://a.ns:5432", "127.77.0.1:5432"),
                ("tcp://b.ns:5432", "127.77.0.2:5432"),
            ])
        );
        // Placing again changes nothing.
        assert_eq!(
            run(
                &["tcp://a.ns:5432", "tcp://b.ns:5432", "http://a.ns:80"],
                &[],
                &mut alloc
            )
            .0,
            p
        );
        alloc.save();

        // Restart: `a` is gone, `c` arrives and does not take `a`'s address; `b` keeps its own.
        let mut alloc = load();
        let (p, _) = run(&["tcp://b.ns:5432", "tcp://c.ns:1"], &[], &mut alloc);
        assert_eq!(
            p,
            pairs(&[
                ("tcp://b.ns:5432", "127.77.0.2:5432"),
                ("tcp://c.ns:1", "127.77.0.3:1"),
            ])
        );
        alloc.save();
        // `a` returns (after another restart) and finds its address.
        let mut alloc = load();
        let (p, _) = run(&["tcp://a.ns:5432", "tcp://c.ns:1"], &[], &mut alloc);
        assert_eq!(
            p,
            pairs(&[
                ("tcp://a.ns:5432", "127.77.0.1:5432"),
                ("tcp://c.ns:1", "127.77.0.3:1"),
            ])
        );
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("allocations.json")).unwrap())
                .unwrap();
        assert_eq!(stored["addresses"]["a.ns"], "127.77.0.1");
        assert_eq!(stored["ports"], serde_json::json!({}));
    }

    #[test]
    fn a_full_network_reclaims_departed_addresses_then_reports() {
        let mut alloc = Allocations::load(None);
        // A /29 has six host addresses.
        let four = [
            "tcp://a.ns:1",
            "tcp://b.ns:1",
            "tcp://c.ns:1",
            "tcp://d.ns:1",
        ];
        run(&four, &[], &mut alloc);
        let (p, e) = run(
            &[
                "tcp://e.ns:1",
                "tcp://f.ns:1",
                "tcp://g.ns:1",
                "tcp://h.ns:1",
            ],
            &[],
            &mut alloc,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            p.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(),
            [
                "127.77.0.5:1",
                "127.77.0.6:1",
                "127.77.0.1:1",
                "127.77.0.2:1"
            ],
            "fresh addresses first, then the departed ones"
        );
        let (p, e) = run(
            &[
                "tcp://a.ns:1",
                "tcp://c.ns:1",
                "tcp://d.ns:1",
                "tcp://e.ns:1",
                "tcp://f.ns:1",
                "tcp://g.ns:1",
                "tcp://h.ns:1",
            ],
            &[],
            &mut alloc,
        );
        assert_eq!(p.len(), 6);
        assert_eq!(e, ["tcp://a.ns:1: no free address left in 127.77.0.0/29"]);
    }

    #[test]
    fn overrides_pin_the_address_and_replace_the_port() {
        let mut alloc = Allocations::load(None);
        let o = [
            ExposeOverride {
                host: "orders.*".into(),
                address: Some("127.77.0.1".into()),
                port: Some(15432),
            },
            ExposeOverride {
                host: "web.*".into(),
                address: None,
                port: Some(8080),
            },
        ];
        let (p, e) = run(
            &["tcp://orders.prod:5432", "http://web.ns:80", "tcp://x.ns:1"],
            &o,
            &mut alloc,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            p,
            pairs(&[
                ("http://web.ns:80", "127.77.0.2:8080"),
                ("tcp://orders.prod:5432", "127.77.0.1:15432"),
                ("tcp://x.ns:1", "127.77.0.3:1"),
            ]),
            "the pinned address is not handed out again"
        );
    }

    #[test]
    fn two_endpoints_of_one_host_on_one_port_conflict_by_name() {
        let mut alloc = Allocations::load(None);
        let (p, e) = run(&["https://a.ns:443", "tls://a.ns:443"], &[], &mut alloc);
        assert_eq!(p, pairs(&[("https://a.ns:443", "127.77.0.1:443")]));
        assert_eq!(
            e,
            ["tls://a.ns:443: 127.77.0.1:443 is already used by https://a.ns:443"]
        );
    }
}
