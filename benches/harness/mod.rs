//! The load harness behind `cargo bench --bench load` and `tests/bench_smoke.rs`: starts the real
//! `bindgate sandbox` and one `bindgate run` per ingress transport, and the peers a user would
//! pick instead (HAProxy, stunnel, when installed) making the same mTLS hop to the sandbox's raw
//! echo port; then measures, side by side in one run, what a local client sees through each of
//! them and straight at the sandbox's backends (`baseline`: no proxy, no TLS), and what each
//! proxy process spends (CPU per connection, resident memory).
//!
//! Submodules: `process` (child processes and their readiness lines), `sandbox` (the emulated
//! ingress and its client certificate), `gateway` (one generated config per transport, checked
//! with `bindgate validate` first), `peers` (HAProxy and stunnel), `workloads` (the
//! measurements), `probe` (`/proc` readings), `http1` (a minimal HTTP/1.1 client), `relay` (the
//! latency relay of `--rtt`), `report` (the table and the JSON). It measures and reports; it
//! never asserts speed.
//!
//! The `http_peers` group is separate: http reverse proxies (bindgate's http listener, HAProxy)
//! in front of one nginx, measured with the harness's client and, when installed, wrk and ab
//! (`http_peers`, `http_servers`, `loadgen`). It needs no sandbox: with `--only http_peers` none
//! is started.
//!
//! With an RTT (`Settings::rtt`), a relay that adds that round-trip time stands in front of the
//! sandbox's ingress and every gateway dials the relay; the baseline goes through its own relay in
//! front of the backends (a remote backend over the same path).
//!
//! Every loop is bounded twice, by a count and by a deadline, and every socket operation has a
//! timeout; everything listens on 127.0.0.1 with OS-chosen ports.

pub mod gateway;
mod http1;
pub mod http_peers;
mod http_servers;
pub mod layout;
mod loadgen;
pub mod peers;
#[allow(dead_code)] // the /metrics probe is used by benches/soak.rs only
pub mod probe;
pub mod process;
pub mod relay;
mod report;
pub mod sandbox;
mod workloads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use report::ProxyCpu;
pub use report::{Report, Support, TargetReport};

/// The `bindgate` a bench measures, and where it came from (for the report): `BINDGATE_BIN` when
/// set, else the one cargo built for the bench.
#[allow(dead_code)] // the benches call it; tests/bench_smoke.rs measures its debug build
pub fn bindgate_under_test() -> (PathBuf, &'static str) {
    match std::env::var_os("BINDGATE_BIN") {
        Some(path) => (PathBuf::from(path), "BINDGATE_BIN"),
        None => (
            PathBuf::from(env!("CARGO_BIN_EXE_bindgate")),
            "CARGO_BIN_EXE_bindgate: cargo bench's build, with dev-dependency features; set BINDGATE_BIN for a release build",
        ),
    }
}

/// What a measurement goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Straight to the sandbox's backend: no proxy, no TLS. The ceiling.
    Baseline,
    /// `transport: direct` with `session_resumption: false`: TCP + a full mTLS handshake +
    /// upgrade per connection, which is what ngrok's operator forwarder and ngrokd do.
    Direct,
    /// `transport: direct` as bindgate configures it by default: TLS sessions are resumed.
    DirectResumed,
    /// `transport: pool`: warm TLS connections, one upgrade per connection.
    Pool,
    /// `transport: multiplex`: one HTTP/2 CONNECT stream per connection over persistent mTLS.
    Multiplex,
    /// `pool` with `early_data: true`: the client's first bytes follow the `ConnRequest`.
    PoolEarly,
    /// `multiplex` with `early_data: true`: the client's first bytes follow the CONNECT.
    MultiplexEarly,
    /// HAProxy (tcp mode) making the same mTLS hop to the sandbox's raw echo port.
    Haproxy,
    /// stunnel (client mode) making the same mTLS hop to the sandbox's raw echo port.
    Stunnel,
}

