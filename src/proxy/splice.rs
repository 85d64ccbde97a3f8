//! Moving bytes both ways with half-close propagated: EOF from one side becomes a write shutdown
//! on the other while the opposite direction keeps flowing. The connection ends when both
//! directions are done, on an error, or when no byte has moved for `idle_timeout`.
//!
//! One shutdown is left out: the downstream's (the client's TCP connection), when the client
//! had already ended its side. Both directions are then done, and the socket is closed as the
//! splice returns, which sends the same FIN: one system call less per connection.
//!
//! A direction holds a buffer only while bytes are in flight: it borrows one from a per-thread
//! free list to read, and gives it back when the read finds nothing or all of it is written. An
//! idle connection holds no buffer at all (tokio's `copy_bidirectional` keeps two for a
//! connection's whole life), so memory follows the bytes moving, not the connections open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A direction's read size while bytes flow: two TLS records' worth.
const BUF_SIZE: usize = 32 * 1024;

/// Spare buffers kept per runtime thread; beyond it, returned buffers are freed.
const SPARE_BUFFERS: usize = 64;

mod buffers {
    use std::cell::RefCell;

    thread_local! {
        static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `BUF_SIZE` bytes, from the spares when there is one.
    pub(super) fn take() -> Box<[u8]> {
        SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; super::BUF_SIZE].into_boxed_slice())
    }

    /// Keeps `buf` for the next read on this thread, or frees it.
    pub(super) fn give(buf: Box<[u8]>) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < super::SPARE_BUFFERS {
                s.push(buf);
            }
        });
    }

    #[cfg(test)]
    pub(super) fn spare() -> usize {
        SPARE.with(|s| s.borrow().len())
    }
}

/// One direction of the copy: what was read and not yet written, and how far it got.
#[derive(Default)]
struct Direction {
    /// Held only while `pos < end`.
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    moved: u64,
}

