//! The measurements. Each takes an address (a gateway listener or a sandbox backend) and the
//! settings, and returns numbers; a failed operation is counted with its first error, never fatal.
//!
//! - `connect_latency`: N sequential connections, each: connect, write 1 byte, read the echoed
//!   byte (timed up to here), close. p50/p99 of the new-connection cost.
//! - `paced_connect_latency`: the same exchange, open loop: connections started at a fixed rate
//!   whatever the earlier ones are doing, each timed from its scheduled start (so a late start
//!   counts against the target, and a slow target does not slow the schedule down).
//! - `short_connections`: `workers` concurrent loops of connect, 32-byte request, 32-byte echo,
//!   close. Connections per second, and the latency of each connection under that closed-loop
//!   load (p50/p99).
//! - `http_requests`: `workers` concurrent HTTP/1.1 clients sending `GET /`, either over one
//!   kept-alive connection each, or with a new connection per request (`Connection: close`);
//!   `http_load` is the same with its own workers and budget, and optionally timed (the
//!   `http_peers` group).
//! - `throughput`: one connection through the echo endpoint, `throughput_bytes` written while
//!   the echo is read concurrently; time until the last byte is back.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::http1::{After, Http1Connection};
use super::{Budget, MIB, Settings};

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyResult {
    /// Connections timed (successful ones).
    pub samples: usize,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Paced only: how late the load generator started connections against the schedule
    /// (already inside the latencies, which are timed from the schedule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lag_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lag_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RateResult {
    /// Operations that completed.
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Short connections, and timed `http_load`s: each successful operation's latency (a
    /// connection: connect to echo back; a request: write to the end of its response) while
    /// every worker was busy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_under_load: Option<LoadLatency>,
}

/// Latency percentiles and mean of the operations of a closed-loop rate measurement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ThroughputResult {
    /// Bytes echoed back (equal to the bytes sent when it succeeded).
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LatencyResult {
    pub fn summary(&self) -> String {
        let lag = match (self.start_lag_p50_ms, self.start_lag_p99_ms) {
            (Some(p50), Some(p99)) => format!(" (start lag p50 {p50:.3} ms, p99 {p99:.3} ms)"),
            _ => String::new(),
        };
        format!(
            "p50 {:.3} ms, p99 {:.3} ms over {} connections{lag}{}",
            self.p50_ms,
            self.p99_ms,
            self.samples,
            errors_note(self.errors, &self.first_error)
        )
    }
}

impl RateResult {
    pub fn summary(&self) -> String {
        let latency = self
            .latency_under_load
            .as_ref()
            .map(|l| format!(", p50 {:.3} ms, p99 {:.3} ms", l.p50_ms, l.p99_ms))
            .unwrap_or_default();
        format!(
            "{:.0}/s ({} in {:.2} s{latency}){}",
            self.per_second,
            self.ops,
            self.seconds,
            errors_note(self.errors, &self.first_error)
        )
    }
}

impl ThroughputResult {
    pub fn summary(&self) -> String {
        format!(
            "{:.1} MiB/s ({} MiB in {:.2} s){}",
            self.mib_per_second,
            self.bytes / MIB,
            self.seconds,
            self.error
                .as_ref()
                .map(|e| format!("; failed: {e}"))
                .unwrap_or_default()
        )
    }
}

fn errors_note(errors: u64, first: &Option<String>) -> String {
    match first {
        Some(e) if errors > 0 => format!("; {errors} failed, first: {e}"),
        _ => String::new(),
    }
}

/// Failed operations: how many, and the first reason.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn record(&mut self, e: impl ToString) {
        self.count += 1;
        self.first.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: Failures) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Runs `op` under `limit`, folding a timeout into the error.
