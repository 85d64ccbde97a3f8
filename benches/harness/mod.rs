//! The load harness behind `cargo bench --bench load` and `tests/bench_smoke.rs`: starts the real
//! `bindgate sandbox` and one `bindgate run` per ingress transport, then measures, side by side
//! in one run, what a local client sees through each of them and straight at the sandbox's
//! backends (`baseline`: no proxy, no TLS).
//!
//! Submodules: `process` (child processes and their readiness lines), `sandbox` (the emulated
//! ingress and its client certificate), `gateway` (one generated config per transport, checked
//! with `bindgate validate` first), `workloads` (the measurements), `http1` (a minimal HTTP/1.1
//! client), `report` (the table and the JSON). It measures and reports; it never asserts speed.
//!
//! Every loop is bounded twice, by a count and by a deadline, and every socket operation has a
//! timeout; everything listens on 127.0.0.1 with OS-chosen ports.

mod gateway;
mod http1;
mod process;
mod report;
mod sandbox;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

pub use report::{Report, Support, TargetReport};

/// What a measurement goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Straight to the sandbox's backend: no proxy, no TLS. The ceiling.
    Baseline,
    /// `transport: direct`: TCP + TLS + upgrade per connection (what ngrok's forwarder does).
    Direct,
    /// `transport: pool`: warm TLS connections, one upgrade per connection.
    Pool,
    /// `transport: multiplex`: one HTTP/2 CONNECT stream per connection over persistent mTLS.
    Multiplex,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Baseline,
        Target::Direct,
        Target::Pool,
        Target::Multiplex,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Baseline => "baseline",
            Target::Direct => "direct",
            Target::Pool => "pool",
            Target::Multiplex => "multiplex",
        }
    }

    /// The ingress `transport:` value; `None` for the baseline, which has no proxy.
    fn transport(self) -> Option<&'static str> {
        match self {
            Target::Baseline => None,
            other => Some(other.name()),
        }
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
        }
    }
}

pub const MIB: u64 = 1024 * 1024;

/// Where one target's traffic goes.
struct Addresses {
    /// An echo endpoint.
    echo: SocketAddr,
    /// The http endpoint, reached as a byte stream (a tcp listener, or the backend itself).
    web_tcp: SocketAddr,
    /// The http endpoint through a `protocol: http` listener, when there is one.
    web_http: Result<SocketAddr, Support>,
}

/// Runs every measurement for every target and returns the report. Fails only when the harness
/// itself cannot run (a process does not start, a generated config is rejected for a reason other
/// than an unsupported mode); a failed operation is counted, not fatal.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let version = process::version(&settings.bin, settings.startup_timeout).await?;
    let sandbox = sandbox::SandboxProcess::start(&settings.bin, dir.path(), settings)
        .await
        .context("starting `bindgate sandbox`")?;

    // `reports[i]` is measured through `addresses[i]`; `None` for a target this build lacks.
    let mut reports: Vec<TargetReport> = Vec::new();
    let mut addresses: Vec<Option<Addresses>> = Vec::new();
    let mut gateways = Vec::new();
    for target in Target::ALL {
        let Some(transport) = target.transport() else {
            reports.push(TargetReport::new(target, Support::Measured));
            addresses.push(Some(Addresses {
                echo: sandbox.echo,
                web_tcp: sandbox.http,
                web_http: Err(Support::NotApplicable),
            }));
            continue;
        };
        match gateway::prepare(&settings.bin, dir.path(), &sandbox, transport, settings).await? {
            gateway::Prepared::NotSupported(reason) => {
                eprintln!(
                    "{}: n/a (not supported by this build: {reason})",
                    target.name()
                );
                reports.push(TargetReport::new(target, Support::NotSupported { reason }));
                addresses.push(None);
            }
            gateway::Prepared::Config(config) => {
                let running = gateway::GatewayProcess::start(&settings.bin, &config, settings)
                    .await
                    .with_context(|| format!("starting `bindgate run` for {transport}"))?;
                let mut report = TargetReport::new(target, Support::Measured);
                report.http_listener = match &running.web_http {
                    Ok(_) => Support::Measured,
                    Err(s) => s.clone(),
                };
                reports.push(report);
                addresses.push(Some(Addresses {
                    echo: running.echo,
                    web_tcp: running.web_tcp,
                    web_http: running.web_http.clone(),
                }));
                gateways.push(running);
            }
        }
    }

    tokio::time::sleep(settings.settle).await;

    // One measurement at a time across every target, so a burst of noise from the rest of the
    // machine lands on neighbouring cells rather than on one target's whole row.
    for (r, a) in reports.iter_mut().zip(&addresses) {
        let Some(a) = a else { continue };
        let m = workloads::connect_latency(a.echo, settings).await;
        progress(r.target, "connect latency", &m.summary());
        r.connect_latency = Some(m);
    }
    for (r, a) in reports.iter_mut().zip(&addresses) {
        let Some(a) = a else { continue };
        let m = workloads::short_connections(a.echo, settings).await;
        progress(r.target, "short connections", &m.summary());
        r.short_connections = Some(m);
    }
    for keep_alive in [true, false] {
        for (r, a) in reports.iter_mut().zip(&addresses) {
            let Some(a) = a else { continue };
            let m = workloads::http_requests(a.web_tcp, keep_alive, settings).await;
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
    for (r, a) in reports.iter_mut().zip(&addresses) {
        let Some(a) = a else { continue };
        let m = workloads::throughput(a.echo, settings).await;
        progress(r.target, "throughput", &m.summary());
        r.throughput = Some(m);
    }

    for g in gateways {
        g.stop().await;
    }
    sandbox.stop().await;
    Ok(Report::new(settings, version, reports))
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
