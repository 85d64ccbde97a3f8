//! The `http_peers` measurement group (`--only http_peers`): http reverse proxies in front of
//! one nginx, side by side in one run. The rows: `nginx direct` (no proxy: the ceiling),
//! `bindgate http listener` and `haproxy http` (see `http_servers`). The load generators: the
//! harness's own HTTP/1.1 client, kept alive and with a new connection per request, always;
//! `wrk` and `ab` when they are installed (see `loadgen`).
//!
//! Every measurement runs against every target before the next one starts, and the whole
//! sequence `rounds` times, so noise from the rest of the machine spreads over neighbouring
//! cells. The proxy process's CPU time is read around each keep-alive measurement, its resident
//! memory after the last round. nginx missing skips the whole group; a missing HAProxy, wrk or
//! ab skips its row or columns, and the run goes on.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::Settings;
use super::http_servers::{self, NGINX_FALLBACK_DIR, NginxProcess, ProxyProcess, RunningProxy};
use super::loadgen::Tool;
use super::peers::{Peer, PeerInfo};
use super::probe::{self, ProcStats};
use super::report::{
    NOT_INSTALLED, NOT_SUPPORTED, Ratio, Support, markdown, times_better, unmeasured_cells,
};
use super::workloads::{self, RateResult};

/// A row of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpPeer {
    /// Straight to nginx: no proxy. The ceiling.
    NginxDirect,
    /// `bindgate run`, one `protocol: http` listener, a `static` cluster to nginx.
    BindgateHttp,
    /// The same with `preserve_header_case: false`: header names sent on in lower case, as
    /// HAProxy does.
    BindgateHttpLowercase,
    /// HAProxy in `mode http` in front of nginx.
    HaproxyHttp,
}

impl HttpPeer {
    pub fn name(self) -> &'static str {
        match self {
            HttpPeer::NginxDirect => "nginx direct",
            HttpPeer::BindgateHttp => "bindgate http listener",
            HttpPeer::BindgateHttpLowercase => "bindgate http lowercase",
            HttpPeer::HaproxyHttp => "haproxy http",
        }
    }
}

/// One run of one load generator against one target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpRun {
    /// Requests completed (wrk and ab: as they count them, non-2xx responses included; those
    /// are in `errors` too).
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// As the tool printed it (`Requests/sec`, `Requests per second`), else requests ÷ seconds.
    pub per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The proxy process's user + system CPU seconds during the run (keep-alive runs through a
    /// proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_seconds: Option<f64>,
}

impl HttpRun {
    /// A run that produced no numbers.
    pub fn failed(error: String) -> HttpRun {
        HttpRun {
            errors: 1,
            first_error: Some(error),
            ..HttpRun::default()
        }
    }

    fn from_rate(r: RateResult) -> HttpRun {
        HttpRun {
            requests: r.ops,
            errors: r.errors,
            seconds: r.seconds,
            per_second: r.per_second,
            mean_latency_ms: r.latency_under_load.as_ref().map(|l| l.mean_ms),
            p99_latency_ms: r.latency_under_load.as_ref().map(|l| l.p99_ms),
            first_error: r.first_error,
            proxy_cpu_seconds: None,
        }
    }

    fn summary(&self) -> String {
        let mut out = format!(
            "{:.0}/s ({} in {:.2} s",
            self.per_second, self.requests, self.seconds
        );
        if let Some(ms) = self.mean_latency_ms {
            out.push_str(&format!(", mean {ms:.3} ms"));
        }
        if let Some(cpu) = self.proxy_cpu_seconds.filter(|_| self.requests > 0) {
            out.push_str(&format!(
                ", proxy CPU {:.1} µs/req",
                cpu * 1e6 / self.requests as f64
            ));
        }
        out.push(')');
        if let Some(e) = self.first_error.as_ref().filter(|_| self.errors > 0) {
            out.push_str(&format!("; {} failed, first: {e}", self.errors));
        }
        out
    }
}

/// One load generator's runs against one target, one per round, and all of them together.
#[derive(Clone, Debug, Serialize)]
pub struct HttpRuns {
    pub total: HttpTotal,
    pub rounds: Vec<HttpRun>,
}

