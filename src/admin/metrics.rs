//! The Prometheus text served at `/stats/prometheus` and `/metrics`: the recorder's families
//! (`telemetry::render`), then the transport families.
//!
//! Transport counters (warm pools, HTTP/2 connections, handshakes, DNS lookups) live with each
//! transport, which already keeps them for `/clusters`; they are read off the snapshot in force
//! at render time, labelled by ingress, rather than counted twice.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::snapshot::Snapshot;
use crate::telemetry;
use crate::upstream::{ClusterTarget, IngressTransport, MultiplexStats, PoolStats};

/// The `/metrics` text: every family of the recorder (see `telemetry`), then those of the
/// transports of `snapshot`'s ingresses.
pub fn render_with(snapshot: &Snapshot) -> String {
    let mut out = telemetry::render();
    render_transports(snapshot, &mut out);
    out
}

/// Name of the gauge computed at each scrape from the control status.
pub const SOURCE_SECONDS_SINCE_SUCCESS: &str = "bindgate_config_source_seconds_since_success";

/// `bindgate_config_source_seconds_since_success{source}`: seconds since each config source's
/// last applied update, as of this scrape (sources that never applied one have no sample).
pub fn render_sources(sources: &[super::ConfigSourceStatus], out: &mut String) {
    use std::fmt::Write;
    if sources.is_empty() {
        return;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let _ = writeln!(
        out,
        "# HELP {SOURCE_SECONDS_SINCE_SUCCESS} Seconds since the config source's last applied update, as of this scrape.\n# TYPE {SOURCE_SECONDS_SINCE_SUCCESS} gauge"
    );
    for s in sources {
        if let Some(at) = s.last_success_unix {
            let name = s.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "{SOURCE_SECONDS_SINCE_SUCCESS}{{source=\"{name}\"}} {}",
                (now - at).max(0)
            );
        }
    }
}

/// One sample: its labels (`name="value"` pairs) and value.
type Sample = (Vec<(&'static str, &'static str)>, u64);

/// A labelled metric read off a transport: name, type, help, and how to get its samples.
struct TransportMetric<S> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: fn(&S) -> Vec<Sample>,
}

fn one(v: u64) -> Vec<Sample> {
    vec![(Vec::new(), v)]
}

fn by(label: &'static str, rows: &[(&'static str, u64)]) -> Vec<Sample> {
    rows.iter().map(|(l, v)| (vec![(label, *l)], *v)).collect()
}

/// `(full, resumed)` TLS handshakes of an ingress's transport.
const HANDSHAKES: TransportMetric<(u64, u64)> = TransportMetric {
    name: "bindgate_ingress_tls_handshakes_total",
    kind: "counter",
    help: "Completed TLS handshakes with the ingress: full, or a resumed session.",
    samples: |&(full, resumed)| by("session", &[("full", full), ("resumed", resumed)]),
};

const DNS_LOOKUPS: TransportMetric<u64> = TransportMetric {
    name: "bindgate_ingress_dns_lookups_total",
    kind: "counter",
    help: "Lookups of the ingress's host name (answers are reused for 30s; none for an IP address).",
    samples: |&n| one(n),
};

const POOL_METRICS: [TransportMetric<PoolStats>; 5] = [
    TransportMetric {
        name: "bindgate_pool_idle_connections",
        kind: "gauge",
        help: "Handshaked connections waiting in the warm pool.",
        samples: |s| one(s.idle as u64),
    },
    TransportMetric {
        name: "bindgate_pool_checkouts_total",
        kind: "counter",
        help: "Connections asked of the warm pool: served warm (hit) or dialed directly (miss).",
        samples: |s| by("result", &[("hit", s.hits), ("miss", s.misses)]),
    },
    TransportMetric {
        name: "bindgate_pool_redials_total",
        kind: "counter",
        help: "Pooled connections that broke during the upgrade and were replaced by a fresh dial.",
        samples: |s| one(s.redials),
    },
    TransportMetric {
        name: "bindgate_pool_refills_total",
        kind: "counter",
        help: "Background refill handshakes.",
        samples: |s| by("result", &[("ok", s.dialed), ("failed", s.dial_failures)]),
    },
    TransportMetric {
        name: "bindgate_pool_discarded_total",
        kind: "counter",
        help: "Idle connections discarded without being handed out.",
        samples: |s| {
            by(
                "reason",
                &[
                    ("closed", s.closed_idle),
                    ("aged", s.aged),
                    ("stale_identity", s.stale_identity),
                ],
            )
        },
    },
];

