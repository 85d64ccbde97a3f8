//! The admin server: `/live`, `/ready`, `/listeners`, `/clusters`, `/config_dump`.
//!
//! It runs on its own thread and single-threaded runtime, so a slow scrape never competes with
//! traffic, and reads only lock-free shared views (snapshot and listener status board).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub mod metrics;

use crate::listener::{ListenerState, StatusBoard};
use crate::snapshot::Snapshot;

/// What the admin API shows about the control loop (the control plane writes it; defined here so
/// the admin server depends on nothing of the control path).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ControlStatus {
    pub version: u64,
    pub applied_updates: u64,
    pub rejected_updates: u64,
    /// Why the most recent rejected update was refused (every error, one per line).
    pub last_rejection: Option<String>,
    pub discovered_endpoints: usize,
    /// Settings the config file changed that are read at start-up only (`admin.address`,
    /// `ngrok.api_key`, ...): the values started with stay in force until a restart.
    pub restart_pending: Vec<&'static str>,
    /// Bound-endpoint discovery, when the config has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// Each config source, in config order (shown at the top of `/config_dump`).
    #[serde(skip)]
    pub config_sources: Vec<ConfigSourceStatus>,
}

/// Where one config source stands (Envoy's per-resource ACK/NACK, per source here).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigSourceStatus {
    pub name: String,
    /// `path` or `rest`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The directory, or the URL.
    pub location: String,
    pub state: SourceState,
    /// The version in force from this source (a REST answer's `version_info`; for a `path`
    /// source a digest of its files' names and contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    /// With `NACKED`: the version that was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_version_info: Option<String>,
    /// With `NACKED`: why (every error, one per line, each with its file and line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When an update was last applied or refused (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    /// When an update was last applied (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// Why the last fetch failed (cleared by the next one that succeeds); the resources in
    /// force stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_error: Option<String>,
    /// Resources in force from this source.
    pub resources: SourceCounts,
    /// Their names.
    pub listeners: Vec<String>,
    pub clusters: Vec<String>,
    /// Unix time of `last_success`, for `seconds since` at scrape time.
    #[serde(skip)]
    pub last_success_unix: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SourceCounts {
    pub listeners: usize,
    pub clusters: usize,
}

/// A config source's state, as Envoy's xDS names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SourceState {
    /// Nothing has been read from the source yet.
    Waiting,
    /// The last update was applied.
    Acked,
    /// The last update was refused; the previous one (if any) stays in force.
    Nacked,
}

/// Where bound-endpoint discovery stands.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoveryStatus {
    pub state: DiscoveryState,
    /// What `/ready` waits for (the config's `bound_endpoints.ready_when`).
    pub ready_when: crate::config::ReadyWhen,
    /// Endpoints loaded at start from the set an earlier run saved in `state_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_endpoints: Option<usize>,
    /// When a poll last succeeded (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// Why the last poll failed, or why discovery stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryState {
    /// No poll has succeeded and nothing was cached.
    Waiting,
    /// Serving the set an earlier run saved; no poll has succeeded yet.
    Cached,
    /// The last poll succeeded.
    Current,
    /// Polls fail; the last good set serves.
    Failing,
    /// The API refused the key: no more polls; the last good set serves.
    Stopped,
}

impl DiscoveryStatus {
    /// Why `/ready` must wait for discovery, if it must.
    fn not_ready(&self) -> Option<String> {
        use crate::config::ReadyWhen;
        let have = match self.ready_when {
            ReadyWhen::Bound => true,
            ReadyWhen::Discovered => self.last_success.is_some(),
            ReadyWhen::Cached => self.last_success.is_some() || self.cached_endpoints.is_some(),
        };
        if have {
            return None;
        }
        let waiting = match self.ready_when {
            ReadyWhen::Discovered => "no bound-endpoint poll has succeeded yet",
            _ => "no bound-endpoint poll has succeeded yet and no saved set was loaded",
        };
        Some(match (self.state, &self.last_error) {
            (DiscoveryState::Stopped, Some(e)) => format!("discovery stopped: {e}"),
            (_, Some(e)) => format!("{waiting} (last error: {e})"),
            _ => waiting.to_string(),
        })
    }

    /// A line for a ready instance whose discovery has a problem.
    fn warning(&self) -> Option<String> {
        match (self.state, &self.last_error) {
            (DiscoveryState::Stopped, Some(e)) => Some(format!(
                "discovery stopped: {e}; the endpoints discovered last keep serving"
            )),
            (DiscoveryState::Failing, Some(e)) => Some(format!(
                "discovery failing: {e}; the endpoints discovered last keep serving"
            )),
            _ => None,
        }
    }
}

pub type StatusView = Arc<ArcSwap<ControlStatus>>;

