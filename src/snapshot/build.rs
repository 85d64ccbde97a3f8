//! Config → Snapshot, with every cross-reference checked and every error reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::routes::{RouteCompiler, RouteTable, SniRoutes};
use super::{BoundUrl, ListenerSpec, Snapshot};
use crate::config::{
    ClusterConfig, ClusterKind, ConfigError, ConfigErrors, Expose, IngressConfig, Limits,
    LoadedConfig, Protocol, ResourceDoc, ResourceSet, RetryConfig, SourceResources, Transport,
};
use crate::filters::CheckCtx;
use crate::filters::connect::{self, CircuitBreakerConfig, ConnectStack};
use crate::filters::network::{self, ConnectionLimit, NetworkFilterConfig, NetworkRateLimit};
use crate::host::{Exposure, Placement};
use crate::identity;
use crate::identity::session_store::TicketStore;
use crate::proxy::Pipeline;
use crate::retained::Retained;
use crate::telemetry::{ClusterMetrics, ListenerMetrics};
use crate::upstream::{BindingTarget, Cluster, ClusterTarget, Ingress, StaticEndpoints};
use crate::upstream::{
    Fingerprint, IngressDialer, MultiplexSettings, PoolSettings, TransportSettings,
};

pub(super) struct Checker<'a> {
    pub(super) loaded: &'a LoadedConfig,
    pub(super) errors: Vec<ConfigError>,
    /// The source document being checked; `None` for the config file.
    doc: Option<&'a ResourceDoc>,
    /// Referenced key, certificate and CA files are not read (`validate --offline`).
    pub(super) offline: bool,
}

impl<'a> Checker<'a> {
    /// Whether referenced files are left unread (`validate --offline`).
    pub(super) fn offline(&self) -> bool {
        self.offline
    }

    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let e = match self.doc {
            Some(doc) => doc.error_at(path, message),
            None => self.loaded.error_at(path, message),
        };
        self.errors.push(e);
    }

    /// Where a resource was defined, for errors that name two places.
    fn origin(&self, at: &Origin<'a>) -> String {
        match at.doc {
            Some((source, doc)) => format!("source `{source}` ({})", doc.describe(&at.path)),
            None => match self.loaded.source_map.locate(&at.path) {
                Some((line, _)) => format!("{} ({}, line {line})", at.path, self.loaded.source),
                None => format!("{} ({})", at.path, self.loaded.source),
            },
        }
    }
}

/// A listener or cluster and where it was written.
struct Origin<'a> {
    /// The source's name and document; `None` for `static_resources`.
    doc: Option<(&'a str, &'a ResourceDoc)>,
    /// The resource's path in its document (`static_resources.listeners[3]`, `clusters[0]`).
    path: String,
}

/// Every listener (or cluster) of the config file and the sources, in order, with its origin.
fn with_origins<'a, T>(
    statics: &'a [T],
    static_prefix: &str,
    sources: &'a [Arc<SourceResources>],
    pick: impl Fn(&'a ResourceSet) -> &'a [T],
    kind: &str,
) -> Vec<(Origin<'a>, &'a T)> {
    let mut all: Vec<(Origin<'a>, &'a T)> = statics
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("{static_prefix}{kind}[{i}]");
            (Origin { doc: None, path }, r)
        })
        .collect();
    for src in sources {
        for doc in &src.docs {
            for (i, r) in pick(&doc.resources).iter().enumerate() {
                let path = format!("{}{kind}[{i}]", doc.prefix);
                let doc = Some((src.source.as_str(), doc));
                all.push((Origin { doc, path }, r));
            }
        }
    }
    all
}

/// What a build combines.
pub struct BuildInput<'a> {
    pub loaded: &'a LoadedConfig,
    /// Discovered endpoints, already placed on local addresses.
    pub discovered: &'a [Placement],
    /// State that outlives snapshots (connection counts, buckets, budgets, breakers, pools),
    /// owned by the control plane; `validate` passes a throwaway one.
    pub retained: &'a Retained,
    /// The identity from ngrok registration, for ingresses without `client_cert`.
    pub registered: Option<&'a RegisteredIdentity>,
    /// The resources of each config source that are in force (or on trial), merged with the
    /// file's `static_resources`.
    pub sources: &'a [Arc<SourceResources>],
    pub version: u64,
    /// Check without reading referenced key, certificate and CA files (`validate --offline`,
    /// for a pipeline without secrets): an ingress then trusts nothing and presents no client
    /// certificate. Never set for a snapshot that serves.
    pub offline: bool,
}

/// What registration with the ngrok API provides to ingresses that have no static certificate.
#[derive(Clone)]
pub struct RegisteredIdentity {
    pub identity: Arc<crate::identity::ClientIdentity>,
    /// `host:port` of the binding ingress that registration returned.
    pub ingress_endpoint: String,
}

/// Checks a parsed config with the full build (what `validate` does), handing it back if good.
pub fn check(loaded: Result<LoadedConfig, ConfigErrors>) -> Result<LoadedConfig, ConfigErrors> {
    let loaded = loaded?;
    build(&loaded, 0)?;
    Ok(loaded)
}

/// Builds a snapshot of the config file alone (what `validate` checks).
pub fn build(loaded: &LoadedConfig, version: u64) -> Result<Snapshot, ConfigErrors> {
    build_with(BuildInput {
        loaded,
        discovered: &[],
        retained: &Retained::new(),
        registered: None,
        sources: &[],
        version,
        offline: false,
    })
}

