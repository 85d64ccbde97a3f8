//! The multiplexer: a few persistent mTLS HTTP/2 connections to an ingress (ALPN `h2`), one
//! CONNECT stream per proxied connection (`:authority` = `service.namespace:port`).
//!
//! - `connections` are dialed when the multiplexer starts and redialed when one closes; when every
//!   connection carries `max_streams` streams another is opened (up to `max_connections` in
//!   all), and closed again once idle.
//! - One driver task per HTTP/2 connection polls it, sends a PING every `KEEPALIVE_INTERVAL` and
//!   closes it if no acknowledgement comes within `PING_TIMEOUT`.
//! - A connection that received GOAWAY (new streams are refused with it), broke, or was dialed with
//!   a client identity that is no longer current is drained: no new streams, the open ones finish.
//!   A stream refused that way, before any byte of the proxied connection was sent, is reopened on
//!   another connection.
//! - A 2xx answer to CONNECT is the upgraded stream; anything else is a refusal whose ngrok error
//!   code and message come in the `ngrok-error-code` / `ngrok-error-message` headers.
//! - If the ingress does not select `h2` by ALPN, `fallback: pool` switches to a warm pool (logged
//!   once), `fallback: none` fails every connection with an error saying so.
//!
//! The multiplexer owns its connection list; driver tasks and streams hold only weak references to
//! it, so dropping it closes idle connections and lets busy ones finish.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, Reason, RecvStream, SendStream};
use rustls::sign::CertifiedKey;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use super::binding::UpgradeRequest;
use super::dial::{IngressDialer, IngressTls};
use super::h2_stream::H2Stream;
use super::pool::{PoolSettings, WarmPool};
use super::{UpstreamError, UpstreamStream};
use crate::config::MultiplexFallback;
use crate::wire;

/// Flow-control windows we grant the ingress: per stream, and per connection. A stream whose
/// client stops reading holds at most its window here; the connection's window is far larger
/// than the streams' together (1 GiB, as Go's HTTP/2 client grants), so streams that stall
/// never hold up the others on their connection. (16 MiB did: four stalled clients stopped
/// every stream of the connection.)
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 1024 * 1024 * 1024;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries to open one stream, across connections, when a connection refuses it unprocessed.
const STREAM_ATTEMPTS: u32 = 3;

/// Validated multiplex settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MultiplexSettings {
    pub connections: usize,
    pub max_streams: usize,
    /// Connections open at most, the extra ones opened when all were full included.
    pub max_connections: usize,
    pub fallback: MultiplexFallback,
}

/// Flags of one HTTP/2 connection, shared with its driver task (which must not hold the
/// `SendRequest`, or the connection could never close).
#[derive(Debug)]
struct ConnFlags {
    id: u64,
    active: AtomicUsize,
    /// No new streams (GOAWAY, stale identity, extra connection gone idle, retire).
    draining: AtomicBool,
    /// The connection is gone.
    closed: AtomicBool,
}

/// One HTTP/2 connection as the list sees it.
struct H2Conn {
    send: SendRequest<Bytes>,
    flags: Arc<ConnFlags>,
    identity: Option<Arc<CertifiedKey>>,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.flags.draining.load(Ordering::Acquire) && !self.flags.closed.load(Ordering::Acquire)
    }
}

/// A stream's place on its connection; dropping it frees the place.
pub struct StreamSlot {
    conn: Arc<H2Conn>,
    state: Weak<MuxState>,
}

impl StreamSlot {
    /// The ingress refused this stream after it was handed out (early data).
    pub(crate) fn refused(&self) {
        if let Some(state) = self.state.upgrade() {
            state.refused_stream();
        }
    }
}