impl Target {
    pub const ALL: [Target; 9] = [
        Target::Baseline,
        Target::Direct,
        Target::DirectResumed,
        Target::Pool,
        Target::Multiplex,
        Target::PoolEarly,
        Target::MultiplexEarly,
        Target::Haproxy,
        Target::Stunnel,
    ];

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Baseline => "baseline",
            Target::Direct => "direct",
            Target::DirectResumed => "direct+resume",
            Target::Pool => "pool",
            Target::Multiplex => "multiplex",
            Target::PoolEarly => "pool+early",
            Target::MultiplexEarly => "multiplex+early",
            Target::Haproxy => "haproxy",
            Target::Stunnel => "stunnel",
        }
    }

    /// The peer program this target runs, if it is one.
    pub fn peer(self) -> Option<peers::Peer> {
        match self {
            Target::Haproxy => Some(peers::Peer::Haproxy),
            Target::Stunnel => Some(peers::Peer::Stunnel),
            _ => None,
        }
    }

    /// The ingress's `transport:` value and the lines after it (YAML, indented for the ingress);
    /// `None` for the baseline, which has no proxy, and for the peers, which are not bindgate.
    pub fn transport(self) -> Option<&'static str> {
        match self {
            Target::Baseline | Target::Haproxy | Target::Stunnel => None,
            Target::Direct => Some("direct\n    session_resumption: false"),
            Target::DirectResumed => Some("direct"),
            Target::Pool => Some("pool"),
            Target::Multiplex => Some("multiplex"),
            Target::PoolEarly => Some("pool\n    early_data: true"),
            Target::MultiplexEarly => Some("multiplex\n    early_data: true"),
        }
    }
}

/// A measurement (a group of columns), as `--only` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measurement {
    /// Sequential connect latency.
    Connect,
    /// Open-loop (paced) connect latency.
    Paced,
    /// Short connections per second.
    Short,
    /// The four HTTP columns.
    Http,
    /// Echo throughput on one connection.
    Throughput,
    /// The http reverse proxies in front of one nginx (their own table).
    HttpPeers,
}

impl Measurement {
    pub const ALL: [Measurement; 6] = [
        Measurement::Connect,
        Measurement::Paced,
        Measurement::Short,
        Measurement::Http,
        Measurement::Throughput,
        Measurement::HttpPeers,
    ];

    pub fn parse(name: &str) -> Option<Measurement> {
        Measurement::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Measurement::Connect => "connect",
            Measurement::Paced => "paced",
            Measurement::Short => "short",
            Measurement::Http => "http",
            Measurement::Throughput => "throughput",
            Measurement::HttpPeers => "http_peers",
        }
    }
}

/// Why throughput is not measured with an RTT.
pub const NO_THROUGHPUT_WITH_RTT: &str =
    "echo MiB/s is not measured with --rtt: the relay delays chunks but does not model bandwidth";

/// Why the http_peers group is not measured with an RTT.
pub const NO_HTTP_PEERS_WITH_RTT: &str = "http_peers is not measured with --rtt: its proxies and \
nginx are all on loopback, there is no ingress hop for the relay to delay";

/// An open-loop schedule: connections started at a fixed rate, whatever the completions do.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Paced {
    pub per_second: u32,
    #[serde(serialize_with = "report::seconds")]
    pub duration: Duration,
}

impl Paced {
    /// Connections the schedule starts.
    pub fn connections(&self) -> usize {
        (self.duration.as_secs_f64() * f64::from(self.per_second)).round() as usize
    }
}

/// A budget for a rate measurement: it stops at whichever comes first.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Budget {
    /// Operations started, across all workers (failed ones count too).
    pub max_ops: u64,
    #[serde(serialize_with = "report::seconds")]
    pub duration: Duration,
}

