//! Route tables: what a listener's `routes` compile to, and how a connection (tcp, tls) or a
//! request (http) picks its cluster.
//!
//! Compilation checks each route against its listener's protocol and reports every mistake with
//! its field path; matching is the data path's half and never fails on client input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use super::build::Checker;
use crate::config::{ListenerConfig, Protocol, RouteConfig};
use crate::filters::CheckCtx;
use crate::filters::http::{HttpFilterConfig, HttpService, build_chain};
use crate::retained::{Retained, StateKey};
use crate::upstream::Cluster;
use crate::upstream::http_pool::HttpPool;

pub use crate::filters::timeouts::DEFAULT_REQUEST_TIMEOUT;

/// A listener's compiled routes; the variant is the listener's protocol.
#[derive(Debug)]
pub enum RouteTable {
    /// Every connection goes to this cluster.
    Tcp(Arc<Cluster>),
    /// Per request, by host and path.
    Http(HttpRoutes),
    /// Per connection, by the ClientHello's server name.
    Tls(SniRoutes),
}

impl RouteTable {
    /// Every cluster the table can send traffic to (each once, in route order).
    pub fn clusters(&self) -> Vec<&Arc<Cluster>> {
        let all: Vec<&Arc<Cluster>> = match self {
            RouteTable::Tcp(c) => vec![c],
            RouteTable::Http(h) => h.routes.iter().map(|r| &r.upstream.cluster).collect(),
            RouteTable::Tls(t) => t.order.iter().collect(),
        };
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|c| seen.insert(c.name.as_str()))
            .collect()
    }
}

/// A host or server name to match: any, one exact name, or every name under a suffix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamePattern {
    Any,
    /// Lowercase, without a trailing dot.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: matches names that end with it and have at
    /// least one more character before it.
    Suffix(String),
}

impl NamePattern {
    /// Parses a configured `host` or `sni`: `name`, or `*.suffix`.
    /// `ip_allowed`: whether an IP literal is a valid exact name (a Host header may carry one;
    /// SNI never does).
    pub fn parse(text: &str, ip_allowed: bool) -> Result<NamePattern, String> {
        let lower = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty name; omit the field to match any name".into());
        }
        if lower == "*" {
            return Err("`*` alone is not a pattern; omit the field to match any name".into());
        }
        if let Some(inner) = lower.strip_prefix('[') {
            let addr = inner
                .strip_suffix(']')
                .and_then(|a| a.parse::<Ipv6Addr>().ok());
            return match (addr, ip_allowed) {
                (Some(_), true) => Ok(NamePattern::Exact(lower)),
                (Some(_), false) => Err(format!("`{text}`: SNI never carries an IP address")),
                (None, _) => Err(format!("`{text}` is not a bracketed IPv6 address")),
            };
        }
        if let Some((_, port)) = lower.rsplit_once(':') {
            return Err(format!(
                "`{text}`: match on the name alone; the request's port is ignored (remove `:{port}`)"
            ));
        }
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.len() > 253 {
            return Err(format!("`{text}` is longer than 253 characters"));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split('.').all(valid_label) {
            return Err(format!(
                "`{text}` is not a host name (letters, digits, `-`, `_` in dot-separated labels; `*.` only as the first label)"
            ));
        }
        if !ip_allowed && !suffix && name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(format!("`{text}`: SNI never carries an IP address"));
        }
        Ok(if suffix {
            NamePattern::Suffix(format!(".{name}"))
        } else {
            NamePattern::Exact(name.to_owned())
        })
    }

    /// Whether `name` (already normalized: see [`normalize_host`]) matches.
    pub fn matches(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (NamePattern::Any, _) => true,
            (_, None) => false,
            (NamePattern::Exact(e), Some(n)) => e == n,
            (NamePattern::Suffix(s), Some(n)) => n.len() > s.len() && n.ends_with(s.as_str()),
        }
    }

    /// Whether every name `other` matches is also matched by `self`.
    fn covers(&self, other: &NamePattern) -> bool {
        match (self, other) {
            (NamePattern::Any, _) => true,
            (_, NamePattern::Any) => false,
            (NamePattern::Exact(a), NamePattern::Exact(b)) => a == b,
            (NamePattern::Exact(_), NamePattern::Suffix(_)) => false,
            (NamePattern::Suffix(_), NamePattern::Exact(b)) => self.matches(Some(b)),
            (NamePattern::Suffix(a), NamePattern::Suffix(b)) => b.ends_with(a.as_str()),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::Any => f.write_str("any host"),
            NamePattern::Exact(e) => write!(f, "`{e}`"),
            NamePattern::Suffix(s) => write!(f, "`*{s}`"),
        }
    }
}