/// A CONNECT sent with early data: the answer the stream's first read waits for, and what is
/// needed to report a refusal.
pub struct EarlyAnswer {
    pub(crate) response: ResponseFuture,
    pub(crate) ingress: Arc<str>,
    pub(crate) address: Arc<str>,
    pub(crate) endpoint: Arc<str>,
    pub(crate) deadline: super::early::AnswerDeadline,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let left = self.conn.flags.active.fetch_sub(1, Ordering::AcqRel) - 1;
        if let Some(state) = self.state.upgrade() {
            if left == 0 {
                state.on_idle(&self.conn);
            }
            state.changed();
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    connections_opened: AtomicU64,
    dial_failures: AtomicU64,
    streams_opened: AtomicU64,
    streams_refused: AtomicU64,
    /// Streams reopened on another connection after GOAWAY / a broken connection.
    stream_retries: AtomicU64,
    /// Connections drained after GOAWAY or failure.
    drained: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MultiplexStats {
    /// Usable connections now.
    pub connections: usize,
    /// Streams open now.
    pub active_streams: usize,
    pub connections_opened: u64,
    pub dial_failures: u64,
    pub streams_opened: u64,
    pub streams_refused: u64,
    pub stream_retries: u64,
    pub drained: u64,
    /// The ingress did not select `h2`.
    pub h2_refused: bool,
}

struct MuxState {
    /// For the fallback pool and for opens after retirement.
    plain: IngressDialer,
    /// Same as `plain`, with ALPN `h2`.
    h2: IngressDialer,
    settings: MultiplexSettings,
    conns: ArcSwap<Vec<Arc<H2Conn>>>,
    dialing: AtomicUsize,
    /// Wakes streams waiting for a connection or a free place.
    notify: Notify,
    /// The ingress did not select `h2` (sticky until the ingress is rebuilt).
    no_h2: AtomicBool,
    no_h2_reported: AtomicBool,
    /// Dial failures so far, and the last one: streams waiting when a dial fails get its error.
    failures: AtomicU64,
    last_failure: ArcSwapOption<UpstreamError>,
    retired: AtomicBool,
    next_id: AtomicU64,
    stats: Stats,
    events: watch::Sender<u64>,
}

/// Multiplexed transport for one ingress identity (see the module docs).
pub struct Multiplexer {
    state: Arc<MuxState>,
    pool_settings: PoolSettings,
    fallback: OnceLock<Arc<WarmPool>>,
    started: AtomicBool,
    activated: AtomicBool,
}

impl std::fmt::Debug for Multiplexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexer")
            .field("ingress", &self.state.plain.name)
            .field("settings", &self.state.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

enum Acquired {
    Conn(Arc<H2Conn>),
    NoH2,
    Retired,
    Failed(UpstreamError),
}

enum StreamFailure {
    /// The ingress answered the CONNECT with a non-2xx status.
    Refused(String),
    /// The stream was not processed (GOAWAY, refused, connection broke): try elsewhere.
    Retry(UpstreamError),
}

impl Multiplexer {
    pub fn new(plain: IngressDialer, settings: MultiplexSettings, pool: PoolSettings) -> Self {
        let mut tls = (*plain.tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let h2 = IngressDialer {
            tls: Arc::new(tls),
            ..plain.clone()
        };
        Multiplexer {
            state: Arc::new(MuxState {
                plain,
                h2,
                settings,
                conns: ArcSwap::from_pointee(Vec::new()),
                dialing: AtomicUsize::new(0),
                notify: Notify::new(),
                no_h2: AtomicBool::new(false),
                no_h2_reported: AtomicBool::new(false),
                failures: AtomicU64::new(0),
                last_failure: ArcSwapOption::empty(),
                retired: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                stats: Stats::default(),
                events: watch::Sender::new(0),
            }),
            pool_settings: pool,
            fallback: OnceLock::new(),
            started: AtomicBool::new(false),
            activated: AtomicBool::new(false),
        }
    }

    pub fn dialer(&self) -> &IngressDialer {
        &self.state.plain
    }

    pub(crate) fn activated(&self) -> &AtomicBool {
        &self.activated
    }

    /// Dials the persistent connections (once). Needs a tokio runtime.
    pub fn start(&self) {
        // A load first: `open` calls this for every connection.
        if self.started.load(Ordering::Acquire)
            || self.started.swap(true, Ordering::AcqRel)
            || self.is_retired()
        {
            return;
        }
        for _ in 0..self.state.settings.connections {
            self.state.maybe_dial();
        }
    }

    /// No new streams here: connections close once their streams end; the fallback pool is
    /// retired too. Later opens dial directly.
    pub fn retire(&self) {
        if self.state.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(ingress = %self.state.plain.name, "multiplexer retired");
        for conn in self.state.conns.swap(Arc::new(Vec::new())).iter() {
            conn.flags.draining.store(true, Ordering::Release);
        }
        if let Some(pool) = self.fallback.get() {
            pool.retire();
        }
        self.state.changed();
    }

    pub fn is_retired(&self) -> bool {
        self.state.retired.load(Ordering::Acquire)
    }

    /// The warm pool used because the ingress refused HTTP/2, if that happened.
    pub fn fallback_pool(&self) -> Option<&Arc<WarmPool>> {
        self.fallback.get()
    }

    pub fn stats(&self) -> MultiplexStats {
        let st = &self.state;
        let conns = st.conns.load();
        MultiplexStats {
            connections: conns.iter().filter(|c| c.usable()).count(),
            active_streams: conns
                .iter()
                .map(|c| c.flags.active.load(Ordering::Relaxed))
                .sum(),
            connections_opened: st.stats.connections_opened.load(Ordering::Relaxed),
            dial_failures: st.stats.dial_failures.load(Ordering::Relaxed),
            streams_opened: st.stats.streams_opened.load(Ordering::Relaxed),
            streams_refused: st.stats.streams_refused.load(Ordering::Relaxed),
            stream_retries: st.stats.stream_retries.load(Ordering::Relaxed),
            drained: st.stats.drained.load(Ordering::Relaxed),
            h2_refused: st.no_h2.load(Ordering::Relaxed),
        }
    }

    /// The fallback pool's counters, once the ingress refused HTTP/2 and `fallback: pool` made one.
    pub fn fallback_stats(&self) -> Option<super::pool::PoolStats> {
        self.fallback.get().map(|p| p.stats())
    }

    /// Notified after every change of [`Multiplexer::stats`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.state.events.subscribe()
    }

    pub fn describe(&self) -> serde_json::Value {
        let s = &self.state.settings;
        let fallback = match s.fallback {
            MultiplexFallback::Pool => "pool",
            MultiplexFallback::Fail => "none",
        };
        serde_json::json!({
            "kind": "multiplex",
            "connections": s.connections,
            "max_streams": s.max_streams,
            "fallback": fallback,
            "retired": self.is_retired(),
            "stats": self.stats(),
            "fallback_pool": self.fallback.get().map(|p| p.describe()),
        })
    }

    /// A CONNECT stream to `endpoint` (or, when the ingress refused HTTP/2, what `fallback` says).
    pub async fn open(&self, request: &UpgradeRequest) -> Result<UpstreamStream, UpstreamError> {
        self.start();
        let st = &self.state;
        let addr = &*st.plain.address;
        let mut last = None;
        for _ in 0..STREAM_ATTEMPTS {
            let conn = match st.acquire().await {
                Acquired::Conn(c) => c,
                Acquired::NoH2 => return self.open_fallback(request).await,
                Acquired::Retired => return st.plain.dial(request).await,
                Acquired::Failed(e) => return Err(e),
            };
            let slot = StreamSlot {
                conn,
                state: Arc::downgrade(st),
            };
            let conn = slot.conn.flags.id;
            let opened = if st.h2.early_data {
                send_connect(st, &slot.conn, request)
                    .await
                    .map(|(response, send)| {
                        let answer = EarlyAnswer {
                            response,
                            ingress: st.plain.name.clone(),
                            address: st.plain.address.clone(),
                            endpoint: request.name.clone(),
                            deadline: super::early::AnswerDeadline::new(st.plain.connect_timeout),
                        };
                        H2Stream::awaiting(send, answer, slot)
                    })
            } else {
                open_stream(st, &slot.conn, request)
                    .await
                    .map(|(send, recv)| H2Stream::new(send, recv, Some(slot)))
            };
            match opened {
                Ok(stream) => {
                    st.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                    st.changed();
                    tracing::debug!(ingress = %st.plain.name, endpoint = %request, conn, early_data = st.h2.early_data, "CONNECT stream open");
                    return Ok(UpstreamStream::H2(Box::new(stream)));
                }
                Err(StreamFailure::Refused(failure)) => {
                    return Err(self.refused(request, failure));
                }
                Err(StreamFailure::Retry(e)) => {
                    st.stats.stream_retries.fetch_add(1, Ordering::Relaxed);
                    st.changed();
                    tracing::debug!(ingress = %st.plain.name, endpoint = %request, conn, "CONNECT not processed, trying another connection: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Upgrade {
            addr: addr.to_owned(),
            reason: "no HTTP/2 connection accepted the stream".to_owned(),
        }))
    }

    /// Counts a refused stream and makes its error.
    fn refused(&self, request: &UpgradeRequest, failure: String) -> UpstreamError {
        let st = &self.state;
        st.refused_stream();
        UpstreamError::Refused {
            addr: st.plain.address.to_string(),
            endpoint: request.name.to_string(),
            failure,
        }
    }

    async fn open_fallback(
        &self,
        request: &UpgradeRequest,
    ) -> Result<UpstreamStream, UpstreamError> {
        let st = &self.state;
        match st.settings.fallback {
            MultiplexFallback::Pool => {
                let pool = self.fallback.get_or_init(|| {
                    tracing::info!(ingress = %st.plain.name, "the ingress did not negotiate HTTP/2 (ALPN h2); multiplex falls back to the warm pool");
                    Arc::new(WarmPool::new(st.plain.clone(), self.pool_settings))
                });
                pool.open(request).await
            }
            MultiplexFallback::Fail => Err(no_h2_error(&st.plain.address)),
        }
    }
}

fn no_h2_error(addr: &str) -> UpstreamError {
    UpstreamError::Upgrade {
        addr: addr.to_owned(),
        reason: "the ingress does not speak HTTP/2 (ALPN `h2` not selected) and `multiplex.fallback` is `none`; set `fallback: pool` or `transport: pool` for this ingress".to_owned(),
    }
}

impl MuxState {
    fn refused_stream(&self) {
        self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
        self.changed();
    }

    fn changed(&self) {
        self.notify.notify_waiters();
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A connection with a free place (reserved for the caller), waiting for dials as needed.
    async fn acquire(self: &Arc<Self>) -> Acquired {
        let failures_before = self.failures.load(Ordering::Acquire);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.retired.load(Ordering::Acquire) {
                return Acquired::Retired;
            }
            if let Some(conn) = self.try_reserve() {
                return Acquired::Conn(conn);
            }
            if self.no_h2.load(Ordering::Acquire) {
                return Acquired::NoH2;
            }
            if self.failures.load(Ordering::Acquire) != failures_before {
                if let Some(e) = self.last_failure.load_full() {
                    return Acquired::Failed(e.duplicate());
                }
            }
            self.maybe_dial();
            notified.await;
        }
    }

    /// Reserves a place on the least loaded usable connection of the current identity.
    fn try_reserve(&self) -> Option<Arc<H2Conn>> {
        let current = self.h2.current_identity();
        let max = self.settings.max_streams;
        let conns = self.conns.load();
        let mut candidates: Vec<&Arc<H2Conn>> = Vec::with_capacity(conns.len());
        for conn in conns.iter().filter(|c| c.usable()) {
            if !same_identity(&conn.identity, &current) {
                tracing::debug!(ingress = %self.plain.name, conn = conn.flags.id, "draining HTTP/2 connection: the client identity changed");
                self.drain(conn);
                continue;
            }
            candidates.push(conn);
        }
        candidates.sort_by_key(|c| c.flags.active.load(Ordering::Relaxed));
        candidates.into_iter().find_map(|conn| {
            conn.flags
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                    (a < max).then_some(a + 1)
                })
                .ok()
                .map(|_| conn.clone())
        })
    }

    /// Starts a dial when fewer than `connections` are usable or dialing, or when all usable ones
    /// are full and none is dialing.
    fn maybe_dial(self: &Arc<Self>) {
        if self.retired.load(Ordering::Acquire) || self.no_h2.load(Ordering::Acquire) {
            return;
        }
        let conns = self.conns.load();
        let usable: Vec<&Arc<H2Conn>> = conns.iter().filter(|c| c.usable()).collect();
        let full = usable
            .iter()
            .all(|c| c.flags.active.load(Ordering::Relaxed) >= self.settings.max_streams);
        let mut dialing = self.dialing.load(Ordering::Acquire);
        loop {
            let open = usable.len() + dialing;
            let wanted = open < self.settings.connections
                || (full && dialing == 0 && open < self.settings.max_connections);
            if !wanted {
                return;
            }
            match self.dialing.compare_exchange(
                dialing,
                dialing + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => dialing = now,
            }
        }
        tokio::spawn(self.clone().establish());
    }

    /// Dials one HTTP/2 connection and lists it (or records why not).
    async fn establish(self: Arc<Self>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.connect(id).await {
            Ok(conn) => {
                self.stats
                    .connections_opened
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ingress = %self.plain.name, conn = id, "HTTP/2 connection established");
                if self.retired.load(Ordering::Acquire) {
                    conn.flags.draining.store(true, Ordering::Release);
                } else {
                    self.conns.rcu(|list| {
                        let mut next = Vec::clone(list);
                        next.push(conn.clone());
                        next
                    });
                }
            }
            Err(None) => {
                // Logged before streams learn of it, so the reason precedes their failures.
                if !self.no_h2_reported.swap(true, Ordering::AcqRel)
                    && self.settings.fallback == MultiplexFallback::Fail
                {
                    tracing::error!(ingress = %self.plain.name, "{}", no_h2_error(&self.plain.address));
                }
                self.no_h2.store(true, Ordering::Release);
            }
            Err(Some(e)) => {
                self.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ingress = %self.plain.name, "HTTP/2 connection failed: {e}");
                self.last_failure.store(Some(Arc::new(e)));
                self.failures.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.dialing.fetch_sub(1, Ordering::AcqRel);
        self.changed();
    }

    /// TCP + TLS (ALPN h2) + HTTP/2 handshake, and the connection's driver task. `Err(None)`: the
    /// ingress did not select `h2`.
    async fn connect(self: &Arc<Self>, id: u64) -> Result<Arc<H2Conn>, Option<UpstreamError>> {
        let identity = self.h2.current_identity();
        let tls = self.h2.handshake().await.map_err(Some)?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(None);
        }
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<IngressTls, Bytes>(tls);
        let (send, connection) =
            match tokio::time::timeout(self.h2.connect_timeout, handshake).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(Some(h2_error(&self.h2.address, &e))),
                Err(_) => {
                    return Err(Some(UpstreamError::Timeout {
                        addr: self.h2.address.to_string(),
                        after: self.h2.connect_timeout,
                    }));
                }
            };
        let flags = Arc::new(ConnFlags {
            id,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(drive(
            connection,
            flags.clone(),
            Arc::downgrade(self),
            self.plain.name.clone(),
        ));
        Ok(Arc::new(H2Conn {
            send,
            flags,
            identity,
        }))
    }

    fn drain(&self, conn: &H2Conn) {
        if !conn.flags.draining.swap(true, Ordering::AcqRel) {
            self.stats.drained.fetch_add(1, Ordering::Relaxed);
        }
        if conn.flags.active.load(Ordering::Acquire) == 0 {
            self.unlist(conn.flags.id);
        }
    }

    /// Removes a connection from the list; it closes once no stream holds it.
    fn unlist(&self, id: u64) {
        self.conns.rcu(|list| {
            list.iter()
                .filter(|c| c.flags.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// A connection's last stream ended: a draining one goes away, and so does one beyond the
    /// `connections` kept (opened because all were full).
    fn on_idle(&self, conn: &H2Conn) {
        let usable = self.conns.load().iter().filter(|c| c.usable()).count();
        if !conn.usable() || usable > self.settings.connections {
            conn.flags.draining.store(true, Ordering::Release);
            self.unlist(conn.flags.id);
        }
    }
}

fn same_identity(a: &Option<Arc<CertifiedKey>>, b: &Option<Arc<CertifiedKey>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn h2_error(addr: &str, e: &h2::Error) -> UpstreamError {
    if let Some(io) = e.get_io() {
        if super::rustls_error(io).is_some() {
            return UpstreamError::tls(addr, io);
        }
    }
    UpstreamError::Upgrade {
        addr: addr.to_owned(),
        reason: format!("HTTP/2: {e}"),
    }
}

/// CONNECT `host:port` on `conn`; the response decides.
/// Sends the CONNECT request on `conn`; the answer is still to come.
async fn send_connect(
    state: &MuxState,
    conn: &H2Conn,
    request: &UpgradeRequest,
) -> Result<(ResponseFuture, SendStream<Bytes>), StreamFailure> {
    let req = request.connect();
    let mut send = conn
        .send
        .clone()
        .ready()
        .await
        .map_err(|e| retry_elsewhere(state, conn, e))?;
    send.send_request(req, false)
        .map_err(|e| retry_elsewhere(state, conn, e))
}

/// Not processed by the ingress (GOAWAY, REFUSED_STREAM) or the connection broke: no byte of the
/// proxied connection was sent, so another connection may carry it. A connection-level cause
/// drains the connection; a reset of this one stream does not.
fn retry_elsewhere(state: &MuxState, conn: &H2Conn, e: h2::Error) -> StreamFailure {
    if e.is_io() {
        conn.flags.closed.store(true, Ordering::Release);
    }
    if e.is_io() || e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM) {
        state.drain(conn);
    }
    StreamFailure::Retry(h2_error(&state.plain.address, &e))
}

/// Opens a CONNECT stream and waits for the ingress's answer.
async fn open_stream(
    state: &MuxState,
    conn: &H2Conn,
    request: &UpgradeRequest,
) -> Result<(SendStream<Bytes>, RecvStream), StreamFailure> {
    let (response, stream) = send_connect(state, conn, request).await?;
    let response = response
        .await
        .map_err(|e| retry_elsewhere(state, conn, e))?;
    match connect_answer(response) {
        Ok(body) => Ok((stream, body)),
        Err(failure) => Err(StreamFailure::Refused(failure)),
    }
}

/// A 2xx answer's body (the stream's receive side), or the refusal as `[code] message`.
pub(crate) fn connect_answer(response: http::Response<RecvStream>) -> Result<RecvStream, String> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.into_body());
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let (code, message) = (
        header(wire::ERROR_CODE_HEADER),
        header(wire::ERROR_MESSAGE_HEADER),
    );
    Err(if code.is_empty() && message.is_empty() {
        format!("HTTP/2 CONNECT answered {status}")
    } else {
        format!("[{code}] {message}")
    })
}

/// One HTTP/2 connection's driver: polls it (which moves every stream's bytes), keeps it alive
/// with PINGs, and unlists it when it ends.
async fn drive(
    connection: h2::client::Connection<IngressTls, Bytes>,
    flags: Arc<ConnFlags>,
    state: Weak<MuxState>,
    name: Arc<str>,
) {
    let mut connection = connection;
    let mut ping = connection.ping_pong();
    let streams = flags.clone();
    let connection = Coalesced::new(connection, move || {
        streams.active.load(Ordering::Relaxed) > 1
    });
    tokio::pin!(connection);
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pong_due: Option<Instant> = None;
    let why = loop {
        tokio::select! {
            r = &mut connection => break match r {
                Ok(()) => "closed".to_owned(),
                Err(e) => e.to_string(),
            },
            _ = keepalive.tick(), if pong_due.is_none() && ping.is_some() => {
                if let Some(p) = ping.as_mut() {
                    if p.send_ping(Ping::opaque()).is_ok() {
                        pong_due = Some(Instant::now() + PING_TIMEOUT);
                    }
                }
            }
            pong = poll_fn(|cx| match ping.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => Poll::Pending,
            }), if pong_due.is_some() => {
                pong_due = None;
                if let Err(e) = pong {
                    break format!("keepalive PING failed: {e}");
                }
            }
            _ = sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                break format!("no PING acknowledgement within {PING_TIMEOUT:?}");
            }
        }
    };
    flags.closed.store(true, Ordering::Release);
    flags.draining.store(true, Ordering::Release);
    tracing::debug!(ingress = %name, conn = flags.id, "HTTP/2 connection ended: {why}");
    if let Some(state) = state.upgrade() {
        state.unlist(flags.id);
        state.changed();
        // Keep `connections` persistent connections.
        state.maybe_dial();
    }
}

/// Polls a busy connection's driver only after every other task woken in the same round has run.
///
/// Each stream's task queues its frames and wakes the driver, which writes them out. Polled at
/// once (tokio runs a task woken by the running one next), the driver wrote one TLS record and
/// made one `writev` per stream event. Now, each time it is woken while `busy` (more than one
/// stream open), it first yields to the scheduler: tokio's `yield_now` defers its wake-up until
/// the worker thread has run its other ready tasks and polled the I/O driver once more (at the
/// latest after 61 polls, tokio's `event_interval`), so every stream's frames from that round go
/// out in one record and one system call. Under 16 closed-loop clients on `multiplex` this took
/// the gateway from 2.38 to 0.93 `writev` per proxied connection, for 0.5 more `epoll_wait`. With
/// one stream there is nothing to batch, and the yield would only add a scheduler round to its
/// latency.
struct Coalesced<F, B> {
    inner: F,
    busy: B,
    /// The yield of the current wake-up is done: poll `inner` now.
    yielded: bool,
}

impl<F, B: Fn() -> bool> Coalesced<F, B> {
    fn new(inner: F, busy: B) -> Self {
        Coalesced {
            inner,
            busy,
            yielded: false,
        }
    }
}

impl<F: std::future::Future + Unpin, B: Fn() -> bool + Unpin> std::future::Future
    for Coalesced<F, B>
{
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<F::Output> {
        if !self.yielded && (self.busy)() {
            self.yielded = true;
            if std::pin::pin!(tokio::task::yield_now())
                .poll(cx)
                .is_pending()
            {
                return Poll::Pending;
            }
        }
        self.yielded = false;
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
#[path = "multiplex_tests.rs"]
mod tests;