/// Every round together.
#[derive(Clone, Debug, Serialize)]
pub struct HttpTotal {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// The rounds' rates weighted by their seconds (requests ÷ seconds over all of them, when
    /// the rates are the harness's own); absent when no request completed.
    pub per_second: Option<f64>,
    /// The rounds' means weighted by their requests.
    pub mean_latency_ms: Option<f64>,
    /// Added up over the rounds that have it.
    pub proxy_cpu_seconds: Option<f64>,
    /// `proxy_cpu_seconds` over the requests of those rounds, in microseconds.
    pub proxy_cpu_us_per_request: Option<f64>,
}

impl HttpRuns {
    fn new(rounds: Vec<HttpRun>) -> HttpRuns {
        let requests = rounds.iter().map(|r| r.requests).sum::<u64>();
        let seconds = rounds.iter().map(|r| r.seconds).sum::<f64>();
        let rated: Vec<&HttpRun> = rounds.iter().filter(|r| r.requests > 0).collect();
        let rated_seconds = rated.iter().map(|r| r.seconds).sum::<f64>();
        let per_second = (rated_seconds > 0.0)
            .then(|| rated.iter().map(|r| r.per_second * r.seconds).sum::<f64>() / rated_seconds);
        let timed: Vec<(f64, u64)> = rated
            .iter()
            .filter_map(|r| Some((r.mean_latency_ms?, r.requests)))
            .collect();
        let timed_requests = timed.iter().map(|(_, n)| n).sum::<u64>();
        let mean_latency_ms = (timed_requests > 0).then(|| {
            timed.iter().map(|(ms, n)| ms * *n as f64).sum::<f64>() / timed_requests as f64
        });
        let cpu: Vec<(f64, u64)> = rounds
            .iter()
            .filter_map(|r| Some((r.proxy_cpu_seconds?, r.requests)))
            .collect();
        let proxy_cpu_seconds = (!cpu.is_empty()).then(|| cpu.iter().map(|(s, _)| s).sum::<f64>());
        let cpu_requests = cpu.iter().map(|(_, n)| n).sum::<u64>();
        let proxy_cpu_us_per_request = proxy_cpu_seconds
            .filter(|_| cpu_requests > 0)
            .map(|s: f64| s * 1e6 / cpu_requests as f64);
        HttpRuns {
            total: HttpTotal {
                requests,
                errors: rounds.iter().map(|r| r.errors).sum(),
                seconds,
                per_second,
                mean_latency_ms,
                proxy_cpu_seconds,
                proxy_cpu_us_per_request,
            },
            rounds,
        }
    }
}

/// What the group measures, in the order it measures it within a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Generator {
    ClientKeepAlive,
    ClientNewConnection,
    Tool(Tool),
}

