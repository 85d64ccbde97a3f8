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
//! Like the rest of the sandbox this is written from the protocol, not from bindgate's client:
//! the byte-pipe adapters over h2's streams (`StreamReader`, `StreamWriter`) are the sandbox's
//! own, so a flaw in bindgate's HTTP/2 stream cannot cancel itself out here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bindgate_wire::{ConnRequest, ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::endpoints::BoundEndpoint;
use super::faults::REFUSE_CODE;
use super::ingress::{
    ACCOUNT_MISMATCH_CODE, Backend, ClientIdentity, Ingress, NOT_FOUND_CODE, PipeEnd, PipeError,
    TARGET_UNREACHABLE_CODE, copy_client_to_backend,
};

/// Flow-control windows granted to the client: per stream and per connection. The connection's
/// is far larger than the streams' together, so streams whose backend stops reading never hold
/// up the others on their connection.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024 * 1024;
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
    let piped = match backend {
        Backend::Tcp(backend) => pipe(request.into_body(), send, backend, &endpoint).await,
        Backend::InlineEcho => echo_in_place(request.into_body(), send, &endpoint).await,
    };
    match piped {
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
/// direction as on a plain connection (a reset fault resets the stream).
async fn pipe(
    recv: RecvStream,
    send: SendStream<Bytes>,
    backend: TcpStream,
    endpoint: &BoundEndpoint,
) -> io::Result<PipeEnd> {
    let (mut backend_read, mut backend_write) = backend.into_split();
    let mut from_client = StreamReader::new(recv);
    let mut to_client = StreamWriter::new(send);
    let up = async {
        copy_client_to_backend(&mut from_client, &mut backend_write, endpoint)
            .await
            .map_err(|e| match e {
                PipeError::Io(e) => {
                    PipeError::Io(io::Error::new(e.kind(), format!("client to target: {e}")))
                }
                fault => fault,
            })
    };
    let down = async {
        let total = tokio::io::copy(&mut backend_read, &mut to_client)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("target to client: {e}")))?;
        to_client.shutdown().await?;
        Ok::<_, PipeError>(total)
    };
    let piped = tokio::try_join!(up, down);
    stream_end(piped, &mut to_client)
}

/// `inline_echo` on a CONNECT stream: DATA straight back, faults applied on the way in; the
/// client's END_STREAM ends the echo with END_STREAM.
async fn echo_in_place(
    recv: RecvStream,
    send: SendStream<Bytes>,
    endpoint: &BoundEndpoint,
) -> io::Result<PipeEnd> {
    let mut from_client = StreamReader::new(recv);
    let mut to_client = StreamWriter::new(send);
    let echoed = copy_client_to_backend(&mut from_client, &mut to_client, endpoint).await;
    stream_end(echoed.map(|n| (n, n)), &mut to_client)
}

fn stream_end(
    piped: Result<(u64, u64), PipeError>,
    to_client: &mut StreamWriter,
) -> io::Result<PipeEnd> {
    match piped {
        Ok((up, down)) => Ok(PipeEnd::Done { up, down }),
        Err(PipeError::ResetFault { up }) => {
            to_client.reset(Reason::CANCEL);
            Ok(PipeEnd::Reset { up })
        }
        Err(PipeError::Io(e)) => Err(e),
    }
}

/// The largest piece of one write handed to h2 at a time; h2 copies it into its send buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// The client → target direction of a CONNECT stream as an `AsyncRead`: DATA frames in order, the
/// client's END_STREAM as EOF. Flow-control window goes back to the client only for bytes read
/// out of here, so a target that reads slowly slows the client down.
struct StreamReader {
    recv: RecvStream,
    /// What is left of the last DATA frame.
    unread: Bytes,
    /// END_STREAM (or a NO_ERROR reset) was seen: every further read is EOF.
    ended: bool,
}

