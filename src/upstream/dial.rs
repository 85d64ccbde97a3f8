//! Dialing an ingress: TCP connect + mTLS (SNI = the ingress host), and the binding upgrade on an
//! established connection (framed `ConnRequest` → framed `ConnResponse`).
//!
//! Every transport is built from these two steps: `direct` does both per proxied connection, the
//! warm pool does the first ahead of time, the multiplexer uses the first (with ALPN `h2`) for its
//! persistent connections. This module owns no state.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::binding::UpgradeRequest;
use super::early::EarlyUpgrade;
use super::resolve::IngressResolver;
use super::{UpstreamError, UpstreamStream};
use crate::wire::{self, ConnResponse, FrameError};

/// A TLS connection to an ingress, before or after the upgrade.
pub type IngressTls = tokio_rustls::client::TlsStream<IngressSocket>;

/// The TCP connection under [`IngressTls`]: a tokio `TcpStream` that can move to another
/// runtime's reactor. A warm pool dials on its background thread ([`super::background`]) and
/// moves each connection to the serving runtime when it hands it out.
#[derive(Debug)]
pub struct IngressSocket {
    /// `None` only if a move failed half-way (the socket is then closed and every operation
    /// fails).
    tcp: Option<TcpStream>,
}

impl IngressSocket {
    pub fn new(tcp: TcpStream) -> IngressSocket {
        IngressSocket { tcp: Some(tcp) }
    }

    /// Registers the socket with the reactor of the runtime this is called on, leaving the one
    /// it was opened on. Two `epoll_ctl` calls; nothing in flight is lost (the TLS state lives
    /// above, and unread bytes stay in the kernel).
    pub fn rebind(&mut self) -> io::Result<()> {
        let tcp = self.tcp.take().ok_or_else(moved_away)?;
        self.tcp = Some(TcpStream::from_std(tcp.into_std()?)?);
        Ok(())
    }

    fn tcp(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut().tcp.as_mut() {
            Some(tcp) => Ok(Pin::new(tcp)),
            None => Err(moved_away()),
        }
    }
}

fn moved_away() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was lost while moving between runtimes",
    )
}

impl AsyncRead for IngressSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.tcp()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for IngressSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_shutdown(cx)
    }
}

/// Where and how to reach one ingress; cheap to clone (transports keep their own copy, so they
/// never hold the `Ingress` that holds them).
#[derive(Clone)]
pub struct IngressDialer {
    pub name: Arc<str>,
    /// `host:port`.
    pub address: Arc<str>,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Bounds TCP + TLS here; the caller bounds the whole open (upgrade included) with it too.
    pub connect_timeout: Duration,
    /// Hand the stream over right after the `ConnRequest` is written; its first read waits for
    /// the `ConnResponse` (see `config::IngressConfig::early_data`).
    pub early_data: bool,
    /// Whether `tls` resumes sessions (`config::IngressConfig::session_resumption`).
    pub session_resumption: bool,
    /// Completed TLS handshakes, shared by every clone (a transport and its fallback pool).
    pub handshakes: Arc<HandshakeCounts>,
    /// `address` resolved, shared by every clone.
    pub resolver: Arc<IngressResolver>,
}

/// Completed TLS handshakes with an ingress: full, or resumed sessions (Envoy's
/// `ssl.handshake` and `ssl.session_reused`).
#[derive(Debug, Default)]
pub struct HandshakeCounts {
    full: AtomicU64,
    resumed: AtomicU64,
}

impl HandshakeCounts {
    fn record(&self, tls: &IngressTls) {
        let counter = if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            &self.resumed
        } else {
            &self.full
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(full, resumed)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.full.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for IngressDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressDialer")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl IngressDialer {
    /// A dialer for `address` (`host:port`), presenting `tls`; `session_resumption: false`
    /// turns resumption off in it. Early data is off (see [`IngressDialer::with_early_data`]).
    pub fn new(
        name: &str,
        address: &str,
        server_name: ServerName<'static>,
        mut tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        session_resumption: bool,
    ) -> IngressDialer {
        if !session_resumption {
            Arc::make_mut(&mut tls).resumption = rustls::client::Resumption::disabled();
        }
        let address: Arc<str> = Arc::from(address);
        IngressDialer {
            name: Arc::from(name),
            resolver: Arc::new(IngressResolver::new(address.clone())),
            address,
            server_name,
            tls,
            connect_timeout,
            early_data: false,
            session_resumption,
            handshakes: Arc::default(),
        }
    }

    pub fn with_early_data(mut self, early_data: bool) -> IngressDialer {
        self.early_data = early_data;
        self
    }

    /// TCP connect and TLS handshake, bounded by `connect_timeout`. With TLS 1.3 a rejected
    /// client certificate is not seen here but on the first read.
    pub async fn handshake(&self) -> Result<IngressTls, UpstreamError> {
        match tokio::time::timeout(self.connect_timeout, self.handshake_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: self.address.to_string(),
                after: self.connect_timeout,
            }),
        }
    }

    async fn handshake_unbounded(&self) -> Result<IngressTls, UpstreamError> {
        let addr = &*self.address;
        let connect_error = |source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let mut last_error = None;
        let mut connected = None;
        for ip in self.resolver.addrs().await.map_err(connect_error)? {
            match TcpStream::connect(ip).await {
                Ok(tcp) => {
                    connected = Some(tcp);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(tcp) = connected else {
            // Every address failed: the next dial looks the name up again.
            self.resolver.forget();
            let source = last_error
                .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"));
            return Err(connect_error(source));
        };
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), IngressSocket::new(tcp))
            .await
            .map_err(|e| UpstreamError::tls(addr, &e))?;
        self.handshakes.record(&tls);
        Ok(tls)
    }

    /// The `direct` transport: a fresh connection and its upgrade.
    pub async fn dial(&self, request: &UpgradeRequest) -> Result<UpstreamStream, UpstreamError> {
        let tls = self.handshake().await?;
        upgrade(self, tls, request, || {})
            .await
            .map_err(UpgradeError::into_inner)
    }

    /// The certificate the client presents in handshakes from now on (a hot-swappable identity
    /// may change it between handshakes). Compared by pointer: a pooled connection is handed out
    /// only while its identity is still the current one.
    pub fn current_identity(&self) -> Option<Arc<CertifiedKey>> {
        self.tls.client_auth_cert_resolver.resolve(&[], &[])
    }
}