/// Builds a snapshot numbered `version`, or returns every problem found in the config file.
/// A discovered endpoint that cannot be exposed is skipped with a log line; the others proceed.
pub fn build_with(input: BuildInput<'_>) -> Result<Snapshot, ConfigErrors> {
    identity::install_crypto_provider();
    let BuildInput {
        loaded,
        discovered,
        retained,
        registered,
        sources,
        version,
        offline,
    } = input;
    let base_dir = loaded.base_dir.as_path();
    let cfg = &loaded.config;
    let mut c = Checker {
        loaded,
        errors: Vec::new(),
        doc: None,
        offline,
    };

    if cfg.version != 1 {
        c.err(
            "version",
            format!(
                "unsupported version {}; this bindgate reads version 1",
                cfg.version
            ),
        );
    }

    if let Some(ngrok) = &cfg.ngrok {
        check_ngrok(&mut c, ngrok);
    }

    let admin = cfg.admin.as_ref().and_then(|a| match a.address.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() || a.allow_non_loopback => Some(addr),
        Ok(addr) => {
            c.err("admin.address", format!("`{addr}` is not a loopback address; the admin API exposes topology and state (set `allow_non_loopback: true` to allow it)"));
            None
        }
        Err(_) => {
            c.err("admin.address", format!("`{}` is not an `ip:port` address", a.address));
            None
        }
    });

    let max_connections = match cfg.limits.as_ref().and_then(|l| l.max_connections) {
        Some(0) => {
            c.err("limits.max_connections", "must be at least 1");
            1
        }
        Some(n) => n,
        None => crate::listener::default_global_max_connections(),
    };
    // Kept across reloads while the number is unchanged, so open connections stay counted.
    let connection_cap = retained.get_or_insert(
        crate::retained::StateKey::new("global/max_connections", "", &max_connections),
        || tokio::sync::Semaphore::new(max_connections as usize),
    );

    let mut ingresses: HashMap<&str, Arc<Ingress>> = HashMap::new();
    let mut ingress_names = HashSet::new();
    for (i, ing) in cfg.ingresses.iter().enumerate() {
        let path = format!("ingresses[{i}]");
        if refuse_unprintable(&mut c, &path, "an ingress", &ing.name) {
            continue;
        }
        if !ingress_names.insert(ing.name.as_str()) {
            c.err(
                format!("{path}.name"),
                format!("duplicate ingress name `{}`", ing.name),
            );
            continue;
        }
        if let Some(built) = build_ingress(&mut c, &path, ing, registered, retained) {
            ingresses.insert(ing.name.as_str(), Arc::new(built));
        }
    }

    let mut clusters: BTreeMap<String, Arc<Cluster>> = BTreeMap::new();
    let mut cluster_names = HashSet::new();
    let mut cluster_origins: HashMap<&str, Origin<'_>> = HashMap::new();
    let all_clusters = with_origins(
        &cfg.static_resources.clusters,
        "static_resources.",
        sources,
        |r| &r.clusters,
        "clusters",
    );
    for (origin, cl) in all_clusters {
        c.doc = origin.doc.map(|(_, d)| d);
        let path = &origin.path;
        if refuse_unprintable(&mut c, path, "a cluster", &cl.name) {
            continue;
        }
        if let Some(first) = cluster_origins.get(cl.name.as_str()) {
            let first = c.origin(first);
            c.err(
                format!("{path}.name"),
                format!(
                    "duplicate cluster name `{}`: also defined by {first}",
                    cl.name
                ),
            );
            continue;
        }
        cluster_names.insert(cl.name.as_str());
        if let Some(built) = build_cluster(&mut c, path, cl, &ingresses, retained) {
            clusters.insert(cl.name.clone(), Arc::new(built));
        }
        cluster_origins.insert(cl.name.as_str(), origin);
    }
    c.doc = None;

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut route_compiler = RouteCompiler::new(&clusters, &cluster_names, retained, base_dir);
    let mut addresses = AddressBook::default();
    if let Some(a) = admin {
        addresses.take(a, "the admin server (`admin.address`)");
    }
    let mut listener_origins: HashMap<&str, Origin<'_>> = HashMap::new();
    let all_listeners = with_origins(
        &cfg.static_resources.listeners,
        "static_resources.",
        sources,
        |r| &r.listeners,
        "listeners",
    );
    for (origin, l) in all_listeners {
        c.doc = origin.doc.map(|(_, d)| d);
        let path = origin.path.clone();
        if c.doc.is_some_and(ResourceDoc::is_remote) {
            refuse_files(&mut c, &path, l);
        }
        if l.name.is_empty() {
            c.err(format!("{path}.name"), "a listener needs a non-empty name");
        } else if refuse_unprintable(&mut c, &path, "a listener", &l.name) {
            // Reported; not a name anything can refer to.
        } else if let Some(first) = listener_origins.get(l.name.as_str()) {
            let first = c.origin(first);
            c.err(
                format!("{path}.name"),
                format!(
                    "duplicate listener name `{}`: also defined by {first}",
                    l.name
                ),
            );
        } else {
            listener_names.insert(l.name.as_str());
            listener_origins.insert(l.name.as_str(), origin);
        }
        let address = match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if let Some(other) = addresses.take(a, &format!("listener `{}`", l.name)) {
                    c.err(
                        format!("{path}.address"),
                        format!("address `{a}` is already used by {other}"),
                    );
                }
                Some(a)
            }
            Err(_) => {
                c.err(
                    format!("{path}.address"),
                    format!("`{}` is not an `ip:port` address", l.address),
                );
                None
            }
        };
        let routes = route_compiler.compile(&mut c, &path, l);
        if let Some(limits) = &l.limits {
            if limits.max_connections == Some(0) {
                c.err(
                    format!("{path}.limits.max_connections"),
                    "must be at least 1",
                );
            }
            if limits.connections_per_second == Some(0) {
                c.err(
                    format!("{path}.limits.connections_per_second"),
                    "must be at least 1",
                );
            }
            if limits.burst.is_some() && limits.connections_per_second.is_none() {
                c.err(
                    format!("{path}.limits.burst"),
                    "`burst` needs `connections_per_second`",
                );
            } else if limits.burst == Some(0) {
                c.err(format!("{path}.limits.burst"), "must be at least 1");
            }
        }
        for (field, d) in [
            ("idle_timeout", l.idle_timeout),
            ("request_headers_timeout", l.request_headers_timeout),
        ] {
            if d.get().is_zero() {
                c.err(format!("{path}.{field}"), "must be more than 0s");
            }
        }
        let filters_ok = check_network_filters(&mut c, &path, l.protocol, &l.filters, base_dir);
        if let (Some(address), Some(routes), true) = (address, routes, filters_ok) {
            listeners.push(listener_spec(
                ListenerParts {
                    name: &l.name,
                    address,
                    protocol: l.protocol,
                    routes,
                    limits: l.limits.as_ref(),
                    filters: &l.filters,
                    idle_timeout: l.idle_timeout.get(),
                    request_headers_timeout: l.request_headers_timeout.get(),
                    drain_timeout: l.drain_timeout.get(),
                    preserve_header_case: l.preserve_header_case.unwrap_or(true),
                    discovered: false,
                },
                retained,
                base_dir,
            ));
        }
    }
    c.doc = None;

    let dynamic = cfg
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.bound_endpoints.as_ref());
    if let Some(d) = &cfg.dynamic_resources {
        super::config_sources::check(&mut c, &d.config_sources);
    }
    if let Some(d) = dynamic {
        let path = "dynamic_resources.bound_endpoints";
        if !ingress_names.contains(d.ingress.as_str()) {
            c.err(
                format!("{path}.ingress"),
                format!("no ingress named `{}`", d.ingress),
            );
        }
        if d.poll_interval.get() < Duration::from_secs(1) {
            c.err(format!("{path}.poll_interval"), "must be at least 1s");
        }
        check_expose(&mut c, &format!("{path}.expose"), &d.expose);
    }
    let mut exposed = Vec::with_capacity(discovered.len());
    if let (Some(d), false) = (dynamic, discovered.is_empty()) {
        if let Some(ingress) = ingresses.get(d.ingress.as_str()).cloned() {
            // A compiler of its own: discovered routes name only discovered clusters.
            let (none, no_names) = (BTreeMap::new(), HashSet::new());
            let mut routes = RouteCompiler::new(&none, &no_names, retained, base_dir);
            let retry = RetryConfig::default();
            check_network_filters(
                &mut c,
                "dynamic_resources.bound_endpoints.listener",
                Protocol::Tcp,
                &d.listener.filters,
                base_dir,
            );
            // Placements sharing a listener are adjacent after grouping by listener name.
            let mut groups: BTreeMap<&str, Vec<&Placement>> = BTreeMap::new();
            for p in discovered {
                groups.entry(p.listener.as_str()).or_default().push(p);
            }
            for (name, members) in groups {
                let Some(first) = members.first().copied() else {
                    continue;
                };
                if listener_names.contains(name) {
                    tracing::warn!(listener = %name, "discovered endpoints skipped: a static listener has the same name");
                    continue;
                }
                if let Some(other) = addresses.holder(first.address) {
                    for p in &members {
                        tracing::warn!(endpoint = %p.url, "discovered endpoint skipped: {} is used by {other}", p.address);
                    }
                    continue;
                }
                let mut members_clusters = Vec::with_capacity(members.len());
                for p in members {
                    let cluster_name = p.url.to_string();
                    if listener_names.contains(cluster_name.as_str())
                        || clusters.contains_key(&cluster_name)
                    {
                        tracing::warn!(endpoint = %cluster_name, "discovered endpoint skipped: a static listener or cluster has the same name");
                        continue;
                    }
                    let target = match BindingTarget::new(p.url.clone(), ingress.clone()) {
                        Ok(target) => target,
                        Err(e) => {
                            tracing::warn!(endpoint = %cluster_name, "discovered endpoint skipped: {e}");
                            continue;
                        }
                    };
                    let cluster = Arc::new(cluster_with_stack(
                        &cluster_name,
                        ClusterTarget::Binding(target),
                        &retry,
                        None,
                        retained,
                    ));
                    clusters.insert(cluster_name, cluster.clone());
                    members_clusters.push((p, cluster));
                }
                if members_clusters.is_empty() {
                    continue;
                }
                let table = match first.protocol {
                    Protocol::Tcp => match members_clusters.as_slice() {
                        [(_, cluster)] => RouteTable::Tcp(cluster.clone()),
                        _ => continue,
                    },
                    Protocol::Http => RouteTable::Http(
                        routes.discovered_http(
                            name,
                            d.listener.idle_timeout.get(),
                            d.listener.preserve_header_case.unwrap_or(true),
                            members_clusters
                                .iter()
                                .map(|(p, c)| (p.url.host.clone(), c.clone())),
                        ),
                    ),
                    Protocol::Tls => RouteTable::Tls(SniRoutes::exact_names(
                        members_clusters
                            .iter()
                            .map(|(p, c)| (p.url.host.clone(), c.clone())),
                    )),
                };
                exposed.extend(members_clusters.iter().map(|(p, _)| (*p).clone()));
                listeners.push(listener_spec(
                    ListenerParts {
                        name,
                        address: first.address,
                        protocol: first.protocol,
                        routes: table,
                        limits: d.listener.limits.as_ref(),
                        filters: &d.listener.filters,
                        idle_timeout: d.listener.idle_timeout.get(),
                        request_headers_timeout: d.listener.request_headers_timeout.get(),
                        drain_timeout: d.listener.drain_timeout.get(),
                        preserve_header_case: d.listener.preserve_header_case.unwrap_or(true),
                        discovered: true,
                    },
                    retained,
                    base_dir,
                ));
            }
        }
    }
    exposed.sort_by(|a, b| a.url.cmp(&b.url));

    if !c.errors.is_empty() {
        let mut errors = c.errors;
        // The config file's errors first, then each other file's, each in line order.
        errors.sort_by(|a, b| {
            (&a.file, a.line.unwrap_or(usize::MAX), a.column.unwrap_or(0)).cmp(&(
                &b.file,
                b.line.unwrap_or(usize::MAX),
                b.column.unwrap_or(0),
            ))
        });
        return Err(ConfigErrors {
            source: loaded.source.clone(),
            errors,
        });
    }
    let by_name = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), i))
        .collect();
    Ok(Snapshot {
        version,
        listeners,
        by_name,
        clusters,
        discovered: exposed,
        admin,
        connection_cap,
        max_connections,
        config: Arc::new(cfg.clone()),
    })
}

