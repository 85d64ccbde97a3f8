//! Where each bound endpoint is exposed, per `expose.mode`, and the persistent table that keeps
//! it there across polls and restarts (`allocations.json`).
//!
//! `port_range` lives here: one local port per endpoint, first free in the range. The other
//! modes are in `virtual_ips` and `shared`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use super::cidr::Cidr;
use crate::bound_url::BoundUrl;
use crate::config::{Expose, ExposeMode, ExposeOverride, Protocol};
use crate::identity::StateStore;

const FILE: &str = "allocations.json";

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Stored {
    /// Mode `port_range`: canonical endpoint URL → port.
    ports: BTreeMap<String, u16>,
    /// Mode `virtual`: `service.namespace` → IP. Absent in files written before that mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    addresses: BTreeMap<String, IpAddr>,
}

/// The persistent endpoint → port / address table.
#[derive(Debug, Default)]
pub struct Allocations {
    store: Option<StateStore>,
    stored: Stored,
    dirty: bool,
}

/// Where one endpoint is exposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub url: BoundUrl,
    pub address: SocketAddr,
    /// The listener's protocol: `tcp` (a byte pipe), except in mode `shared`, where `http`
    /// endpoints get an http listener and `https` / `tls` endpoints a tls listener.
    pub protocol: Protocol,
    /// The listener's name: the canonical URL for a listener of its own; `http@ip:port` or
    /// `tls@ip:port` for a listener endpoints share (mode `shared`). The name does not depend on
    /// how many endpoints share it, so a newcomer never rebinds the socket.
    pub listener: String,
}

impl Placement {
    /// A tcp listener of its own, named after the endpoint.
    pub(super) fn own(url: &BoundUrl, address: SocketAddr) -> Placement {
        Placement {
            url: url.clone(),
            address,
            protocol: Protocol::Tcp,
            listener: url.to_string(),
        }
    }
}

/// `expose:` checked and parsed: what [`place`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    PortRange {
        ip: IpAddr,
        ports: RangeInclusive<u16>,
    },
    Virtual {
        cidr: Cidr,
    },
    Shared {
        ip: IpAddr,
    },
}

impl Exposure {
    /// Checks the mode-dependent fields of `expose`. Errors are `(field under expose, message)`.
    pub fn from_config(expose: &Expose) -> Result<Exposure, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let ip = expose.address.parse::<IpAddr>().map_err(|_| {
            (
                "address",
                format!("`{}` is not an IP address", expose.address),
            )
        });
        let exposure = match expose.mode {
            ExposeMode::PortRange => {
                let ports = match &expose.ports {
                    None => Err((
                        "ports",
                        "mode port_range needs `ports`, a range like `10000-10999`".to_owned(),
                    )),
                    Some(p) => crate::config::parse_port_range(p).map_err(|e| ("ports", e)),
                };
                match (ip, ports) {
                    (Ok(ip), Ok(ports)) => Some(Exposure::PortRange { ip, ports }),
                    (ip, ports) => {
                        errors.extend(ip.err());
                        errors.extend(ports.err());
                        None
                    }
                }
            }
            ExposeMode::Virtual => {
                let text = expose
                    .cidr
                    .as_deref()
                    .unwrap_or(crate::config::DEFAULT_VIRTUAL_CIDR);
                match Cidr::parse(text) {
                    Ok(cidr) => Some(Exposure::Virtual { cidr }),
                    Err(e) => {
                        errors.push(("cidr", e));
                        None
                    }
                }
            }
            ExposeMode::Shared => match ip {
                Ok(ip) => Some(Exposure::Shared { ip }),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        match exposure {
            Some(e) if errors.is_empty() => Ok(e),
            _ => Err(errors),
        }
    }
}

impl Allocations {
    /// Loads the table from `state_dir` (an absent file is an empty table; an unreadable one is
    /// reported and replaced).
    pub fn load(store: Option<StateStore>) -> Allocations {
        let path = store.as_ref().map(|s| s.dir().join(FILE));
        let stored = match path.as_ref().map(std::fs::read) {
            Some(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable {FILE}: {e}; endpoints may get new ports");
                Stored::default()
            }),
            _ => Stored::default(),
        };
        Allocations {
            store,
            stored,
            dirty: false,
        }
    }

