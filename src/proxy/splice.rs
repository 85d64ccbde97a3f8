//! Moving bytes both ways with half-close propagated: EOF from one side becomes a write shutdown
//! on the other while the opposite direction keeps flowing. The connection ends when both
//! directions are done, on an error, or when no byte has moved for `idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer per direction: large enough for bulk throughput without hurting many idle conns much.
const BUF_SIZE: usize = 64 * 1024;

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
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF_SIZE, BUF_SIZE);
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
