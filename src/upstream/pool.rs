//! The warm pool: connections to one ingress already TCP- and TLS-handshaked, waiting for their
//! `ConnRequest`, so a proxied connection costs one upgrade round trip instead of TCP + TLS +
//! upgrade. A pooled connection carries exactly one proxied connection (the binding protocol has
//! no reuse); the pool hides the handshake, not the connection count.
//!
//! - Each idle connection is parked in its own small task that watches it: a connection the
//!   ingress closed (EOF, alert, or any unexpected byte) or one older than `max_age` is discarded
//!   the moment that happens, and checked once more when it is taken, so it is never handed out.
//! - Checkout is LIFO: the most recently handshaked connection is the least likely to have hit
//!   the ingress's idle timeout, and the older ones age out at the bottom when demand is low.
//! - A checkout that finds nothing idle dials directly instead of waiting (a burst never queues
//!   behind the refill), and raises the pool's target (up to `max_idle`); the target decays back
//!   to `min_idle` when bursts stop.
//! - One driver task per pool refills in the background with bounded concurrency (`max_idle`,
//!   4 to 32 handshakes in flight), backing off exponentially with jitter while the ingress
//!   fails; it stops when the pool is retired or dropped. Refills resume TLS sessions through
//!   the shared `ClientConfig`'s session cache. In the proxy the handshakes run on a
//!   low-priority thread while the pool still holds an idle connection (`super::background`).
//!   A checkout wakes the driver once its upgrade request is written, so that neither the
//!   driver nor the wake-up of another worker thread it causes comes before it.
//! - A pooled connection is handed out only for the client identity it was dialed with.
//! - If a pooled connection breaks during the upgrade (nothing reached the endpoint yet), the
//!   open is retried once on a fresh direct dial.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{Mutex, Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::background;
use super::binding::UpgradeRequest;
use super::dial::{self, IngressDialer, IngressTls, UpgradeError};
use super::{UpstreamError, UpstreamStream};

/// Refill handshakes in flight at once, per pool: `max_idle`, within these bounds. A refill
/// waits on round trips (TCP, TLS) far more than on CPU, so across the internet the refill rate
/// is about this many per two round trips; a pool that runs dry under load dials directly and
/// raises its target, and this lets the refills catch up. (With `--rtt 20` and 16 closed-loop
/// workers, early data: 468 short connections/s at half of `max_idle`, 622/s at `max_idle`.)
const MIN_CONCURRENT_DIALS: usize = 4;
const MAX_CONCURRENT_DIALS: usize = 32;
/// Refill backoff while the ingress fails: from this, doubling, with jitter...
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An idle connection the ingress closes sooner than this after the handshake counts as a failed
/// refill (an ingress that accepts and drops would otherwise be redialed in a tight loop).
const SHORT_LIVED: Duration = Duration::from_secs(1);
/// How often the target decays toward `min_idle` when no checkout found the pool empty.
const DECAY_INTERVAL: Duration = Duration::from_secs(10);

/// Validated pool settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub min_idle: usize,
    pub max_idle: usize,
    pub max_age: Duration,
}

/// Counters, for `/clusters` and tests.
#[derive(Debug, Default)]
struct Stats {
    /// Checkouts served by a pooled connection.
    hits: AtomicU64,
    /// Checkouts that found nothing idle and dialed directly.
    misses: AtomicU64,
    /// Pooled connections that broke at the upgrade, replaced by a fresh dial.
    redials: AtomicU64,
    /// Refill handshakes that succeeded / failed.
    dialed: AtomicU64,
    dial_failures: AtomicU64,
    /// Successful refills that ran on the low-priority refill thread (the others ran on the
    /// serving threads, the pool being empty, or had no such thread).
    dialed_in_background: AtomicU64,
    /// Idle connections discarded: closed by the ingress (or sent something unexpected), too
    /// old, or dialed with a client identity that is no longer current.
    closed_idle: AtomicU64,
    aged: AtomicU64,
    stale_identity: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub idle: usize,
    pub target: usize,
    pub hits: u64,
    pub misses: u64,
    pub redials: u64,
    pub dialed: u64,
    pub dial_failures: u64,
    pub dialed_in_background: u64,
    pub closed_idle: u64,
    pub aged: u64,
    pub stale_identity: u64,
}