const H2_METRICS: [TransportMetric<MultiplexStats>; 6] = [
    TransportMetric {
        name: "bindgate_h2_connections",
        kind: "gauge",
        help: "Usable HTTP/2 connections to the ingress.",
        samples: |s| one(s.connections as u64),
    },
    TransportMetric {
        name: "bindgate_h2_streams_active",
        kind: "gauge",
        help: "CONNECT streams open now.",
        samples: |s| one(s.active_streams as u64),
    },
    TransportMetric {
        name: "bindgate_h2_connections_opened_total",
        kind: "counter",
        help: "HTTP/2 connections dialed: established (ok) or failed.",
        samples: |s| {
            by(
                "result",
                &[("ok", s.connections_opened), ("failed", s.dial_failures)],
            )
        },
    },
    TransportMetric {
        name: "bindgate_h2_streams_total",
        kind: "counter",
        help: "CONNECT streams: opened, refused by the ingress, or retried on another connection.",
        samples: |s| {
            by(
                "result",
                &[
                    ("opened", s.streams_opened),
                    ("refused", s.streams_refused),
                    ("retried", s.stream_retries),
                ],
            )
        },
    },
    TransportMetric {
        name: "bindgate_h2_connections_drained_total",
        kind: "counter",
        help: "HTTP/2 connections drained after a GOAWAY or a failure.",
        samples: |s| one(s.drained),
    },
    TransportMetric {
        name: "bindgate_h2_refused",
        kind: "gauge",
        help: "1 when the ingress did not negotiate HTTP/2 (ALPN h2).",
        samples: |s| one(u64::from(s.h2_refused)),
    },
];

/// Writes one metric family: its HELP and TYPE once, then a sample per ingress and label set.
fn family<S>(out: &mut String, m: &TransportMetric<S>, stats: &[(&str, S)]) {
    if stats.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} {}",
        m.name, m.help, m.name, m.kind
    );
    for (ingress, s) in stats {
        for (labels, value) in (m.samples)(s) {
            let mut text = format!("ingress=\"{}\"", escape(ingress));
            for (k, v) in labels {
                let _ = write!(text, ",{k}=\"{v}\"");
            }
            let _ = writeln!(out, "{}{{{text}}} {value}", m.name);
        }
    }
}

/// Label values escape `\`, `"` and newlines (Prometheus text format).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_transports(snapshot: &Snapshot, out: &mut String) {
    let mut ingresses: BTreeMap<&str, &IngressTransport> = BTreeMap::new();
    for cluster in snapshot.clusters.values() {
        if let ClusterTarget::Binding(b) = &*cluster.target {
            ingresses.insert(&b.ingress.name, &b.ingress.transport);
        }
    }
    let mut pools = Vec::new();
    let mut muxes = Vec::new();
    let mut handshakes = Vec::new();
    let mut lookups = Vec::new();
    for (name, transport) in ingresses {
        handshakes.push((name, transport.dialer().handshakes.get()));
        lookups.push((name, transport.dialer().resolver.lookups()));
        match transport {
            IngressTransport::Direct(_) => {}
            IngressTransport::Pool(p) => pools.push((name, p.stats())),
            IngressTransport::Multiplex(m) => {
                muxes.push((name, m.stats()));
                if let Some(fallback) = m.fallback_stats() {
                    pools.push((name, fallback));
                }
            }
        }
    }
    family(out, &HANDSHAKES, &handshakes);
    family(out, &DNS_LOOKUPS, &lookups);
    for m in &POOL_METRICS {
        family(out, m, &pools);
    }
    for m in &H2_METRICS {
        family(out, m, &muxes);
    }
}