/// The `http_peers` group's counts.
#[derive(Clone, Debug, Serialize)]
pub struct HttpPeersSettings {
    /// Every measurement runs across every target, then the next; the whole sequence this many
    /// times.
    pub rounds: usize,
    /// Each of the harness's own client's two measurements (its workers: `Settings::workers`).
    pub client: Budget,
    pub wrk_threads: u32,
    pub wrk_connections: u32,
    /// wrk's `-d`, in whole seconds.
    #[serde(serialize_with = "report::seconds")]
    pub wrk_duration: Duration,
    pub ab_concurrency: u32,
    pub ab_requests: u64,
    /// Bound on one ab run, and on one wrk run beyond its duration.
    #[serde(serialize_with = "report::seconds")]
    pub tool_time_limit: Duration,
    /// The size of nginx's response body.
    pub body_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The `bindgate` executable to run.
    pub bin: PathBuf,
    /// Where `bin` came from, for the report (which build was measured matters).
    pub bin_origin: &'static str,
    pub quick: bool,
    /// Concurrent client workers for the rate measurements.
    pub workers: usize,
    /// Sequential connections timed for the connect latency, after `latency_warmup` untimed ones.
    pub latency_connections: usize,
    pub latency_warmup: usize,
    #[serde(serialize_with = "report::seconds")]
    pub latency_time_limit: Duration,
    /// The paced (open-loop) connect latency's schedule.
    pub paced: Paced,
    pub short_connections: Budget,
    /// Each of the four HTTP measurements gets this budget.
    pub http: Budget,
    /// Bytes sent through the echo endpoint on one connection (and read back concurrently).
    pub throughput_bytes: u64,
    #[serde(serialize_with = "report::seconds")]
    pub throughput_time_limit: Duration,
    /// Bound on any one connect + exchange.
    #[serde(serialize_with = "report::seconds")]
    pub op_timeout: Duration,
    /// Bound on a child process printing its readiness line, and on `bindgate validate`.
    #[serde(serialize_with = "report::seconds")]
    pub startup_timeout: Duration,
    /// Pause after every gateway is up and before measuring, so warm pools that fill in the
    /// background after start are measured full, as in steady state.
    #[serde(serialize_with = "report::seconds")]
    pub settle: Duration,
    /// The round-trip time the relay adds between gateways and the ingress (and between the
    /// baseline and the backends); `None`: straight over loopback.
    #[serde(rename = "rtt_ms", serialize_with = "report::millis")]
    pub rtt: Option<Duration>,
    /// The `http_peers` group's counts.
    pub http_peers: HttpPeersSettings,
    /// The measurements to run (`--only`); throughput and http_peers are skipped with an RTT
    /// whatever this says.
    pub only: Vec<Measurement>,
    /// The targets to measure (`--targets`).
    pub targets: Vec<Target>,
}

impl Settings {
    /// `quick`: tiny counts for a smoke run; else the full run the README's table comes from.
    pub fn new(bin: PathBuf, bin_origin: &'static str, quick: bool) -> Settings {
        let mut s = if quick {
            Settings::quick(bin)
        } else {
            Settings::full(bin)
        };
        s.bin_origin = bin_origin;
        s
    }

    /// Emulates `rtt` between gateways and the ingress. The full run's counts shrink so it stays
    /// under about three minutes (every connection now costs tens of milliseconds); the quick
    /// run's are small already. Throughput is skipped: the relay does not model bandwidth.
    pub fn with_rtt(mut self, rtt: Duration) -> Settings {
        self.rtt = Some(rtt);
        if !self.quick {
            self.latency_connections = 100;
            self.latency_warmup = 5;
            self.paced = Paced {
                per_second: 50,
                duration: Duration::from_secs(5),
            };
            self.short_connections.duration = Duration::from_secs(5);
            self.http.duration = Duration::from_secs(5);
        }
        self
    }

    /// Restricts the run to the comma-separated measurements (`--only`: connect, paced, short,
    /// http, throughput, http_peers) and targets (`--targets`: any of [`Target::name`]; the
    /// http_peers group has its own rows). Call after `with_rtt`: throughput or http_peers asked
    /// for with an RTT is an error.
    pub fn select(&mut self, only: Option<&str>, targets: Option<&str>) -> Result<(), String> {
        if let Some(list) = only {
            self.only = parse_list(
                "--only",
                list,
                Measurement::parse,
                &Measurement::ALL.map(Measurement::name),
            )?;
            if self.rtt.is_some() && self.only.contains(&Measurement::Throughput) {
                return Err(format!("--only throughput: {NO_THROUGHPUT_WITH_RTT}"));
            }
            if self.rtt.is_some() && self.only.contains(&Measurement::HttpPeers) {
                return Err(format!("--only http_peers: {NO_HTTP_PEERS_WITH_RTT}"));
            }
        }
        if let Some(list) = targets {
            self.targets = parse_list(
                "--targets",
                list,
                Target::parse,
                &Target::ALL.map(Target::name),
            )?;
        }
        Ok(())
    }