async fn bounded<T>(limit: Duration, op: impl Future<Output = io::Result<T>>) -> Result<T, String> {
    match timeout(limit, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connect, send `payload`, read it back, close.
async fn echo_exchange(addr: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let mut stream = connect(addr).await?;
    stream.write_all(payload).await?;
    let mut back = [0u8; 64];
    let back = &mut back[..payload.len()];
    stream.read_exact(back).await?;
    if back != payload {
        return Err(io::Error::other("the echo differs from what was sent"));
    }
    Ok(())
}

pub async fn connect_latency(addr: SocketAddr, s: &Settings) -> LatencyResult {
    for _ in 0..s.latency_warmup {
        let _ = bounded(s.op_timeout, echo_exchange(addr, b"w")).await;
    }
    let deadline = Instant::now() + s.latency_time_limit;
    let mut samples = Vec::with_capacity(s.latency_connections);
    let mut failures = Failures::default();
    for _ in 0..s.latency_connections {
        if Instant::now() >= deadline {
            break;
        }
        let start = Instant::now();
        match bounded(s.op_timeout, echo_exchange(addr, b"*")).await {
            Ok(()) => samples.push(start.elapsed()),
            Err(e) => failures.record(e),
        }
    }
    latency_result(samples, failures)
}

/// Open loop: `paced.connections()` connections, the `i`-th started at `start + i / rate`
/// whether or not the earlier ones are done, each timed from its scheduled start.
///
/// The schedule is kept by a blocking-pool thread with `std::thread::sleep`, which spawns each
/// connection onto the runtime when it is due: tokio's timer is millisecond-granular and would
/// start every connection up to a millisecond late, a lag that, timed from the schedule, would
/// land on every target's latency. What is left of the lag (the OS's wake-up) is in
/// `start_lag_*` of the JSON.
pub async fn paced_connect_latency(addr: SocketAddr, s: &Settings) -> LatencyResult {
    let rate = f64::from(s.paced.per_second.max(1));
    let count = s.paced.connections();
    let limit = s.op_timeout;
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(10);
    let pacer = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            let wait = scheduled.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let lag = scheduled.elapsed();
            tasks.push(runtime.spawn(async move {
                let done = bounded(limit, echo_exchange(addr, b"*")).await;
                (done.map(|()| scheduled.elapsed()), lag)
            }));
        }
        tasks
    });
    let mut samples = Vec::with_capacity(count);
    let mut lags = Vec::with_capacity(count);
    let mut failures = Failures::default();
    let tasks = match pacer.await {
        Ok(tasks) => tasks,
        Err(e) => {
            failures.record(format!("the pacer failed: {e}"));
            Vec::new()
        }
    };
    // Every task is bounded by `limit`; the outer bound only guards against a task that hangs
    // outside its operation.
    let deadline = Instant::now() + limit + Duration::from_secs(5);
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok((Ok(elapsed), lag))) => {
                samples.push(elapsed);
                lags.push(lag);
            }
            Ok(Ok((Err(e), _))) => failures.record(e),
            Ok(Err(e)) => failures.record(format!("connection task failed: {e}")),
            Err(_) => {
                abort.abort();
                failures.record("not finished when the measurement ended");
            }
        }
    }
    let mut result = latency_result(samples, failures);
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    result.start_lag_p50_ms = percentile(&lags, 50.0).map(ms);
    result.start_lag_p99_ms = percentile(&lags, 99.0).map(ms);
    result
}

fn latency_result(mut samples: Vec<Duration>, failures: Failures) -> LatencyResult {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
    };
    LatencyResult {
        samples: samples.len(),
        errors: failures.count,
        p50_ms: percentile(&samples, 50.0).map_or(0.0, ms),
        p99_ms: percentile(&samples, 99.0).map_or(0.0, ms),
        mean_ms: mean,
        max_ms: samples.last().copied().map_or(0.0, ms),
        first_error: failures.first,
        start_lag_p50_ms: None,
        start_lag_p99_ms: None,
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Hands out operations until the count or the deadline runs out, shared by a run's workers.
struct Gate {
    started: AtomicU64,
    max_ops: u64,
    deadline: Instant,
}

impl Gate {
    fn new(budget: Budget) -> Arc<Gate> {
        Arc::new(Gate {
            started: AtomicU64::new(0),
            max_ops: budget.max_ops,
            deadline: Instant::now() + budget.duration,
        })
    }

    fn admit(&self) -> bool {
        Instant::now() < self.deadline
            && self.started.fetch_add(1, Ordering::Relaxed) < self.max_ops
    }
}

/// What one worker did: operations completed, failures, and the latency of each completed one
/// when it times them.
type WorkerOutcome = (u64, Failures, Vec<Duration>);

/// Runs `workers` copies of `worker` sharing one gate and adds up what they did.
async fn run_workers<W, F>(workers: usize, budget: Budget, worker: W) -> RateResult
where
    W: Fn(Arc<Gate>) -> F,
    F: Future<Output = WorkerOutcome> + Send + 'static,
{
    let gate = Gate::new(budget);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(worker(gate.clone()));
    }
    let mut ops = 0;
    let mut failures = Failures::default();
    let mut latencies = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((n, f, l)) => {
                ops += n;
                failures.merge(f);
                latencies.extend(l);
            }
            Err(e) => failures.record(format!("worker task failed: {e}")),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let latency_under_load = (!latencies.is_empty()).then(|| LoadLatency {
        p50_ms: percentile(&latencies, 50.0).map_or(0.0, ms),
        p99_ms: percentile(&latencies, 99.0).map_or(0.0, ms),
        max_ms: latencies.last().copied().map_or(0.0, ms),
        mean_ms: latencies.iter().map(|d| ms(*d)).sum::<f64>() / latencies.len() as f64,
    });
    RateResult {
        ops,
        errors: failures.count,
        seconds,
        per_second: if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        },
        first_error: failures.first,
        latency_under_load,
    }
}

