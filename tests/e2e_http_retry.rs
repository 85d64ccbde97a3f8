//! http listeners send an idempotent request without a body once more when its upstream
//! connection breaks before the answer; a request with a body is never sent twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{read_all, start_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream whose first connection reads a request and closes without answering; every later
/// connection answers `200 again`. Counts the requests it read.
async fn flaky_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            let drop_it = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                // Read the head (and any small body) of one request.
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                if drop_it {
                    return; // closes without an answer
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nagain",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, requests)
}

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - name: web
      address: 127.0.0.1:0
      protocol: http
      routes: [ {{ cluster: flaky }} ]
  clusters:
    - {{ name: flaky, type: static, endpoints: [ \"{upstream}\" ] }}
"
    )
}

async fn send(proxy: std::net::SocketAddr, request: &str) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8(read_all(&mut c).await).unwrap()
}

#[tokio::test]
async fn a_get_is_sent_again_when_the_upstream_breaks_before_answering() {
    let (upstream, requests) = flaky_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config(upstream), dir.path()).await;
    let answer = send(
        proxy.listener("web"),
        "GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("again"), "{answer}");
    assert_eq!(requests.load(Ordering::SeqCst), 2, "sent twice");
}

#[tokio::test]
async fn a_post_with_a_body_is_never_sent_twice() {
    let (upstream, requests) = flaky_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config(upstream), dir.path()).await;
    let answer = send(
        proxy.listener("web"),
        "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once");
}