/// An idle connection and what it was dialed as.
struct Parked {
    tls: IngressTls,
    identity: Option<Arc<CertifiedKey>>,
}

/// The list's view of a parked connection: a way to ask its watcher for it.
struct IdleHandle {
    take: oneshot::Sender<oneshot::Sender<Parked>>,
}

struct Shared {
    dialer: IngressDialer,
    settings: PoolSettings,
    /// LIFO: push and pop at the end. Held only to push or pop, never across an await.
    idle: Mutex<Vec<IdleHandle>>,
    /// Connections parked and watched right now.
    parked: AtomicUsize,
    /// How many idle connections the driver keeps: `min_idle`, raised by misses.
    target: AtomicUsize,
    misses_since_decay: AtomicUsize,
    /// Idle connections that died young since the driver last looked (see `SHORT_LIVED`).
    short_lived: AtomicUsize,
    /// Retired or dropped: watchers and the driver stop; checkouts dial directly.
    stop: CancellationToken,
    /// Pokes the driver to top up.
    wake: Notify,
    stats: Stats,
    /// Bumped on every change tests and the admin may want to observe.
    events: watch::Sender<u64>,
}

/// A warm pool for one ingress identity (see the module docs).
pub struct WarmPool {
    shared: Arc<Shared>,
    started: AtomicBool,
    activated: AtomicBool,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("ingress", &self.shared.dialer.name)
            .field("settings", &self.shared.settings)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl WarmPool {
    /// A pool that does nothing until [`WarmPool::start`] (or the first `open`).
    pub fn new(dialer: IngressDialer, settings: PoolSettings) -> WarmPool {
        WarmPool {
            shared: Arc::new(Shared {
                dialer,
                settings,
                idle: Mutex::new(Vec::new()),
                parked: AtomicUsize::new(0),
                target: AtomicUsize::new(settings.min_idle),
                misses_since_decay: AtomicUsize::new(0),
                short_lived: AtomicUsize::new(0),
                stop: CancellationToken::new(),
                wake: Notify::new(),
                stats: Stats::default(),
                events: watch::Sender::new(0),
            }),
            started: AtomicBool::new(false),
            activated: AtomicBool::new(false),
        }
    }

    pub fn dialer(&self) -> &IngressDialer {
        &self.shared.dialer
    }

    pub(crate) fn activated(&self) -> &AtomicBool {
        &self.activated
    }

    /// Starts the refill driver (once). Needs a tokio runtime: the one that serves the pooled
    /// connections. The refills run on [`background`]'s thread when it is enabled, else here.
    pub fn start(&self) {
        // A load first: `open` calls this for every connection.
        if self.started.load(Ordering::Acquire) {
            return;
        }
        self.start_with(background::handle());
    }

    /// [`WarmPool::start`] with the refills on `refills`, or on the current runtime.
    fn start_with(&self, refills: Option<tokio::runtime::Handle>) {
        if self.started.swap(true, Ordering::AcqRel) || self.is_retired() {
            return;
        }
        tokio::spawn(drive(self.shared.clone(), refills));
    }

    /// Closes the idle connections and stops refilling; later opens dial directly. Used when
    /// another transport (a new identity or new settings) takes over this ingress.
    pub fn retire(&self) {
        if !self.shared.stop.is_cancelled() {
            tracing::debug!(ingress = %self.shared.dialer.name, "warm pool retired");
            self.shared.stop.cancel();
            self.shared.changed();
        }
    }

    pub fn is_retired(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    pub fn stats(&self) -> PoolStats {
        let s = &self.shared.stats;
        PoolStats {
            idle: self.shared.parked.load(Ordering::Relaxed),
            target: self.shared.target.load(Ordering::Relaxed),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            redials: s.redials.load(Ordering::Relaxed),
            dialed: s.dialed.load(Ordering::Relaxed),
            dial_failures: s.dial_failures.load(Ordering::Relaxed),
            dialed_in_background: s.dialed_in_background.load(Ordering::Relaxed),
            closed_idle: s.closed_idle.load(Ordering::Relaxed),
            aged: s.aged.load(Ordering::Relaxed),
            stale_identity: s.stale_identity.load(Ordering::Relaxed),
        }
    }

    /// Notified after every change of [`WarmPool::stats`] (and on retire).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.events.subscribe()
    }

    /// Waits until `pred` holds for the stats (for tests and readiness).
    pub async fn wait_until(&self, mut pred: impl FnMut(&PoolStats) -> bool) -> PoolStats {
        let mut events = self.subscribe();
        loop {
            events.borrow_and_update();
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            if events.changed().await.is_err() {
                return self.stats();
            }
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        let s = &self.shared.settings;
        serde_json::json!({
            "kind": "pool",
            "min_idle": s.min_idle,
            "max_idle": s.max_idle,
            "max_age": format!("{:?}", s.max_age),
            "retired": self.is_retired(),
            "stats": self.stats(),
        })
    }

    /// An upgraded stream: a pooled connection if one is idle (falling back to one fresh dial if
    /// it breaks during the upgrade), else a direct dial.
    pub async fn open(&self, request: &UpgradeRequest) -> Result<UpstreamStream, UpstreamError> {
        self.start();
        let shared = &self.shared;
        if !self.is_retired() {
            let started = tokio::time::Instant::now();
            // Wakes the refill driver when dropped: on a hit once the upgrade request is out
            // (waking it earlier would put it, and through tokio's work stealing the wake-up of
            // another worker thread, a system call, ahead of this connection's upgrade); on a
            // miss once the target is raised; and whenever this open is cancelled before that.
            let refill = WakeOnDrop(&shared.wake);
            let checked_out = shared.checkout().await;
            crate::telemetry::pool_checkout_duration(&shared.dialer.name, started.elapsed());
            match checked_out {
                Some(parked) => {
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    shared.changed();
                    let sent = move || drop(refill);
                    match dial::upgrade(&shared.dialer, parked.tls, request, sent).await {
                        Ok(stream) => return Ok(stream),
                        Err(UpgradeError::Answered(e)) => return Err(e),
                        Err(UpgradeError::Broken(e)) => {
                            shared.stats.redials.fetch_add(1, Ordering::Relaxed);
                            shared.changed();
                            tracing::debug!(ingress = %shared.dialer.name, endpoint = %request, "pooled connection broke during the upgrade, dialing a fresh one: {e}");
                        }
                    }
                }
                None => {
                    shared.stats.misses.fetch_add(1, Ordering::Relaxed);
                    shared.misses_since_decay.fetch_add(1, Ordering::Relaxed);
                    let max = shared.settings.max_idle;
                    let _ = shared
                        .target
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                            (t < max).then_some(t + 1)
                        });
                    shared.changed();
                    drop(refill);
                }
            }
        }
        shared.dialer.dial(request).await
    }
}

