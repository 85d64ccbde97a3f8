//! Network filters: run once per accepted connection, around the listener's protocol pipeline
//! (tcp splice, tls SNI routing, http server), before any upstream work.
//!
//! A connection is a [`Conn`]; the stack answers with a [`ConnOutcome`] when the connection is
//! over. A filter that turns a connection away calls [`Conn::reject`]: tcp and tls connections
//! are closed at once, http ones get a `503` with `Retry-After` first.

mod access_log;
mod connection_limit;
mod local_rate_limit;
mod source_ip;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;

pub use access_log::NetworkAccessLog;
pub use connection_limit::ConnectionLimit;
pub use local_rate_limit::NetworkRateLimit;
pub use source_ip::SourceIp;

use super::{BuildCtx, CheckCtx, FilterIssue, registry};
use crate::config::Protocol;

/// A listener's whole stack: its filters around its protocol pipeline.
pub type ConnService = BoxCloneSyncService<Conn, ConnOutcome, Infallible>;

/// A network filter's config: checks itself and wraps a stack in its layer.
pub trait NetworkFilter: Send + Sync {
    /// Problems tower-independent of the schema (a zero limit, a bad CIDR), by field.
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        Vec::new()
    }
    /// `inner` wrapped in this filter's layer.
    fn layer(&self, inner: ConnService, ctx: &BuildCtx<'_>) -> ConnService;
}

registry! {
    /// A network filter (a one-key map: the filter's name, then its config). Runs once per
    /// accepted connection, in order, before any upstream work.
    pub enum NetworkFilterConfig: NetworkFilter {
        /// Caps the connections open at once; more are turned away at accept.
        connection_limit => ConnectionLimit,
        /// Caps the rate of new connections (token bucket), for the listener or per client IP.
        local_rate_limit => NetworkRateLimit,
        /// Admits connections by client address: `deny` wins, and with `allow` nothing else
        /// is admitted.
        source_ip => SourceIp,
        /// One JSON line per connection (http listeners: per connection; use the http
        /// filter for one per request).
        access_log => NetworkAccessLog,
    }
}

/// Wraps `leaf` in `filters`, the first filter outermost. An `access_log` is always placed
/// outermost, wherever it is listed, so it also records connections the other filters turned
/// away.
pub fn build_chain(
    filters: &[NetworkFilterConfig],
    leaf: ConnService,
    owner: &str,
    protocol: Protocol,
    retained: &crate::retained::Retained,
    base_dir: &std::path::Path,
) -> ConnService {
    let mut order: Vec<(usize, &NetworkFilterConfig)> = filters.iter().enumerate().collect();
    order.sort_by_key(|(_, f)| !matches!(f, NetworkFilterConfig::access_log(_)));
    let mut svc = leaf;
    for (index, f) in order.into_iter().rev() {
        let ctx = BuildCtx {
            retained,
            base_dir,
            owner,
            index,
            protocol,
        };
        svc = f.filter().layer(svc, &ctx);
    }
    svc
}

/// Bytes moved on a client connection, counted as they pass.
#[derive(Debug, Default)]
pub struct ConnBytes {
    /// Read from the client.
    pub received: AtomicU64,
    /// Written to the client.
    pub sent: AtomicU64,
}

/// The client's socket, counting the bytes each way.
#[derive(Debug)]
pub struct ClientIo {
    tcp: TcpStream,
    bytes: Arc<ConnBytes>,
}

impl ClientIo {
    pub fn new(tcp: TcpStream) -> Self {
        ClientIo {
            tcp,
            bytes: Arc::default(),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn bytes(&self) -> Arc<ConnBytes> {
        self.bytes.clone()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.bytes.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.bytes.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.bytes.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// One accepted connection on its way through the stack.
pub struct Conn {
    pub io: ClientIo,
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub protocol: Protocol,
    /// The listener stops: finish what is in flight (http: the current request), then close.
    pub draining: CancellationToken,
    /// The drain is over: close now.
    pub force_close: CancellationToken,
}

impl Conn {
    /// Turns the connection away on behalf of `filter`: tcp and tls are closed at once; http
    /// gets `503 Service Unavailable` with `Retry-After` (whole seconds, at least 1), then the
    /// connection is closed.
    pub async fn reject(
        mut self,
        filter: &'static str,
        reason: &'static str,
        retry_after: Option<Duration>,
    ) -> ConnOutcome {
        tracing::debug!(listener = %self.listener, peer = %self.peer, filter, reason, "connection rejected");
        if self.protocol == Protocol::Http {
            let secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            let body = format!(
                "bindgate: listener `{}` is not accepting this connection ({reason})\n",
                self.listener
            );
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: {secs}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(crate::filters::timeouts::REJECT_WRITE, async {
                self.io.write_all(answer.as_bytes()).await?;
                self.io.shutdown().await
            })
            .await;
        }
        ConnOutcome {
            cluster: None,
            outcome: Outcome::Rejected { filter, reason },
        }
    }
}

/// How a connection ended, for access logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnOutcome {
    /// The cluster it was sent to, once routed.
    pub cluster: Option<Arc<str>>,
    pub outcome: Outcome,
}

impl ConnOutcome {
    pub fn new(cluster: Option<Arc<str>>, outcome: Outcome) -> Self {
        ConnOutcome { cluster, outcome }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served and closed by either side.
    Ok,
    /// Turned away by a filter.
    Rejected {
        filter: &'static str,
        reason: &'static str,
    },
    /// No route for it (tls: no route for the server name).
    NoRoute,
    /// The upstream could not be reached.
    UpstreamError,
    /// Closed after `idle_timeout` (or a protocol timeout such as the ClientHello's).
    Timeout,
    /// The client sent something unusable (a bad ClientHello) or went away early.
    ClientError,
    /// Closed at the end of a drain.
    Drained,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Rejected { filter, .. } => write!(f, "rejected:{filter}"),
            Outcome::NoRoute => f.write_str("no_route"),
            Outcome::UpstreamError => f.write_str("upstream_error"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::ClientError => f.write_str("client_error"),
            Outcome::Drained => f.write_str("drained"),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A connected socket pair and a leaf that records what reached it.
    use super::*;
    use std::sync::atomic::AtomicUsize;

    pub async fn conn_pair(protocol: Protocol) -> (Conn, TcpStream) {
        conn_pair_from(protocol, None).await
    }

    /// A connection as if accepted from `from` (the peer field; the socket itself is loopback).
    pub async fn conn_pair_from(protocol: Protocol, from: Option<SocketAddr>) -> (Conn, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        (
            Conn {
                io: ClientIo::new(server),
                peer: from.unwrap_or(peer),
                listener: Arc::from("test"),
                protocol,
                draining: CancellationToken::new(),
                force_close: CancellationToken::new(),
            },
            client,
        )
    }

    /// A leaf that counts the connections that reached it and answers `ok`.
    pub fn counting_leaf() -> (ConnService, Arc<AtomicUsize>) {
        let reached = Arc::new(AtomicUsize::new(0));
        let r = reached.clone();
        let svc = tower::service_fn(move |_c: Conn| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(ConnOutcome::new(None, Outcome::Ok))
            }
        });
        (BoxCloneSyncService::new(svc), reached)
    }
}
