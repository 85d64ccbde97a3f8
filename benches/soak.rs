//! The soak: N concurrent echo sessions held open through one gateway for M minutes, with the
//! gateway's memory, descriptors and threads before, during and after (see `benches/README.md`).
//!
//! ```sh
//! cargo build --release && cp target/release/bindgate target/bindgate-release
//! BINDGATE_BIN=target/bindgate-release cargo bench --bench soak -- \
//!     --connections 10000 --minutes 3 --targets pool,multiplex --json target/soak.json
//! ```
//!
//! Per target (`pool`, `multiplex`): a fresh `bindgate sandbox` and `bindgate run` (the load
//! harness's, with explicit connection caps of 20,000 and an admin server on an OS-chosen port),
//! then, `--fills` times in the same gateway process: open N connections (at most `RAMP` connects
//! in flight, under the listen backlog of 1024), each checked with one echo; hold them idle and
//! measure; every connection sends a 32-byte pattern every `--interval` seconds and checks the
//! byte-exact echo for M minutes; measure; close them all; poll `/metrics` until
//! `bindgate_connections_active` is 0 and `/proc` until descriptors and threads are back at the
//! baseline (up to a guard); measure. Every failed connect, reset, early end, mismatch and
//! timeout counts as an error. The exit status is non-zero on any error or leak check that fails.

#[path = "harness/mod.rs"]
#[allow(dead_code)] // the soak uses the harness's process, sandbox, gateway and probe modules
mod harness;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use harness::gateway::{self, Extra, GatewayProcess};
use harness::probe::{self, ProcStats};
use harness::sandbox::SandboxProcess;
use harness::{Settings, Target};

const USAGE: &str = "usage: cargo bench --bench soak -- [--connections N] [--minutes M] \
[--fills K] [--interval SECONDS] [--targets pool,multiplex] [--json FILE]";

/// Connects (and first echoes) in flight at once while filling: well under the backlog of 1024.
const RAMP: usize = 256;
/// Bytes per echo exchange.
const PATTERN: usize = 32;
/// Bound on a connect plus its first echo while filling (10,000 TLS upgrades queue up).
const FILL_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one echo exchange during the traffic phase.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the gauge reaching 0, and on descriptors and threads returning, after the close.
const CLOSE_GUARD: Duration = Duration::from_secs(120);
const SETTLE_GUARD: Duration = Duration::from_secs(30);
/// The hard (and soft) open-file limit set before children start, when permitted (it takes
/// CAP_SYS_RESOURCE, which a container's root may lack): the gateway holds two descriptors per
/// proxied connection with `pool`.
const FD_LIMIT: u64 = 200_000;
/// The gateway's global and per-listener `max_connections`, at least N.
const MAX_CONNECTIONS: usize = 20_000;
/// Descriptors a process needs besides its connections'.
const FD_RESERVE: u64 = 256;
/// `bindgate_connections_active`.
const ACTIVE: &str = "bindgate_connections_active";

