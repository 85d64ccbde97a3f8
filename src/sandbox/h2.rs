//! The ingress over HTTP/2 (ALPN `h2`), for bindgate's multiplexed transport: each CONNECT stream
//! is one binding upgrade. `:authority` `host:port` is decided exactly like a `ConnRequest`
//! (same account check from the client certificate, same lookup, same faults); success is a 200
//! response and the stream becomes the byte pipe, with half-close both ways (END_STREAM from the
//! client → `shutdown(Write)` on the target; EOF from the target → END_STREAM). A refusal is a
//! 4xx/5xx response carrying the ngrok code and message in the `ngrok-error-code` and
//! `ngrok-error-message` headers:
//!
//! | status | code |
//! |---|---|
//! | 403 | `ERR_NGROK_15010` (account mismatch, revoked operator) |
//! | 404 | `ERR_NGROK_3200` (no such endpoint, or the `refuse` fault) |
//! | 502 | `ERR_NGROK_8012` (the target could not be dialed) |
//! | 400 / 405 | no code: not a CONNECT, or `:authority` is not `host:port` |
//!
//! Like the rest of the sandbox this is written from the protocol, not from bindgate's client.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::endpoints::BoundEndpoint;
use super::faults::REFUSE_CODE;
use super::ingress::{
    ACCOUNT_MISMATCH_CODE, ClientIdentity, Ingress, NOT_FOUND_CODE, PipeEnd, PipeError,
    TARGET_UNREACHABLE_CODE, copy_client_to_backend,
};
use crate::wire::{ConnRequest, ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER};

/// Flow-control windows granted to the client: per stream and per connection.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Concurrent streams one client connection may open (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_STREAMS: u32 = 10_000;

/// Serves one HTTP/2 connection until it closes. `deadline` bounds the HTTP/2 preface like the
/// `ConnRequest` of a plain connection; after that the connection lives as long as the client
/// keeps it.
pub(super) async fn serve(
    ingress: Arc<Ingress>,
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    identity: Option<ClientIdentity>,
    deadline: Instant,
) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(tls);
    let mut conn = match timeout_at(deadline, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%peer, "ingress HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "ingress HTTP/2 handshake timed out");
            return;
        }
    };
    debug!(%peer, "ingress HTTP/2 connection");
    let identity = Arc::new(identity);
    let goaway_after = ingress.h2_goaway_after_streams();
    let mut accepted: u64 = 0;
    let mut streams = JoinSet::new();
    let end = loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    accepted += 1;
                    if goaway_after == Some(accepted) {
                        debug!(%peer, accepted, "ingress HTTP/2 connection: stream limit reached, sending GOAWAY");
                        conn.graceful_shutdown();
                    }
                    streams.spawn(serve_stream(
                        Arc::clone(&ingress),
                        Arc::clone(&identity),
                        request,
                        respond,
                        peer,
                    ));
                }
                Some(Err(e)) => break format!("failed: {e}"),
                None => break "closed".to_owned(),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    debug!(%peer, streams = accepted, "ingress HTTP/2 connection {end}");
}

/// One CONNECT stream: decide, answer, pipe.
async fn serve_stream(
    ingress: Arc<Ingress>,
    identity: Arc<Option<ClientIdentity>>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
) {
    let target = match connect_target(&request) {
        Ok(target) => target,
        Err((status, reason)) => {
            debug!(%peer, "ingress refusing HTTP/2 stream: {reason}");
            refuse(&mut respond, status, "", &reason);
            return;
        }
    };
    let (endpoint, backend) = match ingress.upgrade(identity.as_ref().as_ref(), &target).await {
        Ok(ready) => ready,
        Err(response) => {
            debug!(
                %peer,
                host = %target.host,
                port = target.port,
                "ingress refusing HTTP/2 stream: {}",
                response.failure().unwrap_or_default()
            );
            refuse(
                &mut respond,
                status_for(&response.error_code),
                &response.error_code,
                &response.error_message,
            );
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            debug!(%peer, "ingress could not answer CONNECT: {e}");
            return;
        }
    };
    match pipe(request.into_body(), send, backend, &endpoint).await {
        Ok(PipeEnd::Done { up, down }) => {
            debug!(%peer, endpoint = %endpoint.url, up, down, "ingress stream done")
        }
        Ok(PipeEnd::Reset { up }) => {
            debug!(%peer, endpoint = %endpoint.url, up, "ingress stream reset (fault)")
        }
        Err(e) => debug!(%peer, endpoint = %endpoint.url, "ingress stream failed: {e}"),
    }
}

/// The `(host, port)` a CONNECT asks for, or the status and reason to refuse it with.
fn connect_target(request: &Request<RecvStream>) -> Result<ConnRequest, (StatusCode, String)> {
    if request.method() != Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "only CONNECT is served here, not {}",
                request.method().as_str()
            ),
        ));
    }
    let authority = request.uri().authority().ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            "CONNECT without :authority".to_owned(),
        )
    })?;
    let port = authority.port_u16().ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("CONNECT authority `{authority}` has no port"),
        )
    })?;
    Ok(ConnRequest {
        host: authority.host().to_owned(),
        port: i64::from(port),
        pod_identity: None,
    })
}

fn status_for(code: &str) -> StatusCode {
    match code {
        ACCOUNT_MISMATCH_CODE => StatusCode::FORBIDDEN,
        NOT_FOUND_CODE => StatusCode::NOT_FOUND,
        TARGET_UNREACHABLE_CODE => StatusCode::BAD_GATEWAY,
        c if c == REFUSE_CODE => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Answers `status` with the error headers and ends the stream (best effort).
fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, code: &str, message: &str) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !code.is_empty() {
        headers.insert(ERROR_CODE_HEADER, header_value(code));
    }
    headers.insert(ERROR_MESSAGE_HEADER, header_value(message));
    let _ = respond.send_response(response, true);
}

/// Header values are visible ASCII: anything else becomes `?`.
fn header_value(text: &str) -> HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// Pipes a stream and the target both ways with half-close; faults apply to the client → target
/// direction as on a plain connection (a reset fault resets the stream). The stream is the same
/// `AsyncRead`/`AsyncWrite` adapter bindgate's multiplexer uses (END_STREAM is EOF / shutdown).
async fn pipe(
    recv: RecvStream,
    send: SendStream<Bytes>,
    backend: TcpStream,
    endpoint: &BoundEndpoint,
) -> io::Result<PipeEnd> {
    let (mut backend_read, mut backend_write) = backend.into_split();
    let (mut client_read, mut client_write) =
        tokio::io::split(crate::upstream::H2Stream::new(send, recv, None));
    let up = async {
        copy_client_to_backend(&mut client_read, &mut backend_write, endpoint)
            .await
            .map_err(|e| match e {
                PipeError::Io(e) => {
                    PipeError::Io(io::Error::new(e.kind(), format!("client to target: {e}")))
                }
                fault => fault,
            })
    };
    let down = async {
        let total = tokio::io::copy(&mut backend_read, &mut client_write)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("target to client: {e}")))?;
        client_write.shutdown().await?;
        Ok::<_, PipeError>(total)
    };
    let result = tokio::try_join!(up, down);
    match result {
        Ok((up, down)) => Ok(PipeEnd::Done { up, down }),
        Err(PipeError::ResetFault { up }) => {
            client_read.unsplit(client_write).reset(Reason::CANCEL);
            Ok(PipeEnd::Reset { up })
        }
        Err(PipeError::Io(e)) => Err(e),
    }
}