impl Shared {
    fn changed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The most recent idle connection that is still open, young enough and of the current
    /// identity; `None` if there is none. Waking the driver is left to the caller.
    async fn checkout(&self) -> Option<Parked> {
        let current = self.dialer.current_identity();
        loop {
            let Some(handle) = self.idle.lock().await.pop() else {
                break None;
            };
            let (reply, answer) = oneshot::channel();
            if handle.take.send(reply).is_err() {
                continue; // its watcher already discarded it
            }
            // The watcher checks the connection once more before answering.
            let Ok(parked) = answer.await else {
                continue;
            };
            if !same_identity(&parked.identity, &current) {
                self.stats.stale_identity.fetch_add(1, Ordering::Relaxed);
                self.changed();
                tracing::debug!(ingress = %self.dialer.name, "idle connection discarded: the client identity changed since it was dialed");
                continue;
            }
            break Some(parked);
        }
    }

    /// Hands a fresh connection to a watcher task and lists it as idle; `rebind` if it was
    /// dialed on another runtime.
    async fn park(self: &Arc<Self>, parked: Parked, rebind: bool) {
        if self.stop.is_cancelled() {
            return;
        }
        let (take, asks) = oneshot::channel();
        self.parked.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(watch_idle(self.clone(), parked, asks, rebind));
        self.idle.lock().await.push(IdleHandle { take });
        self.changed();
    }

    /// Drops list entries whose watcher is gone.
    async fn prune(&self) {
        self.idle.lock().await.retain(|h| !h.take.is_closed());
    }
}

