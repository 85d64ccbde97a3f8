//! Memory at rest: what an idle gateway holds with 0, 1, 100 or 1,000 discovered endpoints.
//!
//! ```sh
//! cargo build --release && cp target/release/bindgate target/bindgate-release
//! BINDGATE_BIN=target/bindgate-release cargo bench --bench idle -- --endpoints 0,1,100,1000 --json target/idle.json
//! ```
//!
//! Per count N: a fresh `bindgate sandbox` serving N `tcp` bound endpoints through its API, and a
//! `bindgate run` that registers with that API like the operator does, discovers them and
//! exposes each on an address of its own (`expose.mode: virtual`, in a loopback /16 picked per
//! run), with the default `pool` transport, a discovery poll every second, and its default log
//! level (`info`). Once `/listeners` shows all N bound, the bench leaves the gateway alone for
//! three polls, then reads `/proc/PID/status` (`VmRSS`, and its anonymous and file-backed parts)
//! and `/proc/PID/fd`: at rest. It then scrapes `/metrics` ten times, as Prometheus would, and
//! looks again two polls after the last: what the scrapes left behind (a scrape renders and frees
//! several times its own size; the admin thread hands that back to the system after each large
//! response). The per-endpoint cost is the difference to the smallest count measured, divided
//! by the endpoints added. Nothing proxies a byte: this is the process at rest.

#[path = "harness/mod.rs"]
#[allow(dead_code)] // the idle bench uses the harness's process and probe modules only
mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::time::{Instant, sleep};

use harness::probe::{self, ProcStats};
use harness::process::ChildProcess;
use harness::sandbox::path_arg;

const USAGE: &str = "usage: cargo bench --bench idle -- [--endpoints 0,1,100,1000] [--json FILE]";

/// Bound on start-up, on all listeners being bound, and on two discovery polls.
const GUARD: Duration = Duration::from_secs(120);
/// The gateway's discovery poll interval: short, so the settle takes seconds.
const POLL: Duration = Duration::from_secs(1);
/// `/metrics` scrapes before the second look.
const SCRAPES: usize = 10;
const POLLS: &str = "bindgate_discovery_polls_total";

struct Args {
    endpoints: Vec<usize>,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        endpoints: vec![0, 1, 100, 1000],
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--endpoints" => {
                let list = it.next().ok_or("--endpoints needs a value")?;
                args.endpoints = list
                    .split(',')
                    .map(|n| match n.parse::<usize>() {
                        Ok(n) if n <= 10_000 => Ok(n),
                        _ => Err(format!("--endpoints: `{n}` is not a count from 0 to 10000")),
                    })
                    .collect::<Result<_, _>>()?;
                args.endpoints.sort_unstable();
                args.endpoints.dedup();
            }
            "--json" => {
                args.json = Some(PathBuf::from(it.next().ok_or("--json needs a value")?));
            }
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.endpoints.is_empty() {
        return Err(format!("--endpoints: at least one count\n{USAGE}"));
    }
    Ok(args)
}

/// One look at the gateway at rest.
#[derive(Clone, Debug, Serialize)]
struct Rest {
    endpoints: usize,
    listeners_bound: usize,
    rss_kib: u64,
    rss_anon_kib: u64,
    rss_file_kib: u64,
    fds: u64,
    threads: u64,
}

/// A `KEY:  N kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no `{key}`"))
}

fn sandbox_config(dir: &Path, n: usize) -> String {
    let mut text = format!(
        "\
state_dir: {state}
account_id: ac_idle
ingress:
  address: 127.0.0.1:0
  server_names: [localhost]
backends:
  echo: 127.0.0.1:0
  http: 127.0.0.1:0
api:
  address: 127.0.0.1:0
  api_keys: [idle-key]
endpoints:{empty}
",
        state = dir.join("sandbox-state").display(),
        empty = if n == 0 { " []" } else { "" },
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - url: tcp://e{i:04}.ns{}:7000\n    target: echo\n",
            i / 50
        ));
    }
    text
}

fn gateway_config(dir: &Path, api: &str, ca: &str, cidr: &str) -> String {
    format!(
        "\
version: 1
admin:
  address: 127.0.0.1:0
state_dir: {state}
ngrok:
  api_url: {api}
  api_key: idle-key
  api_ca: {ca}
ingresses:
  - name: sandbox
    server_name: localhost
    ca: {ca}
    system_roots: false
dynamic_resources:
  bound_endpoints:
    ingress: sandbox
    poll_interval: {poll}s
    expose:
      mode: virtual
      cidr: {cidr}
",
        state = dir.join("gateway-state").display(),
        poll = POLL.as_secs(),
    )
}

/// Bound listeners in `/listeners`.
async fn bound_listeners(admin: SocketAddr) -> anyhow::Result<usize> {
    let body = probe::get(admin, "/listeners").await?;
    let listeners: serde_json::Value =
        serde_json::from_str(&body).context("/listeners is not JSON")?;
    let list = listeners
        .as_array()
        .or_else(|| listeners["listeners"].as_array())
        .with_context(|| format!("/listeners has no list: {body}"))?;
    Ok(list
        .iter()
        .filter(|l| l["bound_address"].as_str().is_some())
        .count())
}