/// A request's authority or Host header (or a ClientHello's server name) as routes compare it:
/// the port removed, ASCII lowercase, no trailing dot. `[v6]:port` keeps its brackets.
pub fn normalize_host(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// The upstream side of an http route: the cluster and its pool of upstream HTTP connections,
/// one pool per cluster shared by every http listener that routes to it.
#[derive(Clone, Debug)]
pub struct HttpUpstream {
    pub cluster: Arc<Cluster>,
    pub pool: Arc<HttpPool>,
}

pub struct HttpRoute {
    /// `name`, else `routes[i]`.
    pub name: Arc<str>,
    pub host: NamePattern,
    pub path_prefix: String,
    pub upstream: HttpUpstream,
    /// The upstream cluster's name, shared with each request's `RequestInfo` (no copy per
    /// request).
    pub cluster: Arc<str>,
    /// The route's http filters, in force (the shorthand `request_timeout` included), for views.
    pub filters: Vec<HttpFilterConfig>,
    /// The filters around the forwarder: called once per request.
    pub service: HttpService,
}

impl std::fmt::Debug for HttpRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRoute")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("path_prefix", &self.path_prefix)
            .field("upstream", &self.upstream)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

/// An http listener's routes, in order: the first whose host and path prefix match wins.
#[derive(Debug)]
pub struct HttpRoutes {
    pub routes: Vec<HttpRoute>,
    /// From the end of a forwarded request until its response headers arrive; past it, `504`
    /// (routes without a `timeout` filter).
    pub request_timeout: Duration,
}

impl HttpRoutes {
    /// `host`: normalized (see [`normalize_host`]); `None` when the request carries none.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&HttpRoute> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path.starts_with(r.path_prefix.as_str()))
    }
}

/// A tls listener's routes: exact server names, then the longest matching `*.suffix`, then the
/// default route (the one without `sni`).
#[derive(Debug, Default)]
pub struct SniRoutes {
    exact: HashMap<String, Arc<Cluster>>,
    /// Longest suffix first.
    suffixes: Vec<(String, Arc<Cluster>)>,
    default: Option<Arc<Cluster>>,
    /// Every route's cluster in config order (for views).
    order: Vec<Arc<Cluster>>,
}

impl SniRoutes {
    /// Exact server names only, no default (a shared tls listener of discovered endpoints).
    pub(super) fn exact_names(routes: impl IntoIterator<Item = (String, Arc<Cluster>)>) -> Self {
        let mut table = SniRoutes::default();
        for (name, cluster) in routes {
            table.order.push(cluster.clone());
            table.exact.insert(name, cluster);
        }
        table
    }

    /// `server_name`: normalized; `None` when the ClientHello has no SNI.
    pub fn find(&self, server_name: Option<&str>) -> Option<&Arc<Cluster>> {
        server_name
            .and_then(|name| {
                self.exact.get(name).or_else(|| {
                    self.suffixes
                        .iter()
                        .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
                        .map(|(_, c)| c)
                })
            })
            .or(self.default.as_ref())
    }
}

/// Compiles listeners' routes for one build. Keeps one [`HttpUpstream`] per cluster name, so
/// http listeners routing to the same cluster share its pool, and carries a pool over from the
/// previous snapshot when its cluster still points at the same place.
pub(super) struct RouteCompiler<'a> {
    clusters: &'a BTreeMap<String, Arc<Cluster>>,
    /// Names declared in the file, including clusters that failed to build (already reported).
    declared: &'a HashSet<&'a str>,
    retained: &'a Retained,
    base_dir: &'a std::path::Path,
    /// By cluster name and whether header case is kept.
    http_upstreams: HashMap<(String, bool), HttpUpstream>,
}

impl<'a> RouteCompiler<'a> {
    pub(super) fn new(
        clusters: &'a BTreeMap<String, Arc<Cluster>>,
        declared: &'a HashSet<&'a str>,
        retained: &'a Retained,
        base_dir: &'a std::path::Path,
    ) -> Self {
        RouteCompiler {
            clusters,
            declared,
            retained,
            base_dir,
            http_upstreams: HashMap::new(),
        }
    }