    /// Writes the table if it changed.
    pub fn save(&mut self) {
        let Some(store) = &self.store else { return };
        if !self.dirty {
            return;
        }
        let bytes = serde_json::to_vec_pretty(&self.stored).unwrap_or_default();
        match store.write_atomic(FILE, &bytes) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("cannot save port allocations: {e}"),
        }
    }

    pub fn port_of(&self, url: &BoundUrl) -> Option<u16> {
        self.stored.ports.get(&url.to_string()).copied()
    }

    /// The address remembered for `host` (`service.namespace`) in mode `virtual`.
    pub fn address_of(&self, host: &str) -> Option<IpAddr> {
        self.stored.addresses.get(host).copied()
    }

    /// Addresses remembered for hosts not in `present`: reserved while others are free.
    pub(super) fn departed_addresses(&self, present: &BTreeSet<&str>) -> BTreeSet<IpAddr> {
        self.stored
            .addresses
            .iter()
            .filter(|(h, _)| !present.contains(h.as_str()))
            .map(|(_, ip)| *ip)
            .collect()
    }

    /// Remembers `ip` for `host`, taking it from any departed host that had it.
    pub(super) fn assign_address(&mut self, host: &str, ip: IpAddr) {
        self.stored.addresses.retain(|h, a| *a != ip || h == host);
        if self.stored.addresses.insert(host.to_owned(), ip) != Some(ip) {
            self.dirty = true;
        }
    }
}

/// The first override whose `host` glob matches the endpoint's `service.namespace`.
pub(super) fn override_for<'a>(
    overrides: &'a [ExposeOverride],
    url: &BoundUrl,
) -> Option<&'a ExposeOverride> {
    overrides
        .iter()
        .find(|o| glob_match::glob_match(&o.host, &url.host))
}

/// The override's `address`, parsed (the build reports a bad one; placement skips its endpoint).
pub(super) fn override_ip(o: Option<&ExposeOverride>) -> Result<Option<IpAddr>, String> {
    match o.and_then(|o| o.address.as_deref()) {
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|_| format!("override address `{a}` is not an IP")),
        None => Ok(None),
    }
}

/// Places every endpoint per the mode. `taken` are addresses used by static listeners.
/// Endpoints that cannot be placed are returned as errors (one line each, naming the endpoint
/// and whatever it conflicts with); the others proceed. The placements are in endpoint order.
pub fn place(
    endpoints: &BTreeSet<BoundUrl>,
    exposure: &Exposure,
    overrides: &[ExposeOverride],
    taken: &BTreeSet<SocketAddr>,
    alloc: &mut Allocations,
) -> (Vec<Placement>, Vec<String>) {
    let (mut placed, errors) = match exposure {
        Exposure::PortRange { ip, ports } => {
            place_port_range(endpoints, overrides, ports, *ip, taken, alloc)
        }
        Exposure::Virtual { cidr } => {
            super::virtual_ips::place(endpoints, cidr, overrides, taken, alloc)
        }
        Exposure::Shared { ip } => super::shared::place(endpoints, *ip, overrides, taken),
    };
    placed.sort_by(|a, b| a.url.cmp(&b.url));
    (placed, errors)
}

