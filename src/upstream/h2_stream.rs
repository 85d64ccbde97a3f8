//! One proxied connection carried as an HTTP/2 CONNECT stream: `AsyncRead`/`AsyncWrite` over h2's
//! `RecvStream`/`SendStream`, so the splice treats it like any other upstream socket.
//!
//! Half-close maps onto HTTP/2 exactly: `poll_shutdown` sends END_STREAM and leaves the receive
//! side open; the peer's END_STREAM reads as EOF. Received bytes release flow-control window only
//! once they are read out, so a slow reader pushes back on the ingress; writes wait for send
//! window. Dropping the stream before both sides ended resets it (h2 sends RST_STREAM CANCEL).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::UpstreamError;
use super::early::early_failure;
use super::multiplex::{EarlyAnswer, StreamSlot, connect_answer};

/// The largest single write handed to h2 (it copies; larger writes are split by the caller's loop).
const MAX_WRITE: usize = 64 * 1024;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: Recv,
    /// Received, not yet read out.
    pending: Bytes,
    /// END_STREAM sent.
    shut: bool,
    /// The multiplexer's count of streams on this connection; released on drop.
    _slot: Option<StreamSlot>,
}

/// The receive side: open, or (with early data) the CONNECT's answer still to come, or refused.
enum Recv {
    Open(RecvStream),
    Awaiting(Box<EarlyAnswer>),
    Failed,
}

fn refused_before() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "the ingress did not accept this stream",
    )
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("pending", &self.pending.len())
            .field("shut", &self.shut)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Option<StreamSlot>,
    ) -> H2Stream {
        H2Stream {
            send,
            recv: Recv::Open(recv),
            pending: Bytes::new(),
            shut: false,
            _slot: slot,
        }
    }

    /// A stream whose CONNECT was sent with early data: writes go out at once, the first read
    /// waits for the answer (a refusal fails it with the ingress's `[code] message`).
    pub(crate) fn awaiting(
        send: SendStream<Bytes>,
        answer: EarlyAnswer,
        slot: StreamSlot,
    ) -> H2Stream {
        H2Stream {
            send,
            recv: Recv::Awaiting(Box::new(answer)),
            pending: Bytes::new(),
            shut: false,
            _slot: Some(slot),
        }
    }

    /// Waits for the CONNECT's answer if it is still to come; then the receive side is open.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answer = match &mut self.recv {
            Recv::Open(_) => return Poll::Ready(Ok(())),
            Recv::Failed => return Poll::Ready(Err(refused_before())),
            Recv::Awaiting(answer) => answer,
        };
        let answered = match Pin::new(&mut answer.response).poll(cx) {
            Poll::Ready(a) => a,
            Poll::Pending => match answer.deadline.poll_expired(cx, &answer.address) {
                Some(timeout) => {
                    let failed = early_failure(&answer.ingress, &answer.endpoint, timeout);
                    self.recv = Recv::Failed;
                    return Poll::Ready(Err(failed));
                }
                None => return Poll::Pending,
            },
        };
        let e = match answered.map(connect_answer) {
            Ok(Ok(body)) => {
                self.recv = Recv::Open(body);
                return Poll::Ready(Ok(()));
            }
            Ok(Err(refusal)) => {
                if let Some(slot) = &self._slot {
                    slot.refused();
                }
                UpstreamError::Refused {
                    addr: answer.address.to_string(),
                    endpoint: answer.endpoint.to_string(),
                    failure: refusal,
                }
            }
            Err(e) => UpstreamError::Upgrade {
                addr: answer.address.to_string(),
                reason: format!("the HTTP/2 CONNECT got no answer: {e}"),
            },
        };
        let failed = early_failure(&answer.ingress, &answer.endpoint, e);
        self.recv = Recv::Failed;
        Poll::Ready(Err(failed))
    }

    /// A send failed before the answer was read: a refusal ends the stream (often with a reset
    /// that fails our sends), and its answer is then already here; report that instead.
    fn explain_send_error(&mut self, e: io::Error, cx: &mut Context<'_>) -> io::Error {
        match &self.recv {
            Recv::Awaiting(_) => match self.poll_answer(cx) {
                Poll::Ready(Err(answered)) => answered,
                Poll::Ready(Ok(())) | Poll::Pending => e,
            },
            Recv::Open(_) | Recv::Failed => e,
        }
    }
}

