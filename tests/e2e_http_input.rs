//! Bad input from http clients is the client's fault: `400` (or `408` for a stalled body),
//! logged at debug, and the upstream is not blamed.

mod common;

use common::{read_all, start_proxy};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request head it reads with `200 ok`, reading bodies as they come.
async fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: std::net::SocketAddr, idle: &str) -> String {
    format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - name: web
      address: 127.0.0.1:0
      protocol: http
      idle_timeout: {idle}
      routes: [ {{ cluster: up }} ]
  clusters:
    - {{ name: up, type: static, endpoints: [ \"{upstream}\" ] }}
"
    )
}

async fn send(proxy: std::net::SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_all(&mut c).await).into_owned()
}

#[tokio::test]
async fn http_1_1_without_host_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config(upstream().await, "1h"), dir.path()).await;
    let web = proxy.listener("web");
    let answer = send(web, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let answer = send(
        web,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn an_invalid_chunk_size_is_400_not_502() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config(upstream().await, "1h"), dir.path()).await;
    let answer = send(
        proxy.listener("web"),
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_closed_after_idle_timeout_with_408() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config(upstream().await, "1s"), dir.path()).await;
    // Announces 10 bytes, sends 3, then nothing: the proxy gives up after the idle timeout.
    let answer = send(
        proxy.listener("web"),
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
}