/// The addresses listeners (and the admin server) bind, to refuse a second bind that would
/// fail on Linux: the same address, or the same port where one is a wildcard that covers the
/// other (`0.0.0.0` covers IPv4 addresses; `[::]`, dual-stack, covers both families). Port 0
/// (the OS chooses) never collides.
#[derive(Default)]
struct AddressBook {
    exact: HashMap<SocketAddr, String>,
    /// A holder of each (port, is IPv6).
    any_on_port: HashMap<(u16, bool), String>,
    /// The holder of each wildcard bind, by (port, is IPv6).
    wildcard: HashMap<(u16, bool), String>,
}

impl AddressBook {
    /// Who already binds where a bind of `a` would fail.
    fn holder(&self, a: SocketAddr) -> Option<&str> {
        let port = a.port();
        if port == 0 {
            return None;
        }
        let v6 = a.is_ipv6();
        let mut found = self
            .exact
            .get(&a)
            .or_else(|| self.wildcard.get(&(port, true)))
            .or_else(|| self.wildcard.get(&(port, v6)));
        if found.is_none() && a.ip().is_unspecified() {
            found = self.any_on_port.get(&(port, v6));
            if v6 {
                found = found.or_else(|| self.any_on_port.get(&(port, false)));
            }
        }
        found.map(String::as_str)
    }