pub async fn short_connections(addr: SocketAddr, s: &Settings) -> RateResult {
    let limit = s.op_timeout;
    run_workers(s.workers, s.short_connections, move |gate| async move {
        let payload = [b'x'; 32];
        let (mut ok, mut failures, mut latencies) = (0, Failures::default(), Vec::new());
        while gate.admit() {
            let start = Instant::now();
            match bounded(limit, echo_exchange(addr, &payload)).await {
                Ok(()) => {
                    ok += 1;
                    latencies.push(start.elapsed());
                }
                Err(e) => failures.record(e),
            }
        }
        (ok, failures, latencies)
    })
    .await
}

pub async fn http_requests(addr: SocketAddr, keep_alive: bool, s: &Settings) -> RateResult {
    http_load(addr, keep_alive, s.workers, s.http, s.op_timeout, false).await
}

/// `workers` concurrent HTTP/1.1 clients sending `GET /` within `budget`, each request bounded
/// by `limit`; `timed`: each request's latency too (from writing it to the end of its response,
/// plus the connect when it opens a connection), in `latency_under_load`.
pub async fn http_load(
    addr: SocketAddr,
    keep_alive: bool,
    workers: usize,
    budget: Budget,
    limit: Duration,
    timed: bool,
) -> RateResult {
    run_workers(workers, budget, move |gate| async move {
        let (mut ok, mut failures, mut latencies) = (0, Failures::default(), Vec::new());
        let mut open: Option<Http1Connection> = None;
        while gate.admit() {
            let start = Instant::now();
            let conn = open.take();
            let done = bounded(limit, async move {
                let mut conn = match conn {
                    Some(c) => c,
                    None => Http1Connection::connect(addr).await?,
                };
                let after = conn.get(keep_alive).await?;
                Ok((after == After::KeepOpen).then_some(conn))
            })
            .await;
            match done {
                Ok(kept) => {
                    ok += 1;
                    if timed {
                        latencies.push(start.elapsed());
                    }
                    open = kept;
                }
                Err(e) => failures.record(e),
            }
        }
        (ok, failures, latencies)
    })
    .await
}

pub async fn throughput(addr: SocketAddr, s: &Settings) -> ThroughputResult {
    let total = s.throughput_bytes;
    let start = Instant::now();
    let mut got = 0u64;
    let outcome = bounded(s.throughput_time_limit, async {
        let stream = connect(addr).await?;
        let (mut reader, mut writer) = stream.into_split();
        let write = async {
            let chunk = vec![0x5a_u8; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                writer.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            // Half-close: the echo finishes and ends its side too.
            writer.shutdown().await
        };
        let read = async {
            let mut buf = vec![0u8; 64 * 1024];
            while got < total {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            Ok(start.elapsed())
        };
        let ((), elapsed) = tokio::try_join!(write, read)?;
        Ok(elapsed)
    })
    .await;
    let (seconds, error) = match outcome {
        Ok(elapsed) if got == total => (elapsed.as_secs_f64(), None),
        Ok(elapsed) => (
            elapsed.as_secs_f64(),
            Some(format!("stream ended after {got} of {total} bytes")),
        ),
        Err(e) => (start.elapsed().as_secs_f64(), Some(e)),
    };
    ThroughputResult {
        bytes: got,
        seconds,
        mib_per_second: if error.is_none() && seconds > 0.0 {
            got as f64 / MIB as f64 / seconds
        } else {
            0.0
        },
        error,
    }
}