    /// The listener's route table, or `None` after reporting why it cannot be built.
    pub(super) fn compile(
        &mut self,
        c: &mut Checker<'_>,
        path: &str,
        l: &ListenerConfig,
    ) -> Option<RouteTable> {
        let errors_before = c.errors.len();
        if l.request_timeout.is_some() && l.protocol != Protocol::Http {
            c.err(
                format!("{path}.request_timeout"),
                "`request_timeout` applies to http listeners only",
            );
        }
        if l.preserve_header_case.is_some() && l.protocol != Protocol::Http {
            c.err(
                format!("{path}.preserve_header_case"),
                "`preserve_header_case` applies to http listeners only",
            );
        }
        let table = match l.protocol {
            Protocol::Tcp => self.tcp(c, path, &l.routes).map(RouteTable::Tcp),
            Protocol::Http => self.http(c, path, l).map(RouteTable::Http),
            Protocol::Tls => self.tls(c, path, &l.routes).map(RouteTable::Tls),
        };
        if c.errors.len() != errors_before {
            return None;
        }
        table
    }

    /// The cluster a route names; reports a missing one.
    fn cluster(&self, c: &mut Checker<'_>, path: &str, r: &RouteConfig) -> Option<Arc<Cluster>> {
        let found = self.clusters.get(&r.cluster).cloned();
        if found.is_none() && !self.declared.contains(r.cluster.as_str()) {
            c.err(
                format!("{path}.cluster"),
                format!("no cluster named `{}`", r.cluster),
            );
        }
        found
    }

    fn tcp(
        &mut self,
        c: &mut Checker<'_>,
        path: &str,
        routes: &[RouteConfig],
    ) -> Option<Arc<Cluster>> {
        if routes.len() != 1 {
            c.err(
                format!("{path}.routes"),
                format!(
                    "a tcp listener takes exactly one route, found {}",
                    routes.len()
                ),
            );
        }
        let r = routes.first()?;
        if r.route_match.is_some() {
            c.err(
                format!("{path}.routes[0].match"),
                "a tcp listener's route takes no `match`",
            );
        }
        self.cluster(c, &format!("{path}.routes[0]"), r)
    }