    /// Records `a` for `who`; `Some(holder)` (and nothing recorded) when `a` collides with an
    /// earlier bind.
    fn take(&mut self, a: SocketAddr, who: &str) -> Option<String> {
        if let Some(holder) = self.holder(a) {
            return Some(holder.to_owned());
        }
        if a.port() != 0 {
            let key = (a.port(), a.is_ipv6());
            self.exact.insert(a, who.to_owned());
            self.any_on_port
                .entry(key)
                .or_insert_with(|| who.to_owned());
            if a.ip().is_unspecified() {
                self.wildcard.insert(key, who.to_owned());
            }
        }
        None
    }
}

#[cfg(test)]
#[test]
fn binds_collide_as_linux_says() {
    let clash = |first: &str, second: &str| {
        let mut book = AddressBook::default();
        assert_eq!(book.take(first.parse().unwrap(), "first"), None);
        book.take(second.parse().unwrap(), "second").is_some()
    };
    for (a, b) in [
        ("127.0.0.1:80", "127.0.0.1:80"),
        ("127.0.0.1:80", "0.0.0.0:80"),
        ("0.0.0.0:80", "127.0.0.2:80"),
        ("[::]:80", "127.0.0.1:80"),
        ("127.0.0.1:80", "[::]:80"),
        ("[::1]:80", "[::]:80"),
    ] {
        assert!(clash(a, b), "{a} then {b}");
    }
    for (a, b) in [
        ("127.0.0.1:80", "127.0.0.2:80"),
        ("0.0.0.0:80", "[::1]:80"),
        ("[::1]:80", "0.0.0.0:80"),
        ("127.0.0.1:80", "127.0.0.1:81"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        assert!(!clash(a, b), "{a} then {b}");
    }
}

/// Names go into log lines, metric labels and `/listeners`: a control character in one (a
/// newline, an escape sequence) could forge a log line or colour a terminal. Reports such a
/// name at `{path}.name` and says whether it did.
fn refuse_unprintable(c: &mut Checker<'_>, path: &str, what: &str, name: &str) -> bool {
    let Some(bad) = name.chars().find(|ch| ch.is_control()) else {
        return false;
    };
    c.err(
        format!("{path}.name"),
        format!(
            "{what} name is printable text; this one holds the control character {:?}",
            bad
        ),
    );
    true
}

/// A REST source must not make this host write files: an `access_log` it serves logs to
/// stdout (`path: "-"`) only. (A config server would otherwise choose a file on this host to
/// append to, with request data in the lines.)
fn refuse_files(c: &mut Checker<'_>, path: &str, l: &crate::config::ListenerConfig) {
    use crate::filters::http::HttpFilterConfig;
    let to_file = |log: &crate::filters::access_log::AccessLogConfig| log.path != "-";
    let mut found = Vec::new();
    for (i, f) in l.filters.iter().enumerate() {
        if let NetworkFilterConfig::access_log(log) = f {
            if to_file(&log.0) {
                found.push(format!("{path}.filters[{i}].access_log.path"));
            }
        }
    }
    for (r, route) in l.routes.iter().enumerate() {
        for (i, f) in route.filters.iter().enumerate() {
            if let HttpFilterConfig::access_log(log) = f {
                if to_file(&log.0) {
                    found.push(format!("{path}.routes[{r}].filters[{i}].access_log.path"));
                }
            }
        }
    }
    for at in found {
        c.err(
            at,
            "a REST config source cannot name files on this host: `access_log` from a REST source logs to stdout (`path: \"-\"`) only",
        );
    }
}

/// `ngrok:`: an identity directory excludes what only a registering process does (fleet
/// membership, deregistration); fleet settings need a fleet and must not reap live members.
fn check_ngrok(c: &mut Checker<'_>, ngrok: &crate::config::NgrokConfig) {
    let r = &ngrok.registration;
    let own_identity_only = [
        ("fleet", r.fleet.is_some()),
        ("deregister_on_shutdown", r.deregister_on_shutdown),
        ("reap_after", r.reap_after.is_some()),
        ("heartbeat_interval", r.heartbeat_interval.is_some()),
    ];
    if ngrok.identity_dir.is_some() {
        for (field, set) in own_identity_only {
            if set {
                c.err(
                    format!("ngrok.registration.{field}"),
                    format!("`{field}` is for a process that registers its own operator, but `ngrok.identity_dir` is set: this process reads a shared identity and never registers (use one or the other)"),
                );
            }
        }
        return;
    }
    match &r.fleet {
        Some(fleet) => {
            let ok = !fleet.is_empty()
                && fleet.len() <= 63
                && fleet
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
            if !ok {
                c.err(
                    "ngrok.registration.fleet",
                    format!("`{fleet}`: a fleet name is 1 to 63 letters, digits, `-`, `_` or `.`"),
                );
            }
        }
        None => {
            for field in ["reap_after", "heartbeat_interval"] {
                let set = own_identity_only.iter().any(|(f, set)| *f == field && *set);
                if set {
                    c.err(
                        format!("ngrok.registration.{field}"),
                        format!(
                            "`{field}` needs `fleet`: only members of a fleet heartbeat and reap"
                        ),
                    );
                }
            }
        }
    }
    let heartbeat = r
        .heartbeat_interval
        .map(|d| d.get())
        .unwrap_or(crate::config::ngrok::DEFAULT_HEARTBEAT_INTERVAL);
    let reap_after = r
        .reap_after
        .map(|d| d.get())
        .unwrap_or(crate::config::ngrok::DEFAULT_REAP_AFTER);
    if heartbeat.is_zero() {
        c.err(
            "ngrok.registration.heartbeat_interval",
            "must be more than 0s",
        );
    } else if r.fleet.is_some() && reap_after <= heartbeat * 2 {
        c.err(
            "ngrok.registration.reap_after",
            format!("must be more than twice `heartbeat_interval` ({heartbeat:?}), or live members would be reaped between two heartbeats"),
        );
    }
}

/// `dynamic_resources.bound_endpoints.expose`: the mode's fields, overrides and hosts file.
fn check_expose(c: &mut Checker<'_>, path: &str, expose: &Expose) {
    if let Err(errors) = Exposure::from_config(expose) {
        for (field, message) in errors {
            c.err(format!("{path}.{field}"), message);
        }
    }
    for (j, o) in expose.overrides.iter().enumerate() {
        if let Some(a) = &o.address {
            if a.parse::<std::net::IpAddr>().is_err() {
                c.err(
                    format!("{path}.overrides[{j}].address"),
                    format!("`{a}` is not an IP address"),
                );
            }
        }
    }
    if let Some(file) = &expose.hosts_file {
        let resolved = c.loaded.resolve(file);
        let field = format!("{path}.hosts_file");
        if resolved.is_dir() {
            c.err(
                field,
                format!("`{}` is a directory, not a hosts file", resolved.display()),
            );
        } else if !resolved.parent().is_some_and(|d| d.is_dir()) {
            c.err(
                field,
                format!("`{}`: its directory does not exist", resolved.display()),
            );
        }
    }
}

/// Reports every problem of a listener's network filters; false when there was one.
fn check_network_filters(
    c: &mut Checker<'_>,
    path: &str,
    protocol: Protocol,
    filters: &[NetworkFilterConfig],
    base_dir: &std::path::Path,
) -> bool {
    let before = c.errors.len();
    let ctx = CheckCtx { protocol, base_dir };
    for (i, f) in filters.iter().enumerate() {
        for (field, message) in f.filter().check(&ctx) {
            let at = format!("{path}.filters[{i}].{}", f.name());
            c.err(
                if field.is_empty() {
                    at
                } else {
                    format!("{at}.{field}")
                },
                message,
            );
        }
    }
    c.errors.len() == before
}

/// A listener's connection cap when neither `limits.max_connections` nor a `connection_limit`
/// filter sets one.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// The network filters a listener runs: the shorthand `limits` (a `connection_limit`, then a
/// `local_rate_limit`), then `filters`. A listener that caps its connections nowhere gets a
/// `connection_limit` of [`DEFAULT_MAX_CONNECTIONS`] first.
pub fn effective_network_filters(
    limits: Option<&Limits>,
    filters: &[NetworkFilterConfig],
) -> Vec<NetworkFilterConfig> {
    let mut all = Vec::with_capacity(filters.len() + 2);
    let capped = limits.is_some_and(|l| l.max_connections.is_some())
        || filters
            .iter()
            .any(|f| matches!(f, NetworkFilterConfig::connection_limit(_)));
    if !capped {
        all.push(NetworkFilterConfig::connection_limit(ConnectionLimit {
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }));
    }
    if let Some(l) = limits {
        if let Some(max) = l.max_connections {
            all.push(NetworkFilterConfig::connection_limit(ConnectionLimit {
                max_connections: max,
            }));
        }
        if let Some(rate) = l.connections_per_second {
            all.push(NetworkFilterConfig::local_rate_limit(NetworkRateLimit {
                connections_per_second: rate,
                burst: l.burst,
                per_source_ip: false,
            }));
        }
    }
    all.extend(filters.iter().cloned());
    all
}

struct ListenerParts<'a> {
    name: &'a str,
    address: SocketAddr,
    protocol: Protocol,
    routes: RouteTable,
    limits: Option<&'a Limits>,
    filters: &'a [NetworkFilterConfig],
    idle_timeout: Duration,
    request_headers_timeout: Duration,
    drain_timeout: Duration,
    preserve_header_case: bool,
    discovered: bool,
}

