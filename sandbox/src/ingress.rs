//! The emulated binding ingress (PROTOCOL.md §1): mTLS with a client certificate from the
//! sandbox CA, one framed `ConnRequest`, one framed `ConnResponse`, then a raw byte pipe to the
//! endpoint's target with half-close propagated both ways.
//!
//! Error codes it answers with (ngrok's real codes for this path are unconfirmed):
//!
//! | code | when |
//! |---|---|
//! | `ERR_NGROK_15010` | the client certificate's first DNS SAN is not the sandbox's `account_id`, or its operator was deleted (revoked) |
//! | `ERR_NGROK_3200` | no endpoint serves `host:port`, or the endpoint has the `refuse` fault |
//! | `ERR_NGROK_8012` | the endpoint's target could not be dialed |
//!
//! A connection that sends no valid frame in time is closed without an answer: logged at debug
//! when it stayed silent (a warm pool's idle connection), at warn when it stalled mid-frame. A
//! client that
//! negotiates ALPN `h2` (offered when `ingress.h2` is true) is served by `super::h2` instead: the
//! same decision per CONNECT stream. This module owns the per-connection state machine; it does
//! not own the listener's accept loop or the registry.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};
use x509_parser::extensions::GeneralName;

#[cfg(doc)]
use super::ca::ClientAuth;
use super::ca::SandboxCa;
use super::endpoints::{BoundEndpoint, EndpointRegistry};
use super::faults::{REFUSE_CODE, ReadPacer, ResetHandle};
use bindgate_wire::{self as wire, ConnRequest, ConnResponse, FrameError};

pub const ACCOUNT_MISMATCH_CODE: &str = "ERR_NGROK_15010";
pub const NOT_FOUND_CODE: &str = "ERR_NGROK_3200";
pub const TARGET_UNREACHABLE_CODE: &str = "ERR_NGROK_8012";

const PIPE_BUFFER: usize = 16 * 1024;

/// Everything a connection needs, shared by all of them.
pub struct Ingress {
    acceptor: TlsAcceptor,
    ca: Arc<SandboxCa>,
    account_id: String,
    registry: Arc<EndpointRegistry>,
    handshake_timeout: Duration,
    h2_goaway_after_streams: Option<u64>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("account_id", &self.account_id)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Where an upgraded connection's bytes go once the ingress said yes.
pub(super) enum Backend {
    /// The endpoint's target, connected.
    Tcp(TcpStream),
    /// `inline_echo`: back to the client, from the ingress itself.
    InlineEcho,
}

/// Why a connection ended before or during the pipe; only for the debug log line.
pub(super) enum PipeEnd {
    Done { up: u64, down: u64 },
    Reset { up: u64 },
}

impl Ingress {
    /// `tls` must require client certificates from `ca` ([`ClientAuth::Required`]).
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        ca: Arc<SandboxCa>,
        account_id: String,
        registry: Arc<EndpointRegistry>,
        handshake_timeout: Duration,
    ) -> Self {
        Ingress {
            acceptor: TlsAcceptor::from(tls),
            ca,
            account_id,
            registry,
            handshake_timeout,
            h2_goaway_after_streams: None,
        }
    }

    /// HTTP/2 connections send GOAWAY after this many streams (a test knob).
    pub fn with_h2_goaway_after_streams(mut self, streams: Option<u64>) -> Self {
        self.h2_goaway_after_streams = streams;
        self
    }

    pub(super) fn h2_goaway_after_streams(&self) -> Option<u64> {
        self.h2_goaway_after_streams
    }