struct Args {
    connections: usize,
    minutes: f64,
    fills: usize,
    interval: Duration,
    targets: Vec<Target>,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connections: 10_000,
        minutes: 3.0,
        fills: 1,
        interval: Duration::from_secs(5),
        targets: vec![Target::Pool, Target::Multiplex],
        json: None,
    };
    let mut it = std::env::args().skip(1);
    fn value<T: std::str::FromStr>(
        it: &mut impl Iterator<Item = String>,
        flag: &str,
    ) -> Result<T, String> {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: `{v}` is not valid"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--connections" => args.connections = value(&mut it, "--connections")?,
            "--minutes" => args.minutes = value(&mut it, "--minutes")?,
            "--fills" => args.fills = value(&mut it, "--fills")?,
            "--interval" => args.interval = Duration::from_secs_f64(value(&mut it, "--interval")?),
            "--json" => args.json = Some(PathBuf::from(value::<String>(&mut it, "--json")?)),
            "--targets" => {
                let list: String = value(&mut it, "--targets")?;
                args.targets = list
                    .split(',')
                    .map(|name| match Target::parse(name) {
                        Some(t @ (Target::Pool | Target::Multiplex)) => Ok(t),
                        _ => Err(format!("--targets: `{name}` is not pool or multiplex")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(format!("--connections: from 1 to {MAX_CONNECTIONS}"));
    }
    if !(args.minutes >= 0.0 && args.minutes <= 24.0 * 60.0) || args.fills == 0 {
        return Err(format!(
            "--minutes from 0 to 1440, --fills at least 1\n{USAGE}"
        ));
    }
    if args.interval < Duration::from_millis(100) {
        return Err("--interval: at least 0.1 s".to_owned());
    }
    Ok(args)
}

/// Raises the open-file limit for this process and the children it starts: the hard limit to
/// `FD_LIMIT` when permitted (root), else the soft limit to the hard one. Returns the soft limit.
fn raise_fd_limit() -> u64 {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    if hard < FD_LIMIT && Resource::NOFILE.set(FD_LIMIT, FD_LIMIT).is_ok() {
        return FD_LIMIT;
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(soft)
}

#[derive(Default)]
struct Errors {
    connect: AtomicU64,
    reset: AtomicU64,
    eof: AtomicU64,
    mismatch: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
    /// The first few errors' text; locked for a push or a copy, never across an await.
    #[allow(clippy::disallowed_types)]
    first: std::sync::Mutex<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct ErrorCounts {
    total: u64,
    connect: u64,
    reset: u64,
    eof: u64,
    mismatch: u64,
    timeout: u64,
    other: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    first: Vec<String>,
}

enum Failure {
    Connect(String),
    Io(io::Error),
    Mismatch(String),
    Timeout(&'static str),
}

impl Errors {
    fn count(&self, id: usize, f: Failure) {
        let (counter, text) = match f {
            Failure::Connect(e) => (&self.connect, format!("connect: {e}")),
            Failure::Io(e) => {
                let counter = match e.kind() {
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => &self.reset,
                    io::ErrorKind::UnexpectedEof => &self.eof,
                    _ => &self.other,
                };
                (counter, format!("{:?}: {e}", e.kind()))
            }
            Failure::Mismatch(e) => (&self.mismatch, e),
            Failure::Timeout(what) => (&self.timeout, format!("timeout: {what}")),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < 10 {
            first.push(format!("connection {id}: {text}"));
        }
    }

    fn snapshot(&self) -> ErrorCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut e = ErrorCounts {
            connect: get(&self.connect),
            reset: get(&self.reset),
            eof: get(&self.eof),
            mismatch: get(&self.mismatch),
            timeout: get(&self.timeout),
            other: get(&self.other),
            first: self.first.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            total: 0,
        };
        e.total = e.connect + e.reset + e.eof + e.mismatch + e.timeout + e.other;
        e
    }
}

/// One 32-byte pattern, distinct per connection and exchange.
fn pattern(id: usize, seq: u64) -> [u8; PATTERN] {
    let mut p = [0u8; PATTERN];
    let head = format!("{id:06}:{seq:06}:");
    p[..head.len()].copy_from_slice(head.as_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(head.len()) {
        *b = (id as u64)
            .wrapping_mul(31)
            .wrapping_add(seq)
            .wrapping_add(i as u64) as u8;
    }
    p
}

async fn exchange(
    stream: &mut TcpStream,
    id: usize,
    seq: u64,
    limit: Duration,
) -> Result<(), Failure> {
    let sent = pattern(id, seq);
    let mut got = [0u8; PATTERN];
    let io = async {
        stream.write_all(&sent).await?;
        stream.read_exact(&mut got).await?;
        io::Result::Ok(())
    };
    match timeout(limit, io).await {
        Err(_) => Err(Failure::Timeout("echo")),
        Ok(Err(e)) => Err(Failure::Io(e)),
        Ok(Ok(())) if got != sent => Err(Failure::Mismatch(format!(
            "exchange {seq}: sent {sent:?}, echoed {got:?}"
        ))),
        Ok(Ok(())) => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Hold,
    Traffic { until: Instant },
    Close,
}

/// Counts shared by one fill's connection tasks.
#[derive(Default)]
struct Progress {
    /// Connected and first echo checked.
    open: AtomicU64,
    /// Gone before the end (failed): never counted again.
    failed: AtomicU64,
    /// Finished the traffic phase, still open.
    done: AtomicU64,
    /// Echo exchanges that succeeded.
    exchanges: AtomicU64,
}

/// One client connection: connect and check one echo (holding a ramp permit), wait for the
/// traffic phase, exchange every `interval` (phase-shifted per connection) until its end, hold
/// the connection until the close. Returns early, counted, on the first error.
#[allow(clippy::too_many_arguments)]
async fn session(
    addr: SocketAddr,
    id: usize,
    n: usize,
    interval: Duration,
    ramp: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
    errors: Arc<Errors>,
) {
    let fail = |f: Failure| {
        errors.count(id, f);
        progress.failed.fetch_add(1, Ordering::Relaxed);
    };
    let Ok(permit) = ramp.acquire().await else {
        return;
    };
    let opened = timeout(FILL_OP_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        s.set_nodelay(true).map_err(Failure::Io)?;
        exchange(&mut s, id, 0, FILL_OP_TIMEOUT).await?;
        Ok(s)
    })
    .await
    .unwrap_or(Err(Failure::Timeout("connect and first echo")));
    drop(permit);
    let mut stream = match opened {
        Ok(s) => s,
        Err(f) => return fail(f),
    };
    progress.open.fetch_add(1, Ordering::Relaxed);

    let Ok(p) = phase.wait_for(|p| *p != Phase::Hold).await.map(|p| *p) else {
        return;
    };
    if let Phase::Traffic { until } = p {
        // Spread the connections evenly over one interval.
        let mut next = Instant::now() + interval.mul_f64(id as f64 / n as f64);
        let mut seq = 1;
        while next < until {
            sleep_until(next).await;
            if let Err(f) = exchange(&mut stream, id, seq, ECHO_TIMEOUT).await {
                return fail(f);
            }
            progress.exchanges.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            next += interval;
        }
    }
    progress.done.fetch_add(1, Ordering::Relaxed);
    let _ = phase.wait_for(|p| *p == Phase::Close).await;
    drop(stream);
}

#[derive(Clone, Debug, Serialize)]
struct Check {
    name: String,
    pass: bool,
    detail: String,
}

#[derive(Clone, Debug, Serialize)]
struct FillResult {
    fill: usize,
    connections_open: u64,
    fill_seconds: f64,
    active_after_fill: f64,
    after_fill: ProcStats,
    /// (RSS after the fill − baseline RSS) / N, KiB.
    rss_per_connection_fill_kib: f64,
    traffic_seconds: f64,
    exchanges: u64,
    after_traffic: ProcStats,
    rss_per_connection_traffic_kib: f64,
    /// From the last client close until `bindgate_connections_active` read 0.
    drain_seconds: f64,
    after_close: ProcStats,
    errors: ErrorCounts,
}

#[derive(Clone, Debug, Serialize)]
struct TargetResult {
    target: &'static str,
    connections: usize,
    minutes: f64,
    /// The config left out the global `limits:` and `multiplex.max_connections` (an older build).
    compat_config: bool,
    baseline: ProcStats,
    /// Descriptors allowed above the baseline after the close (see `fd_tolerance`).
    fd_tolerance: u64,
    fills: Vec<FillResult>,
    checks: Vec<Check>,
}

/// Descriptors the gateway may keep above its baseline once every client is gone, by design:
/// `pool` keeps up to `max_idle` (32 by default) warm idle ingress connections after a burst
/// (the baseline has `min_idle`, 2); `multiplex` closes the extra HTTP/2 connections it opened
/// once their streams end, so none.
fn fd_tolerance(target: Target) -> u64 {
    match target {
        Target::Pool => 32,
        _ => 0,
    }
}

/// The ingress's `transport:` and settings: 10,000 streams fit in 10 HTTP/2 connections.
/// `compat`: for builds before `multiplex.max_connections` (which open extra connections
/// without a bound).
fn transport(target: Target, compat: bool) -> anyhow::Result<String> {
    let base = target
        .transport()
        .context("the baseline has no transport")?;
    let max = if compat { "" } else { ", max_connections: 32" };
    Ok(match target {
        Target::Multiplex => {
            format!("{base}\n    multiplex: {{ connections: 2, max_streams: 1000{max} }}")
        }
        _ => base.to_owned(),
    })
}

/// The explicit connection caps and an admin server on an OS-chosen port. `compat`: for builds
/// before the global `limits:` (which had no global cap).
fn extra(connections: usize, compat: bool) -> Extra {
    let cap = MAX_CONNECTIONS.max(connections);
    let limits = if compat {
        String::new()
    } else {
        format!("limits: {{ max_connections: {cap} }}\n")
    };
    Extra {
        top_level: format!("{limits}admin: {{ address: 127.0.0.1:0 }}\n"),
        listener: format!("      limits: {{ max_connections: {cap} }}\n"),
    }
}

async fn active(admin: SocketAddr) -> anyhow::Result<f64> {
    probe::metric(admin, ACTIVE).await
}

/// Polls until `done(stats)` or `guard` passes; the last stats read.
async fn settle(
    pid: u32,
    guard: Duration,
    done: impl Fn(&ProcStats) -> bool,
) -> anyhow::Result<ProcStats> {
    let deadline = Instant::now() + guard;
    loop {
        let s = ProcStats::read(pid)?;
        if done(&s) || Instant::now() >= deadline {
            return Ok(s);
        }
        sleep(Duration::from_millis(200)).await;
    }
}

fn per_connection(open: &ProcStats, baseline: &ProcStats, n: u64) -> f64 {
    (open.rss_kib as f64 - baseline.rss_kib as f64) / n.max(1) as f64
}

#[allow(clippy::too_many_arguments)]
async fn fill_once(
    fill: usize,
    gw: &GatewayProcess,
    pid: u32,
    admin: SocketAddr,
    baseline: &ProcStats,
    tolerance: u64,
    args: &Args,
    label: &str,
) -> anyhow::Result<FillResult> {
    let n = args.connections;
    let errors = Arc::new(Errors::default());
    let progress = Arc::new(Progress::default());
    let ramp = Arc::new(Semaphore::new(RAMP));
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let mut tasks = JoinSet::new();

    let started = Instant::now();
    for id in 0..n {
        tasks.spawn(session(
            gw.echo,
            id,
            n,
            args.interval,
            ramp.clone(),
            phase_rx.clone(),
            progress.clone(),
            errors.clone(),
        ));
    }
    let all = |p: &Progress, counter: &AtomicU64| {
        counter.load(Ordering::Relaxed) + p.failed.load(Ordering::Relaxed) >= n as u64
    };
    while !all(&progress, &progress.open) {
        sleep(Duration::from_millis(100)).await;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let open = progress.open.load(Ordering::Relaxed);
    let active_after_fill = active(admin).await?;
    let after_fill = ProcStats::read(pid)?;
    eprintln!(
        "  {label} fill {fill}: {open} open in {fill_seconds:.1} s ({} failed), active {active_after_fill}, RSS {} KiB, fds {}, threads {}",
        progress.failed.load(Ordering::Relaxed),
        after_fill.rss_kib,
        after_fill.fds,
        after_fill.threads
    );

    let traffic = Duration::from_secs_f64(args.minutes * 60.0);
    let t0 = Instant::now();
    phase_tx.send_replace(Phase::Traffic {
        until: t0 + traffic,
    });
    let mut last_report = Instant::now();
    while !all(&progress, &progress.done) {
        sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            let s = ProcStats::read(pid)?;
            eprintln!(
                "  {label} fill {fill}: {:.0} s, {} exchanges, {} errors, RSS {} KiB",
                t0.elapsed().as_secs_f64(),
                progress.exchanges.load(Ordering::Relaxed),
                errors.snapshot().total,
                s.rss_kib
            );
        }
    }
    let traffic_seconds = t0.elapsed().as_secs_f64();
    let after_traffic = ProcStats::read(pid)?;
    let still_open = n as u64 - progress.failed.load(Ordering::Relaxed);

    phase_tx.send_replace(Phase::Close);
    while tasks.join_next().await.is_some() {}
    let closed = Instant::now();
    let drain_deadline = closed + CLOSE_GUARD;
    let mut last_active = active(admin).await?;
    while last_active != 0.0 && Instant::now() < drain_deadline {
        sleep(Duration::from_millis(100)).await;
        last_active = active(admin).await?;
    }
    if last_active != 0.0 {
        bail!(
            "{label} fill {fill}: {ACTIVE} is still {last_active} {CLOSE_GUARD:?} after the close"
        );
    }
    let drain_seconds = closed.elapsed().as_secs_f64();
    let after_close = settle(pid, SETTLE_GUARD, |s| {
        s.fds <= baseline.fds + tolerance && s.threads <= baseline.threads
    })
    .await?;
    let errors = errors.snapshot();
    eprintln!(
        "  {label} fill {fill}: closed, active 0 after {drain_seconds:.2} s; RSS {} KiB, fds {}, threads {}; {} errors",
        after_close.rss_kib, after_close.fds, after_close.threads, errors.total
    );
    Ok(FillResult {
        fill,
        connections_open: open,
        fill_seconds,
        active_after_fill,
        rss_per_connection_fill_kib: per_connection(&after_fill, baseline, open),
        after_fill,
        traffic_seconds,
        exchanges: progress.exchanges.load(Ordering::Relaxed),
        rss_per_connection_traffic_kib: per_connection(&after_traffic, baseline, still_open),
        after_traffic,
        drain_seconds,
        after_close,
        errors,
    })
}

async fn soak_target(
    settings: &Settings,
    target: Target,
    args: &Args,
) -> anyhow::Result<TargetResult> {
    let label = target.name();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // The echo backend in a process of its own (a second sandbox, only its echo is used): the
    // ingress process then holds one descriptor per proxied connection (plus one per pooled
    // ingress connection), not three.
    let echo_dir = dir.path().join("echo");
    std::fs::create_dir_all(&echo_dir)?;
    let echo = SandboxProcess::start(&settings.bin, &echo_dir, settings)
        .await
        .context("starting the echo `bindgate sandbox`")?;
    let sandbox =
        SandboxProcess::start_with_echo(&settings.bin, dir.path(), settings, Some(echo.echo))
            .await
            .context("starting `bindgate sandbox`")?;
    // The config as this build has it; an older build (the before/after memory comparison)
    // gets the same without the settings it does not know.
    let mut config = None;
    let mut compat = false;
    for c in [false, true] {
        let prepared = gateway::prepare(
            &settings.bin,
            dir.path(),
            &sandbox,
            sandbox.ingress,
            label,
            &transport(target, c)?,
            &extra(args.connections, c),
            settings,
        )
        .await?;
        match prepared {
            gateway::Prepared::Config(cfg) => {
                config = Some(cfg);
                compat = c;
                break;
            }
            gateway::Prepared::NotSupported(reason) => {
                eprintln!("  {label}: config without newer settings ({reason})");
            }
        }
    }
    let config = config.with_context(|| format!("{label}: no config this build accepts"))?;
    let gw = GatewayProcess::start(&settings.bin, &config, settings)
        .await
        .with_context(|| format!("starting `bindgate run` for {label}"))?;
    let pid = gw.pid().context("the gateway has no pid")?;
    let admin = gw.admin.context("the gateway announced no admin address")?;

    // Warm up (the transport's first connections, lazily built state), then the baseline once
    // the gauge is back at 0 and the pool has refilled in the background.
    let mut warm = TcpStream::connect(gw.echo).await?;
    exchange(&mut warm, 0, 0, FILL_OP_TIMEOUT)
        .await
        .map_err(|_| anyhow::anyhow!("{label}: the warm-up echo failed"))?;
    drop(warm);
    while active(admin).await? != 0.0 {
        sleep(Duration::from_millis(50)).await;
    }
    sleep(settings.settle).await;
    let baseline = ProcStats::read(pid)?;
    eprintln!(
        "  {label} baseline: RSS {} KiB, fds {}, threads {}",
        baseline.rss_kib, baseline.fds, baseline.threads
    );

    let tolerance = fd_tolerance(target);
    let mut fills = Vec::new();
    let mut checks = Vec::new();
    let n = args.connections as u64;
    for fill in 1..=args.fills {
        let r = fill_once(fill, &gw, pid, admin, &baseline, tolerance, args, label).await?;
        let mut check =
            |name: String, pass: bool, detail: String| checks.push(Check { name, pass, detail });
        check(
            format!("fill {fill}: no errors"),
            r.errors.total == 0,
            format!("{} errors, {} exchanges", r.errors.total, r.exchanges),
        );
        check(
            format!("fill {fill}: {n} open and counted active"),
            r.connections_open == n && r.active_after_fill == n as f64,
            format!("{} open, gauge {}", r.connections_open, r.active_after_fill),
        );
        check(
            format!("fill {fill}: fds back to baseline (+{tolerance})"),
            r.after_close.fds <= baseline.fds + tolerance,
            format!("{} → {}", baseline.fds, r.after_close.fds),
        );
        check(
            format!("fill {fill}: threads back to baseline"),
            r.after_close.threads <= baseline.threads,
            format!("{} → {}", baseline.threads, r.after_close.threads),
        );
        fills.push(r);
    }
    gw.stop().await;
    sandbox.stop().await;
    echo.stop().await;
    Ok(TargetResult {
        target: label,
        connections: args.connections,
        minutes: args.minutes,
        compat_config: compat,
        baseline,
        fd_tolerance: tolerance,
        fills,
        checks,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn table(results: &[TargetResult]) -> String {
    let mut out = String::from(
        "| target | fill | conns | min | errors | RSS base MiB | RSS/conn fill KiB | RSS/conn traffic KiB | RSS open MiB | RSS after close MiB | fds base/open/close | threads base/open/close |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in results {
        for f in &t.fills {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{}/{} | {}/{}/{} |\n",
                t.target,
                f.fill,
                f.connections_open,
                t.minutes,
                f.errors.total,
                mib(t.baseline.rss_kib),
                f.rss_per_connection_fill_kib,
                f.rss_per_connection_traffic_kib,
                mib(f.after_traffic.rss_kib),
                mib(f.after_close.rss_kib),
                t.baseline.fds,
                f.after_traffic.fds,
                f.after_close.fds,
                t.baseline.threads,
                f.after_traffic.threads,
                f.after_close.threads,
            ));
        }
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
    let (bin, origin) = harness::bindgate_under_test();
    let fd_limit = raise_fd_limit();
    // Per connection: this process and the echo process hold one descriptor, the gateway and the
    // ingress one (multiplex) or two (pool: client and upstream; ingress connection and dial).
    for &target in &args.targets {
        let per_connection = if target == Target::Pool { 2 } else { 1 };
        if fd_limit < per_connection * args.connections as u64 + FD_RESERVE {
            eprintln!(
                "the open-file limit is {fd_limit}: {} connections through {} need {per_connection} \
                 descriptors each in the gateway and the ingress, plus {FD_RESERVE} (a hard limit \
                 can only be raised with CAP_SYS_RESOURCE)",
                args.connections,
                target.name()
            );
            return ExitCode::FAILURE;
        }
    }
    let settings = Settings::new(bin, origin, true);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "bindgate soak: {} connections, {} min of traffic every {:?}, {} fill(s), binary {} ({}), open-file limit {fd_limit}",
        args.connections,
        args.minutes,
        args.interval,
        args.fills,
        settings.bin.display(),
        settings.bin_origin
    );
    let mut results = Vec::new();
    for &target in &args.targets {
        match runtime.block_on(soak_target(&settings, target, &args)) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("soak of {} failed: {e:#}", target.name());
                return ExitCode::FAILURE;
            }
        }
    }
    println!("\n{}", table(&results));
    let mut failed = false;
    for t in &results {
        for c in &t.checks {
            println!(
                "{} {}: {} ({})",
                if c.pass { "PASS" } else { "FAIL" },
                t.target,
                c.name,
                c.detail
            );
            failed |= !c.pass;
        }
        for f in &t.fills {
            for e in &f.errors.first {
                println!("  {} fill {}: {e}", t.target, f.fill);
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "binary": settings.bin,
            "binary_origin": settings.bin_origin,
            "connections": args.connections,
            "minutes": args.minutes,
            "fills": args.fills,
            "interval_seconds": args.interval.as_secs_f64(),
            "targets": results,
        });
        let written = serde_json::to_string_pretty(&json)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(path, text + "\n").map_err(|e| e.to_string()));
        match written {
            Ok(()) => println!("JSON written to {}", path.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