/// A listener with its network stack: its filters around its protocol pipeline.
fn listener_spec(
    parts: ListenerParts<'_>,
    retained: &Retained,
    base_dir: &std::path::Path,
) -> Arc<ListenerSpec> {
    let routes = Arc::new(parts.routes);
    let filters = effective_network_filters(parts.limits, parts.filters);
    let metrics = retained.get_or_insert(
        crate::retained::StateKey::new("listener/metrics", parts.name, &parts.protocol),
        || ListenerMetrics::new(parts.name, parts.protocol == Protocol::Http),
    );
    let leaf = crate::proxy::pipeline(Arc::new(Pipeline {
        listener: Arc::from(parts.name),
        protocol: parts.protocol,
        routes: routes.clone(),
        idle_timeout: parts.idle_timeout,
        request_headers_timeout: parts.request_headers_timeout,
        preserve_header_case: parts.preserve_header_case,
        metrics: metrics.clone(),
    }));
    let network = network::build_chain(
        &filters,
        leaf,
        parts.name,
        parts.protocol,
        retained,
        base_dir,
    );
    Arc::new(ListenerSpec {
        name: parts.name.to_owned(),
        address: parts.address,
        protocol: parts.protocol,
        routes,
        filters,
        network,
        metrics,
        discovered: parts.discovered,
        idle_timeout: parts.idle_timeout,
        drain_timeout: parts.drain_timeout,
    })
}

