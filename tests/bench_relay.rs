//! The load benchmark's latency relay (`benches/harness/relay.rs`, behind `--rtt`): bytes arrive
//! intact and in order in both directions, a half-close is propagated, and the delay it exists to
//! impose is there. Only lower bounds on that delay are checked (they are the relay's behaviour);
//! speed is never asserted.

#[path = "../benches/harness/relay.rs"]
mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const RTT: Duration = Duration::from_millis(20);
const LIMIT: Duration = Duration::from_secs(30);

/// An echo server: each connection echoes until end of stream, then half-closes its side.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_intact_and_in_order_and_end_of_stream_follows() {
    let relay = relay::Relay::start(RTT, &[echo_server().await]).expect("relay starts");
    // More than one direction's queue holds, so the reader has to wait for room on the way.
    let sent = pattern(2 * relay::QUEUE_BYTES + 12_345);
    let stream = TcpStream::connect(relay.addrs[0]).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(7_919) {
            w.write_all(chunk).await?;
        }
        // Our half-close travels through the relay to the echo server, whose own half-close
        // travels back: reading to the end below depends on both.
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut back = Vec::with_capacity(sent.len());
    timeout(LIMIT, r.read_to_end(&mut back))
        .await
        .expect("the echo ends within the limit")
        .expect("read to the end");
    let _w = writer.await.expect("writer task").expect("write");
    assert_eq!(back.len(), sent.len(), "every byte comes back");
    assert!(back == sent, "the bytes come back unchanged and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_from_upstream_leaves_the_other_direction_open() {
    // Upstream: says hello, half-closes, then reads what the client sends until its end.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        conn.write_all(b"hello").await?;
        conn.shutdown().await?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    });
    let relay = relay::Relay::start(RTT, &[upstream]).expect("relay starts");
    let mut client = TcpStream::connect(relay.addrs[0]).await.expect("connect");
    let mut greeting = Vec::new();
    timeout(LIMIT, client.read_to_end(&mut greeting))
        .await
        .expect("the upstream's end of stream arrives")
        .expect("read");
    assert_eq!(greeting, b"hello");
    // Our direction is still open after theirs ended.
    client.write_all(b"still here").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let got = timeout(LIMIT, server)
        .await
        .expect("the upstream sees our end of stream")
        .expect("server task")
        .expect("server io");
    assert_eq!(got, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_takes_at_least_the_rtt_and_the_first_one_a_handshake_more() {
    let relay = relay::Relay::start(RTT, &[echo_server().await]).expect("relay starts");
    let start = Instant::now();
    let mut stream = TcpStream::connect(relay.addrs[0]).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut byte = [0u8; 1];
    for round in 0..3u8 {
        let sent = Instant::now();
        stream.write_all(&[round]).await.expect("write");
        timeout(LIMIT, stream.read_exact(&mut byte))
            .await
            .expect("the echo arrives")
            .expect("read");
        assert_eq!(byte, [round]);
        let took = sent.elapsed();
        assert!(
            took >= RTT,
            "round {round} took {took:?}, less than the RTT {RTT:?}"
        );
        if round == 0 {
            // The emulated TCP handshake (one RTT) comes before the first byte's round trip.
            let first = start.elapsed();
            assert!(
                first >= 2 * RTT,
                "connect + first echo took {first:?}, less than two RTTs ({:?})",
                2 * RTT
            );
        }
    }
}