/// What the admin server reads.
#[derive(Clone)]
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub listeners: StatusBoard,
    /// Set once the first snapshot has been applied to the listeners.
    pub applied: Arc<AtomicBool>,
    /// Set when the process starts to stop (SIGINT/SIGTERM): `/ready` says so from then on.
    pub stopping: Arc<AtomicBool>,
    /// Versions, applied and rejected updates.
    pub control: StatusView,
    /// Answer requests for any `Host` (`allow_non_loopback`); otherwise only loopback names and
    /// addresses, so a web page cannot read the admin API through DNS rebinding.
    pub any_host: bool,
}

/// Whether a request's `Host` names this machine's loopback: `localhost`, `*.localhost`, a
/// loopback IP, with or without a port. A request without `Host` (HTTP/1.0) is from a local
/// tool, not a browser, and is accepted.
fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AdminState {
    /// `Ok` when serving, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            // As Envoy's DRAINING: load balancers stop sending before the listeners' close.
            return Err("shutting down: listeners closed, open connections draining".into());
        }
        if !self.applied.load(Ordering::Acquire) {
            return Err("the first configuration has not been applied yet".into());
        }
        let board = self.listeners.load();
        let failed: Vec<String> = board
            .iter()
            .filter(|l| l.state == ListenerState::Failed)
            .map(|l| {
                format!(
                    "listener `{}`: {}",
                    l.name,
                    l.error.as_deref().unwrap_or("not bound")
                )
            })
            .collect();
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        let control = self.control.load();
        // Like Envoy's initial fetch: wait for each source's first answer, applied or not.
        let waiting: Vec<String> = control
            .config_sources
            .iter()
            .filter(|s| s.state == SourceState::Waiting)
            .map(|s| match &s.fetch_error {
                Some(e) => format!("config source `{}` has not answered yet ({e})", s.name),
                None => format!("config source `{}` has not answered yet", s.name),
            })
            .collect();
        if !waiting.is_empty() {
            return Err(waiting.join("; "));
        }
        match control.discovery.as_ref().and_then(|d| d.not_ready()) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// Responses at least this large (`/metrics` with hundreds of endpoints is megabytes, and so
/// can `/config_dump` be) are followed by a trim of the admin thread's allocator.
pub const TRIM_AFTER_BYTES: u64 = 64 * 1024;
/// How long after such a response the trim runs: time for the body to be written and freed.
const TRIM_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// Returns the calling thread's free allocator memory to the system (see [`set_memory_trim`]).
static MEMORY_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
thread_local! {
    /// A trim of this thread's heap is scheduled and has not run yet (one at a time, however
    /// many responses). Per thread: the trim returns the memory of the thread it runs on, and
    /// the task that runs it is spawned on the serving thread's own (current-thread) runtime.
    static TRIM_PENDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets what the admin thread calls after a large response: the binary passes its allocator's
/// collect. A scrape renders, and frees, several times its own size; the allocator keeps what a
/// thread freed for that thread's next allocations, and the admin thread allocates only at the
/// next request, so without a trim each scrape's peak stayed resident (10 scrapes of 1,000
/// endpoints: 15 -> 31 MiB of anonymous memory). Only the first call counts.
pub fn set_memory_trim(trim: fn()) {
    let _ = MEMORY_TRIM.set(trim);
}

/// After a response of `bytes`, schedules a trim on the admin thread's runtime (this task runs
/// there) unless one is already pending on this thread.
fn trim_after(bytes: u64) {
    if bytes < TRIM_AFTER_BYTES || MEMORY_TRIM.get().is_none() {
        return;
    }
    if TRIM_PENDING.replace(true) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        TRIM_PENDING.set(false);
        if let Some(trim) = MEMORY_TRIM.get() {
            trim();
        }
    });
}

/// A running admin server; dropping it does not stop it (it lives as long as the process).
pub struct AdminServer {
    pub address: SocketAddr,
}

/// Binds `address` now (so a port conflict is reported at startup) and serves on its own thread.
pub fn start(address: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
    let std_listener = std::net::TcpListener::bind(address)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("bindgate-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("admin server: {e}");
                        return;
                    }
                };
                serve(listener, state).await;
            });
        })?;
    tracing::info!(address = %bound, "admin server listening");
    Ok(AdminServer { address: bound })
}