/// A cluster with its connect stack around its transport.
fn cluster_with_stack(
    name: &str,
    target: ClusterTarget,
    retry: &RetryConfig,
    circuit_breaker: Option<&CircuitBreakerConfig>,
    retained: &Retained,
) -> Cluster {
    let (timeout, timeout_addr) = match &target {
        ClusterTarget::Static(s) => (s.connect_timeout, s.addresses.join(",")),
        ClusterTarget::Binding(b) => (b.ingress.connect_timeout, b.ingress.address.clone()),
    };
    let target = Arc::new(target);
    let metrics = retained.get_or_insert(
        crate::retained::StateKey::new("cluster/metrics", name, &()),
        || ClusterMetrics::new(name),
    );
    let (stack, breaker) = connect::build(
        ConnectStack {
            cluster: name,
            retry,
            circuit_breaker,
            timeout,
            timeout_addr,
            metrics: metrics.clone(),
        },
        Cluster::transport(target.clone()),
        retained,
    );
    Cluster::new(
        name.to_owned(),
        target,
        stack,
        breaker.map(|b| b as Arc<dyn crate::upstream::ConnectView>),
        metrics,
    )
    .with_chain({
        // Rendered when `/config_dump` asks, not at every build.
        let (retry, circuit_breaker) = (retry.clone(), circuit_breaker.cloned());
        Arc::new(move || {
            serde_json::json!([
                { "retry": retry },
                { "circuit_breaker": circuit_breaker },
                { "timeout": { "connect": crate::config::HumanDuration(timeout) } },
            ])
        })
    })
}

