//! An in-process latency relay: a TCP forwarder that adds a round-trip time between its clients
//! and an upstream, so the load benchmark can show what the transports save across a network
//! (`--rtt MS`) on a loopback-only machine.
//!
//! The model, per accepted connection:
//! - the upstream is connected at once (it is on loopback);
//! - every chunk read in either direction is delivered `rtt / 2` after it was read, in order
//!   (a per-direction queue of chunks with due times, and a writer that sleeps until each is due);
//! - end of stream (a half-close) is propagated the same way, `rtt / 2` after it was read;
//! - the TCP handshake the loopback connect skipped is put back: nothing goes client → upstream
//!   before `accept + 1.5 × rtt` (in reality the client's first bytes leave after SYN/SYN-ACK, one
//!   round trip, and arrive half a round trip later);
//! - each direction holds at most `QUEUE_BYTES` in flight: a reader waits for room (backpressure),
//!   so a fast writer cannot make the relay buffer without bound.
//!
//! It does not model bandwidth, loss, jitter or reordering: a chunk of any size takes `rtt / 2`.
//!
//! The relay runs on its own current-thread runtime on a dedicated OS thread, so the load
//! generator's workers never delay its timers. Tokio timers have millisecond granularity: fine
//! for an RTT of 5 ms or more. It stops when the `Relay` is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until};

/// Bytes each direction of a connection may hold in flight before its reader waits.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// A running relay: one listener per upstream, all served by one thread.
pub struct Relay {
    /// `addrs[i]` forwards to the `i`-th upstream given to `start`.
    pub addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Binds one listener on 127.0.0.1 (an OS-chosen port) per upstream and serves them on a new
    /// thread. The listeners are bound when this returns.
    pub fn start(rtt: Duration, upstreams: &[SocketAddr]) -> io::Result<Relay> {
        let mut listeners = Vec::with_capacity(upstreams.len());
        let mut addrs = Vec::with_capacity(upstreams.len());
        for _ in upstreams {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let upstreams = upstreams.to_vec();
        std::thread::Builder::new()
            .name("bench-relay".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut serving = tokio::task::JoinSet::new();
                    for (l, upstream) in listeners.into_iter().zip(upstreams) {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                serving.spawn(accept_loop(l, upstream, rtt));
                            }
                            Err(e) => eprintln!("relay: cannot serve a listener: {e}"),
                        }
                    }
                    let mut stopped = stopped;
                    // Ends when `stop` is set or its sender is dropped; dropping the runtime
                    // then ends every connection.
                    let _ = stopped.wait_for(|s| *s).await;
                });
            })?;
        Ok(Relay { addrs, stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, rtt: Duration) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let accepted = Instant::now();
                tokio::spawn(async move {
                    if let Err(e) = relay_connection(client, upstream, rtt, accepted).await {
                        // A connection the peer resets is normal under load; stay quiet.
                        if e.kind() != io::ErrorKind::ConnectionReset {
                            eprintln!("relay: connection to {upstream}: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                eprintln!("relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn relay_connection(
    client: TcpStream,
    upstream: SocketAddr,
    rtt: Duration,
    accepted: Instant,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let one_way = rtt / 2;
    let handshake_done = accepted + rtt + one_way;
    let up = direction(client_read, server_write, one_way, handshake_done);
    let down = direction(server_read, client_write, one_way, accepted);
    let (up, down) = tokio::join!(up, down);
    up.and(down)
}

/// What a direction's reader hands its writer.
enum Item {
    Data(Vec<u8>, OwnedSemaphorePermit),
    Eof,
}

/// One direction: read chunks, queue them with due times, write each when due; then propagate
/// end of stream the same way. Ends when the end of stream was delivered or either side failed.
async fn direction<R, W>(
    mut from: R,
    mut to: W,
    delay: Duration,
    not_before: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let room = Arc::new(Semaphore::new(QUEUE_BYTES));
    // Unbounded in items, bounded in bytes by `room`; every item holds at least one byte's permit
    // except the single `Eof`.
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Item)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            // A reset or error ends the direction like an end of stream: the writer closes.
            let n: usize = from.read(&mut buf).await.unwrap_or_default();
            let at = (Instant::now() + delay).max(not_before);
            if n == 0 {
                let _ = queue.send((at, Item::Eof));
                return;
            }
            let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
                return;
            };
            if queue
                .send((at, Item::Data(buf[..n].to_vec(), permit)))
                .is_err()
            {
                // The writer failed; nothing more can be delivered.
                return;
            }
        }
    });
    let writer = async move {
        while let Some((at, item)) = due.recv().await {
            sleep_until(at).await;
            match item {
                Item::Data(bytes, permit) => {
                    to.write_all(&bytes).await?;
                    drop(permit);
                }
                Item::Eof => {
                    // The peer may have gone already; that is its end of stream too.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    let written = writer.await;
    // After end of stream the reader has returned already; after a failed write it may still be
    // waiting for bytes that can no longer be delivered.
    reader.abort();
    written
}