/// h2 errors as I/O errors: resets and GOAWAY are connection resets, transport errors stay what
/// they were.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 transport error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_answer(cx))?;
        let Recv::Open(recv) = &mut this.recv else {
            return Poll::Ready(Err(refused_before()));
        };
        while this.pending.is_empty() {
            match ready!(recv.poll_data(cx)) {
                // END_STREAM: the peer half-closed.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.pending = data,
                // A reset with NO_ERROR is the peer finishing early, not a failure.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.pending.len().min(out.remaining());
        out.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // Window opens only as the application consumes.
        let _ = recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let want = buf.len().min(MAX_WRITE);
        this.send.reserve_capacity(want);
        loop {
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(want);
                if let Err(e) = this
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    return Poll::Ready(Err(this.explain_send_error(io_error(e), cx)));
                }
                return Poll::Ready(Ok(n));
            }
            // Capacity can be announced as 0; wait for a real increase.
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(this.explain_send_error(io_error(e), cx))),
                None => {
                    let closed = io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the HTTP/2 stream is closed for sending",
                    );
                    return Poll::Ready(Err(this.explain_send_error(closed, cx)));
                }
            }
        }
    }

    /// Data is queued on the connection, whose driver task writes it out.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-close: END_STREAM on an empty DATA frame; reading continues.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        this.shut = true;
        this.send.reserve_capacity(0);
        Poll::Ready(this.send.send_data(Bytes::new(), true).map_err(io_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// An in-memory client/server pair; returns the client's stream for one CONNECT and the
    /// server's halves of it.
    async fn pair() -> (H2Stream, SendStream<Bytes>, RecvStream) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (server_tx, server_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            assert_eq!(req.method(), Method::CONNECT);
            assert_eq!(req.uri().authority().unwrap().as_str(), "svc.ns:80");
            let send = respond.send_response(Response::new(()), false).unwrap();
            server_tx.send((send, req.into_body())).ok().unwrap();
            // Keep driving the connection.
            std::future::poll_fn(|cx| conn.poll_closed(cx)).await.ok();
        });
        let (send_request, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            conn.await.ok();
        });
        let mut send_request = send_request.ready().await.unwrap();
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("svc.ns:80")
            .body(())
            .unwrap();
        let (response, send) = send_request.send_request(req, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let stream = H2Stream::new(send, response.into_body(), None);
        let (server_send, server_recv) = server_rx.await.unwrap();
        (stream, server_send, server_recv)
    }

    async fn read_body(recv: &mut RecvStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[tokio::test]
    async fn shutdown_sends_end_stream_and_the_reply_still_flows() {
        let (mut stream, mut server_send, mut server_recv) = pair().await;
        stream.write_all(b"request").await.unwrap();
        // Before the shutdown the server sees the data but not the end of the stream.
        let first = server_recv.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"request");
        assert!(!server_recv.is_end_stream());

        stream.shutdown().await.unwrap();
        assert_eq!(
            read_body(&mut server_recv).await,
            b"",
            "END_STREAM, no more data"
        );
        assert!(server_recv.is_end_stream());

        server_send
            .send_data(Bytes::from_static(b"reply after half-close"), true)
            .unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");
    }

    #[tokio::test]
    async fn the_peers_end_stream_reads_as_eof_while_writing_continues() {
        let (mut stream, mut server_send, mut server_recv) = pair().await;
        server_send
            .send_data(Bytes::from_static(b"banner"), true)
            .unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"banner");

        // More than the default 64 KiB window: the server must read for the write to finish.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move { read_body(&mut server_recv).await });
        stream.write_all(&big).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), big);
    }

    #[tokio::test]
    async fn a_reset_is_a_connection_reset() {
        let (mut stream, mut server_send, _server_recv) = pair().await;
        server_send.send_reset(Reason::INTERNAL_ERROR);
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }
}