/// Mode `port_range`: override (first matching glob) or the endpoint's remembered port, else the
/// first free port of the range.
fn place_port_range(
    endpoints: &BTreeSet<BoundUrl>,
    overrides: &[ExposeOverride],
    range: &RangeInclusive<u16>,
    default_ip: IpAddr,
    taken: &BTreeSet<SocketAddr>,
    alloc: &mut Allocations,
) -> (Vec<Placement>, Vec<String>) {
    let mut placed = Vec::with_capacity(endpoints.len());
    let mut errors = Vec::new();
    let mut used: BTreeSet<SocketAddr> = taken.clone();
    let mut pending = Vec::new();

    let ip_of = |o| override_ip(o).map(|ip| ip.unwrap_or(default_ip));

    // Fixed ports first (overrides), then remembered ones, then new ones: a newcomer never takes
    // a port an existing endpoint already had.
    for url in endpoints {
        let o = override_for(overrides, url);
        let ip = match ip_of(o) {
            Ok(ip) => ip,
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        if let Some(port) = o.and_then(|o| o.port) {
            let addr = SocketAddr::new(ip, port);
            // Port 0: the OS picks one at bind time, so it never clashes here.
            if port == 0 || used.insert(addr) {
                placed.push(Placement::own(url, addr));
            } else {
                errors.push(format!(
                    "{url}: override address {addr} is already in use by another listener"
                ));
            }
            continue;
        }
        pending.push((url, ip));
    }
    let mut fresh = Vec::new();
    for (url, ip) in pending {
        match alloc.port_of(url) {
            Some(port) if range.contains(&port) && used.insert(SocketAddr::new(ip, port)) => {
                placed.push(Placement::own(url, SocketAddr::new(ip, port)));
            }
            _ => fresh.push((url, ip)),
        }
    }
    if !fresh.is_empty() {
        // Ports remembered for endpoints that are gone stay reserved while others are free, so a
        // returning endpoint finds its old port.
        let present: BTreeSet<String> = endpoints.iter().map(|u| u.to_string()).collect();
        let remembered: BTreeSet<u16> = alloc
            .stored
            .ports
            .iter()
            .filter(|(u, _)| !present.contains(*u))
            .map(|(_, p)| *p)
            .collect();
        let mut next = *range.start();
        for (url, ip) in fresh {
            let mut chosen = None;
            for pass in 0..2 {
                let mut p = next;
                while p <= *range.end() {
                    let free = !used.contains(&SocketAddr::new(ip, p))
                        && (pass == 1 || !remembered.contains(&p));
                    if free {
                        chosen = Some(p);
                        break;
                    }
                    match p.checked_add(1) {
                        Some(n) => p = n,
                        None => break,
                    }
                }
                if chosen.is_some() {
                    break;
                }
                next = *range.start();
            }
            match chosen {
                Some(port) => {
                    let addr = SocketAddr::new(ip, port);
                    used.insert(addr);
                    if remembered.contains(&port) {
                        alloc.stored.ports.retain(|_, p| *p != port);
                    }
                    alloc.stored.ports.insert(url.to_string(), port);
                    alloc.dirty = true;
                    next = port.saturating_add(1).min(*range.end());
                    placed.push(Placement::own(url, addr));
                }
                None => errors.push(format!(
                    "{url}: no free port left in {}-{}",
                    range.start(),
                    range.end()
                )),
            }
        }
    }
    (placed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExposeOverride;

    fn url(s: &str) -> BoundUrl {
        BoundUrl::parse(s, None).unwrap()
    }

    fn expose(overrides: Vec<ExposeOverride>) -> Vec<ExposeOverride> {
        overrides
    }

    fn in_range(ports: RangeInclusive<u16>) -> Exposure {
        Exposure::PortRange { ip: LO, ports }
    }

    fn set(urls: &[&str]) -> BTreeSet<BoundUrl> {
        urls.iter().map(|u| url(u)).collect()
    }

    fn ports(p: &[Placement]) -> Vec<(String, u16)> {
        p.iter()
            .map(|p| (p.url.host.clone(), p.address.port()))
            .collect()
    }

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn first_free_then_stable_across_polls_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let range = 10000..=10002;
        let mut alloc = Allocations::load(Some(StateStore::open(dir.path()).unwrap()));
        let (p, e) = place(
            &set(&["tcp://a.ns:1", "tcp://b.ns:1"]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        assert!(e.is_empty());
        assert_eq!(
            ports(&p),
            vec![("a.ns".into(), 10000), ("b.ns".into(), 10001)]
        );
        alloc.save();

        // Restart; `a` is gone and `c` appears: `b` keeps its port, `c` does not take `a`'s.
        let mut alloc = Allocations::load(Some(StateStore::open(dir.path()).unwrap()));
        let (p, _) = place(
            &set(&["tcp://b.ns:1", "tcp://c.ns:1"]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        assert_eq!(
            ports(&p),
            vec![("b.ns".into(), 10001), ("c.ns".into(), 10002)]
        );
        // `a` returns and finds its port.
        let (p, _) = place(
            &set(&["tcp://a.ns:1", "tcp://b.ns:1", "tcp://c.ns:1"]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        assert_eq!(ports(&p)[0], ("a.ns".into(), 10000));

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn exhausted_range_reclaims_departed_then_reports_the_rest() {
        let range = 10000..=10002;
        let mut alloc = Allocations::load(None);
        place(
            &set(&["tcp://a.ns:1", "tcp://b.ns:1", "tcp://c.ns:1"]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        let (p, e) = place(
            &set(&["tcp://d.ns:1"]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        assert_eq!(ports(&p), vec![("d.ns".into(), 10000)]);
        assert!(e.is_empty());
        let (p, e) = place(
            &set(&[
                "tcp://a.ns:1",
                "tcp://b.ns:1",
                "tcp://c.ns:1",
                "tcp://d.ns:1",
            ]),
            &in_range(range.clone()),
            &expose(vec![]),
            &BTreeSet::new(),
            &mut alloc,
        );
        assert_eq!(p.len(), 3);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("no free port left in 10000-10002"), "{e:?}");
    }

    #[test]
    fn overrides_and_taken_addresses() {
        let mut alloc = Allocations::load(None);
        let o = vec![ExposeOverride {
            host: "orders.*".into(),
            address: Some("127.0.0.2".into()),
            port: Some(15432),
        }];
        let taken: BTreeSet<SocketAddr> = ["127.0.0.1:10000".parse().unwrap()].into();
        let (p, e) = place(
            &set(&["tcp://orders.prod:5432", "tcp://x.ns:1"]),
            &in_range(10000..=10002),
            &expose(o),
            &taken,
            &mut alloc,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(p[0].address, "127.0.0.2:15432".parse().unwrap());
        assert_eq!(
            p[1].address,
            "127.0.0.1:10001".parse().unwrap(),
            "10000 is taken by a static listener"
        );
    }
}