impl StreamReader {
    fn new(recv: RecvStream) -> Self {
        StreamReader {
            recv,
            unread: Bytes::new(),
            ended: false,
        }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Nothing to fill: reading a frame now would report 0 bytes, which means EOF.
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.unread.is_empty() {
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(frame)) => this.unread = frame,
                None => this.ended = true,
                // The client stopped sending without error: as good as END_STREAM.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => this.ended = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        // Best effort: the stream may be gone already, and then there is no window to give.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

/// The target → client direction of a CONNECT stream as an `AsyncWrite`: bytes go out as DATA
/// frames within the client's flow-control window; `shutdown` sends END_STREAM and leaves the
/// other direction open.
struct StreamWriter {
    send: SendStream<Bytes>,
    /// END_STREAM sent.
    finished: bool,
}

impl StreamWriter {
    fn new(send: SendStream<Bytes>) -> Self {
        StreamWriter {
            send,
            finished: false,
        }
    }

    /// Ends the stream abruptly (RST_STREAM), as the reset fault wants.
    fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was already ended",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wanted = buf.len().min(WRITE_CHUNK);
        loop {
            // What the client's window (and h2's send buffer) lets us queue right now.
            let granted = this.send.capacity().min(wanted);
            if granted > 0 {
                let chunk = Bytes::copy_from_slice(&buf[..granted]);
                return Poll::Ready(match this.send.send_data(chunk, false) {
                    Ok(()) => Ok(granted),
                    Err(e) => Err(h2_to_io(e)),
                });
            }
            // Ask for window and wait until some is assigned to this stream.
            this.send.reserve_capacity(wanted);
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client no longer accepts data on this stream",
                    )));
                }
            }
        }
    }

    /// Queued DATA is written by the connection's task (`serve` polls it), not by this handle.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            this.finished = true;
            // Give back window reserved for writes that will not come.
            this.send.reserve_capacity(0);
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// An h2 error as the I/O error a byte pipe expects: a reset stream or a GOAWAY'd connection is a
/// connection reset; a failure of the TLS connection underneath is passed on as it was.
fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 connection failed"));
    }
    if e.is_reset() || e.is_go_away() {
        return io::Error::new(io::ErrorKind::ConnectionReset, e);
    }
    io::Error::other(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The client's ends of one accepted CONNECT stream.
    struct Client {
        send: SendStream<Bytes>,
        recv: RecvStream,
        _requests: h2::client::SendRequest<Bytes>,
    }

    impl Client {
        /// Everything the server sends until END_STREAM, giving window back as it goes.
        async fn read_all(&mut self) -> Vec<u8> {
            let mut got = Vec::new();
            while let Some(frame) = self.recv.data().await {
                let frame = frame.unwrap();
                self.recv
                    .flow_control()
                    .release_capacity(frame.len())
                    .unwrap();
                got.extend_from_slice(&frame);
            }
            got
        }
    }

    /// One CONNECT over an in-memory HTTP/2 connection, answered 200 by a server whose stream is
    /// wrapped in the adapters under test. The server keeps its connection driven in a task.
    async fn connect() -> (Client, StreamReader, StreamWriter) {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            assert_eq!(request.method(), Method::CONNECT);
            let send = respond.send_response(Response::new(()), false).unwrap();
            let recv = request.into_body();
            // Drives the connection; an error ends it (h2 keeps returning the error).
            tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            (StreamReader::new(recv), StreamWriter::new(send))
        });
        let (requests, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("svc.ns:80")
            .body(())
            .unwrap();
        let mut requests = requests.ready().await.unwrap();
        let (response, send) = requests.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (reader, writer) = server.await.unwrap();
        let client = Client {
            send,
            recv: response.into_body(),
            _requests: requests,
        };
        (client, reader, writer)
    }

    #[tokio::test]
    async fn client_end_stream_reads_as_eof_and_the_answer_still_flows() {
        let (mut client, mut reader, mut writer) = connect().await;
        client
            .send
            .send_data(Bytes::from_static(b"last words"), true)
            .unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // EOF stays EOF.
        assert_eq!(reader.read(&mut [0u8; 4]).await.unwrap(), 0);

        writer.write_all(b"still heard").await.unwrap();
        writer.shutdown().await.unwrap();
        assert_eq!(client.read_all().await, b"still heard");
        assert!(writer.write(b"more").await.is_err());
    }

    #[tokio::test]
    async fn writes_past_the_clients_window_complete_as_it_reads() {
        let (mut client, _reader, mut writer) = connect().await;
        // Sixteen times the default 64 KiB window: the writer must wait for WINDOW_UPDATEs.
        let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 256) as u8).collect();
        let sent = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        assert_eq!(client.read_all().await, payload);
        writing.await.unwrap();
    }

    #[tokio::test]
    async fn client_bytes_arrive_in_order_through_small_reads() {
        let (mut client, mut reader, _writer) = connect().await;
        let reading = tokio::spawn(async move {
            // Smaller than most frames: a frame is handed out over several reads.
            let mut buf = [0u8; 100];
            let mut got = Vec::new();
            loop {
                match reader.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut expected = Vec::new();
        // Fewer small frames than h2's budget for unread small DATA frames (it answers a flood
        // of them with GOAWAY ENHANCE_YOUR_CALM).
        for i in 0..64u32 {
            let frame: Vec<u8> = (0..(i * 37 % 700 + 1)).map(|b| (b + i) as u8).collect();
            expected.extend_from_slice(&frame);
            client.send.send_data(Bytes::from(frame), false).unwrap();
        }
        client.send.send_data(Bytes::new(), true).unwrap();
        assert_eq!(reading.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_client_reset_is_a_connection_reset() {
        let (mut client, mut reader, _writer) = connect().await;
        client.send.send_reset(Reason::CANCEL);
        let err = reader.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[tokio::test]
    async fn reset_reaches_the_client_as_rst_stream() {
        let (mut client, _reader, mut writer) = connect().await;
        writer.write_all(b"partial").await.unwrap();
        writer.reset(Reason::CANCEL);
        // "partial" may or may not get out before the reset; the reset itself must.
        let err = loop {
            match client.recv.data().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended cleanly instead of being reset"),
            }
        };
        assert_eq!(err.reason(), Some(Reason::CANCEL));
    }
}
