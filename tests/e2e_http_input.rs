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

fn config_with(upstream: std::net::SocketAddr, listener_extra: &str, top: &str) -> String {
    format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
{top}
static_resources:
  listeners:
    - name: web
      address: 127.0.0.1:0
      protocol: http
      {listener_extra}
      routes:
        - {{ match: {{ host: public.test, path_prefix: /public/ }}, cluster: up }}
  clusters:
    - {{ name: up, type: static, endpoints: [ \"{upstream}\" ] }}
"
    )
}

/// Slowloris: a client that sends its request head one byte at a time is closed when
/// `request_headers_timeout` has passed, however steadily the bytes come.
#[tokio::test]
async fn a_trickled_request_head_is_closed_after_request_headers_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(upstream().await, "request_headers_timeout: 1s", "");
    let proxy = start_proxy(&cfg, dir.path()).await;
    let c = TcpStream::connect(proxy.listener("web")).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"GET /public/ HTTP/1.1\r\nhost: public.test\r\nx-slow: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let mut sent = 0u32;
        // Far longer than the timeout; a write error means the proxy closed the connection.
        while sent < 600 && wr.write_all(b"a").await.is_ok() {
            sent += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        sent
    });
    let mut got = Vec::new();
    tokio::time::timeout(common::GUARD, rd.read_to_end(&mut got))
        .await
        .expect("the proxy kept the trickling client open")
        .ok();
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    trickle.abort();
}

/// The global cap (`limits.max_connections`) holds across listeners; the connection over it is
/// answered `503` and counted, and a slot frees when a connection closes.
#[tokio::test]
async fn the_global_connection_cap_turns_away_the_connection_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(upstream().await, "", "limits: { max_connections: 2 }");
    let proxy = start_proxy(&cfg, dir.path()).await;
    let web = proxy.listener("web");
    let first = TcpStream::connect(web).await.unwrap();
    let second = TcpStream::connect(web).await.unwrap();
    common::wait_for_metric(proxy.admin(), "bindgate_connections_active", &[], 2.0).await;
    let answer = send(web, b"GET /public/ HTTP/1.1\r\nhost: public.test\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("global max_connections"), "{answer}");
    let scrape = common::scrape(proxy.admin()).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_connections_refused_total", &[]),
        1.0
    );
    drop(first);
    common::wait_for_metric(proxy.admin(), "bindgate_connections_active", &[], 1.0).await;
    let answer = send(
        web,
        b"GET /public/ HTTP/1.1\r\nhost: public.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    drop(second);
}

/// Routes match the normalised path, and that is what the upstream receives; what cannot be
/// normalised is refused.
#[tokio::test]
async fn routes_match_the_normalised_path() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut seen) = recording_upstream().await;
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let web = proxy.listener("web");
    let get = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
    };
    for (target, status) in [
        ("/public/../private", "404"),
        ("/public/%2e%2e/private", "404"),
        ("/public/..%2fprivate", "400"),
        ("/public/%2E%2E%2Fprivate", "400"),
        ("/public/a%zz", "400"),
        ("/x/../public/./a//b", "200"),
        ("/public/%7euser?q=%2e%2e", "200"),
    ] {
        let answer = send(web, get(target, "public.test").as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{target}: {answer}"
        );
    }
    let seen = seen.drain();
    assert_eq!(
        seen,
        vec![
            ("/public/a/b".to_owned(), "public.test".to_owned()),
            (
                "/public/~user?q=%2e%2e".to_owned(),
                "public.test".to_owned()
            ),
        ]
    );
}

/// An absolute-form target routes by its authority, and the upstream gets origin-form with
/// `Host` set to that authority: the two can no longer disagree.
#[tokio::test]
async fn an_absolute_form_target_and_host_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut seen) = recording_upstream().await;
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let web = proxy.listener("web");
    let answer = send(
        web,
        b"GET http://public.test/public/x HTTP/1.1\r\nhost: internal.other\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let answer = send(
        web,
        b"GET http://internal.other/public/x HTTP/1.1\r\nhost: public.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    let answer = send(
        web,
        b"GET https://public.test/public/x HTTP/1.1\r\nhost: public.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let seen = seen.drain();
    assert_eq!(
        seen,
        vec![("/public/x".to_owned(), "public.test".to_owned())]
    );
}