/// Wakes a pool's refill driver when dropped.
struct WakeOnDrop<'a>(&'a Notify);

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn same_identity(a: &Option<Arc<CertifiedKey>>, b: &Option<Arc<CertifiedKey>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Why a watcher let its connection go.
enum WatchEnd {
    Stopped,
    Closed(&'static str),
    Aged,
    Taken(oneshot::Sender<Parked>),
}

/// Owns one idle connection until it is taken, closes, ages out, or the pool stops. With
/// `rebind`, it first moves the connection from the refill thread's reactor to this task's
/// runtime's, the one that serves it once taken.
async fn watch_idle(
    shared: Arc<Shared>,
    mut parked: Parked,
    mut asks: oneshot::Receiver<oneshot::Sender<Parked>>,
    rebind: bool,
) {
    let born = Instant::now();
    let deadline = born + shared.settings.max_age;
    let rebound = if rebind {
        parked.tls.get_mut().0.rebind()
    } else {
        Ok(())
    };
    let end = if let Err(e) = rebound {
        tracing::debug!(ingress = %shared.dialer.name, "cannot move a refilled connection to the serving runtime: {e}");
        WatchEnd::Closed("it could not be moved to the serving runtime")
    } else {
        let tls = &mut parked.tls;
        tokio::select! {
            // Order matters: when a checkout asks, the connection is polled once more first.
            biased;
            _ = shared.stop.cancelled() => WatchEnd::Stopped,
            why = poll_fn(|cx| poll_peer_closed(tls, cx)) => WatchEnd::Closed(why),
            _ = sleep_until(deadline) => WatchEnd::Aged,
            asked = &mut asks => match asked {
                Ok(_) if Instant::now() >= deadline => WatchEnd::Aged,
                Ok(reply) => WatchEnd::Taken(reply),
                Err(_) => WatchEnd::Stopped,
            },
        }
    };
    shared.parked.fetch_sub(1, Ordering::Relaxed);
    let name = &shared.dialer.name;
    match end {
        WatchEnd::Taken(reply) => {
            // The checkout wakes the driver itself once it holds the connection. Waking it from
            // here, on the worker that the checkout's task has just been woken on, would queue
            // the driver ahead of the checkout and wake another worker thread: a system call on
            // the connection's path before its upgrade is written.
            if reply.send(parked).is_ok() {
                return;
            }
            // The checkout gave up meanwhile: the connection is closed, and refilled.
        }
        WatchEnd::Stopped => {}
        WatchEnd::Closed(why) => {
            shared.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
            if born.elapsed() < SHORT_LIVED {
                shared.short_lived.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(ingress = %name, "idle pooled connection discarded: {why}");
        }
        WatchEnd::Aged => {
            shared.stats.aged.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(ingress = %name, "idle pooled connection discarded: older than max_age {:?}", shared.settings.max_age);
        }
    }
    shared.changed();
    shared.wake.notify_one();
}

/// Ready when the ingress closed an idle connection or sent anything on it (the protocol has it
/// silent until our `ConnRequest`). TLS 1.3 session tickets are consumed by the read without
/// surfacing, which also stores them for resumption.
fn poll_peer_closed(tls: &mut IngressTls, cx: &mut Context<'_>) -> Poll<&'static str> {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    match Pin::new(tls).poll_read(cx, &mut buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) if buf.filled().is_empty() => {
            Poll::Ready("the ingress closed it while idle")
        }
        Poll::Ready(Ok(())) => Poll::Ready("the ingress sent data before any request"),
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Poll::Ready("the ingress closed it while idle")
        }
        Poll::Ready(Err(_)) => Poll::Ready("the connection failed while idle"),
    }
}

/// Removes `id` from `ids`; whether it was there.
fn forget(ids: &mut Vec<tokio::task::Id>, id: tokio::task::Id) -> bool {
    let before = ids.len();
    ids.retain(|i| *i != id);
    ids.len() != before
}

/// Equal jitter: half of the exponential step fixed, half random.
fn backoff(failures: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(
            1u32.checked_shl(failures.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(BACKOFF_MAX);
    let half = step / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// How many refill handshakes may be in flight at once (see `MAX_CONCURRENT_DIALS`).
fn concurrent_dials(settings: &PoolSettings) -> usize {
    settings
        .max_idle
        .clamp(MIN_CONCURRENT_DIALS, MAX_CONCURRENT_DIALS)
}

/// A refill handshake's result, with the identity it was dialed as.
type Refill = (Result<IngressTls, UpstreamError>, Option<Arc<CertifiedKey>>);

/// The refill loop: keeps `target` connections idle, at most `concurrent_dials` handshakes
/// at once, backing off while the ingress fails. Ends when the pool stops.
///
/// With `background` (the low-priority refill thread), handshakes run there while the pool
/// still holds an idle connection; when it holds none, one handshake at a time runs here, at
/// the serving threads' priority, so that a saturated host cannot starve the pool (the next
/// checkout would otherwise pay a direct dial). The loop itself and the watchers stay here.
async fn drive(shared: Arc<Shared>, background: Option<tokio::runtime::Handle>) {
    let name = shared.dialer.name.clone();
    let mut dials: JoinSet<Refill> = JoinSet::new();
    // Handshakes in flight on the serving runtime while `background` is set.
    let mut urgent: Vec<tokio::task::Id> = Vec::new();
    let mut failures: u32 = 0;
    // Whether a refill failure was logged at warn, so that recovery is logged too.
    let mut warned = false;
    let mut resume_at: Option<Instant> = None;
    let mut decay = tokio::time::interval_at(Instant::now() + DECAY_INTERVAL, DECAY_INTERVAL);
    decay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        shared.prune().await;
        let died_young = shared.short_lived.swap(0, Ordering::Relaxed);
        if died_young > 0 {
            failures = failures.saturating_add(1);
            resume_at = Some(Instant::now() + backoff(failures));
            tracing::debug!(ingress = %name, "the ingress closed {died_young} idle connection(s) right after the handshake; refilling after a backoff");
        }
        if resume_at.is_some_and(|t| t <= Instant::now()) {
            resume_at = None;
        }
        if resume_at.is_none() {
            let have = shared.parked.load(Ordering::Relaxed) + dials.len();
            let want = shared.target.load(Ordering::Relaxed).saturating_sub(have);
            let room = concurrent_dials(&shared.settings).saturating_sub(dials.len());
            for _ in 0..want.min(room) {
                let dialer = shared.dialer.clone();
                let dial = async move {
                    let identity = dialer.current_identity();
                    (dialer.handshake().await, identity)
                };
                match &background {
                    Some(b) if !urgent.is_empty() || shared.parked.load(Ordering::Relaxed) > 0 => {
                        dials.spawn_on(dial, b);
                    }
                    Some(_) => urgent.push(dials.spawn(dial).id()),
                    None => {
                        dials.spawn(dial);
                    }
                }
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = shared.wake.notified() => {}
            Some(joined) = dials.join_next_with_id(), if !dials.is_empty() => match joined {
                Ok((id, (Ok(tls), identity))) => {
                    let was_urgent = forget(&mut urgent, id);
                    shared.stats.dialed.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    if warned {
                        tracing::info!(ingress = %name, "warm pool refills succeed again");
                        warned = false;
                    }
                    let rebind = background.is_some() && !was_urgent;
                    if rebind {
                        shared.stats.dialed_in_background.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.park(Parked { tls, identity }, rebind).await;
                }
                Ok((id, (Err(e), _))) => {
                    forget(&mut urgent, id);
                    shared.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                    shared.changed();
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    resume_at = Some(Instant::now() + wait);
                    if !warned {
                        warned = true;
                        tracing::warn!(ingress = %name, "warm pool refill failed, retrying with backoff: {e}");
                    } else {
                        tracing::debug!(ingress = %name, failures, ?wait, "warm pool refill failed again: {e}");
                    }
                }
                // A dial task panicked or was aborted: nothing to park.
                Err(e) => {
                    forget(&mut urgent, e.id());
                }
            },
            _ = sleep_until(resume_at.unwrap_or_else(Instant::now)), if resume_at.is_some() => {}
            _ = decay.tick() => {
                if shared.misses_since_decay.swap(0, Ordering::Relaxed) == 0 {
                    let min = shared.settings.min_idle;
                    let _ = shared.target.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        (t > min).then(|| t - (t - min).div_ceil(2))
                    });
                }
            }
        }
    }
    // Stopped: watchers close their connections on the same signal; the list is emptied.
    shared.idle.lock().await.clear();
    shared.changed();
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