    /// Whether `m` runs: asked for, and meaningful (no throughput or http_peers with an RTT).
    pub fn measures(&self, m: Measurement) -> bool {
        let loopback_only = matches!(m, Measurement::Throughput | Measurement::HttpPeers);
        self.only.contains(&m) && !(loopback_only && self.rtt.is_some())
    }

    /// Whether any measurement of the transports' table runs (else no sandbox or gateway is
    /// started).
    pub fn measures_transports(&self) -> bool {
        Measurement::ALL
            .into_iter()
            .any(|m| m != Measurement::HttpPeers && self.measures(m))
    }

    /// The numbers the README's table comes from: under two minutes on a 2-core machine.
    fn full(bin: PathBuf) -> Settings {
        Settings {
            bin,
            bin_origin: "",
            quick: false,
            workers: 16,
            latency_connections: 1000,
            latency_warmup: 20,
            latency_time_limit: Duration::from_secs(60),
            paced: Paced {
                per_second: 200,
                duration: Duration::from_secs(5),
            },
            short_connections: Budget {
                max_ops: 500_000,
                duration: Duration::from_secs(5),
            },
            http: Budget {
                max_ops: 1_000_000,
                duration: Duration::from_secs(5),
            },
            throughput_bytes: 256 * MIB,
            throughput_time_limit: Duration::from_secs(120),
            op_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
            settle: Duration::from_secs(1),
            http_peers: HttpPeersSettings {
                rounds: 2,
                client: Budget {
                    max_ops: 1_000_000,
                    duration: Duration::from_secs(5),
                },
                wrk_threads: 2,
                wrk_connections: 64,
                wrk_duration: Duration::from_secs(5),
                ab_concurrency: 16,
                ab_requests: 20_000,
                tool_time_limit: Duration::from_secs(120),
                body_bytes: HTTP_PEERS_BODY_BYTES,
            },
            rtt: None,
            only: Measurement::ALL.to_vec(),
            targets: Target::ALL.to_vec(),
        }
    }

    /// Tiny counts, seconds in total: proves every path works, measures nothing worth quoting.
    fn quick(bin: PathBuf) -> Settings {
        Settings {
            bin,
            bin_origin: "",
            quick: true,
            workers: 4,
            latency_connections: 20,
            latency_warmup: 2,
            latency_time_limit: Duration::from_secs(10),
            paced: Paced {
                per_second: 50,
                duration: Duration::from_millis(300),
            },
            short_connections: Budget {
                max_ops: 200,
                duration: Duration::from_millis(300),
            },
            http: Budget {
                max_ops: 200,
                duration: Duration::from_millis(300),
            },
            throughput_bytes: 4 * MIB,
            throughput_time_limit: Duration::from_secs(20),
            op_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(60),
            settle: Duration::from_millis(200),
            http_peers: HttpPeersSettings {
                rounds: 1,
                client: Budget {
                    max_ops: 300,
                    duration: Duration::from_secs(2),
                },
                wrk_threads: 2,
                wrk_connections: 64,
                wrk_duration: Duration::from_secs(1),
                ab_concurrency: 16,
                ab_requests: 200,
                tool_time_limit: Duration::from_secs(60),
                body_bytes: HTTP_PEERS_BODY_BYTES,
            },
            rtt: None,
            only: Measurement::ALL.to_vec(),
            targets: Target::ALL.to_vec(),
        }
    }
}

pub const MIB: u64 = 1024 * 1024;

/// nginx's response body in the http_peers group: small, like an API answer.
const HTTP_PEERS_BODY_BYTES: usize = 256;

/// A comma-separated list of names, each one of `known`, without repeats, not empty.
fn parse_list<T: PartialEq>(
    flag: &str,
    list: &str,
    parse: fn(&str) -> Option<T>,
    known: &[&str],
) -> Result<Vec<T>, String> {
    let known = known.join(",");
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let item =
            parse(name).ok_or_else(|| format!("{flag}: unknown `{name}` (known: {known})"))?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    if out.is_empty() {
        return Err(format!("{flag} needs at least one of {known}"));
    }
    Ok(out)
}

/// Where one target's traffic goes.
struct Addresses {
    /// An echo endpoint.
    echo: SocketAddr,
    /// The http endpoint, reached as a byte stream (a tcp listener, or the backend itself);
    /// `None` for a peer, whose hop ends at an echo.
    web_tcp: Option<SocketAddr>,
    /// The http endpoint through a `protocol: http` listener, when there is one.
    web_http: Result<SocketAddr, Support>,
}

