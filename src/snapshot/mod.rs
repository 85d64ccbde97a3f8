//! The snapshot: the compiled, validated, immutable whole of listeners, routes and clusters.
//!
//! `build` is the only place config is checked for cross-references; `run` and `validate` share
//! it. It reads referenced files (certificates, keys, CAs) but binds nothing and calls nobody.

mod build;
pub(crate) mod config_sources;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::bound_url::{BoundUrl, Scheme};
pub use build::{BuildInput, RegisteredIdentity, build, build_with, check};
pub use routes::{
    DEFAULT_REQUEST_TIMEOUT, HttpRoute, HttpRoutes, HttpUpstream, NamePattern, RouteTable,
    SniRoutes, normalize_host,
};

use crate::config::{Config, Protocol};
use crate::filters::network::{ConnService, NetworkFilterConfig};
use crate::host::Placement;
use crate::upstream::{Cluster, ClusterTarget};

#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every applied build.
    pub version: u64,
    pub listeners: Vec<Arc<ListenerSpec>>,
    /// Listener name → index in `listeners` (looked up once per accepted connection).
    pub(crate) by_name: HashMap<String, usize>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Discovered bound endpoints and where they are exposed.
    pub discovered: Vec<Placement>,
    pub admin: Option<SocketAddr>,
    /// Client connections open across every listener: each holds a permit (`limits`).
    pub connection_cap: Arc<tokio::sync::Semaphore>,
    /// The size of `connection_cap`.
    pub max_connections: u32,
    /// The config this was built from (for `/config_dump`).
    pub config: Arc<Config>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSpec>> {
        self.by_name.get(name).and_then(|i| self.listeners.get(*i))
    }

    /// Starts the transports of the ingresses this snapshot's clusters use (warm pools fill,
    /// HTTP/2 connections open) and retires those they replace. Called when the snapshot is
    /// published, never by `validate`; idempotent.
    pub fn activate_transports(&self) {
        for ingress in self.ingresses_in_use() {
            ingress.activate();
        }
    }

    /// Retires the transports of this snapshot's ingresses (see [`IngressTransport::retire`]):
    /// at shutdown, once no connection needs them, so that no refill outlives the listeners.
    ///
    /// [`IngressTransport::retire`]: crate::upstream::IngressTransport::retire
    pub fn retire_transports(&self) {
        for ingress in self.ingresses_in_use() {
            ingress.transport.retire();
        }
    }

    /// Each ingress this snapshot's clusters reach, once.
    fn ingresses_in_use(&self) -> impl Iterator<Item = &Arc<crate::upstream::Ingress>> {
        let mut seen = std::collections::HashSet::new();
        self.clusters
            .values()
            .filter_map(move |cluster| match &*cluster.target {
                ClusterTarget::Binding(b) if seen.insert(Arc::as_ptr(&b.ingress)) => {
                    Some(&b.ingress)
                }
                _ => None,
            })
    }

    /// The chains in force, shorthand fields compiled in (for `/config_dump`): network filters
    /// per listener, http filters per route (`listener/route`), the connect stack per cluster.
    pub fn chains(&self) -> serde_json::Value {
        let mut listeners = serde_json::Map::new();
        let mut routes = serde_json::Map::new();
        for l in &self.listeners {
            listeners.insert(l.name.clone(), serde_json::json!(l.filters));
            if let RouteTable::Http(h) = &*l.routes {
                for r in &h.routes {
                    routes.insert(
                        format!("{}/{}", l.name, r.name),
                        serde_json::json!(r.filters),
                    );
                }
            }
        }
        let clusters: serde_json::Map<String, serde_json::Value> = self
            .clusters
            .iter()
            .map(|(name, c)| (name.clone(), (c.connect_chain)()))
            .collect();
        serde_json::json!({
            "listeners": listeners,
            "routes": routes,
            "clusters": clusters,
        })
    }

    /// The longest `drain_timeout` of any listener: how long a full shutdown may take.
    pub fn max_drain_timeout(&self) -> Duration {
        self.listeners
            .iter()
            .map(|l| l.drain_timeout)
            .max()
            .unwrap_or_default()
    }
}

pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// The compiled routes; the variant matches `protocol` (discovery builds `RouteTable::Tcp`).
    pub routes: Arc<RouteTable>,
    /// The network filters in force, the shorthand `limits` included, in order (for views).
    pub filters: Vec<NetworkFilterConfig>,
    /// The network filters around the protocol pipeline: called once per accepted connection.
    pub network: ConnService,
    pub metrics: Arc<crate::telemetry::ListenerMetrics>,
    /// Whether this listener came from discovery rather than the config file.
    pub discovered: bool,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for ListenerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSpec")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("protocol", &self.protocol)
            .field("routes", &self.routes)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}
