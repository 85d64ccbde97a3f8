//! Per-connection pipelines, the leaves of each listener's network filter stack: tcp (one fixed
//! cluster, splice), tls (routed by the ClientHello's SNI, passed through), http (routed per
//! request, each route's http filters around forwarding over pooled upstream connections).

pub mod http;
pub mod http_path;
pub mod sni;
pub mod splice;
pub mod tcp;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::config::Protocol;
use crate::filters::network::{Conn, ConnService};
use crate::snapshot::RouteTable;

/// What a listener's pipeline needs, fixed for a snapshot.
#[derive(Debug)]
pub struct Pipeline {
    pub listener: Arc<str>,
    pub protocol: Protocol,
    pub routes: Arc<RouteTable>,
    /// tcp, tls and upgraded connections: closed when no byte moved for this long. http: the
    /// idle limit of request and response bodies.
    pub idle_timeout: Duration,
    /// http: the time to send a request head, or to start the next one on a kept-alive
    /// connection.
    pub request_headers_timeout: Duration,
    /// http: header names go on in the case they came in (else in lower case).
    pub preserve_header_case: bool,
    pub metrics: Arc<crate::telemetry::ListenerMetrics>,
}

/// The leaf of a listener's network stack: the protocol's pipeline.
pub fn pipeline(p: Arc<Pipeline>) -> ConnService {
    ConnService::new(tower::service_fn(move |conn: Conn| {
        let p = p.clone();
        async move {
            // Counted here, past the filters: only admitted connections.
            p.metrics.accepted();
            let _active = p.metrics.open();
            let bytes = conn.io.bytes();
            let done = match p.protocol {
                Protocol::Tcp => tcp::serve(&p, conn).await,
                Protocol::Tls => tls::serve(&p, conn).await,
                Protocol::Http => http::serve(p.clone(), conn).await,
            };
            p.metrics.bytes(
                bytes.received.load(Ordering::Relaxed),
                bytes.sent.load(Ordering::Relaxed),
            );
            Ok::<_, Infallible>(done)
        }
    }))
}

/// `token.cancelled()`, for a `select!` beside a connection's work, which polls it at each wake
/// of the connection's task (two or more per proxied request): tokio-util's future takes the
/// token's lock and then the lock of tokio's `Notify` at every poll. This one registers the
/// task once and, while the same task polls it, only looks at the token. It borrows the token:
/// a clone would take the token's lock to count the handle, and again to drop it.
pub(crate) struct Cancelled<'a> {
    token: &'a CancellationToken,
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    /// The waker the wait was registered with: a poll with another one registers again.
    registered: Option<Waker>,
}

impl<'a> Cancelled<'a> {
    pub(crate) fn new(token: &'a CancellationToken) -> Self {
        Cancelled {
            token,
            wait: Box::pin(token.cancelled()),
            registered: None,
        }
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // Cancelling wakes the registered waker, which is this one.
            return if self.token.is_cancelled() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let this = &mut *self;
        match this.wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cancelling wakes a task that polled the future once, and it completes; a second task
    /// that polls it after the first registers itself and is woken too.
    #[tokio::test]
    async fn a_registered_wait_ends_when_the_token_is_cancelled() {
        // Borrowed by a spawned task: it lives as long as the test binary.
        let token: &'static CancellationToken = Box::leak(Box::new(CancellationToken::new()));
        let mut cancelled = Cancelled::new(token);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut cancelled).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut cancelled).poll(&mut cx).is_pending());
        let waiter = tokio::spawn(cancelled);
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiting task was woken")
            .unwrap();
        // Already cancelled: ready at the first poll.
        let mut late = Cancelled::new(token);
        assert!(Pin::new(&mut late).poll(&mut cx).is_ready());
    }
}