async fn measure(bin: &Path, n: usize, cidr: &str) -> anyhow::Result<(Rest, Rest)> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let sandbox_yaml = dir.path().join("sandbox.yaml");
    std::fs::write(&sandbox_yaml, sandbox_config(dir.path(), n))?;
    let (sandbox, ready) = ChildProcess::start(
        bin,
        &["sandbox", "-c", path_arg(&sandbox_yaml)?],
        "sandbox",
        GUARD,
    )
    .await?;
    let (Some(api), Some(ca)) = (ready["api"].as_str(), ready["ca"].as_str()) else {
        bail!("the sandbox's ready line has no `api` or `ca`: {ready}");
    };
    let gateway_yaml = dir.path().join("gateway.yaml");
    std::fs::write(&gateway_yaml, gateway_config(dir.path(), api, ca, cidr))?;
    // At the default log level, as a deployment runs it: the code that writes its `info` lines
    // is part of what it keeps mapped.
    let (gateway, started) = ChildProcess::start_logged(
        bin,
        &["run", "-c", path_arg(&gateway_yaml)?],
        "gateway",
        GUARD,
        None,
    )
    .await?;
    let admin: SocketAddr = started["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the gateway's start line has no admin address: {started}"))?;
    let pid = gateway.pid().context("the gateway has no pid")?;

    let deadline = Instant::now() + GUARD;
    let mut bound = bound_listeners(admin).await?;
    while bound < n {
        if Instant::now() > deadline {
            bail!("{bound} of {n} listeners bound after {GUARD:?}");
        }
        sleep(Duration::from_millis(200)).await;
        bound = bound_listeners(admin).await?;
    }
    // At rest: three discovery polls that find the same set, with nothing else asking the
    // gateway anything (a scrape leaves memory behind, measured next).
    sleep(3 * POLL).await;
    let rest = look(pid, n, bound)?;
    // Then scraped: `/metrics` ten times, as Prometheus would over a few minutes.
    let polls = probe::metric(admin, POLLS).await?;
    for _ in 0..SCRAPES - 1 {
        probe::get(admin, "/metrics").await?;
    }
    // Looked at between scrapes, as the process spends its time (Prometheus scrapes every 15 s
    // by default): two discovery polls after the last, not while its response is in flight.
    sleep(2 * POLL).await;
    let scraped = look(pid, n, bound)?;
    if polls < 3.0 {
        bail!("discovery polled {polls} times in the settle: the gateway is not at rest");
    }
    gateway.stop().await;
    sandbox.stop().await;
    Ok((rest, scraped))
}

fn look(pid: u32, n: usize, bound: usize) -> anyhow::Result<Rest> {
    let stats = ProcStats::read(pid)?;
    Ok(Rest {
        endpoints: n,
        listeners_bound: bound,
        rss_kib: stats.rss_kib,
        rss_anon_kib: status_kib(pid, "RssAnon:")?,
        rss_file_kib: status_kib(pid, "RssFile:")?,
        fds: stats.fds,
        threads: stats.threads,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn table(title: &str, rests: &[Rest]) -> String {
    let mut out = format!(
        "{title}\n\n| endpoints | listeners bound | VmRSS MiB | anonymous MiB | file-backed MiB | KiB per endpoint (VmRSS / anonymous) | fds | threads |\n|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let first = &rests[0];
    for r in rests {
        let per = if r.endpoints > first.endpoints {
            let added = (r.endpoints - first.endpoints) as f64;
            format!(
                "{:.1} / {:.1}",
                (r.rss_kib as f64 - first.rss_kib as f64) / added,
                (r.rss_anon_kib as f64 - first.rss_anon_kib as f64) / added
            )
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {per} | {} | {} |\n",
            r.endpoints,
            r.listeners_bound,
            mib(r.rss_kib),
            mib(r.rss_anon_kib),
            mib(r.rss_file_kib),
            r.fds,
            r.threads
        ));
    }
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (bin, _) = harness::bindgate_under_test();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A loopback /16 of this run's own, so a gateway left over from another run cannot hold the
    // addresses.
    let cidr = format!("127.{}.0.0/16", 100 + std::process::id() % 100);
    eprintln!(
        "bindgate idle: binary {}, addresses in {cidr}",
        bin.display()
    );
    let layout = harness::layout::LayoutCoverage::of(&bin);
    eprintln!("{}", harness::layout::LayoutCoverage::describe(layout));
    let (mut rests, mut scraped) = (Vec::new(), Vec::new());
    for &n in &args.endpoints {
        match runtime.block_on(measure(&bin, n, &cidr)) {
            Ok((r, s)) => {
                eprintln!(
                    "{n} endpoints: VmRSS {} MiB at rest, {} MiB after {SCRAPES} scrapes",
                    mib(r.rss_kib),
                    mib(s.rss_kib)
                );
                rests.push(r);
                scraped.push(s);
            }
            Err(e) => {
                eprintln!("{n} endpoints: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("\n{}", table("At rest", &rests));
    println!(
        "{}",
        table(&format!("After {SCRAPES} scrapes of /metrics"), &scraped)
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "binary": bin,
            "function_layout": layout,
            "cidr": cidr,
            "rest": rests,
            "after_scrapes": SCRAPES,
            "scraped": scraped,
        });
        let written = serde_json::to_string_pretty(&json)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(path, text + "\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("JSON written to {}", path.display());
    }
    ExitCode::SUCCESS
}