impl Generator {
    fn label(self) -> &'static str {
        match self {
            Generator::ClientKeepAlive => "client keep-alive",
            Generator::ClientNewConnection => "client new connection per request",
            Generator::Tool(Tool::Wrk) => "wrk (keep-alive)",
            Generator::Tool(Tool::Ab) => "ab (new connection per request)",
        }
    }

    /// Whether its connections are kept alive: its runs through a proxy are timed for CPU.
    fn keep_alive(self) -> bool {
        matches!(
            self,
            Generator::ClientKeepAlive | Generator::Tool(Tool::Wrk)
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HttpPeerReport {
    pub target: HttpPeer,
    pub support: Support,
    /// The program behind the row (nginx, HAProxy); bindgate's is the report's binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<PeerInfo>,
    /// `VmRSS` of the proxy process after the last round, in KiB (absent for nginx direct).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_keep_alive: Option<HttpRuns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_new_connection: Option<HttpRuns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrk: Option<HttpRuns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab: Option<HttpRuns>,
}

impl HttpPeerReport {
    fn new(target: HttpPeer, support: Support) -> HttpPeerReport {
        HttpPeerReport {
            target,
            support,
            program: None,
            proxy_rss_kib: None,
            client_keep_alive: None,
            client_new_connection: None,
            wrk: None,
            ab: None,
        }
    }

    fn runs(&mut self, generator: Generator) -> &mut Option<HttpRuns> {
        match generator {
            Generator::ClientKeepAlive => &mut self.client_keep_alive,
            Generator::ClientNewConnection => &mut self.client_new_connection,
            Generator::Tool(Tool::Wrk) => &mut self.wrk,
            Generator::Tool(Tool::Ab) => &mut self.ab,
        }
    }
}

/// wrk or ab: whether it ran, which one, and how it was called.
#[derive(Clone, Debug, Serialize)]
pub struct LoadGenerator {
    pub name: &'static str,
    pub support: Support,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<PeerInfo>,
    /// Its command line, the target's URL as `URL`.
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct HttpPeerRatios {
    pub target: HttpPeer,
    pub columns: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
pub struct HttpPeersReport {
    /// `not_installed` when nginx is not: then nothing else was measured.
    pub support: Support,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx: Option<PeerInfo>,
    pub load_generators: Vec<LoadGenerator>,
    pub targets: Vec<HttpPeerReport>,
    /// Per target other than `haproxy http`, per column: how many times better than HAProxy
    /// (rates: target ÷ haproxy; latency, CPU per request and RSS: haproxy ÷ target), when it
    /// was measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios_vs_haproxy: Vec<HttpPeerRatios>,
}

/// A target while the group runs.
struct Row {
    report: HttpPeerReport,
    /// Where its clients connect; `None` when it is not measured.
    addr: Option<SocketAddr>,
    proxy: Option<ProxyProcess>,
    /// Each generator's runs so far.
    runs: Vec<(Generator, Vec<HttpRun>)>,
}

impl Row {
    fn skipped(target: HttpPeer, support: Support) -> Row {
        Row {
            report: HttpPeerReport::new(target, support),
            addr: None,
            proxy: None,
            runs: Vec::new(),
        }
    }

    fn measured(target: HttpPeer, addr: SocketAddr, program: Option<PeerInfo>) -> Row {
        let mut row = Row::skipped(target, Support::Measured);
        row.report.program = program;
        row.addr = Some(addr);
        row
    }

    fn proxied(target: HttpPeer, proxy: RunningProxy, program: Option<PeerInfo>) -> Row {
        let mut row = Row::measured(target, proxy.listen, program);
        row.proxy = Some(proxy.process);
        row
    }

    fn pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(ProxyProcess::pid)
    }

    fn push(&mut self, generator: Generator, run: HttpRun) {
        match self.runs.iter_mut().find(|(g, _)| *g == generator) {
            Some((_, runs)) => runs.push(run),
            None => self.runs.push((generator, vec![run])),
        }
    }

    fn into_report(mut self) -> HttpPeerReport {
        for (generator, runs) in std::mem::take(&mut self.runs) {
            *self.report.runs(generator) = Some(HttpRuns::new(runs));
        }
        self.report
    }
}

/// Starts nginx and the proxies in front of it, measures every target with every load
/// generator, round after round, and stops them. Fails only when a server does not start or a
/// generated config is rejected for a reason other than an unsupported listener protocol.
pub async fn run(settings: &Settings, dir: &Path) -> anyhow::Result<HttpPeersReport> {
    let s = &settings.http_peers;
    let mut load_generators = Vec::new();
    let mut tools = Vec::new();
    for tool in Tool::ALL {
        let (support, program) = match tool.find() {
            Some(bin) => {
                let info = tool.info(&bin, s).await?;
                tools.push((tool, bin));
                (Support::Measured, Some(info))
            }
            None => {
                eprintln!(
                    "http_peers: {}: {NOT_INSTALLED} (no {} on PATH)",
                    tool.name(),
                    tool.name()
                );
                let looked_for = tool.name().to_owned();
                (Support::NotInstalled { looked_for }, None)
            }
        };
        load_generators.push(LoadGenerator {
            name: tool.name(),
            support,
            program,
            command: tool.command(s),
        });
    }
    let Some(nginx_bin) = http_servers::find_nginx() else {
        let looked_for = format!("nginx on PATH or in {NGINX_FALLBACK_DIR}");
        eprintln!("http_peers: {NOT_INSTALLED} (no {looked_for}): the group is skipped");
        return Ok(HttpPeersReport {
            support: Support::NotInstalled { looked_for },
            nginx: None,
            load_generators,
            targets: Vec::new(),
            ratios_vs_haproxy: Vec::new(),
        });
    };

    let dir = dir.join("http-peers");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let nginx = NginxProcess::start(&nginx_bin, &dir, settings)
        .await
        .context("starting nginx for the http_peers group")?;
    let mut rows = vec![Row::measured(
        HttpPeer::NginxDirect,
        nginx.listen,
        Some(nginx.info.clone()),
    )];
    for (target, lowercase) in [
        (HttpPeer::BindgateHttp, false),
        (HttpPeer::BindgateHttpLowercase, true),
    ] {
        match http_servers::start_bindgate(&settings.bin, &dir, nginx.listen, settings, lowercase)
            .await
            .with_context(|| format!("starting `{}` for the http_peers group", target.name()))?
        {
            Ok(proxy) => rows.push(Row::proxied(target, proxy, None)),
            Err(reason) => {
                eprintln!("http_peers: {}: {NOT_SUPPORTED}: {reason}", target.name());
                rows.push(Row::skipped(target, Support::NotSupported { reason }));
            }
        }
    }
    match Peer::Haproxy.find() {
        Some(bin) => {
            let (proxy, info) = http_servers::start_haproxy(&bin, &dir, nginx.listen, settings)
                .await
                .context("starting haproxy for the http_peers group")?;
            rows.push(Row::proxied(HttpPeer::HaproxyHttp, proxy, Some(info)));
        }
        None => {
            let looked_for = Peer::Haproxy.executables().join(" or ");
            eprintln!(
                "http_peers: {}: {NOT_INSTALLED} (no {looked_for} on PATH)",
                HttpPeer::HaproxyHttp.name()
            );
            rows.push(Row::skipped(
                HttpPeer::HaproxyHttp,
                Support::NotInstalled { looked_for },
            ));
        }
    }

    let mut generators = vec![Generator::ClientKeepAlive, Generator::ClientNewConnection];
    generators.extend(tools.iter().map(|(tool, _)| Generator::Tool(*tool)));
    for round in 1..=s.rounds {
        for &generator in &generators {
            for row in &mut rows {
                let Some(addr) = row.addr else { continue };
                let pid = row.pid().filter(|_| generator.keep_alive());
                let before = pid.and_then(|p| probe::cpu_seconds(p).ok());
                let mut run = match generator {
                    Generator::ClientKeepAlive | Generator::ClientNewConnection => {
                        HttpRun::from_rate(
                            workloads::http_load(
                                addr,
                                generator == Generator::ClientKeepAlive,
                                settings.workers,
                                s.client,
                                settings.op_timeout,
                                true,
                            )
                            .await,
                        )
                    }
                    Generator::Tool(tool) => {
                        let bin = tools
                            .iter()
                            .find(|(t, _)| *t == tool)
                            .map(|(_, bin)| bin.as_path())
                            .context("a load generator that was found")?;
                        tool.run(bin, addr, s).await
                    }
                };
                let after = pid.and_then(|p| probe::cpu_seconds(p).ok());
                if let (Some(before), Some(after)) = (before, after) {
                    run.proxy_cpu_seconds = Some(after - before);
                }
                eprintln!(
                    "  {:<22} round {round} {}: {}",
                    row.report.target.name(),
                    generator.label(),
                    run.summary()
                );
                row.push(generator, run);
            }
        }
    }
    // Resident memory after every round, while the proxies still hold what they grew to.
    for row in &mut rows {
        if let Some(stats) = row.pid().and_then(|p| ProcStats::read(p).ok()) {
            row.report.proxy_rss_kib = Some(stats.rss_kib);
        }
    }

    for row in &mut rows {
        if let Some(proxy) = row.proxy.take() {
            proxy.stop().await;
        }
    }
    let nginx_info = nginx.info.clone();
    nginx.stop().await;
    let targets: Vec<HttpPeerReport> = rows.into_iter().map(Row::into_report).collect();
    let ratios_vs_haproxy = ratios_vs_haproxy(&targets);
    Ok(HttpPeersReport {
        support: Support::Measured,
        nginx: Some(nginx_info),
        load_generators,
        targets,
        ratios_vs_haproxy,
    })
}

/// One column of the group's table.
struct HttpColumn {
    header: &'static str,
    /// wrk's or ab's column (it says so when the tool is not installed); `None`: the harness's
    /// own client, or no load generator (RSS).
    tool: Option<Tool>,
    value: fn(&HttpPeerReport) -> Option<f64>,
    /// About the proxy process: `-` for nginx direct.
    proxy_process: bool,
    lower_is_better: bool,
    decimals: usize,
}

const HTTP_COLUMNS: [HttpColumn; 9] = [
    HttpColumn {
        header: "client req/s keep-alive",
        tool: None,
        value: |r| total(&r.client_keep_alive)?.per_second,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    HttpColumn {
        header: "client avg ms keep-alive",
        tool: None,
        value: |r| total(&r.client_keep_alive)?.mean_latency_ms,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    HttpColumn {
        header: "client req/s conn per req",
        tool: None,
        value: |r| total(&r.client_new_connection)?.per_second,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    HttpColumn {
        header: "client proxy CPU µs/req",
        tool: None,
        value: |r| total(&r.client_keep_alive)?.proxy_cpu_us_per_request,
        proxy_process: true,
        lower_is_better: true,
        decimals: 1,
    },
    HttpColumn {
        header: "wrk req/s",
        tool: Some(Tool::Wrk),
        value: |r| total(&r.wrk)?.per_second,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    HttpColumn {
        header: "wrk avg ms",
        tool: Some(Tool::Wrk),
        value: |r| total(&r.wrk)?.mean_latency_ms,
        proxy_process: false,
        lower_is_better: true,
        decimals: 3,
    },
    HttpColumn {
        header: "wrk proxy CPU µs/req",
        tool: Some(Tool::Wrk),
        value: |r| total(&r.wrk)?.proxy_cpu_us_per_request,
        proxy_process: true,
        lower_is_better: true,
        decimals: 1,
    },
    HttpColumn {
        header: "ab req/s",
        tool: Some(Tool::Ab),
        value: |r| total(&r.ab)?.per_second,
        proxy_process: false,
        lower_is_better: false,
        decimals: 0,
    },
    HttpColumn {
        header: "RSS MiB",
        tool: None,
        value: |r| r.proxy_rss_kib.map(|kib| kib as f64 / 1024.0),
        proxy_process: true,
        lower_is_better: true,
        decimals: 1,
    },
];

fn total(runs: &Option<HttpRuns>) -> Option<&HttpTotal> {
    runs.as_ref().map(|r| &r.total)
}

fn ratios_vs_haproxy(targets: &[HttpPeerReport]) -> Vec<HttpPeerRatios> {
    let Some(haproxy) = targets
        .iter()
        .find(|t| t.target == HttpPeer::HaproxyHttp && t.support == Support::Measured)
    else {
        return Vec::new();
    };
    targets
        .iter()
        .filter(|t| t.target != HttpPeer::HaproxyHttp && t.support == Support::Measured)
        .map(|t| HttpPeerRatios {
            target: t.target,
            columns: HTTP_COLUMNS
                .iter()
                .map(|c| Ratio {
                    measurement: c.header,
                    times_better: (c.value)(haproxy).zip((c.value)(t)).and_then(
                        |(reference, target)| times_better(reference, target, c.lower_is_better),
                    ),
                })
                .collect(),
        })
        .collect()
}

impl HttpPeersReport {
    fn installed(&self, tool: Tool) -> bool {
        self.load_generators
            .iter()
            .any(|g| g.name == tool.name() && g.support == Support::Measured)
    }

    /// What a cell shows instead of a number, when the column does not apply to the row.
    fn not_applicable(&self, c: &HttpColumn, t: &HttpPeerReport) -> Option<&'static str> {
        if c.tool.is_some_and(|tool| !self.installed(tool)) {
            return Some(NOT_INSTALLED);
        }
        (c.proxy_process && t.target == HttpPeer::NginxDirect).then_some("-")
    }

    /// Every number a measured row should have and has none, as `http_peers: target: column`.
    pub fn missing_numbers(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for t in self
            .targets
            .iter()
            .filter(|t| t.support == Support::Measured)
        {
            for c in &HTTP_COLUMNS {
                if self.not_applicable(c, t).is_none() && (c.value)(t).is_none() {
                    missing.push(format!("http_peers: {}: {}", t.target.name(), c.header));
                }
            }
        }
        missing
    }

    /// Runs with failed requests (they do not stop a run).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.targets {
            for (what, runs) in [
                ("client keep-alive", &t.client_keep_alive),
                ("client conn per req", &t.client_new_connection),
                ("wrk", &t.wrk),
                ("ab", &t.ab),
            ] {
                let Some(runs) = runs else { continue };
                for (i, r) in runs.rounds.iter().enumerate().filter(|(_, r)| r.errors > 0) {
                    out.push(format!(
                        "http_peers: {}: {what}, round {}: {} failed ({} requests completed), first: {}",
                        t.target.name(),
                        i + 1,
                        r.errors,
                        r.requests,
                        r.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        out
    }

    /// The group's table, its ratios against HAProxy, and a legend.
    pub fn table(&self, settings: &Settings) -> String {
        if let Support::NotInstalled { looked_for } = &self.support {
            return format!("http_peers: {NOT_INSTALLED} (no {looked_for}): not measured.\n");
        }
        let mut header = vec!["http_peers".to_owned()];
        header.extend(HTTP_COLUMNS.iter().map(|c| c.header.to_owned()));
        let mut rows = vec![header.clone()];
        for t in &self.targets {
            let mut row = vec![t.target.name().to_owned()];
            match &t.support {
                Support::Measured => row.extend(HTTP_COLUMNS.iter().map(|c| {
                    if let Some(text) = self.not_applicable(c, t) {
                        return text.to_owned();
                    }
                    (c.value)(t).map_or("failed".to_owned(), |v| format!("{v:.*}", c.decimals))
                })),
                other => row.extend(unmeasured_cells(other, HTTP_COLUMNS.len())),
            }
            rows.push(row);
        }
        let mut out = markdown(&rows);
        if !self.ratios_vs_haproxy.is_empty() {
            let mut ratio_rows = vec![header];
            ratio_rows[0][0] = "vs haproxy http".to_owned();
            for r in &self.ratios_vs_haproxy {
                let mut row = vec![r.target.name().to_owned()];
                row.extend(r.columns.iter().map(|c| {
                    c.times_better
                        .map_or("-".to_owned(), |v| format!("{v:.2}x"))
                }));
                ratio_rows.push(row);
            }
            out.push('\n');
            out.push_str(&markdown(&ratio_rows));
        }

        let s = &settings.http_peers;
        let rounds = match s.rounds {
            1 => "1 round".to_owned(),
            n => format!("{n} rounds, each measurement across every target before the next"),
        };
        let nginx = self.nginx.as_ref().map_or("nginx".to_owned(), |n| {
            format!("{} ({})", n.version, n.binary)
        });
        out.push_str(&format!(
            "\nhttp_peers: http reverse proxies in front of one nginx on loopback ({nginx}, \
             `return 200` with a {} byte body, no access log); {rounds}; each cell is every round \
             together.\n\
             client: the harness's HTTP/1.1 client, {} workers sending GET / for {:.1} s or {} \
             requests, over one kept-alive connection each (avg ms: mean latency per request) or \
             with a new connection per request (`Connection: close`); wrk: `{}` (keep-alive, \
             its Requests/sec and Latency avg); ab: `{}` (HTTP/1.0, a new connection per request, \
             its Requests per second).\n\
             proxy CPU µs/req: the proxy process's user + system CPU time (/proc/PID/stat, 10 ms \
             ticks) during the keep-alive run, divided by its requests; RSS: VmRSS of the proxy \
             process after the last round; `-`: nginx direct has no proxy process.\n\
             `vs haproxy http`: times better than HAProxy (req/s: target / haproxy; latency, CPU \
             per request, RSS: haproxy / target).\n\
             bindgate http listener: `bindgate run`, one `protocol: http` listener, one route to \
             a `static` cluster (nginx), defaults otherwise (no access log, no filters); bindgate \
             http lowercase: the same with `preserve_header_case: false` (header names sent on in \
             lower case, as HAProxy does; the default keeps their case); haproxy \
             http: `mode http`, `option http-keep-alive`, `http-reuse always`, default \
             nbthread.\n",
            s.body_bytes,
            settings.workers,
            s.client.duration.as_secs_f64(),
            s.client.max_ops,
            Tool::Wrk.command(s),
            Tool::Ab.command(s),
        ));
        for t in &self.targets {
            match &t.support {
                Support::NotInstalled { looked_for } => out.push_str(&format!(
                    "{}: {NOT_INSTALLED} (no {looked_for} on PATH)\n",
                    t.target.name()
                )),
                Support::NotSupported { reason } => {
                    out.push_str(&format!("{}: {NOT_SUPPORTED}: {reason}\n", t.target.name()))
                }
                _ => {
                    if let (Some(p), HttpPeer::HaproxyHttp) = (&t.program, t.target) {
                        out.push_str(&format!(
                            "{}: {} ({})\n",
                            t.target.name(),
                            p.version,
                            p.binary
                        ));
                    }
                }
            }
        }
        for g in &self.load_generators {
            match (&g.support, &g.program) {
                (Support::NotInstalled { looked_for }, _) => out.push_str(&format!(
                    "{}: {NOT_INSTALLED} (no {looked_for} on PATH)\n",
                    g.name
                )),
                (_, Some(p)) => {
                    out.push_str(&format!("{}: {} ({})\n", g.name, p.version, p.binary))
                }
                _ => {}
            }
        }
        out
    }
}