    /// Serves one accepted TCP connection to its end. Never panics on peer input.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.handshake_timeout;
        let mut tls = match timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, "ingress TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, "ingress TLS handshake timed out");
                return;
            }
        };
        let identity = ClientIdentity::of(&tls);
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            super::h2::serve(self, tls, peer, identity, deadline).await;
            return;
        }
        let mut counted = CountingReader {
            inner: &mut tls,
            bytes: 0,
        };
        let read = timeout_at(deadline, wire::read_frame(&mut counted)).await;
        let partial = counted.bytes > 0;
        let request: ConnRequest = match read {
            Ok(Ok(request)) => request,
            // A client that connects and leaves without a word (a warm pool discarding a
            // connection) is normal, not malformed.
            Ok(Err(FrameError::Closed)) => {
                debug!(%peer, "ingress connection closed before its ConnRequest");
                return;
            }
            // The same without TLS close_notify (a client process that exited, say).
            Ok(Err(e)) if !partial => {
                debug!(%peer, "ingress connection ended before its ConnRequest: {e}");
                return;
            }
            Ok(Err(e)) => {
                warn!(%peer, "ingress closing connection: bad ConnRequest: {e}");
                return;
            }
            // Silent all along: an idle connection (what a warm pool keeps), not a fault.
            Err(_) if !partial => {
                debug!(
                    %peer,
                    "ingress closing idle connection: no ConnRequest within {:?}",
                    self.handshake_timeout
                );
                return;
            }
            Err(_) => {
                warn!(
                    %peer,
                    "ingress closing connection: no complete ConnRequest within {:?}",
                    self.handshake_timeout
                );
                return;
            }
        };
        let (endpoint, backend) = match self.upgrade(identity.as_ref(), &request).await {
            Ok(ready) => ready,
            Err(response) => {
                debug!(
                    %peer,
                    host = %request.host,
                    port = request.port,
                    "ingress refusing upgrade: {}",
                    response.failure().unwrap_or_default()
                );
                // Best effort: the peer may already be gone.
                if wire::write_frame(&mut tls, &response).await.is_ok() {
                    let _ = tls.shutdown().await;
                    linger(&mut tls).await;
                }
                return;
            }
        };
        let response = ConnResponse {
            endpoint_id: endpoint.id.clone(),
            proto: endpoint.url.scheme.as_str().to_string(),
            ..Default::default()
        };
        if let Err(e) = wire::write_frame(&mut tls, &response).await {
            debug!(%peer, "ingress could not answer ConnResponse: {e}");
            return;
        }
        let reset = match endpoint.faults.reset_after_bytes {
            Some(_) => match ResetHandle::arm(tls.get_ref().0) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    debug!(%peer, "ingress cannot arm reset fault: {e}");
                    return;
                }
            },
            None => None,
        };
        let piped = match backend {
            Backend::Tcp(backend) => pipe(tls, backend, &endpoint, reset).await,
            Backend::InlineEcho => echo_in_place(tls, &endpoint, reset).await,
        };
        match piped {
            Ok(PipeEnd::Done { up, down }) => {
                debug!(%peer, endpoint = %endpoint.url, up, down, "ingress connection done")
            }
            Ok(PipeEnd::Reset { up }) => {
                debug!(%peer, endpoint = %endpoint.url, up, "ingress connection reset (fault)")
            }
            Err(e) => debug!(%peer, endpoint = %endpoint.url, "ingress connection failed: {e}"),
        }
    }

    /// Decides the upgrade (a `ConnRequest`, or an HTTP/2 CONNECT's `host:port`) for a client
    /// with this certificate: the endpoint and a connected target, or the error to answer.
    pub(super) async fn upgrade(
        &self,
        identity: Option<&ClientIdentity>,
        request: &ConnRequest,
    ) -> Result<(Arc<BoundEndpoint>, Backend), ConnResponse> {
        if identity.is_some_and(|id| self.ca.is_revoked(&id.serial)) {
            return Err(ConnResponse::error(
                ACCOUNT_MISMATCH_CODE,
                "the kubernetes operator this client certificate was issued to no longer exists",
            ));
        }
        let account = identity.and_then(|id| id.account.as_deref());
        if account != Some(self.account_id.as_str()) {
            return Err(ConnResponse::error(
                ACCOUNT_MISMATCH_CODE,
                format!(
                    "the client certificate names account `{}`, which has no kubernetes operator on this ingress",
                    account.unwrap_or("(none)")
                ),
            ));
        }
        let endpoint = self
            .registry
            .lookup(&request.host, request.port)
            .ok_or_else(|| {
                ConnResponse::error(
                    NOT_FOUND_CODE,
                    format!(
                        "endpoint {}:{} is offline or not found",
                        request.host, request.port
                    ),
                )
            })?;
        if !endpoint.faults.latency.is_zero() {
            tokio::time::sleep(endpoint.faults.latency).await;
        }
        if endpoint.faults.refuse {
            return Err(ConnResponse::error(
                REFUSE_CODE,
                format!(
                    "endpoint {} is offline (sandbox fault: refuse)",
                    endpoint.url.hostport()
                ),
            ));
        }
        let Some(address) = endpoint.dial_address() else {
            return Ok((endpoint, Backend::InlineEcho));
        };
        match timeout(self.handshake_timeout, TcpStream::connect(address)).await {
            Ok(Ok(backend)) => {
                let _ = backend.set_nodelay(true);
                Ok((endpoint, Backend::Tcp(backend)))
            }
            Ok(Err(e)) => Err(unreachable_target(&endpoint, address, &e.to_string())),
            Err(_) => Err(unreachable_target(&endpoint, address, "connect timed out")),
        }
    }
}