impl Direction {
    /// Moves bytes from `r` to `w` until `r` has nothing more for now (`Pending`) or ends (then
    /// `w` is shut down, unless `closes_after` says that it is closed right after, and this
    /// returns `Ready(Ok(()))`).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        closes_after: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.end && !self.read_done {
                let mut buf = self.buf.take().unwrap_or_else(buffers::take);
                let mut rb = ReadBuf::new(&mut buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        buffers::give(buf);
                        if self.need_flush {
                            if let Poll::Ready(r) = w.as_mut().poll_flush(cx) {
                                r?;
                                self.need_flush = false;
                            }
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        buffers::give(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            buffers::give(buf);
                        } else {
                            (self.pos, self.end) = (0, n);
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            while self.pos < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                match w.as_mut().poll_write(cx, &buf[self.pos..self.end]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the peer accepts no more bytes",
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.moved += n as u64;
                        self.need_flush = true;
                    }
                }
            }
            if let Some(buf) = self.buf.take() {
                buffers::give(buf);
            }
            if self.read_done {
                if self.need_flush {
                    std::task::ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                if !closes_after {
                    std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpliceStats {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Records the time of the last read that moved bytes, as milliseconds since `origin`.
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Splices `downstream` and `upstream` until both directions finish or `idle_timeout` passes
/// without any byte read from either side.
pub async fn splice<D, U>(
    downstream: D,
    upstream: U,
    idle_timeout: Duration,
) -> Result<SpliceStats, SpliceError>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        origin: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let mut down = Tracked {
        inner: downstream,
        activity: activity.clone(),
    };
    let mut up = Tracked {
        inner: upstream,
        activity: activity.clone(),
    };
    let (mut d2u, mut u2d) = (Direction::default(), Direction::default());
    let copy = std::future::poll_fn(|cx| {
        let a = d2u.poll_copy(cx, Pin::new(&mut down), Pin::new(&mut up), false)?;
        // The upstream's end finishes the connection when the client's side is done already:
        // the downstream is then closed as this returns (its shutdown would add only a call).
        let b = u2d.poll_copy(cx, Pin::new(&mut up), Pin::new(&mut down), d2u.done)?;
        match (a, b) {
            (Poll::Ready(()), Poll::Ready(())) => {
                Poll::Ready(Ok::<_, io::Error>((d2u.moved, u2d.moved)))
            }
            _ => Poll::Pending,
        }
    });
    tokio::pin!(copy);
    loop {
        let deadline = activity.last() + idle_timeout;
        tokio::select! {
            r = &mut copy => {
                let (d2u, u2d) = r?;
                return Ok(SpliceStats { downstream_to_upstream: d2u, upstream_to_downstream: u2d });
            }
            _ = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle_timeout <= Instant::now() {
                    return Err(SpliceError::Idle(idle_timeout));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn half_close_lets_the_reply_flow() {
        let (client, proxy_down) = duplex(1024);
        let (proxy_up, server) = duplex(1024);
        let task = tokio::spawn(splice(proxy_down, proxy_up, Duration::from_secs(60)));

        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        client_w.write_all(b"request").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "server sees the request then EOF");
        server_w.write_all(b"reply after EOF").await.unwrap();
        server_w.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after EOF");
        let stats = task.await.unwrap().unwrap();
        assert_eq!(
            stats,
            SpliceStats {
                downstream_to_upstream: 7,
                upstream_to_downstream: 15
            }
        );
    }

    /// Counts the shutdowns asked of the stream it wraps.
    struct CountShutdowns<S> {
        inner: S,
        shutdowns: Arc<AtomicU64>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountShutdowns<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountShutdowns<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// When the client ends its side first, the upstream's end closes the client's connection
    /// without a shutdown before it (the close sends the EOF); when the upstream ends first,
    /// the client, still sending, gets the shutdown at once. The upstream is shut down in both.
    #[tokio::test]
    async fn the_client_is_shut_down_only_while_it_still_sends() {
        for client_first in [true, false] {
            let (client, proxy_down) = duplex(1024);
            let (proxy_up, server) = duplex(1024);
            let (down_shutdowns, up_shutdowns) = (Arc::default(), Arc::default());
            let down = CountShutdowns {
                inner: proxy_down,
                shutdowns: Arc::clone(&down_shutdowns),
            };
            let up = CountShutdowns {
                inner: proxy_up,
                shutdowns: Arc::clone(&up_shutdowns),
            };
            let task = tokio::spawn(splice(down, up, Duration::from_secs(60)));
            let (mut client_r, mut client_w) = tokio::io::split(client);
            let (mut server_r, mut server_w) = tokio::io::split(server);
            let mut got = Vec::new();
            if client_first {
                client_w.write_all(b"ping").await.unwrap();
                client_w.shutdown().await.unwrap();
                server_r.read_to_end(&mut got).await.unwrap();
                server_w.write_all(b"pong").await.unwrap();
                server_w.shutdown().await.unwrap();
                let mut reply = Vec::new();
                client_r.read_to_end(&mut reply).await.unwrap();
                assert_eq!(reply, b"pong", "the client reads the answer, then EOF");
                task.await.unwrap().unwrap();
                assert_eq!(down_shutdowns.load(Ordering::SeqCst), 0);
            } else {
                server_w.write_all(b"hello").await.unwrap();
                server_w.shutdown().await.unwrap();
                let mut greeting = Vec::new();
                client_r.read_to_end(&mut greeting).await.unwrap();
                assert_eq!(greeting, b"hello", "EOF while the client's side is open");
                assert_eq!(down_shutdowns.load(Ordering::SeqCst), 1);
                client_w.write_all(b"bye").await.unwrap();
                client_w.shutdown().await.unwrap();
                server_r.read_to_end(&mut got).await.unwrap();
                task.await.unwrap().unwrap();
            }
            assert_eq!(got, if client_first { &b"ping"[..] } else { b"bye" });
            assert_eq!(
                up_shutdowns.load(Ordering::SeqCst),
                1,
                "client_first {client_first}"
            );
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut client, proxy_down) = duplex(1 << 20);
        let (proxy_up, mut server) = duplex(1 << 20);
        let spare_before = buffers::spare();
        // Polled on this thread (current-thread runtime), so the spares it uses are ours.
        let mut task = Box::pin(splice(proxy_down, proxy_up, Duration::from_secs(60)));
        let mut got = vec![0u8; 100_000];
        client.write_all(&vec![7u8; 100_000]).await.unwrap();
        tokio::select! {
            biased;
            _ = &mut task => panic!("ended early"),
            r = server.read_exact(&mut got) => { r.unwrap(); }
        }
        assert!(got.iter().all(|b| *b == 7));
        // Nothing in flight: the direction's buffer went back to the spares.
        tokio::select! {
            biased;
            _ = &mut task => panic!("ended early"),
            _ = tokio::task::yield_now() => {}
        }
        assert_eq!(buffers::spare(), spare_before.max(1));
        drop(client);
        drop(server);
        let _ = task.await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed() {
        let (_client, proxy_down) = duplex(64);
        let (proxy_up, _server) = duplex(64);
        let r = splice(proxy_down, proxy_up, Duration::from_secs(30)).await;
        assert!(matches!(r, Err(SpliceError::Idle(d)) if d == Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_timeout() {
        let (mut client, proxy_down) = duplex(64);
        let (proxy_up, mut server) = duplex(64);
        let task = tokio::spawn(splice(proxy_down, proxy_up, Duration::from_secs(10)));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        // 30 s have passed in total, but never 10 s without traffic.
        assert!(!task.is_finished());
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        assert!(task.await.unwrap().is_ok());
    }
}