/// A Host the routes and the upstream could read differently (`a b`, `evil@public.test`), or
/// userinfo in an absolute-form target (which would have gone upstream as the Host, the
/// credentials with it), is `400` (RFC 9112 §3.2, RFC 9110 §4.2.4) and never forwarded. Before
/// the fix the userinfo reached the upstream in its Host, and the others were answered by route
/// lookup on a host they do not name (`404` here; a `*.test` route would have forwarded them).
#[tokio::test]
async fn a_host_that_is_not_host_and_port_is_400_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut seen) = recording_upstream().await;
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let web = proxy.listener("web");
    for (target, host) in [
        ("/public/a", "public.test evil"),
        ("/public/b", "evil@public.test"),
        ("/public/c", "public.test/x"),
        ("http://user:secret@public.test/public/d", "public.test"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = send(web, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{host}: {answer}");
        assert!(!answer.contains("secret"), "{answer}");
    }
    let answer = send(
        web,
        b"GET /public/ok HTTP/1.1\r\nhost: PUBLIC.test.:8080\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        seen.drain(),
        vec![("/public/ok".to_owned(), "PUBLIC.test.:8080".to_owned())]
    );
}

/// An HTTP/1.0 request needs no Host, but it goes upstream as HTTP/1.1, which does: it gets the
/// cluster's endpoint as its Host (nginx's `$proxy_host`). One that names a Host keeps it.
/// Before the fix the upstream got an HTTP/1.1 request without Host, which nginx answers `400`.
#[tokio::test]
async fn an_http_1_0_request_without_host_goes_upstream_with_the_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut seen) = recording_upstream().await;
    let proxy = start_proxy(&config(up, "1h"), dir.path()).await;
    let web = proxy.listener("web");
    let answer = send(web, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    let answer = send(web, b"GET /named HTTP/1.0\r\nHost: named.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert_eq!(
        seen.drain(),
        vec![
            ("/old".to_owned(), up.to_string()),
            ("/named".to_owned(), "named.test".to_owned())
        ]
    );
}

/// What the recording upstream saw: (target, Host) per request, in order.
struct Seen(tokio::sync::mpsc::UnboundedReceiver<(String, String)>);

impl Seen {
    /// Everything recorded so far (each entry is sent before its response).
    fn drain(&mut self) -> Vec<(String, String)> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// An upstream that records each request's target and Host, and answers `200`.
async fn recording_upstream() -> (std::net::SocketAddr, Seen) {
    let (log, seen) = tokio::sync::mpsc::unbounded_channel();
    let seen = Seen(seen);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let _ = log.send((req.uri().to_string(), host));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A body in a transfer coding other than `chunked` (`gzip, chunked`) would reach the upstream
/// re-chunked with its coding gone: `501`, as nginx and Envoy answer. `chunked` twice is `400`.
/// Neither reaches the upstream; a plain chunked body does.
#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut seen) = recording_upstream().await;
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let web = proxy.listener("web");
    for (i, (framing, status)) in [
        ("transfer-encoding: gzip, chunked", "501 Not Implemented"),
        (
            "transfer-encoding: gzip\r\ntransfer-encoding: chunked",
            "501 Not Implemented",
        ),
        (
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
            "400 Bad Request",
        ),
        ("transfer-encoding: Chunked", "200 OK"),
    ]
    .into_iter()
    .enumerate()
    {
        let request = format!(
            "POST /public/{i} HTTP/1.1\r\nhost: public.test\r\n{framing}\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let answer = send(web, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{framing}: {answer}"
        );
    }
    // Both a length and chunks: the chunks frame the body, and the connection is closed after
    // the response, so what follows the body is never taken for a second request.
    let answer = send(
        web,
        b"POST /public/both HTTP/1.1\r\nhost: public.test\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nhost: public.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(
        seen.drain(),
        vec![
            ("/public/3".to_owned(), "public.test".to_owned()),
            ("/public/both".to_owned(), "public.test".to_owned())
        ]
    );
}

/// h2c smuggling: an `Upgrade: h2c` passed through to an upstream that takes it would leave the
/// client speaking HTTP/2 to the upstream on a spliced connection, past the listener's routes
/// and filters. bindgate drops the offer (as Envoy does) and serves the request as HTTP/1.1.
#[tokio::test]
async fn an_h2c_upgrade_offer_is_dropped_and_the_request_served_as_http_1_1() {
    // An upstream that switches to h2c whenever asked.
    let (up, mut heads) = raw_upstream(|head| {
        if head.to_ascii_lowercase().contains("upgrade: h2c") {
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                .to_owned()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let answer = send(
        proxy.listener("web"),
        b"GET /public/x HTTP/1.1\r\nhost: public.test\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /public/x http/1.1\r\n"), "{head}");
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "{head}"
    );
}

/// The other way: an upstream response framed by `gzip, chunked` would reach the client
/// re-chunked, its bytes still gzipped and nothing saying so. bindgate answers `502` instead.
#[tokio::test]
async fn an_upstream_response_in_a_transfer_coding_other_than_chunked_is_502() {
    let (up, _heads) = raw_upstream(|head| {
        let framing = if head.contains("/public/gzip") {
            "gzip, chunked"
        } else {
            "chunked"
        };
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {framing}\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&config_with(up, "", ""), dir.path()).await;
    let web = proxy.listener("web");
    let answer = send(
        web,
        b"GET /public/gzip HTTP/1.1\r\nhost: public.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    let answer = send(
        web,
        b"GET /public/plain HTTP/1.1\r\nhost: public.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{answer}"
    );
}

/// An upstream written by hand: it reads one request head per connection, records it, and
/// writes whatever `answer` makes of it (framings hyper would not write).
async fn raw_upstream(
    answer: fn(&str) -> String,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (log, heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut head = String::new();
                while s.read_line(&mut head).await.is_ok_and(|n| n > 0)
                    && !head.ends_with("\r\n\r\n")
                {}
                let reply = answer(&head);
                let _ = log.send(head);
                let _ = s.get_mut().write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, heads)
}