/// How an upgrade on an established connection failed.
#[derive(Debug)]
pub enum UpgradeError {
    /// The connection broke before a `ConnResponse` arrived (reset, EOF, TLS alert): nothing
    /// reached the endpoint, so a fresh connection may be tried.
    Broken(UpstreamError),
    /// The ingress answered (a refusal, or a malformed frame).
    Answered(UpstreamError),
}

impl UpgradeError {
    pub fn into_inner(self) -> UpstreamError {
        match self {
            UpgradeError::Broken(e) | UpgradeError::Answered(e) => e,
        }
    }
}

/// Sends the `ConnRequest` on `tls` and reads the `ConnResponse`; on success the same stream is
/// the byte pipe to the endpoint. `on_sent` runs once the request is written (or failed to be),
/// before any wait for the answer.
pub async fn upgrade(
    dialer: &IngressDialer,
    mut tls: IngressTls,
    request: &UpgradeRequest,
    on_sent: impl FnOnce(),
) -> Result<UpstreamStream, UpgradeError> {
    let addr = &*dialer.address;
    let started = tokio::time::Instant::now();
    let sent = async {
        tls.write_all(request.frame()).await?;
        tls.flush().await
    };
    let sent = sent.await;
    on_sent();
    sent.map_err(|e| broken_or_answered(addr, FrameError::Io(e)))?;
    if dialer.early_data {
        return Ok(UpstreamStream::Early(Box::new(EarlyUpgrade::new(
            tls,
            dialer.name.clone(),
            dialer.address.clone(),
            request.name.clone(),
            super::early::AnswerDeadline::new(dialer.connect_timeout),
        ))));
    }
    // TLS 1.3 reports a rejected client certificate here, on the first read.
    read_answer(&mut tls, &dialer.name, addr, request).await?;
    crate::telemetry::binding_upgrade_duration(&dialer.name, started.elapsed());
    Ok(UpstreamStream::Tls(Box::new(tls)))
}

/// Reads the ingress's answer to a `ConnRequest` off `stream` (exactly its frame: what follows
/// is the endpoint's) and accepts it or turns it into the refusal. Generic over the stream so
/// `crate::fuzzing` can feed it hostile bytes.
pub(crate) async fn read_answer<R: AsyncRead + Unpin>(
    stream: &mut R,
    ingress: &str,
    addr: &str,
    endpoint: &(dyn std::fmt::Display + Sync),
) -> Result<(), UpgradeError> {
    let response: ConnResponse = wire::read_frame(stream)
        .await
        .map_err(|e| broken_or_answered(addr, e))?;
    accept_response(ingress, addr, endpoint, &response).map_err(UpgradeError::Answered)
}

/// A stream that ended or broke mid-frame is `Broken` (retryable); a frame that arrived but is
/// not a `ConnResponse` is the ingress's answer.
fn broken_or_answered(addr: &str, e: FrameError) -> UpgradeError {
    match e {
        FrameError::Io(_) | FrameError::Closed | FrameError::Truncated { .. } => {
            UpgradeError::Broken(UpstreamError::upgrade(addr, e))
        }
        other => UpgradeError::Answered(UpstreamError::upgrade(addr, other)),
    }
}

/// Logs the ingress's notices and turns a refusal into the error to report.
pub(crate) fn accept_response(
    ingress: &str,
    addr: &str,
    endpoint: &dyn std::fmt::Display,
    response: &ConnResponse,
) -> Result<(), UpstreamError> {
    for notice in &response.notices {
        tracing::warn!(%ingress, %endpoint, "ingress notice: {}", notice.message);
    }
    if let Some(failure) = response.failure() {
        return Err(UpstreamError::Refused {
            addr: addr.to_owned(),
            endpoint: endpoint.to_string(),
            failure,
        });
    }
    tracing::debug!(%ingress, %endpoint, endpoint_id = %response.endpoint_id, "binding upgrade done");
    Ok(())
}