/// How long, and how many bytes, a refused connection is read after the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards what the client sent after its `ConnRequest` (early data) until it closes,
/// within bounds: closing with unread bytes would reset the connection, and a reset can destroy
/// the refusal before the client reads it.
async fn linger(tls: &mut TlsStream<TcpStream>) {
    let drain = async {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(LINGER_TIME, drain).await;
}

fn unreachable_target(endpoint: &BoundEndpoint, address: &str, cause: &str) -> ConnResponse {
    ConnResponse::error(
        TARGET_UNREACHABLE_CODE,
        format!(
            "endpoint {} could not reach its upstream {address}: {cause}",
            endpoint.url
        ),
    )
}

/// What the ingress reads from the verified client certificate.
pub(super) struct ClientIdentity {
    /// The first DNS SAN.
    account: Option<String>,
    serial: Vec<u8>,
}

impl ClientIdentity {
    pub(super) fn of(tls: &TlsStream<TcpStream>) -> Option<Self> {
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let account = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_string()),
                    _ => None,
                })
            });
        Some(ClientIdentity {
            account,
            serial: cert.raw_serial().to_vec(),
        })
    }

    /// The first DNS SAN, which the ingress takes as the account.
    pub(super) fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The serial number's DER content bytes, as [`SandboxCa::is_revoked`] compares them.
    pub(super) fn serial(&self) -> &[u8] {
        &self.serial
    }
}

/// Counts the bytes read through it: tells a silent client from one that stalled mid-frame.
struct CountingReader<'a, R> {
    inner: &'a mut R,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.bytes += (buf.filled().len() - before) as u64;
        polled
    }
}

/// How a pipe direction failed: the reset fault is not an I/O error, it is the plan.
pub(super) enum PipeError {
    Io(io::Error),
    ResetFault { up: u64 },
}

impl From<io::Error> for PipeError {
    fn from(e: io::Error) -> Self {
        PipeError::Io(e)
    }
}

/// Pipes bytes both ways until both directions end. EOF on one side becomes a write shutdown on
/// the other (close_notify toward the client); an error or a reset fault ends both.
async fn pipe(
    tls: TlsStream<TcpStream>,
    backend: TcpStream,
    endpoint: &BoundEndpoint,
    reset: Option<ResetHandle>,
) -> io::Result<PipeEnd> {
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut backend_read, mut backend_write) = backend.into_split();
    let up = copy_client_to_backend(&mut client_read, &mut backend_write, endpoint);
    let down = async {
        let n = tokio::io::copy(&mut backend_read, &mut client_write).await?;
        // Sends close_notify, then shuts down the TCP write side.
        client_write.shutdown().await?;
        Ok::<_, PipeError>(n)
    };
    let piped = tokio::try_join!(up, down);
    pipe_end(piped, reset)
}

/// `inline_echo`: the client's bytes go straight back, with the faults applied on the way in;
/// the client's EOF ends the echo with close_notify.
async fn echo_in_place(
    tls: TlsStream<TcpStream>,
    endpoint: &BoundEndpoint,
    reset: Option<ResetHandle>,
) -> io::Result<PipeEnd> {
    let (mut read, mut write) = tokio::io::split(tls);
    let echoed = copy_client_to_backend(&mut read, &mut write, endpoint).await;
    pipe_end(echoed.map(|n| (n, n)), reset)
}

fn pipe_end(
    piped: Result<(u64, u64), PipeError>,
    reset: Option<ResetHandle>,
) -> io::Result<PipeEnd> {
    match piped {
        Ok((up, down)) => Ok(PipeEnd::Done { up, down }),
        Err(PipeError::ResetFault { up }) => {
            if let Some(handle) = reset {
                handle.fire()?;
            }
            // Returning drops both halves of the TLS stream without close_notify.
            Ok(PipeEnd::Reset { up })
        }
        Err(PipeError::Io(e)) => Err(e),
    }
}

/// Copies client→backend, applying the read-rate and reset faults. On client EOF (close_notify)
/// it shuts down the backend's write side.
pub(super) async fn copy_client_to_backend<R, W>(
    client: &mut R,
    backend: &mut W,
    endpoint: &BoundEndpoint,
) -> Result<u64, PipeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut pacer = endpoint.faults.read_rate.map(ReadPacer::new);
    let budget = endpoint.faults.reset_after_bytes;
    let mut buf = vec![0u8; PIPE_BUFFER];
    let mut total: u64 = 0;
    loop {
        let mut limit = buf.len();
        if let Some(budget) = budget {
            let left = budget.saturating_sub(total);
            if left == 0 {
                return Err(PipeError::ResetFault { up: total });
            }
            limit = limit.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if let Some(p) = pacer.as_ref() {
            limit = limit.min(p.chunk_limit());
        }
        let n = client.read(&mut buf[..limit]).await?;
        if n == 0 {
            backend.shutdown().await?;
            return Ok(total);
        }
        backend.write_all(&buf[..n]).await?;
        // A no-op on a TCP target; what a TLS or HTTP/2 writer (an in-place echo's) still
        // holds must reach the client before the next read waits.
        backend.flush().await?;
        total += n as u64;
        if let Some(p) = pacer.as_mut() {
            p.consumed(n).await;
        }
    }
}