    fn http(&mut self, c: &mut Checker<'_>, path: &str, l: &ListenerConfig) -> Option<HttpRoutes> {
        if l.routes.is_empty() {
            c.err(
                format!("{path}.routes"),
                "an http listener needs at least one route",
            );
        }
        if let Some(t) = l.request_timeout {
            if t.get().is_zero() {
                c.err(format!("{path}.request_timeout"), "must be more than 0s");
            }
        }
        let request_timeout = l
            .request_timeout
            .map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.get());
        let mut routes = Vec::new();
        // (route index, host, path prefix) of every earlier route that compiled.
        let mut compiled: Vec<(usize, NamePattern, String)> = Vec::new();
        for (j, r) in l.routes.iter().enumerate() {
            let rpath = format!("{path}.routes[{j}]");
            let m = r.route_match.clone().unwrap_or_default();
            if m.sni.is_some() {
                c.err(
                    format!("{rpath}.match.sni"),
                    "`sni` applies to tls listeners; an http route matches `host` and `path_prefix`",
                );
            }
            let host = match &m.host {
                None => Some(NamePattern::Any),
                Some(h) => NamePattern::parse(h, true)
                    .map_err(|e| c.err(format!("{rpath}.match.host"), e))
                    .ok(),
            };
            let prefix = m.path_prefix.clone().unwrap_or_else(|| "/".to_owned());
            let prefix_ok = prefix.starts_with('/');
            if !prefix_ok {
                c.err(
                    format!("{rpath}.match.path_prefix"),
                    format!("`{prefix}` must start with `/`"),
                );
            }
            let cluster = self.cluster(c, &rpath, r);
            let Some(host) = host.filter(|_| prefix_ok) else {
                continue;
            };
            if let Some((i, h, p)) = compiled
                .iter()
                .find(|(_, h, p)| h.covers(&host) && prefix.starts_with(p.as_str()))
            {
                c.err(
                    format!("{rpath}.match"),
                    format!(
                        "unreachable: route [{i}] (host {h}, path_prefix `{p}`) comes first and matches every request this one matches"
                    ),
                );
            }
            compiled.push((j, host.clone(), prefix.clone()));
            let filters_ok = self.check_filters(c, &rpath, r);
            if let (Some(cluster), true) = (cluster, filters_ok) {
                let name: Arc<str> =
                    Arc::from(r.name.clone().unwrap_or_else(|| format!("routes[{j}]")));
                routes.push(self.http_route(
                    &l.name,
                    name,
                    host,
                    prefix,
                    cluster,
                    &r.filters,
                    request_timeout,
                    l.idle_timeout.get(),
                    l.preserve_header_case.unwrap_or(true),
                ));
            }
        }
        Some(HttpRoutes {
            routes,
            request_timeout,
        })
    }

    /// The routes of a shared http listener (`expose.mode: shared`): one per discovered endpoint,
    /// matching its `service.namespace` exactly (any port in the Host header), every path.
    pub(super) fn discovered_http(
        &mut self,
        listener: &str,
        idle_timeout: Duration,
        preserve_header_case: bool,
        endpoints: impl IntoIterator<Item = (String, Arc<Cluster>)>,
    ) -> HttpRoutes {
        let routes = endpoints
            .into_iter()
            .map(|(host, cluster)| {
                let name: Arc<str> = Arc::from(host.as_str());
                self.http_route(
                    listener,
                    name,
                    NamePattern::Exact(host),
                    "/".to_owned(),
                    cluster,
                    &[],
                    DEFAULT_REQUEST_TIMEOUT,
                    idle_timeout,
                    preserve_header_case,
                )
            })
            .collect();
        HttpRoutes {
            routes,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Reports every problem of a route's http filters; false when there was one.
    fn check_filters(&self, c: &mut Checker<'_>, rpath: &str, r: &RouteConfig) -> bool {
        let before = c.errors.len();
        let ctx = CheckCtx {
            protocol: Protocol::Http,
            base_dir: self.base_dir,
        };
        for (i, f) in r.filters.iter().enumerate() {
            for (field, message) in f.filter().check(&ctx) {
                let at = format!("{rpath}.filters[{i}].{}", f.name());
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

    /// A compiled route: its filters (and the default timeout) around the forwarder.
    #[allow(clippy::too_many_arguments)]
    fn http_route(
        &mut self,
        listener: &str,
        name: Arc<str>,
        host: NamePattern,
        path_prefix: String,
        cluster: Arc<Cluster>,
        filters: &[HttpFilterConfig],
        request_timeout: Duration,
        idle_timeout: Duration,
        preserve_header_case: bool,
    ) -> HttpRoute {
        let upstream = self.http_upstream(cluster, preserve_header_case);
        let leaf = crate::proxy::http::forwarder(upstream.clone(), idle_timeout);
        let owner = format!("{listener}/{name}");
        let service = build_chain(
            filters,
            leaf,
            request_timeout,
            &owner,
            self.retained,
            self.base_dir,
        );
        let mut effective = filters.to_vec();
        if !effective
            .iter()
            .any(|f| matches!(f, HttpFilterConfig::timeout(_)))
        {
            effective.push(HttpFilterConfig::timeout(
                crate::filters::http::RequestTimeout {
                    request: crate::config::HumanDuration(request_timeout),
                },
            ));
        }
        HttpRoute {
            name,
            host,
            path_prefix,
            cluster: Arc::from(upstream.cluster.name.as_str()),
            upstream,
            filters: effective,
            service,
        }
    }

    /// This build's upstream for `cluster`: shared by name within the build, and keeping the
    /// pool of the snapshot in force when that cluster still points at the same upstream. The
    /// listeners that keep header case and those that do not get a pool each (a connection
    /// records the case of what it reads, or not, from its start).
    fn http_upstream(&mut self, cluster: Arc<Cluster>, preserve_header_case: bool) -> HttpUpstream {
        let key = (cluster.name.clone(), preserve_header_case);
        if let Some(u) = self.http_upstreams.get(&key) {
            return u.clone();
        }
        let pool = self.retained.get_or_insert(
            StateKey::new(
                if preserve_header_case {
                    "cluster/http_pool"
                } else {
                    "cluster/http_pool/lowercase"
                },
                cluster.name.as_str(),
                &cluster.identity(),
            ),
            || HttpPool::new(preserve_header_case),
        );
        let upstream = HttpUpstream { pool, cluster };
        self.http_upstreams.insert(key, upstream.clone());
        upstream
    }

    fn tls(
        &mut self,
        c: &mut Checker<'_>,
        path: &str,
        routes: &[RouteConfig],
    ) -> Option<SniRoutes> {
        if routes.is_empty() {
            c.err(
                format!("{path}.routes"),
                "a tls listener needs at least one route",
            );
        }
        let mut table = SniRoutes::default();
        // Pattern → the route index that declared it, to name duplicates.
        let mut seen: HashMap<NamePattern, usize> = HashMap::new();
        for (j, r) in routes.iter().enumerate() {
            let rpath = format!("{path}.routes[{j}]");
            let m = r.route_match.clone().unwrap_or_default();
            for (field, present) in [
                ("host", m.host.is_some()),
                ("path_prefix", m.path_prefix.is_some()),
            ] {
                if present {
                    c.err(
                        format!("{rpath}.match.{field}"),
                        format!("`{field}` applies to http listeners; a tls route matches `sni`"),
                    );
                }
            }
            let pattern = match &m.sni {
                None => Some(NamePattern::Any),
                Some(s) => NamePattern::parse(s, false)
                    .map_err(|e| c.err(format!("{rpath}.match.sni"), e))
                    .ok(),
            };
            let cluster = self.cluster(c, &rpath, r);
            let Some(pattern) = pattern else { continue };
            if let Some(i) = seen.get(&pattern) {
                let what = match &pattern {
                    NamePattern::Any => "default route (no `sni`)".to_owned(),
                    p => format!("route for sni {p}"),
                };
                c.err(
                    format!("{rpath}.match"),
                    format!("unreachable: route [{i}] is already the {what}"),
                );
                continue;
            }
            seen.insert(pattern.clone(), j);
            let Some(cluster) = cluster else { continue };
            table.order.push(cluster.clone());
            match pattern {
                NamePattern::Any => table.default = Some(cluster),
                NamePattern::Exact(name) => {
                    table.exact.insert(name, cluster);
                }
                NamePattern::Suffix(s) => table.suffixes.push((s, cluster)),
            }
        }
        table
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Some(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> NamePattern {
        NamePattern::parse(text, true).unwrap()
    }

    #[test]
    fn patterns_parse_and_normalize() {
        assert_eq!(p("Shop.Default"), NamePattern::Exact("shop.default".into()));
        assert_eq!(
            p("shop.default."),
            NamePattern::Exact("shop.default".into())
        );
        assert_eq!(
            p("*.Example.com"),
            NamePattern::Suffix(".example.com".into())
        );
        assert_eq!(p("10.0.0.1"), NamePattern::Exact("10.0.0.1".into()));
        assert_eq!(p("[::1]"), NamePattern::Exact("[::1]".into()));
        for bad in [
            "", "*", "a..b", "*.", "a.*.b", "a b", "x:80", "[nope]", "é.com",
        ] {
            assert!(
                NamePattern::parse(bad, true).is_err(),
                "{bad:?} must be refused"
            );
        }
        let port = NamePattern::parse("shop.default:8080", true).unwrap_err();
        assert!(port.contains("remove `:8080`"), "{port}");
        for ip in ["10.0.0.1", "[::1]"] {
            let e = NamePattern::parse(ip, false).unwrap_err();
            assert!(e.contains("SNI never carries an IP address"), "{e}");
        }
    }

    #[test]
    fn hosts_normalize_like_routes_compare_them() {
        assert_eq!(normalize_host("Shop.Default:8080"), "shop.default");
        assert_eq!(normalize_host("shop.default"), "shop.default");
        assert_eq!(normalize_host("shop.default.:80"), "shop.default");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("host:notaport"), "host:notaport");
        assert_eq!(normalize_host("host:"), "host");
        assert_eq!(normalize_host(""), "");
    }

    #[test]
    fn suffix_patterns_need_a_label_before_the_suffix() {
        let s = p("*.example.com");
        assert!(s.matches(Some("a.example.com")));
        assert!(s.matches(Some("a.b.example.com")));
        assert!(!s.matches(Some("example.com")));
        assert!(!s.matches(Some(".example.com")));
        assert!(!s.matches(Some("aexample.com")));
        assert!(!s.matches(None));
        assert!(NamePattern::Any.matches(None));
        assert!(!p("a.b").matches(None));
    }

    #[test]
    fn coverage_decides_unreachable_routes() {
        assert!(NamePattern::Any.covers(&p("a.b")));
        assert!(p("*.b.com").covers(&p("x.b.com")));
        assert!(p("*.b.com").covers(&p("*.x.b.com")));
        assert!(p("*.b.com").covers(&p("*.b.com")));
        assert!(!p("*.x.b.com").covers(&p("*.b.com")));
        assert!(!p("*.b.com").covers(&p("b.com")));
        assert!(!p("a.b").covers(&NamePattern::Any));
        assert!(!p("a.b").covers(&p("*.a.b")));
    }

    fn cluster(name: &str) -> Arc<Cluster> {
        use crate::upstream::{ClusterTarget, StaticEndpoints};
        let target = Arc::new(ClusterTarget::Static(StaticEndpoints::new(
            vec!["127.0.0.1:9".into()],
            Duration::from_secs(1),
        )));
        Arc::new(Cluster::new(
            name.into(),
            target.clone(),
            Cluster::transport(target),
            None,
            Arc::new(crate::telemetry::ClusterMetrics::new(name)),
        ))
    }

    fn route(host: NamePattern, prefix: &str, name: &str) -> HttpRoute {
        let upstream = HttpUpstream {
            cluster: cluster(name),
            pool: Arc::default(),
        };
        HttpRoute {
            name: Arc::from(name),
            host,
            path_prefix: prefix.into(),
            service: crate::proxy::http::forwarder(upstream.clone(), Duration::from_secs(1)),
            cluster: Arc::from(name),
            upstream,
            filters: Vec::new(),
        }
    }

    #[test]
    fn http_routes_first_match_wins() {
        let table = HttpRoutes {
            routes: vec![
                route(p("shop.default"), "/api", "api"),
                route(p("shop.default"), "/", "shop"),
                route(p("*.default"), "/", "wild"),
                route(NamePattern::Any, "/static/", "static"),
            ],
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        };
        let hit = |host: Option<&str>, path: &str| {
            table
                .find(host, path)
                .map(|r| r.upstream.cluster.name.as_str())
        };
        assert_eq!(hit(Some("shop.default"), "/api/v1"), Some("api"));
        assert_eq!(hit(Some("shop.default"), "/apis"), Some("api"));
        assert_eq!(hit(Some("shop.default"), "/"), Some("shop"));
        assert_eq!(hit(Some("shop.default"), "/static/x"), Some("shop"));
        assert_eq!(hit(Some("cart.default"), "/api"), Some("wild"));
        assert_eq!(hit(Some("other"), "/static/a.css"), Some("static"));
        assert_eq!(hit(None, "/static/a.css"), Some("static"));
        assert_eq!(hit(Some("other"), "/"), None);
        assert_eq!(hit(None, "/"), None);
    }

    #[test]
    fn sni_routes_prefer_exact_then_longest_suffix_then_default() {
        let mut t = SniRoutes::default();
        t.exact.insert("a.example.com".into(), cluster("exact"));
        t.suffixes.push((".x.example.com".into(), cluster("long")));
        t.suffixes.push((".example.com".into(), cluster("short")));
        let hit = |t: &SniRoutes, n: Option<&str>| t.find(n).map(|c| c.name.clone());
        assert_eq!(hit(&t, Some("a.example.com")).as_deref(), Some("exact"));
        assert_eq!(hit(&t, Some("b.x.example.com")).as_deref(), Some("long"));
        assert_eq!(hit(&t, Some("b.example.com")).as_deref(), Some("short"));
        assert_eq!(hit(&t, Some("example.com")), None);
        assert_eq!(hit(&t, None), None);
        t.default = Some(cluster("default"));
        assert_eq!(hit(&t, Some("example.com")).as_deref(), Some("default"));
        assert_eq!(hit(&t, None).as_deref(), Some("default"));
    }

    // Through the real build path: config text → snapshot.

    fn build_text(text: &str) -> Result<crate::snapshot::Snapshot, Vec<(String, String)>> {
        let loaded = crate::config::parse(text, "t.yaml", "/".into(), |_| None).map_err(|e| {
            e.errors
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect::<Vec<_>>()
        })?;
        super::super::build(&loaded, 1).map_err(|e| {
            e.errors
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect::<Vec<_>>()
        })
    }

    const CLUSTERS: &str = "  clusters:
    - { name: a, type: static, endpoints: [ \"127.0.0.1:1\" ] }
    - { name: b, type: static, endpoints: [ \"127.0.0.1:2\" ] }
";

    fn config(listeners: &str) -> String {
        format!("version: 1\nstatic_resources:\n  listeners:\n{listeners}{CLUSTERS}")
    }

    /// Every error as (path, message), which must contain the given fragment.
    fn assert_errors(listeners: &str, want: &[(&str, &str)]) {
        let errors = build_text(&config(listeners)).expect_err("must be refused");
        assert_eq!(
            errors.len(),
            want.len(),
            "errors: {errors:#?}\nwanted: {want:#?}"
        );
        for ((path, message), (want_path, fragment)) in errors.iter().zip(want) {
            assert_eq!(path, want_path, "{message}");
            assert!(
                message.contains(fragment),
                "{path}: {message:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn http_route_mistakes_are_named_by_field() {
        assert_errors(
            "    - name: web
      address: 127.0.0.1:0
      protocol: http
      routes:
        - { match: { host: shop.default, sni: shop.default }, cluster: a }
        - { match: { host: \"shop.default:80\" }, cluster: a }
        - { match: { path_prefix: api }, cluster: a }
        - { match: { host: Shop.Default, path_prefix: /api }, cluster: b }
        - { match: { host: \"*.default\" }, cluster: b }
        - { match: { host: x.default, path_prefix: /x }, cluster: b }
        - { cluster: nope }
",
            &[
                (
                    "static_resources.listeners[0].routes[0].match.sni",
                    "`sni` applies to tls listeners",
                ),
                (
                    "static_resources.listeners[0].routes[1].match.host",
                    "remove `:80`",
                ),
                (
                    "static_resources.listeners[0].routes[2].match.path_prefix",
                    "`api` must start with `/`",
                ),
                (
                    "static_resources.listeners[0].routes[3].match",
                    "unreachable: route [0] (host `shop.default`, path_prefix `/`)",
                ),
                (
                    "static_resources.listeners[0].routes[5].match",
                    "unreachable: route [4] (host `*.default`, path_prefix `/`)",
                ),
                (
                    "static_resources.listeners[0].routes[6].cluster",
                    "no cluster named `nope`",
                ),
            ],
        );
    }

    #[test]
    fn tls_route_mistakes_are_named_by_field() {
        assert_errors(
            "    - name: sni
      address: 127.0.0.1:0
      protocol: tls
      request_timeout: 5s
      preserve_header_case: false
      routes:
        - { match: { sni: a.test, host: a.test, path_prefix: / }, cluster: a }
        - { match: { sni: A.Test }, cluster: b }
        - { match: { sni: 10.0.0.1 }, cluster: b }
        - { cluster: a }
        - { match: {}, cluster: b }
",
            &[
                (
                    "static_resources.listeners[0].request_timeout",
                    "applies to http listeners only",
                ),
                (
                    "static_resources.listeners[0].preserve_header_case",
                    "applies to http listeners only",
                ),
                (
                    "static_resources.listeners[0].routes[0].match.host",
                    "`host` applies to http listeners",
                ),
                (
                    "static_resources.listeners[0].routes[0].match.path_prefix",
                    "`path_prefix` applies to http listeners",
                ),
                (
                    "static_resources.listeners[0].routes[1].match",
                    "unreachable: route [0] is already the route for sni `a.test`",
                ),
                (
                    "static_resources.listeners[0].routes[2].match.sni",
                    "SNI never carries an IP address",
                ),
                (
                    "static_resources.listeners[0].routes[4].match",
                    "unreachable: route [3] is already the default route",
                ),
            ],
        );
    }

    #[test]
    fn listeners_without_routes_are_refused() {
        assert_errors(
            "    - { name: h, address: 127.0.0.1:0, protocol: http, routes: [] }
    - { name: t, address: 127.0.0.1:0, protocol: tls, routes: [] }
    - { name: p, address: 127.0.0.1:0, protocol: tcp, routes: [ { cluster: a }, { cluster: b } ] }
",
            &[
                ("static_resources.listeners[0].routes", "at least one route"),
                ("static_resources.listeners[1].routes", "at least one route"),
                (
                    "static_resources.listeners[2].routes",
                    "exactly one route, found 2",
                ),
            ],
        );
    }

    const TWO_HTTP_LISTENERS: &str = "    - name: one
      address: 127.0.0.1:0
      protocol: http
      request_timeout: 3s
      routes:
        - { match: { host: a.test }, cluster: a }
        - { match: { path_prefix: /b }, cluster: b }
    - name: two
      address: 127.0.0.1:0
      protocol: http
      routes: [ { cluster: a } ]
    - name: sni
      address: 127.0.0.1:0
      protocol: tls
      routes:
        - { match: { sni: \"*.test\" }, cluster: a }
        - { cluster: b }
";

    fn http_table(snap: &crate::snapshot::Snapshot, listener: &str) -> &'static str {
        match snap.listener(listener).map(|l| &*l.routes) {
            Some(RouteTable::Http(_)) => "http",
            Some(RouteTable::Tls(_)) => "tls",
            Some(RouteTable::Tcp(_)) => "tcp",
            None => "none",
        }
    }

    fn upstream<'s>(
        snap: &'s crate::snapshot::Snapshot,
        listener: &str,
        host: &str,
        path: &str,
    ) -> &'s HttpUpstream {
        match snap.listener(listener).map(|l| &*l.routes) {
            Some(RouteTable::Http(h)) => &h.find(Some(host), path).unwrap().upstream,
            _ => panic!("{listener} is not http"),
        }
    }

    #[test]
    fn listeners_that_lowercase_header_names_get_a_pool_of_their_own() {
        let text = config(
            "    - { name: keeps, address: 127.0.0.1:0, protocol: http, routes: [ { cluster: a } ] }
    - name: lowers
      address: 127.0.0.1:0
      protocol: http
      preserve_header_case: false
      routes: [ { cluster: a } ]
    - name: also_lowers
      address: 127.0.0.1:0
      protocol: http
      preserve_header_case: false
      routes: [ { cluster: a } ]
",
        );
        let snap = build_text(&text).unwrap();
        let keeps = upstream(&snap, "keeps", "x", "/");
        let lowers = upstream(&snap, "lowers", "x", "/");
        let also = upstream(&snap, "also_lowers", "x", "/");
        assert!(keeps.pool.preserve_header_case());
        assert!(!lowers.pool.preserve_header_case());
        assert!(!Arc::ptr_eq(&keeps.pool, &lowers.pool));
        assert!(Arc::ptr_eq(&lowers.pool, &also.pool));
    }

    #[test]
    fn http_listeners_share_one_pool_per_cluster_and_keep_it_across_builds() {
        let text = config(TWO_HTTP_LISTENERS);
        let retained = Retained::new();
        let loaded = crate::config::parse(&text, "t.yaml", "/".into(), |_| None).unwrap();
        let first = super::super::build_with(super::super::BuildInput {
            loaded: &loaded,
            discovered: &[],
            retained: &retained,
            registered: None,
            sources: &[],
            version: 1,
            offline: false,
        })
        .unwrap();
        assert_eq!(http_table(&first, "one"), "http");
        assert_eq!(http_table(&first, "sni"), "tls");
        let one_a = upstream(&first, "one", "a.test", "/");
        let two_a = upstream(&first, "two", "x", "/");
        let one_b = upstream(&first, "one", "x", "/b/c");
        assert_eq!(one_a.cluster.name, "a");
        assert_eq!(one_b.cluster.name, "b");
        assert!(
            Arc::ptr_eq(&one_a.pool, &two_a.pool),
            "one pool per cluster"
        );
        assert!(!Arc::ptr_eq(&one_a.pool, &one_b.pool));
        let names = |l: &str| -> Vec<String> {
            let routes = &first.listener(l).unwrap().routes;
            routes.clusters().iter().map(|c| c.name.clone()).collect()
        };
        assert_eq!(names("one"), ["a", "b"]);
        assert_eq!(names("two"), ["a"]);
        assert_eq!(names("sni"), ["a", "b"]);
        match &*first.listener("one").unwrap().routes {
            RouteTable::Http(h) => assert_eq!(h.request_timeout, Duration::from_secs(3)),
            _ => unreachable!(),
        }
        match &*first.listener("two").unwrap().routes {
            RouteTable::Http(h) => assert_eq!(h.request_timeout, DEFAULT_REQUEST_TIMEOUT),
            _ => unreachable!(),
        }
        match &*first.listener("sni").unwrap().routes {
            RouteTable::Tls(t) => {
                assert_eq!(t.find(Some("x.test")).unwrap().name, "a");
                assert_eq!(t.find(Some("test")).unwrap().name, "b");
                assert_eq!(t.find(None).unwrap().name, "b");
            }
            _ => unreachable!(),
        }

        // Rebuilt: the same clusters keep their pools; a cluster that now points elsewhere
        // gets a fresh one.
        let moved = text.replace("127.0.0.1:2", "127.0.0.1:3");
        let loaded = crate::config::parse(&moved, "t.yaml", "/".into(), |_| None).unwrap();
        let second = super::super::build_with(super::super::BuildInput {
            loaded: &loaded,
            discovered: &[],
            retained: &retained,
            registered: None,
            sources: &[],
            version: 2,
            offline: false,
        })
        .unwrap();
        let a_again = upstream(&second, "two", "x", "/");
        let b_again = upstream(&second, "one", "x", "/b");
        assert!(Arc::ptr_eq(&one_a.pool, &a_again.pool), "carried over");
        assert!(!Arc::ptr_eq(&one_b.pool, &b_again.pool), "target changed");
    }
}
