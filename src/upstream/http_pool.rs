//! Upstream HTTP/1.1 connections, pooled per cluster.
//!
//! Each pooled connection is an HTTP/1.1 client connection (hyper) carried over whatever the
//! cluster's `connect()` returns: plain TCP for `static`, the mTLS stream after the binding
//! upgrade for `binding_upstream`. Idle connections are reused by any http listener routing to
//! the cluster, so clients that open one connection per request still share upstream
//! connections (and, through a binding ingress, skip the TCP + TLS + upgrade per request).
//!
//! A connection goes back to the pool as soon as its response body has been read to the end
//! (see `proxy::http::ProxyBody`), before the client has seen the last byte, so a client's next
//! request finds it. A connection is discarded when the upstream closed it, when its response was
//! not read to the end, when it sat idle longer than [`IDLE_TTL`], or when [`MAX_IDLE`] others
//! already wait. The pool only holds connections that owe the upstream nothing (their request
//! was sent whole); one whose driver has not caught up yet is ready within a poll of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{Cluster, UpstreamError};
use crate::http_body::RequestBody;

/// Idle connections kept per cluster; more are closed when they come back. Above the
/// concurrency of a busy listener (a `wrk -c64` run keeps 64 requests in flight): with fewer,
/// each lull closes connections the next burst opens again.
pub const MAX_IDLE: usize = 128;
/// An idle connection older than this is closed instead of reused (upstream servers close idle
/// keep-alive connections after a while; reusing one that is about to go costs a retry).
pub const IDLE_TTL: Duration = Duration::from_secs(90);

/// Why no upstream HTTP connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum HttpConnectError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// One cluster's idle upstream HTTP/1.1 connections.
pub struct HttpPool {
    /// Its connections write a request's header names as the client spelled them, and record
    /// the spelling of the upstream's (see the listeners' `preserve_header_case`).
    preserve_header_case: bool,
    /// Most recently returned last: reuse takes the warmest connection.
    idle: tokio::sync::Mutex<Vec<Idle>>,
    /// Connections opened since the pool was created (for views and tests).
    opened: AtomicU64,
    /// Requests that were sent on a reused connection.
    reused: AtomicU64,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("preserve_header_case", &self.preserve_header_case)
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .field("reused", &self.reused.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A connection ready to take one request.
pub struct Checkout {
    pub sender: SendRequest<RequestBody>,
    /// Whether it came from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

impl Default for HttpPool {
    fn default() -> Self {
        HttpPool::new(true)
    }
}

impl HttpPool {
    pub fn new(preserve_header_case: bool) -> Self {
        HttpPool {
            preserve_header_case,
            idle: Default::default(),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Whether its connections keep header names as spelled: a request's as its client wrote
    /// them (when the listener recorded them), a response's as the upstream did.
    pub fn preserve_header_case(&self) -> bool {
        self.preserve_header_case
    }

    /// An idle connection that is ready for a request, or a new one; `fresh` skips the pool
    /// (after a reused connection turned out to be closed).
    pub async fn checkout(
        &self,
        cluster: &Cluster,
        fresh: bool,
    ) -> Result<Checkout, HttpConnectError> {
        if !fresh {
            while let Some(mut idle) = self.pop().await {
                if idle.sender.is_closed() || idle.since.elapsed() > IDLE_TTL {
                    continue;
                }
                // Within a poll of its driver (a connection is pooled as its response ends,
                // maybe before the driver took note); an error if it closed meanwhile.
                if idle.sender.ready().await.is_ok() {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Checkout {
                        sender: idle.sender,
                        reused: true,
                    });
                }
            }
        }
        let sender = open(cluster, false, self.preserve_header_case).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    async fn pop(&self) -> Option<Idle> {
        self.idle.lock().await.pop()
    }

    /// Takes a connection back whose last response has been read to the end. Never waits.
    /// `request_sent`: its request went out whole, so the connection owes nothing and is
    /// pooled at once, even when its driver task has not yet taken note that the response
    /// ended (the usual case: it runs on another worker); the next checkout's `ready()` then
    /// resolves within a poll of that driver. A connection still sending a request body is
    /// handed back from a task once it is ready, so a checkout never waits behind an upload.
    pub fn give_back(self: &Arc<Self>, mut sender: SendRequest<RequestBody>, request_sent: bool) {
        if sender.is_closed() {
            return;
        }
        if request_sent || sender.is_ready() {
            if let Ok(mut list) = self.idle.try_lock() {
                push_idle(&mut list, sender);
                return;
            }
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                push_idle(&mut *pool.idle.lock().await, sender);
            }
        });
    }
}

fn push_idle(list: &mut Vec<Idle>, sender: SendRequest<RequestBody>) {
    let now = Instant::now();
    // Oldest first: the expired ones are at the front. Closed ones anywhere are skipped at
    // checkout, and swept here only when the list is full (not a scan on every request).
    let expired = list
        .iter()
        .take_while(|i| now.saturating_duration_since(i.since) > IDLE_TTL)
        .count();
    list.drain(..expired);
    if list.len() >= MAX_IDLE {
        list.retain(|i| !i.sender.is_closed());
    }
    if list.len() >= MAX_IDLE {
        list.remove(0); // the coldest
    }
    list.push(Idle { sender, since: now });
}

/// Opens an HTTP/1.1 client connection through `cluster`. Its driver runs in its own task
/// until the connection closes (or, with `upgrades`, until it is upgraded and handed over).
/// `preserve_header_case`: see [`HttpPool::preserve_header_case`].
pub async fn open(
    cluster: &Cluster,
    upgrades: bool,
    preserve_header_case: bool,
) -> Result<SendRequest<RequestBody>, HttpConnectError> {
    let stream = cluster.connect().await?;
    let (sender, conn) = http1::Builder::new()
        .preserve_header_case(preserve_header_case)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(HttpConnectError::Handshake)?;
    let name = cluster.name.clone();
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(cluster = %name, "upstream HTTP connection ended: {e}");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cluster = %name, "upstream HTTP connection ended: {e}");
            }
        });
    }
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClusterTarget, StaticEndpoints};
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 server answering `ok` to every request head; counts its connections.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn cluster(addr: String) -> Cluster {
        let target = Arc::new(ClusterTarget::Static(StaticEndpoints::new(
            vec![addr],
            Duration::from_secs(5),
        )));
        Cluster::new(
            "pooled".into(),
            target.clone(),
            Cluster::transport(target),
            None,
            Arc::new(crate::telemetry::ClusterMetrics::new("pooled")),
        )
    }

    #[tokio::test]
    async fn a_connection_given_back_as_its_response_ends_serves_the_next_request() {
        let (addr, accepted) = upstream().await;
        let cluster = cluster(addr);
        let pool = Arc::new(HttpPool::default());
        for i in 0..3 {
            let mut checkout = pool.checkout(&cluster, false).await.unwrap();
            assert_eq!(checkout.reused, i > 0, "request {i}");
            let req = http::Request::get("/")
                .header("host", "pooled")
                .body(RequestBody::empty())
                .unwrap();
            let resp = checkout.sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // At once, whether or not the connection's driver has caught up yet.
            pool.give_back(checkout.sender, true);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.opened.load(Ordering::Relaxed), 1);
        assert_eq!(pool.reused.load(Ordering::Relaxed), 2);
    }
}
