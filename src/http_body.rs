//! The bodies of proxied HTTP messages.
//!
//! [`RequestBody`]: the client's request body on its way upstream. It counts what it carries,
//! enforces a size limit (`max_request_body`) and a per-read idle timeout, and tells when it has
//! been read whole (the request timeout starts then: a long upload is not a slow upstream).
//!
//! [`ProxyBody`]: a response body: the upstream's (streamed, with an idle timeout, handing its
//! connection back for reuse once read whole) or one bindgate wrote, optionally observed (the
//! http `access_log` learns the bytes sent when it ends).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a body stopped early, as bindgate decided it.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("no body bytes for {0:?}")]
    Idle(Duration),
}

/// What the filters and the forwarder learn about a request body.
#[derive(Debug, Default)]
pub struct BodyState {
    /// Bytes read from the client so far.
    pub received: AtomicU64,
    /// Set when the body went over its limit.
    pub too_large: AtomicBool,
    /// Set when the client sent a body that could not be read (a bad chunk size, a connection
    /// closed mid-body): the client's fault, not the upstream's.
    pub client_error: AtomicBool,
    /// Set when the client stopped sending its body for longer than the idle timeout.
    pub stalled: AtomicBool,
    /// Set when the body was read to its end (an empty one never is: check `is_end_stream`).
    pub complete: AtomicBool,
}

/// An idle timer: the wait for bytes starts at the first poll that finds none after bytes
/// arrived. Made and armed only then, so a body that is there whole when first polled (most
/// responses) costs no clock read, allocation or timer-wheel entry.
struct IdleTimer {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the timer was armed: re-arm it at the next wait.
    progressed: bool,
}

impl IdleTimer {
    fn new(after: Duration) -> Self {
        IdleTimer {
            after,
            sleep: None,
            progressed: false,
        }
    }

    /// Bytes arrived.
    fn reset(&mut self) {
        self.progressed = true;
    }

    /// Called when no bytes are there: `Ready` when none came for `after`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if std::mem::take(&mut self.progressed) {
                    sleep.as_mut().reset(Instant::now() + self.after);
                }
                sleep
            }
            None => {
                self.progressed = false;
                self.sleep.insert(Box::pin(tokio::time::sleep(self.after)))
            }
        };
        sleep.as_mut().poll(cx)
    }
}

enum RequestInner {
    Incoming(Incoming),
    /// A body held whole (tests, and requests bindgate makes itself).
    Full(Option<Bytes>),
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: RequestInner,
    state: Arc<BodyState>,
    limit: Option<u64>,
    idle: Option<IdleTimer>,
    sent: Vec<oneshot::Sender<()>>,
}

/// Resolves once the request body has been read whole, failed, or was dropped.
pub struct BodySent {
    rx: Option<oneshot::Receiver<()>>,
}

impl BodySent {
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        if let Some(rx) = &mut self.rx {
            let _ = rx.await;
            self.rx = None;
        }
    }
}

impl RequestBody {
    pub fn incoming(body: Incoming) -> Self {
        RequestBody::with(RequestInner::Incoming(body))
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b: Bytes = bytes.into();
        RequestBody::with(RequestInner::Full((!b.is_empty()).then_some(b)))
    }

    pub fn empty() -> Self {
        RequestBody::with(RequestInner::Full(None))
    }

    fn with(inner: RequestInner) -> Self {
        RequestBody {
            inner,
            state: Arc::default(),
            limit: None,
            idle: None,
            sent: Vec::new(),
        }
    }

    pub fn state(&self) -> Arc<BodyState> {
        self.state.clone()
    }

    /// At most `limit` bytes pass; past it the body fails with [`BodyError::TooLarge`]. A
    /// tighter limit already set stays.
    pub fn limit(&mut self, limit: u64) {
        self.limit = Some(self.limit.map_or(limit, |l| l.min(limit)));
    }

    /// Fails with [`BodyError::Idle`] when no bytes arrive for `after`.
    pub fn idle_timeout(&mut self, after: Duration) {
        self.idle = Some(IdleTimer::new(after));
    }

    /// A signal that resolves when the body has been read whole (or failed, or was dropped).
    pub fn on_sent(&mut self) -> BodySent {
        if self.is_end_stream() {
            return BodySent { rx: None };
        }
        let (tx, rx) = oneshot::channel();
        self.sent.push(tx);
        BodySent { rx: Some(rx) }
    }