fn ingress_address(address: &str) -> Result<(String, String), String> {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !h.is_empty() => (h, p),
        _ => (address, "443"),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{address}`: port `{port}` is not a number from 1 to 65535"))?;
    let hostport = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((hostport, host.to_owned()))
}

/// How an ingress authenticates: static files, or the registration identity (absent in
/// `validate`, which registers nothing: the TLS config then carries no client certificate and
/// is never used to dial).
enum ClientAuth {
    /// `client_cert` / `client_key`, followed as they rotate (the same identity is kept across
    /// builds while the paths stay, so its watch and swaps carry over).
    Files(Arc<crate::identity::WatchedIdentity>),
    Registered(Arc<crate::identity::ClientIdentity>),
    /// No client certificate yet: not registered (`validate`), or the files were not read
    /// (`validate --offline`).
    NotYetRegistered,
}

fn build_ingress(
    c: &mut Checker<'_>,
    path: &str,
    ing: &IngressConfig,
    registered: Option<&RegisteredIdentity>,
    retained: &Retained,
) -> Option<Ingress> {
    let errors_before = c.errors.len();
    if ing.connect_timeout.get().is_zero() {
        c.err(format!("{path}.connect_timeout"), "must be more than 0s");
    }
    let uses_registration = ing.client_cert.is_none() && ing.client_key.is_none();
    if uses_registration && c.loaded.config.ngrok.is_none() {
        c.err(path, "set `client_cert` and `client_key`, or configure `ngrok:` so bindgate registers and obtains a client certificate: the binding ingress authenticates clients by certificate");
        return None;
    }
    let configured = match (&ing.address, registered) {
        (Some(a), _) => a.clone(),
        (None, Some(r)) => r.ingress_endpoint.clone(),
        // Validation without registration: the address will come from the API.
        (None, None) if uses_registration => "kubernetes-binding-ingress.ngrok.io:443".to_owned(),
        (None, None) => {
            c.err(
                format!("{path}.address"),
                "`address` is required with a static `client_cert`",
            );
            return None;
        }
    };
    let (address, host) = match ingress_address(&configured) {
        Ok(v) => v,
        Err(e) => {
            c.err(format!("{path}.address"), e);
            return None;
        }
    };
    let name_text = ing.server_name.clone().unwrap_or(host);
    let server_name = match ServerName::try_from(name_text.clone()) {
        Ok(n) => Some(n),
        Err(_) => {
            let field = if ing.server_name.is_some() {
                "server_name"
            } else {
                "address"
            };
            c.err(
                format!("{path}.{field}"),
                format!("`{name_text}` is not a valid TLS server name"),
            );
            None
        }
    };
    if !ing.system_roots && ing.ca.is_none() {
        c.err(
            format!("{path}.system_roots"),
            "with `system_roots: false` a `ca:` is required, or nothing would be trusted",
        );
    }
    let ca = ing.ca.as_ref().map(|p| c.loaded.resolve(p));
    let roots = if c.offline {
        // Nothing read, not even the system's roots: this TLS config only completes the check.
        Some(rustls::RootCertStore::empty())
    } else {
        match identity::load_trust_roots(ca.as_deref(), ing.system_roots) {
            Ok(r) => Some(r),
            Err(e) => {
                c.err(format!("{path}.ca"), e.to_string());
                None
            }
        }
    };
    let identity = match (&ing.client_cert, &ing.client_key) {
        // Offline, the files are not read: the ingress is checked as if it had no certificate.
        (Some(_), Some(_)) if c.offline => Some(ClientAuth::NotYetRegistered),
        (Some(cert), Some(key)) => {
            let files = identity::IdentityFiles::client_files(
                c.loaded.resolve(cert),
                c.loaded.resolve(key),
            );
            let state = crate::retained::StateKey::new(
                "ingress/client_files",
                "",
                &(&files.cert, &files.key),
            );
            // Each file is checked on its own first, so both are reported when both are bad.
            let made = retained.get_or_try_insert(state, || {
                let mut errors = Vec::new();
                if let Err(e) = identity::load_cert_chain(&files.cert) {
                    errors.push(("client_cert", e.to_string()));
                }
                if let Err(e) = identity::load_private_key(&files.key) {
                    errors.push(("client_key", e.to_string()));
                }
                if !errors.is_empty() {
                    return Err(errors);
                }
                identity::WatchedIdentity::load(files.clone()).map_err(|e| {
                    let field = match e.role(&files) {
                        identity::FileRole::Key => "client_key",
                        _ => "client_cert",
                    };
                    vec![(field, e.to_string())]
                })
            });
            match made {
                Ok(watched) => Some(ClientAuth::Files(watched)),
                Err(errors) => {
                    for (field, message) in errors {
                        c.err(format!("{path}.{field}"), message);
                    }
                    None
                }
            }
        }
        (Some(_), None) => {
            c.err(
                format!("{path}.client_key"),
                "`client_cert` is set but `client_key` is missing",
            );
            None
        }
        (None, Some(_)) => {
            c.err(
                format!("{path}.client_cert"),
                "`client_key` is set but `client_cert` is missing",
            );
            None
        }
        (None, None) => Some(match registered {
            Some(r) => ClientAuth::Registered(r.identity.clone()),
            None => ClientAuth::NotYetRegistered,
        }),
    };
    let settings = transport_settings(c, path, ing);
    if c.errors.len() != errors_before {
        return None;
    }
    let (roots, auth, server_name, settings) = (roots?, identity?, server_name?, settings?);
    let trust = Fingerprint::of_roots(&roots);
    let builder =
        match rustls::ClientConfig::builder_with_provider(Arc::new(identity::crypto_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        {
            Ok(b) => b.with_root_certificates(roots.clone()),
            Err(e) => {
                c.err(path, format!("no usable TLS settings: {e}"));
                return None;
            }
        };
    let with_tickets = |mut tls: rustls::ClientConfig| {
        tls.resumption = rustls::client::Resumption::store(Arc::new(TicketStore::new()));
        tls
    };
    let mut watched = None;
    let tls = match auth {
        // Their ticket stores are emptied when the certificate changes (a resumed session
        // would present the old certificate).
        ClientAuth::Files(files) => {
            let tls = files.identity().client_config(roots);
            watched = Some(files);
            tls
        }
        ClientAuth::Registered(identity) => identity.client_config(roots),
        ClientAuth::NotYetRegistered => Ok(with_tickets(builder.with_no_client_auth())),
    };
    match tls {
        Ok(tls) => Some(
            Ingress::new(
                IngressDialer::new(
                    &ing.name,
                    &address,
                    server_name,
                    Arc::new(tls),
                    ing.connect_timeout.get(),
                    ing.session_resumption,
                )
                .with_early_data(ing.early_data),
                trust,
                settings,
                retained.get_or_insert(
                    crate::retained::StateKey::new("ingress/transports", "", &()),
                    crate::upstream::Transports::default,
                ),
            )
            .with_watched(watched),
        ),
        Err(e) => {
            c.err(
                format!("{path}.client_key"),
                format!("the key does not fit the certificate: {e}"),
            );
            None
        }
    }
}

/// The ingress's `transport`, `pool` and `multiplex` settings, checked.
fn transport_settings(
    c: &mut Checker<'_>,
    path: &str,
    ing: &IngressConfig,
) -> Option<TransportSettings> {
    let errors_before = c.errors.len();
    let p = &ing.pool;
    if p.min_idle == 0 {
        c.err(
            format!("{path}.pool.min_idle"),
            "must be at least 1 (use `transport: direct` for no pool)",
        );
    }
    if p.max_idle > MAX_POOL_IDLE {
        c.err(
            format!("{path}.pool.max_idle"),
            format!("must be at most {MAX_POOL_IDLE}"),
        );
    }
    if p.min_idle > p.max_idle {
        c.err(
            format!("{path}.pool.max_idle"),
            format!("is less than min_idle ({})", p.min_idle),
        );
    }
    if p.max_age.get() < Duration::from_secs(1) {
        c.err(format!("{path}.pool.max_age"), "must be at least 1s");
    }
    let m = &ing.multiplex;
    if m.connections == 0 {
        c.err(
            format!("{path}.multiplex.connections"),
            "must be at least 1",
        );
    } else if m.connections > MAX_MUX_CONNECTIONS {
        c.err(
            format!("{path}.multiplex.connections"),
            format!("must be at most {MAX_MUX_CONNECTIONS}"),
        );
    }
    if m.max_connections < m.connections.max(1) {
        c.err(
            format!("{path}.multiplex.max_connections"),
            format!("is less than connections ({})", m.connections),
        );
    }
    if m.max_streams == 0 {
        c.err(
            format!("{path}.multiplex.max_streams"),
            "must be at least 1",
        );
    } else if m.max_streams > MAX_MUX_STREAMS {
        c.err(
            format!("{path}.multiplex.max_streams"),
            format!("must be at most {MAX_MUX_STREAMS}"),
        );
    }
    if c.errors.len() != errors_before {
        return None;
    }
    let pool = PoolSettings {
        min_idle: p.min_idle as usize,
        max_idle: p.max_idle as usize,
        max_age: p.max_age.get(),
    };
    Some(match ing.transport {
        Transport::Direct => TransportSettings::Direct,
        Transport::Pool => TransportSettings::Pool(pool),
        Transport::Multiplex => TransportSettings::Multiplex(
            MultiplexSettings {
                connections: m.connections as usize,
                max_streams: m.max_streams as usize,
                max_connections: m.max_connections as usize,
                fallback: m.fallback,
            },
            pool,
        ),
    })
}

/// Sanity caps on transport settings (a typo like `max_idle: 32000` is an error, not a storm of
/// handshakes).
const MAX_POOL_IDLE: u32 = 1024;
const MAX_MUX_CONNECTIONS: u32 = 64;
/// HTTP/2 allows 2^31 streams in theory; more than this on one connection is a typo.
const MAX_MUX_STREAMS: u32 = 10_000;

fn build_cluster(
    c: &mut Checker<'_>,
    path: &str,
    cl: &ClusterConfig,
    ingresses: &HashMap<&str, Arc<Ingress>>,
    retained: &Retained,
) -> Option<Cluster> {
    let errors_before = c.errors.len();
    let r = &cl.retry;
    if r.attempts == 0 {
        c.err(
            format!("{path}.retry.attempts"),
            "must be at least 1 (1 means no retry)",
        );
    }
    if r.budget_percent > 100 {
        c.err(
            format!("{path}.retry.budget_percent"),
            "must be between 0 and 100",
        );
    }
    if r.max_backoff < r.base_backoff {
        c.err(
            format!("{path}.retry.max_backoff"),
            format!(
                "`{}` is less than base_backoff `{}`",
                r.max_backoff, r.base_backoff
            ),
        );
    }
    if let Some(cb) = &cl.circuit_breaker {
        for (field, message) in cb.check() {
            c.err(format!("{path}.circuit_breaker.{field}"), message);
        }
    }
    let not_for = |c: &mut Checker<'_>, field: &str, present: bool, kind: &str| {
        if present {
            c.err(
                format!("{path}.{field}"),
                format!("field `{field}` does not apply to type {kind}"),
            );
        }
    };
    let target = match cl.kind {
        ClusterKind::Static => {
            not_for(c, "endpoint", cl.endpoint.is_some(), "static");
            not_for(c, "ingress", cl.ingress.is_some(), "static");
            let endpoints = cl.endpoints.clone().unwrap_or_default();
            if endpoints.is_empty() {
                c.err(
                    format!("{path}.endpoints"),
                    "a static cluster needs at least one `host:port` endpoint",
                );
            }
            for (j, e) in endpoints.iter().enumerate() {
                let valid = e
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
                if !valid {
                    c.err(
                        format!("{path}.endpoints[{j}]"),
                        format!("`{e}` is not a `host:port` address"),
                    );
                }
            }
            if cl.connect_timeout.is_some_and(|d| d.get().is_zero()) {
                c.err(format!("{path}.connect_timeout"), "must be more than 0s");
            }
            let timeout = cl
                .connect_timeout
                .map_or(crate::filters::timeouts::DEFAULT_STATIC_CONNECT, |d| {
                    d.get()
                });
            ClusterTarget::Static(StaticEndpoints::new(endpoints, timeout))
        }
        ClusterKind::BindingUpstream => {
            not_for(c, "endpoints", cl.endpoints.is_some(), "binding_upstream");
            not_for(
                c,
                "connect_timeout",
                cl.connect_timeout.is_some(),
                "binding_upstream (set it on the ingress)",
            );
            let url = match &cl.endpoint {
                None => {
                    c.err(path, "a binding_upstream cluster needs `endpoint` (e.g. `tcp://service.namespace:5432`)");
                    None
                }
                Some(u) => BoundUrl::parse(u, None)
                    .map_err(|e| c.err(format!("{path}.endpoint"), e))
                    .ok(),
            };
            let ingress = match &cl.ingress {
                None => {
                    c.err(path, "a binding_upstream cluster needs `ingress` (the name of an entry in `ingresses`)");
                    None
                }
                Some(name) => {
                    let found = ingresses.get(name.as_str()).cloned();
                    let declared = c.loaded.config.ingresses.iter().any(|i| &i.name == name);
                    if found.is_none() && !declared {
                        c.err(
                            format!("{path}.ingress"),
                            format!("no ingress named `{name}`"),
                        );
                    }
                    found
                }
            };
            match (url, ingress) {
                (Some(url), Some(ingress)) => match BindingTarget::new(url, ingress) {
                    Ok(target) => ClusterTarget::Binding(target),
                    Err(e) => {
                        c.err(format!("{path}.endpoint"), e);
                        return None;
                    }
                },
                _ => return None,
            }
        }
    };
    if c.errors.len() != errors_before {
        return None;
    }
    Some(cluster_with_stack(
        &cl.name,
        target,
        &cl.retry,
        cl.circuit_breaker.as_ref(),
        retained,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Allocations, place};

    const SHARED: &str = "\
version: 1
ngrok: { api_key: k }
ingresses: [ { name: n } ]
dynamic_resources:
  bound_endpoints:
    ingress: n
    expose: { mode: shared }
";

    fn build_discovered(urls: &[&str], retained: &Retained) -> Snapshot {
        let loaded = crate::config::parse(SHARED, "t.yaml", "/".into(), |_| None).unwrap();
        let d = loaded.config.dynamic_resources.as_ref().unwrap();
        let expose = &d.bound_endpoints.as_ref().unwrap().expose;
        let urls = urls
            .iter()
            .map(|u| BoundUrl::parse(u, None).unwrap())
            .collect();
        let (placed, errors) = place(
            &urls,
            &Exposure::from_config(expose).unwrap(),
            &expose.overrides,
            &Default::default(),
            &mut Allocations::load(None),
        );
        assert!(errors.is_empty(), "{errors:?}");
        build_with(BuildInput {
            loaded: &loaded,
            discovered: &placed,
            retained,
            registered: None,
            sources: &[],
            version: 2,
            offline: false,
        })
        .unwrap()
    }

    #[test]
    fn shared_ports_become_one_http_or_tls_listener_with_a_route_per_endpoint() {
        let snap = build_discovered(
            &[
                "http://shop.default:8080",
                "http://cart.default:8080",
                "https://pay.default",
                "tls://db.prod:443",
                "tcp://orders.default:5432",
            ],
            &Retained::new(),
        );
        let names: Vec<(&str, Protocol)> = snap
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.protocol))
            .collect();
        assert_eq!(
            names,
            [
                ("http@127.0.0.1:8080", Protocol::Http),
                ("tcp://orders.default:5432", Protocol::Tcp),
                ("tls@127.0.0.1:443", Protocol::Tls),
            ]
        );
        let Some(RouteTable::Http(http)) = snap.listener("http@127.0.0.1:8080").map(|l| &*l.routes)
        else {
            panic!("not http");
        };
        let hit = |host| {
            http.find(Some(host), "/x")
                .map(|r| r.upstream.cluster.name.clone())
        };
        assert_eq!(
            hit("shop.default").as_deref(),
            Some("http://shop.default:8080")
        );
        assert_eq!(
            hit("cart.default").as_deref(),
            Some("http://cart.default:8080")
        );
        assert_eq!(hit("other.default"), None);
        let Some(RouteTable::Tls(tls)) = snap.listener("tls@127.0.0.1:443").map(|l| &*l.routes)
        else {
            panic!("not tls");
        };
        assert_eq!(
            tls.find(Some("pay.default")).unwrap().name,
            "https://pay.default:443"
        );
        assert_eq!(tls.find(Some("db.prod")).unwrap().name, "tls://db.prod:443");
        assert!(
            tls.find(Some("x.y")).is_none() && tls.find(None).is_none(),
            "no default route"
        );
        assert_eq!(snap.discovered.len(), 5);

        // One endpoint alone already has the http listener; a second one joins it, keeping the
        // first one's upstream pool.
        let retained = Retained::new();
        let one = build_discovered(&["http://shop.default:8080"], &retained);
        let two = build_discovered(
            &["http://shop.default:8080", "http://cart.default:8080"],
            &retained,
        );
        let pool = |s: &Snapshot| match &*s.listener("http@127.0.0.1:8080").unwrap().routes {
            RouteTable::Http(h) => h
                .find(Some("shop.default"), "/")
                .unwrap()
                .upstream
                .pool
                .clone(),
            _ => panic!("not http"),
        };
        assert!(Arc::ptr_eq(&pool(&one), &pool(&two)));
    }
}
