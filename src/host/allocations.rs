//! `expose.mode: port_range`: one local port per bound endpoint, first free in the range, kept
//! for that endpoint across polls and restarts (persisted as `allocations.json`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use crate::config::Expose;
use crate::identity::StateStore;
use crate::snapshot::BoundUrl;

const FILE: &str = "allocations.json";

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Stored {
    /// Canonical endpoint URL → port.
    ports: BTreeMap<String, u16>,
}

/// The persistent endpoint → port table.
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
}

/// Places every endpoint: override (first matching glob) or its remembered port, else the first
/// free port of the range. `taken` are addresses used by static listeners. Endpoints that cannot
/// be placed are returned as errors; the others proceed.
pub fn place(
    endpoints: &BTreeSet<BoundUrl>,
    expose: &Expose,
    range: &RangeInclusive<u16>,
    default_ip: IpAddr,
    taken: &BTreeSet<SocketAddr>,
    alloc: &mut Allocations,
) -> (Vec<Placement>, Vec<String>) {
    let mut placed = Vec::with_capacity(endpoints.len());
    let mut errors = Vec::new();
    let mut used: BTreeSet<SocketAddr> = taken.clone();
    let mut pending = Vec::new();

    let override_for = |url: &BoundUrl| {
        expose
            .overrides
            .iter()
            .find(|o| glob_match::glob_match(&o.host, &url.host))
    };
    let ip_of = |o: Option<&crate::config::ExposeOverride>| -> Result<IpAddr, String> {
        match o.and_then(|o| o.address.as_deref()) {
            Some(a) => a
                .parse()
                .map_err(|_| format!("override address `{a}` is not an IP")),
            None => Ok(default_ip),
        }
    };

    // Fixed ports first (overrides), then remembered ones, then new ones: a newcomer never takes
    // a port an existing endpoint already had.
    for url in endpoints {
        let o = override_for(url);
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
                placed.push(Placement {
                    url: url.clone(),
                    address: addr,
                });
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
                placed.push(Placement {
                    url: url.clone(),
                    address: SocketAddr::new(ip, port),
                });
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
                    placed.push(Placement {
                        url: url.clone(),
                        address: addr,
                    });
                }
                None => errors.push(format!(
                    "{url}: no free port left in {}-{}",
                    range.start(),
                    range.end()
                )),
            }
        }
    }
    placed.sort_by(|a, b| a.url.cmp(&b.url));
    (placed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExposeMode, ExposeOverride};

    fn url(s: &str) -> BoundUrl {
        BoundUrl::parse(s, None).unwrap()
    }

    fn expose(overrides: Vec<ExposeOverride>) -> Expose {
        Expose {
            mode: ExposeMode::PortRange,
            address: "127.0.0.1".into(),
            ports: "10000-10002".into(),
            overrides,
        }
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
            &expose(vec![]),
            &range,
            LO,
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
            &expose(vec![]),
            &range,
            LO,
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
            &expose(vec![]),
            &range,
            LO,
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
            &expose(vec![]),
            &range,
            LO,
            &BTreeSet::new(),
            &mut alloc,
        );
        let (p, e) = place(
            &set(&["tcp://d.ns:1"]),
            &expose(vec![]),
            &range,
            LO,
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
            &expose(vec![]),
            &range,
            LO,
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
            &expose(o),
            &(10000..=10002),
            LO,
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