/// Runs every measurement for every target and returns the report. Fails only when the harness
/// itself cannot run (a process does not start, a generated config is rejected for a reason other
/// than an unsupported mode); a failed operation is counted, not fatal.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let version = process::version(&settings.bin, settings.startup_timeout).await?;
    let targets = if settings.measures_transports() {
        measure_transports(settings, dir.path()).await?
    } else {
        Vec::new()
    };
    let http_peers = if settings.measures(Measurement::HttpPeers) {
        Some(http_peers::run(settings, dir.path()).await?)
    } else {
        None
    };
    Ok(Report::new(settings, version, targets, http_peers))
}

/// The transports' table: the sandbox, one gateway per transport and the peers, every
/// measurement but http_peers.
async fn measure_transports(settings: &Settings, dir: &Path) -> anyhow::Result<Vec<TargetReport>> {
    let sandbox = sandbox::SandboxProcess::start(&settings.bin, dir, settings)
        .await
        .context("starting `bindgate sandbox`")?;

    // With an RTT: one relay in front of the ingress, shared by every gateway, and one in front
    // of the backends for the baseline. Dropped (stopped) at the end of the run.
    let relays = match settings.rtt {
        None => None,
        Some(rtt) => {
            // The raw echo port too: the peers cross the same emulated network as the gateways.
            let ingress = relay::Relay::start(rtt, &[sandbox.ingress, sandbox.raw_echo])
                .context("starting the relay in front of the ingress")?;
            let backends = relay::Relay::start(rtt, &[sandbox.echo, sandbox.http])
                .context("starting the relay in front of the backends")?;
            Some((ingress, backends))
        }
    };
    let (ingress, raw_echo, baseline_echo, baseline_http) = match &relays {
        None => (
            sandbox.ingress,
            sandbox.raw_echo,
            sandbox.echo,
            sandbox.http,
        ),
        Some((ingress, backends)) => (
            ingress.addrs[0],
            ingress.addrs[1],
            backends.addrs[0],
            backends.addrs[1],
        ),
    };

    // `reports[i]` is measured through `addresses[i]`; `None` for a target this build lacks.
    // `pids[i]` is the proxy process of target `i` (none for the baseline).
    let mut reports: Vec<TargetReport> = Vec::new();
    let mut addresses: Vec<Option<Addresses>> = Vec::new();
    let mut pids: Vec<Option<u32>> = Vec::new();
    let mut gateways = Vec::new();
    let mut peer_processes = Vec::new();
    for target in Target::ALL
        .into_iter()
        .filter(|t| settings.targets.contains(t))
    {
        if let Some(peer) = target.peer() {
            let Some(bin) = peer.find() else {
                let looked_for = peer.executables().join(" or ");
                eprintln!(
                    "{}: skipped: not installed (no {looked_for} on PATH)",
                    target.name()
                );
                reports.push(TargetReport::new(
                    target,
                    Support::NotInstalled { looked_for },
                ));
                addresses.push(None);
                pids.push(None);
                continue;
            };
            let running = peers::PeerProcess::start(peer, &bin, dir, &sandbox, raw_echo, settings)
                .await
                .with_context(|| format!("starting {}", target.name()))?;
            let mut report = TargetReport::new(target, Support::Measured);
            report.peer = Some(running.info.clone());
            reports.push(report);
            addresses.push(Some(Addresses {
                echo: running.listen,
                web_tcp: None,
                web_http: Err(Support::NotApplicable),
            }));
            pids.push(running.pid());
            peer_processes.push(running);
            continue;
        }
        let Some(transport) = target.transport() else {
            reports.push(TargetReport::new(target, Support::Measured));
            addresses.push(Some(Addresses {
                echo: baseline_echo,
                web_tcp: Some(baseline_http),
                web_http: Err(Support::NotApplicable),
            }));
            pids.push(None);
            continue;
        };
        let prepared = gateway::prepare(
            &settings.bin,
            dir,
            &sandbox,
            ingress,
            target.name(),
            transport,
            &gateway::Extra::default(),
            settings,
        )
        .await?;
        match prepared {
            gateway::Prepared::NotSupported(reason) => {
                eprintln!(
                    "{}: n/a (not supported by this build: {reason})",
                    target.name()
                );
                reports.push(TargetReport::new(target, Support::NotSupported { reason }));
                addresses.push(None);
                pids.push(None);
            }
            gateway::Prepared::Config(config) => {
                let running = gateway::GatewayProcess::start(&settings.bin, &config, settings)
                    .await
                    .with_context(|| format!("starting `bindgate run` for {}", target.name()))?;
                let mut report = TargetReport::new(target, Support::Measured);
                report.http_listener = match &running.web_http {
                    Ok(_) => Support::Measured,
                    Err(s) => s.clone(),
                };
                reports.push(report);
                addresses.push(Some(Addresses {
                    echo: running.echo,
                    web_tcp: Some(running.web_tcp),
                    web_http: running.web_http.clone(),
                }));
                pids.push(running.pid());
                gateways.push(running);
            }
        }
    }

    tokio::time::sleep(settings.settle).await;

    // One measurement at a time across every target, so a burst of noise from the rest of the
    // machine lands on neighbouring cells rather than on one target's whole row.
    if settings.measures(Measurement::Connect) {
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(a) = a else { continue };
            let m = workloads::connect_latency(a.echo, settings).await;
            progress(r.target, "connect latency", &m.summary());
            r.connect_latency = Some(m);
        }
    }
    if settings.measures(Measurement::Paced) {
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(a) = a else { continue };
            let m = workloads::paced_connect_latency(a.echo, settings).await;
            progress(r.target, "paced connect latency", &m.summary());
            r.paced_connect_latency = Some(m);
        }
    }
    if settings.measures(Measurement::Short) {
        for ((r, a), pid) in reports.iter_mut().zip(&addresses).zip(&pids) {
            let Some(a) = a else { continue };
            // The proxy's CPU time around the measurement: what its connections cost it.
            let before = pid.and_then(|p| probe::cpu_seconds(p).ok());
            let m = workloads::short_connections(a.echo, settings).await;
            let after = pid.and_then(|p| probe::cpu_seconds(p).ok());
            progress(r.target, "short connections", &m.summary());
            if let (Some(before), Some(after)) = (before, after) {
                r.proxy_cpu = Some(ProxyCpu::new(after - before, m.ops));
            }
            r.short_connections = Some(m);
        }
    }
    let http_rounds: &[bool] = if settings.measures(Measurement::Http) {
        &[true, false]
    } else {
        &[]
    };
    for &keep_alive in http_rounds {
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(web_tcp) = a.as_ref().and_then(|a| a.web_tcp) else {
                continue;
            };
            let m = workloads::http_requests(web_tcp, keep_alive, settings).await;
            progress(
                r.target,
                http_label("tcp listener", keep_alive),
                &m.summary(),
            );
            *r.http_tcp(keep_alive) = Some(m);
        }
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(Ok(addr)) = a.as_ref().map(|a| a.web_http.clone()) else {
                continue;
            };
            let m = workloads::http_requests(addr, keep_alive, settings).await;
            progress(
                r.target,
                http_label("http listener", keep_alive),
                &m.summary(),
            );
            *r.http_listener(keep_alive) = Some(m);
        }
    }
    if settings.measures(Measurement::Throughput) {
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(a) = a else { continue };
            let m = workloads::throughput(a.echo, settings).await;
            progress(r.target, "throughput", &m.summary());
            r.throughput = Some(m);
        }
    }
    // Resident memory after everything ran, while the processes still hold what they grew to.
    for (r, pid) in reports.iter_mut().zip(&pids) {
        if let Some(stats) = pid.and_then(|p| probe::ProcStats::read(p).ok()) {
            r.proxy_rss_kib = Some(stats.rss_kib);
        }
    }

    for g in gateways {
        g.stop().await;
    }
    for p in peer_processes {
        p.stop().await;
    }
    drop(relays);
    sandbox.stop().await;
    Ok(reports)
}

fn http_label(via: &str, keep_alive: bool) -> String {
    let how = if keep_alive {
        "keep-alive"
    } else {
        "new connection per request"
    };
    format!("http via {via}, {how}")
}

/// One line per finished measurement on stderr, so a long run shows where it is.
fn progress(target: Target, what: impl AsRef<str>, summary: &str) {
    eprintln!("  {:<9} {}: {summary}", target.name(), what.as_ref());
}
