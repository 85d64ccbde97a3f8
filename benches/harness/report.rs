//! What a run found: per target, every measurement or why it is missing; printed as an aligned
//! (Markdown) table with ratios against `direct` and against HAProxy (when it ran), followed by
//! the http_peers group's own table (`http_peers`), and serialized as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::http_peers::HttpPeersReport;
use super::layout::LayoutCoverage;
use super::peers::PeerInfo;
use super::workloads::{LatencyResult, RateResult, ThroughputResult};
use super::{Measurement, NO_HTTP_PEERS_WITH_RTT, NO_THROUGHPUT_WITH_RTT, Settings, Target};

/// Whether something was measured, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Support {
    Measured,
    /// This build rejects the config value (the feature is not merged yet).
    NotSupported {
        reason: String,
    },
    /// The measurement has no meaning here (the baseline has no http listener).
    NotApplicable,
    /// A peer whose program is not on `PATH`: its row is skipped, the run goes on.
    NotInstalled {
        looked_for: String,
    },
}

/// The proxy process's CPU time (user + system, all threads) during the short-connections
/// measurement, per connection it completed.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyCpu {
    pub seconds: f64,
    pub connections: u64,
    /// `None` when no connection completed.
    pub ms_per_connection: Option<f64>,
}

impl ProxyCpu {
    pub fn new(seconds: f64, connections: u64) -> ProxyCpu {
        ProxyCpu {
            seconds,
            connections,
            ms_per_connection: (connections > 0).then(|| seconds * 1000.0 / connections as f64),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub target: Target,
    pub support: Support,
    /// Whether the `protocol: http` listener rows were measured.
    pub http_listener: Support,
    /// The program a peer target ran (absent for bindgate's own targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerInfo>,
    /// The proxy process's CPU time during `short_connections` (absent for the baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu: Option<ProxyCpu>,
    /// `VmRSS` of the proxy process after the run, in KiB (absent for the baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_rss_kib: Option<u64>,
    // A measurement that was not run (`--only`, or throughput with `--rtt`) is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_latency: Option<LatencyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paced_connect_latency: Option<LatencyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_connections: Option<RateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tcp_keep_alive: Option<RateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tcp_new_connection: Option<RateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listener_keep_alive: Option<RateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listener_new_connection: Option<RateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputResult>,
}

impl TargetReport {
    pub fn new(target: Target, support: Support) -> Self {
        let http_listener = match &support {
            Support::Measured if target == Target::Baseline || target.peer().is_some() => {
                Support::NotApplicable
            }
            other => other.clone(),
        };
        TargetReport {
            target,
            support,
            http_listener,
            peer: None,
            proxy_cpu: None,
            proxy_rss_kib: None,
            connect_latency: None,
            paced_connect_latency: None,
            short_connections: None,
            http_tcp_keep_alive: None,
            http_tcp_new_connection: None,
            http_listener_keep_alive: None,
            http_listener_new_connection: None,
            throughput: None,
        }
    }

    pub fn http_tcp(&mut self, keep_alive: bool) -> &mut Option<RateResult> {
        if keep_alive {
            &mut self.http_tcp_keep_alive
        } else {
            &mut self.http_tcp_new_connection
        }
    }

    pub fn http_listener(&mut self, keep_alive: bool) -> &mut Option<RateResult> {
        if keep_alive {
            &mut self.http_listener_keep_alive
        } else {
            &mut self.http_listener_new_connection
        }
    }
}

/// One column of the table: a number per target, and which way is better.
struct Column {
    header: &'static str,
    /// The measurement (`--only` name) the column belongs to; `None`: taken in every run.
    measurement: Option<Measurement>,
    value: fn(&TargetReport) -> Option<f64>,
    /// Whether this column is an http-listener one (blank for targets without that listener).
    http_listener: bool,
    /// Whether this column is about the proxy process (blank for the baseline, which has none).
    proxy_process: bool,
    lower_is_better: bool,
    decimals: usize,
}

impl Column {
    /// Whether this run took the column's numbers at all.
    fn measured(&self, settings: &Settings) -> bool {
        self.measurement.is_none_or(|m| settings.measures(m))
    }

    /// What a cell shows instead of a number when the column does not apply to the target:
    /// `-` (no such thing there) or `n/a` (this build lacks the http listener).
    fn not_applicable(&self, t: &TargetReport) -> Option<&'static str> {
        if self.proxy_process && t.target == Target::Baseline {
            return Some("-");
        }
        // The peers' hop ends at an echo, not at an http server.
        if self.measurement == Some(Measurement::Http) && t.target.peer().is_some() {
            return Some("-");
        }
        if self.http_listener {
            return match &t.http_listener {
                Support::Measured => None,
                Support::NotSupported { .. } => Some("n/a"),
                Support::NotApplicable | Support::NotInstalled { .. } => Some("-"),
            };
        }
        None
    }
}

const COLUMNS: [Column; 13] = [
    Column {
        header: "connect p50 ms",
        measurement: Some(Measurement::Connect),
        value: |r| latency(&r.connect_latency).map(|l| l.p50_ms),
        http_listener: false,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "connect p99 ms",
        measurement: Some(Measurement::Connect),
        value: |r| latency(&r.connect_latency).map(|l| l.p99_ms),
        http_listener: false,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "paced connect p50 ms",
        measurement: Some(Measurement::Paced),
        value: |r| latency(&r.paced_connect_latency).map(|l| l.p50_ms),
        http_listener: false,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "paced connect p99 ms",
        measurement: Some(Measurement::Paced),
        value: |r| latency(&r.paced_connect_latency).map(|l| l.p99_ms),
        http_listener: false,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "short conns/s",
        measurement: Some(Measurement::Short),
        value: |r| rate(&r.short_connections),
        http_listener: false,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "short p99 ms",
        measurement: Some(Measurement::Short),
        value: |r| {
            r.short_connections
                .as_ref()
                .filter(|r| r.ops > 0)
                .and_then(|r| r.latency_under_load.as_ref())
                .map(|l| l.p99_ms)
        },
        http_listener: false,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "proxy CPU ms/conn",
        measurement: Some(Measurement::Short),
        value: |r| r.proxy_cpu.as_ref().and_then(|c| c.ms_per_connection),
        http_listener: false,
        proxy_process: true,
        lower_is_better: true,
        decimals: 3,
    },
    Column {
        header: "http req/s keep-alive",
        measurement: Some(Measurement::Http),
        value: |r| rate(&r.http_tcp_keep_alive),
        http_listener: false,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "http req/s conn per req",
        measurement: Some(Measurement::Http),
        value: |r| rate(&r.http_tcp_new_connection),
        http_listener: false,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "http-listener req/s keep-alive",
        measurement: Some(Measurement::Http),
        value: |r| rate(&r.http_listener_keep_alive),
        http_listener: true,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "http-listener req/s conn per req",
        measurement: Some(Measurement::Http),
        value: |r| rate(&r.http_listener_new_connection),
        http_listener: true,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "echo MiB/s",
        measurement: Some(Measurement::Throughput),
        value: |r| {
            r.throughput
                .as_ref()
                .filter(|t| t.error.is_none())
                .map(|t| t.mib_per_second)
        },
        http_listener: false,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    Column {
        header: "RSS MiB",
        measurement: None,
        value: |r| r.proxy_rss_kib.map(|kib| kib as f64 / 1024.0),
        http_listener: false,
        proxy_process: true,
        lower_is_better: true,
        decimals: 1,
    },
];

fn latency(l: &Option<LatencyResult>) -> Option<&LatencyResult> {
    l.as_ref().filter(|l| l.samples > 0)
}

fn rate(r: &Option<RateResult>) -> Option<f64> {
    r.as_ref().filter(|r| r.ops > 0).map(|r| r.per_second)
}

/// The text of an unsupported target's row, as the brief for the suite words it.
pub const NOT_SUPPORTED: &str = "n/a (not supported by this build)";

/// The cells of a target row that was not measured: why in the first column, the rest empty.
pub fn unmeasured_cells(support: &Support, columns: usize) -> Vec<String> {
    let why = match support {
        Support::NotInstalled { .. } => NOT_INSTALLED,
        _ => NOT_SUPPORTED,
    };
    let mut cells = vec![why.to_owned()];
    cells.extend((1..columns).map(|_| String::new()));
    cells
}

/// The text of a peer's row when its program is not installed.
pub const NOT_INSTALLED: &str = "skipped: not installed";

#[derive(Debug, Serialize)]
pub struct Report {
    pub bindgate_version: String,
    pub bindgate_binary: String,
    /// How much of the function layout names functions of that binary (its RSS depends on it).
    pub function_layout: Option<LayoutCoverage>,
    /// Logical CPUs the run shared with everything else on the machine.
    pub cpus: usize,
    /// `/proc/loadavg` when the report was made: how busy the rest of the machine was.
    pub load_average: Option<String>,
    /// The round-trip time the relay emulated between gateways and the ingress (and between the
    /// baseline and the backends); absent when everything went straight over loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
    pub settings: Settings,
    pub targets: Vec<TargetReport>,
    /// Per target other than `direct`, per column: how many times better than `direct`
    /// (for latencies, direct's value divided by the target's; for rates, the other way round).
    pub ratios_vs_direct: Vec<Ratios>,
    /// The same against `haproxy`, when it was measured in this run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios_vs_haproxy: Vec<Ratios>,
    /// The http reverse proxies in front of nginx, when that group ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_peers: Option<HttpPeersReport>,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    pub target: Target,
    pub columns: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub measurement: &'static str,
    /// Absent when either side has no number.
    pub times_better: Option<f64>,
}

impl Report {
    pub fn new(
        settings: &Settings,
        version: String,
        targets: Vec<TargetReport>,
        http_peers: Option<HttpPeersReport>,
    ) -> Report {
        let ratios_vs_direct = ratios_against(Target::Direct, settings, &targets);
        let haproxy_measured = targets
            .iter()
            .any(|t| t.target == Target::Haproxy && t.support == Support::Measured);
        let ratios_vs_haproxy = if haproxy_measured {
            ratios_against(Target::Haproxy, settings, &targets)
        } else {
            Vec::new()
        };
        Report {
            bindgate_version: version,
            bindgate_binary: settings.bin.display().to_string(),
            function_layout: LayoutCoverage::of(&settings.bin),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            rtt_ms: settings.rtt.map(|d| d.as_millis() as u64),
            settings: settings.clone(),
            targets,
            ratios_vs_direct,
            ratios_vs_haproxy,
            http_peers,
        }
    }

    /// Every measurement that was asked for and should have numbers and has none, as
    /// `target: measurement`. Speed is never judged here: zero successful operations is the only
    /// failure.
    pub fn missing_numbers(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for t in self
            .targets
            .iter()
            .filter(|t| t.support == Support::Measured)
        {
            for c in COLUMNS.iter().filter(|c| c.measured(&self.settings)) {
                if c.not_applicable(t).is_some() {
                    continue;
                }
                if (c.value)(t).is_none() {
                    missing.push(format!("{}: {}", t.target.name(), c.header));
                }
            }
        }
        if let Some(h) = &self.http_peers {
            missing.extend(h.missing_numbers());
        }
        missing
    }

    /// Failed operations, per target and measurement (they do not stop a run).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.targets {
            let name = t.target.name();
            for (what, l) in [
                ("connect latency", &t.connect_latency),
                ("paced connect latency", &t.paced_connect_latency),
            ] {
                if let Some(l) = l.as_ref().filter(|l| l.errors > 0) {
                    out.push(format!(
                        "{name}: {what}: {} of {} failed, first: {}",
                        l.errors,
                        l.errors + l.samples as u64,
                        l.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
            for (what, r) in [
                ("short connections", &t.short_connections),
                ("http keep-alive", &t.http_tcp_keep_alive),
                ("http conn per req", &t.http_tcp_new_connection),
                ("http-listener keep-alive", &t.http_listener_keep_alive),
                (
                    "http-listener conn per req",
                    &t.http_listener_new_connection,
                ),
            ] {
                if let Some(r) = r.as_ref().filter(|r| r.errors > 0) {
                    out.push(format!(
                        "{name}: {what}: {} of {} failed, first: {}",
                        r.errors,
                        r.errors + r.ops,
                        r.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
            if let Some(e) = t.throughput.as_ref().and_then(|t| t.error.as_ref()) {
                out.push(format!("{name}: throughput: {e}"));
            }
        }
        if let Some(h) = &self.http_peers {
            out.extend(h.failures());
        }
        out
    }

    /// The results and the ratios as aligned Markdown tables, with a legend: the transports'
    /// (when any of their measurements ran), then the http_peers group's, then which bindgate
    /// was measured.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.targets.is_empty() {
            self.transports_table(&mut out);
        }
        let s = &self.settings;
        if let Some(h) = &self.http_peers {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&h.table(s));
        } else if s.rtt.is_some() && s.only.contains(&Measurement::HttpPeers) {
            let _ = writeln!(out, "{NO_HTTP_PEERS_WITH_RTT}.");
        }
        let _ = writeln!(
            out,
            "{} ({}; {}), {} CPUs shared with the load generator{}; load average at the end: {}.",
            self.bindgate_version,
            self.bindgate_binary,
            s.bin_origin,
            self.cpus,
            if self.targets.is_empty() {
                ""
            } else {
                " and the sandbox"
            },
            self.load_average.as_deref().unwrap_or("unknown"),
        );
        let _ = writeln!(out, "{}", LayoutCoverage::describe(self.function_layout));
        out
    }

    /// The transports' table, its ratios, its legend and the peers' versions, appended to `out`.
    fn transports_table(&self, out: &mut String) {
        let mut header = vec!["target".to_owned()];
        header.extend(COLUMNS.iter().map(|c| c.header.to_owned()));
        let mut rows = vec![header.clone()];
        for t in &self.targets {
            let mut row = vec![t.target.name().to_owned()];
            match &t.support {
                Support::Measured => row.extend(COLUMNS.iter().map(|c| {
                    if !c.measured(&self.settings) {
                        return "-".to_owned();
                    }
                    if let Some(text) = c.not_applicable(t) {
                        return text.to_owned();
                    }
                    (c.value)(t).map_or("failed".to_owned(), |v| format!("{v:.*}", c.decimals))
                })),
                other => row.extend(unmeasured_cells(other, COLUMNS.len())),
            }
            rows.push(row);
        }
        if let Some(rtt) = self.rtt_ms {
            let _ = writeln!(
                out,
                "RTT {rtt} ms emulated between gateway and ingress (relay); the baseline goes \
                 through its own relay in front of the backends (a remote backend over the same path).\n"
            );
        }
        out.push_str(&markdown(&rows));

        for (label, ratios) in [
            ("vs direct", &self.ratios_vs_direct),
            ("vs haproxy", &self.ratios_vs_haproxy),
        ] {
            let mut ratio_rows = vec![header.clone()];
            ratio_rows[0][0] = label.to_owned();
            for r in ratios {
                let supported = self
                    .targets
                    .iter()
                    .any(|t| t.target == r.target && t.support == Support::Measured);
                if !supported {
                    continue;
                }
                let mut row = vec![r.target.name().to_owned()];
                row.extend(COLUMNS.iter().map(|c| {
                    r.columns
                        .iter()
                        .find(|r| r.measurement == c.header)
                        .and_then(|r| r.times_better)
                        .map_or("-".to_owned(), |v| format!("{v:.2}x"))
                }));
                ratio_rows.push(row);
            }
            if ratio_rows.len() > 1 {
                out.push('\n');
                out.push_str(&markdown(&ratio_rows));
            }
        }

        let s = &self.settings;
        let mut what = Vec::new();
        if s.measures(Measurement::Connect) {
            what.push(format!(
                "connect: {} sequential connections (connect, 1 byte echoed, close)",
                s.latency_connections
            ));
        }
        if s.measures(Measurement::Paced) {
            what.push(format!(
                "paced connect: the same exchange, {} connections started at {}/s for {:.1} s \
                 whatever the earlier ones do, timed from their scheduled start",
                s.paced.connections(),
                s.paced.per_second,
                s.paced.duration.as_secs_f64()
            ));
        }
        if s.measures(Measurement::Short) {
            what.push(format!(
                "short conns: {} workers, 32-byte echo per connection, {:.1} s or {} connections; \
                 short p99: the latency of those connections under that closed-loop load; proxy \
                 CPU ms/conn: the proxy process's user + system CPU time during it (/proc/PID/stat, \
                 10 ms ticks) divided by the connections completed",
                s.workers,
                s.short_connections.duration.as_secs_f64(),
                s.short_connections.max_ops
            ));
        }
        if s.measures(Measurement::Http) {
            what.push(format!(
                "http: {} workers, GET / for {:.1} s or {} requests each column",
                s.workers,
                s.http.duration.as_secs_f64(),
                s.http.max_ops
            ));
        }
        if s.measures(Measurement::Throughput) {
            what.push(format!(
                "echo: {} MiB on one connection",
                s.throughput_bytes / super::MIB
            ));
        }
        what.push("RSS: VmRSS of the proxy process after the run".to_owned());
        let _ = write!(
            out,
            "\n{}.\n\
             `vs direct`, `vs haproxy`: times better than direct or haproxy (latency, CPU, RSS: \
             reference / target; rates: target / reference).\n\
             haproxy, stunnel: the same mTLS hop (sandbox client certificate, TLS 1.3, session \
             resumption) to the sandbox's raw echo port, without the binding upgrade.\n\
             `-` in a column: not measured in this run, or not applicable: the baseline has no \
             proxy process and no http listener (its http rows already go straight to the \
             backend), the peers' hop ends at an echo (no http); \
             `n/a`: this build has no `protocol: http` listener.\n",
            what.join("; ")
        );
        if s.rtt.is_some() && s.only.contains(&Measurement::Throughput) {
            let _ = writeln!(out, "{NO_THROUGHPUT_WITH_RTT}.");
        }
        for t in &self.targets {
            if let Some(peer) = &t.peer {
                let _ = writeln!(
                    out,
                    "{}: {} ({})",
                    t.target.name(),
                    peer.version,
                    peer.binary
                );
            }
            if let Support::NotInstalled { looked_for } = &t.support {
                let _ = writeln!(
                    out,
                    "{}: {NOT_INSTALLED} (no {looked_for} on PATH)",
                    t.target.name()
                );
            } else if let Support::NotSupported { reason } = &t.support {
                let _ = writeln!(out, "{}: {NOT_SUPPORTED}: {reason}", t.target.name());
            } else if let Support::NotSupported { reason } = &t.http_listener {
                let _ = writeln!(
                    out,
                    "{} http listener: {NOT_SUPPORTED}: {reason}",
                    t.target.name()
                );
            }
        }
    }
}

/// Per target other than `reference`, per column taken in this run: how many times better than
/// `reference` (absent when either has no number).
fn ratios_against(reference: Target, settings: &Settings, targets: &[TargetReport]) -> Vec<Ratios> {
    let base = targets.iter().find(|t| t.target == reference);
    targets
        .iter()
        .filter(|t| t.target != reference)
        .map(|t| Ratios {
            target: t.target,
            columns: COLUMNS
                .iter()
                .filter(|c| c.measured(settings))
                .map(|c| Ratio {
                    measurement: c.header,
                    times_better: base.and_then(|b| ratio(c, b, t)),
                })
                .collect(),
        })
        .collect()
}

fn ratio(c: &Column, reference: &TargetReport, other: &TargetReport) -> Option<f64> {
    times_better((c.value)(reference)?, (c.value)(other)?, c.lower_is_better)
}

/// How many times better `target` is than `reference`: reference ÷ target where lower is better
/// (latency, CPU, memory), target ÷ reference otherwise (rates); absent when dividing by zero.
pub fn times_better(reference: f64, target: f64, lower_is_better: bool) -> Option<f64> {
    let (num, den) = if lower_is_better {
        (reference, target)
    } else {
        (target, reference)
    };
    (den > 0.0).then(|| num / den)
}

/// Rows of cells as a Markdown table whose columns line up in a terminal too.
pub fn markdown(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i == 0 {
                let _ = write!(out, " {cell:<w$} |");
            } else {
                let _ = write!(out, " {cell:>w$} |");
            }
        }
        out.push('\n');
        if n == 0 {
            out.push('|');
            for (i, w) in widths.iter().enumerate() {
                let dashes = "-".repeat(*w);
                if i == 0 {
                    let _ = write!(out, " {dashes} |");
                } else {
                    let _ = write!(out, " {}: |", &dashes[1..]);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Durations in the JSON as seconds (a float).
pub fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An optional duration in the JSON as milliseconds (a float), or `null`.
pub fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
        None => s.serialize_none(),
    }
}