/// Admin connections open at once (the admin is for a few local tools and probes, and must not
/// be a way to exhaust file descriptors). A connection over it closes the one that started a
/// request longest ago, or never did, as nginx reuses its idle keep-alive connections: held-open
/// or trickling connections cannot keep a probe out.
pub const MAX_CONNECTIONS: usize = 64;
/// How long an admin client may take to send a request head (or sit idle between requests).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One open admin connection.
struct Open {
    /// When it was accepted or last started a request, in ms since the server started.
    active: Arc<AtomicU64>,
    close: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(listener: TcpListener, state: AdminState) {
    let epoch = tokio::time::Instant::now();
    let now = move || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut open: Vec<Open> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = std::time::Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning on accept.
                tracing::warn!("admin server: accept failed, retrying in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        open.retain(|c| !c.task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            let idlest = (0..open.len()).min_by_key(|&i| open[i].active.load(Ordering::Relaxed));
            if let Some(i) = idlest {
                let c = open.swap_remove(i);
                c.close.cancel();
                let _ = c.task.await; // its socket is closed before the new one is served
                tracing::debug!(
                    "admin server: {MAX_CONNECTIONS} connections open; closed the idlest for a new one"
                );
            }
        }
        let active = Arc::new(AtomicU64::new(now()));
        let close = tokio_util::sync::CancellationToken::new();
        let state = state.clone();
        let (seen, closed) = (active.clone(), close.clone());
        let task = tokio::spawn(async move {
            let svc = service_fn(move |req| {
                seen.store(now(), Ordering::Relaxed);
                let state = state.clone();
                async move {
                    let response = route(&state, &req);
                    trim_after(hyper::body::Body::size_hint(response.body()).lower());
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = closed.cancelled() => {}
            }
        });
        open.push(Open {
            active,
            close,
            task,
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{0}"));
    if !state.any_host && !loopback_host(host) {
        tracing::debug!(
            host = host.unwrap_or(""),
            "admin request for a non-loopback host refused"
        );
        return text(
            StatusCode::FORBIDDEN,
            "bindgate admin: only loopback host names are served (set `admin.allow_non_loopback: true` to serve others)\n",
        );
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match state.readiness() {
            Ok(()) => match state
                .control
                .load()
                .discovery
                .as_ref()
                .and_then(|d| d.warning())
            {
                Some(warning) => text(StatusCode::OK, format!("ready\n{warning}\n")),
                None => text(StatusCode::OK, "ready\n"),
            },
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/listeners" => json(&serde_json::to_value(state.listeners.load()).unwrap_or_default()),
        "/clusters" => {
            let snap = state.snapshot.load();
            json(&serde_json::Value::Array(
                snap.clusters.values().map(|c| c.describe()).collect(),
            ))
        }
        "/config_dump" => {
            let snap = state.snapshot.load();
            // Secrets (the API key) serialize as "<redacted>".
            let control = state.control.load();
            json(&serde_json::json!({
                "version_info": snap.version.to_string(),
                "config_sources": &control.config_sources,
                "config": &*snap.config,
                "chains": snap.chains(),
                "control": &**control,
            }))
        }
        "/endpoints" => {
            let snap = state.snapshot.load();
            let board = state.listeners.load();
            let rows: Vec<serde_json::Value> = snap
                .discovered
                .iter()
                .map(|p| {
                    let status = board.iter().find(|l| l.name == p.listener);
                    serde_json::json!({
                        "endpoint": p.url.to_string(),
                        "address": p.address,
                        "listener": p.listener,
                        "state": status.map(|s| s.state),
                        "error": status.and_then(|s| s.error.clone()),
                    })
                })
                .collect();
            json(&serde_json::Value::Array(rows))
        }
        "/metrics" | "/stats/prometheus" => {
            let mut body = metrics::render_with(&state.snapshot.load());
            metrics::render_sources(&state.control.load().config_sources, &mut body);
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/" => text(
            StatusCode::OK,
            "bindgate admin\n  /live\n  /ready\n  /listeners\n  /clusters\n  /endpoints\n  /config_dump\n  /metrics\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    /// Trims counted by the hook `a_large_response_is_followed_by_one_trim` installs.
    static TRIMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[tokio::test(start_paused = true)]
    async fn a_large_response_is_followed_by_one_trim() {
        use super::{TRIM_AFTER_BYTES, TRIM_DELAY, set_memory_trim, trim_after};
        use std::sync::atomic::Ordering::SeqCst;
        set_memory_trim(|| {
            TRIMS.fetch_add(1, SeqCst);
        });
        let trims = || TRIMS.load(SeqCst);

        trim_after(TRIM_AFTER_BYTES - 1);
        tokio::time::sleep(TRIM_DELAY * 2).await;
        assert_eq!(trims(), 0, "a small response schedules no trim");

        // Two large responses close together: one trim, after the bodies had time to go.
        trim_after(TRIM_AFTER_BYTES);
        trim_after(10 * TRIM_AFTER_BYTES);
        tokio::time::sleep(TRIM_DELAY / 2).await;
        assert_eq!(trims(), 0, "not before the delay");
        tokio::time::sleep(TRIM_DELAY).await;
        assert_eq!(trims(), 1);

        // The next large response gets its own.
        trim_after(TRIM_AFTER_BYTES);
        tokio::time::sleep(TRIM_DELAY * 2).await;
        assert_eq!(trims(), 2);
    }

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            None,
            Some("localhost"),
            Some("localhost:9901"),
            Some("LOCALHOST."),
            Some("app.localhost:1"),
            Some("127.0.0.1:9901"),
            Some("127.9.9.9"),
            Some("[::1]:9901"),
            Some("[::1]"),
        ] {
            assert!(loopback_host(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:9901"),
            Some("localhost.evil.example"),
            Some("10.0.0.1:9901"),
            Some("[2001:db8::1]:9901"),
            Some(""),
            Some("\u{0}"),
        ] {
            assert!(!loopback_host(bad), "{bad:?}");
        }
    }
}
