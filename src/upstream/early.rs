//! Early data on the binding upgrade: the stream is handed to the splice as soon as the
//! `ConnRequest` is written, so the client's first bytes follow it without waiting a round trip
//! for the `ConnResponse`. Writes pass straight through; the first read takes the `ConnResponse`
//! off the stream (exactly its bytes, nothing beyond: they belong to the pipe) and either turns
//! into a pass-through or fails the stream with the ingress's `[code] message`.
//!
//! A refusal found this way is not retried (the client's bytes may have gone out); it is logged
//! at warn and counted as an upstream connect failure, as a refusal before the splice would be.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::UpstreamError;
use super::dial::{IngressTls, accept_response};
use crate::wire::{ConnResponse, FrameError, FrameReader};

/// An upgraded TLS stream whose `ConnResponse` may still be on its way. Generic over the stream
/// only so `crate::fuzzing` can run it on bytes in memory; the proxy uses TLS to the ingress.
pub struct EarlyUpgrade<S = IngressTls> {
    tls: S,
    answer: Answer,
}

enum Answer {
    Awaiting(Box<PendingResponse>),
    Accepted,
    /// Refused (or unreadable): reported once, then every operation fails.
    Failed,
}

/// The `ConnResponse` being read, and what is needed to report it.
struct PendingResponse {
    ingress: Arc<str>,
    address: Arc<str>,
    endpoint: Arc<str>,
    frame: FrameReader,
    deadline: AnswerDeadline,
}

/// How long an ingress has to answer after the client's early bytes went out: its
/// `connect_timeout`, counted from the request. Without it the wait would be bounded only by the
/// connection's `idle_timeout` (an hour by default).
pub(crate) struct AnswerDeadline {
    /// `None`: no deadline (in-memory streams outside a runtime, as `crate::fuzzing` drives).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    after: std::time::Duration,
}

impl AnswerDeadline {
    /// Starts counting now; needs a tokio runtime.
    pub(crate) fn new(after: std::time::Duration) -> AnswerDeadline {
        AnswerDeadline {
            sleep: Some(Box::pin(tokio::time::sleep(after))),
            after,
        }
    }

    /// No deadline at all.
    pub(crate) fn none() -> AnswerDeadline {
        AnswerDeadline {
            sleep: None,
            after: std::time::Duration::ZERO,
        }
    }

    /// The timeout error once the deadline has passed (registers for a wake-up until then).
    pub(crate) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        addr: &str,
    ) -> Option<UpstreamError> {
        use std::future::Future;
        let sleep = self.sleep.as_mut()?;
        sleep
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| UpstreamError::Timeout {
                addr: addr.to_owned(),
                after: self.after,
            })
    }
}

impl<S> std::fmt::Debug for EarlyUpgrade<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyUpgrade")
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl<S> EarlyUpgrade<S> {
    pub(crate) fn new(
        tls: S,
        ingress: Arc<str>,
        address: Arc<str>,
        endpoint: Arc<str>,
        answer_within: AnswerDeadline,
    ) -> EarlyUpgrade<S> {
        EarlyUpgrade {
            tls,
            answer: Answer::Awaiting(Box::new(PendingResponse {
                ingress,
                address,
                endpoint,
                frame: FrameReader::default(),
                deadline: answer_within,
            })),
        }
    }

    /// Whether the ingress's answer has been read and accepted.
    pub fn accepted(&self) -> bool {
        matches!(self.answer, Answer::Accepted)
    }
}

impl<S: AsyncRead + Unpin> EarlyUpgrade<S> {
    /// Reads the answer if it is still to come: `Ok` once accepted; a refusal is logged, counted
    /// and returned (once; later calls fail without a word).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pending = match &mut self.answer {
            Answer::Accepted => return Poll::Ready(Ok(())),
            Answer::Failed => return Poll::Ready(Err(not_accepted())),
            Answer::Awaiting(pending) => pending,
        };
        let verdict = match pending.frame.poll_frame(&mut self.tls, cx) {
            Poll::Ready(read) => pending.verdict(read),
            Poll::Pending => match pending.deadline.poll_expired(cx, &pending.address) {
                Some(timeout) => Err(timeout),
                None => return Poll::Pending,
            },
        };
        match verdict {
            Ok(()) => {
                self.answer = Answer::Accepted;
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                let failed = early_failure(&pending.ingress, &pending.endpoint, e);
                self.answer = Answer::Failed;
                Poll::Ready(Err(failed))
            }
        }
    }

    /// A write failed before the answer was read: the ingress may have refused and closed, with
    /// its answer already here; report that rather than the bare write error.
    fn explain_write_error(&mut self, e: io::Error, cx: &mut Context<'_>) -> io::Error {
        match &self.answer {
            Answer::Awaiting(_) => match self.poll_answer(cx) {
                Poll::Ready(Err(answered)) => answered,
                Poll::Ready(Ok(())) | Poll::Pending => e,
            },
            Answer::Accepted | Answer::Failed => e,
        }
    }
}

/// Reports an upgrade (or CONNECT) that failed after the stream was handed over: counted as an
/// upstream connect failure, logged at warn, and returned as the error the stream fails with.
pub(crate) fn early_failure(ingress: &str, endpoint: &str, e: UpstreamError) -> io::Error {
    crate::telemetry::upstream_connect_failed();
    tracing::warn!(%ingress, %endpoint, "binding upgrade failed after early data, closing the connection: {e}");
    let kind = match e {
        UpstreamError::Refused { .. } => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}

fn not_accepted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "the ingress did not accept this connection",
    )
}

impl PendingResponse {
    /// The response's verdict, as the error the stream fails with when it is a refusal.
    fn verdict(&self, read: Result<ConnResponse, FrameError>) -> Result<(), UpstreamError> {
        let response = read.map_err(|e| UpstreamError::upgrade(&self.address, e))?;
        accept_response(&self.ingress, &self.address, &self.endpoint, &response)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EarlyUpgrade<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for EarlyUpgrade<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.tls).poll_write(cx, buf)) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(this.explain_write_error(e, cx))),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.tls).poll_write_vectored(cx, bufs)) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(this.explain_write_error(e, cx))),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.tls).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(this.explain_write_error(e, cx))),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}