    fn signal(&mut self) {
        for tx in self.sent.drain(..) {
            let _ = tx.send(());
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            RequestInner::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            RequestInner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        match polled {
            Poll::Pending => {
                let expired = this
                    .idle
                    .as_mut()
                    .and_then(|idle| idle.poll_expired(cx).is_ready().then_some(idle.after));
                if let Some(after) = expired {
                    this.state.stalled.store(true, Ordering::Relaxed);
                    this.signal();
                    return Poll::Ready(Some(Err(BodyError::Idle(after).into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = &mut this.idle {
                    idle.reset();
                }
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .state
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if let Some(limit) = this.limit.filter(|l| total > *l) {
                        this.state.too_large.store(true, Ordering::Relaxed);
                        this.signal();
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit).into())));
                    }
                }
                if this.is_end_stream() {
                    this.state.complete.store(true, Ordering::Relaxed);
                    this.signal();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => {
                match other {
                    Poll::Ready(Some(Err(_))) => {
                        this.state.client_error.store(true, Ordering::Relaxed)
                    }
                    _ => this.state.complete.store(true, Ordering::Relaxed),
                }
                this.signal();
                other
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RequestInner::Incoming(b) => b.is_end_stream(),
            RequestInner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestInner::Incoming(b) => b.size_hint(),
            RequestInner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestInner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Called once with the bytes a response body carried, when it ends or is dropped.
pub type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

/// Called when an upstream body was read whole, so its connection can serve again.
pub type GiveBack = Box<dyn FnOnce() + Send + Sync>;

/// A response body: the upstream's (streamed), or one bindgate wrote.
pub struct ProxyBody {
    kind: ProxyKind,
    sent: u64,
    on_end: Option<OnEnd>,
}

enum ProxyKind {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

/// An upstream response body that hands its connection back once read to the end.
pub struct UpstreamBody {
    body: Incoming,
    ended: bool,
    give_back: Option<GiveBack>,
    idle: Option<IdleTimer>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.ended = true;
        if let Some(give_back) = self.give_back.take() {
            give_back();
        }
    }
}

impl Drop for UpstreamBody {
    /// Dropped after the whole body was read (hyper stops polling a body of known length once
    /// it is complete): the connection can serve again. Dropped earlier: it is not reusable,
    /// and dropping its sender (inside `give_back`) closes it.
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl ProxyBody {
    /// The upstream's body; `give_back` runs once it was read whole; `idle`: fail the body
    /// when the upstream sends nothing for that long.
    pub fn upstream(body: Incoming, give_back: Option<GiveBack>, idle: Option<Duration>) -> Self {
        ProxyBody {
            kind: ProxyKind::Upstream(UpstreamBody {
                body,
                ended: false,
                give_back,
                idle: idle.map(IdleTimer::new),
            }),
            sent: 0,
            on_end: None,
        }
    }

    pub fn local(text: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: ProxyKind::Local(Some(text.into())),
            sent: 0,
            on_end: None,
        }
    }

    /// Runs `f` with the bytes carried once the body ends or is dropped (after any callback
    /// set before, which it chains to).
    pub fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(match self.on_end.take() {
            None => f,
            Some(prev) => Box::new(move |n| {
                prev(n);
                f(n)
            }),
        });
    }

    fn ended(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.sent);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.kind {
            ProxyKind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ProxyKind::Upstream(u) => {
                let polled = Pin::new(&mut u.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => u.finish(),
                    Poll::Ready(Some(Ok(_))) => {
                        if let Some(idle) = &mut u.idle {
                            idle.reset();
                        }
                        if u.body.is_end_stream() {
                            u.finish();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => u.give_back = None,
                    Poll::Pending => {
                        if let Some(idle) = &mut u.idle {
                            if idle.poll_expired(cx).is_ready() {
                                u.give_back = None;
                                let after = idle.after;
                                return Poll::Ready(Some(Err(BodyError::Idle(after).into())));
                            }
                        }
                    }
                }
                polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                this.sent += d.len() as u64;
            }
        }
        if this.is_end_stream() || matches!(polled, Poll::Ready(None)) {
            this.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ProxyKind::Local(text) => text.is_none(),
            ProxyKind::Upstream(u) => u.ended || u.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ProxyKind::Local(Some(text)) => SizeHint::with_exact(text.len() as u64),
            ProxyKind::Local(None) => SizeHint::with_exact(0),
            ProxyKind::Upstream(u) => u.body.size_hint(),
        }
    }
}

/// A response bindgate writes itself: short `text/plain`.
pub fn local(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_limited_body_fails_past_its_limit_and_says_so() {
        let mut b = RequestBody::full(vec![b'x'; 10]);
        b.limit(20);
        b.limit(5);
        let state = b.state();
        let err = b.collect().await.unwrap_err();
        assert!(err.to_string().contains("larger than 5 bytes"), "{err}");
        assert!(state.too_large.load(Ordering::Relaxed));
        assert_eq!(state.received.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn sent_resolves_when_read_whole() {
        let mut b = RequestBody::full("abc");
        let mut sent = b.on_sent();
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abc");
        sent.wait().await;
    }

    #[tokio::test]
    async fn local_bodies_report_their_bytes_on_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut resp = local(StatusCode::NOT_FOUND, "nope\n");
        resp.body_mut()
            .on_end(Box::new(move |n| tx.send(n).unwrap()));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"nope\n");
        assert_eq!(rx.recv().unwrap(), 5);
    }
}
