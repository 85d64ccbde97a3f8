//! End to end: the filter chains of the real `bindgate` binary, configured in YAML: network
//! filters on tcp listeners, http filters on the routes of an http listener, a cluster's circuit
//! breaker, and what a reload keeps (rate-limit state) and how a removed listener drains.
//!
//! Backends are started in the test on 127.0.0.1:0; clients that must come from a given address
//! bind it (any of 127/8 is local) before connecting. Every wait polls observable state (the
//! admin API, a socket, an access log file) under a deadline.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{GUARD, Proc, admin_json, start_proxy, write};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

/// How often a poll looks again; no assertion depends on it.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Backends

/// A TCP echo server that counts the connections it accepted.
struct EchoBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl EchoBackend {
    async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> EchoBackend {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        EchoBackend { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 server: answers 200 with every request header echoed as `x-seen-<name>` and the
/// request body's length as its body. Counts requests that reached it, and bodies it read whole.
struct HttpBackend {
    addr: SocketAddr,
    reached: Arc<AtomicUsize>,
    whole_bodies: Arc<AtomicUsize>,
}

impl HttpBackend {
    async fn start() -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let whole_bodies = Arc::new(AtomicUsize::new(0));
        let (r, b) = (reached.clone(), whole_bodies.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, b) = (r.clone(), b.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, b) = (r.clone(), b.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        b.fetch_add(1, Ordering::SeqCst);
                        let mut resp =
                            Response::new(Full::new(Bytes::from(body.len().to_string())));
                        for (k, v) in &parts.headers {
                            let name = format!("x-seen-{k}");
                            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                                resp.headers_mut().append(name, v.clone());
                            }
                        }
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        HttpBackend {
            addr,
            reached,
            whole_bodies,
        }
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }

    fn whole_bodies(&self) -> usize {
        self.whole_bodies.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A TCP connection to `to` from the local address `from` (an IP of 127/8, any port).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Writes `msg` and reads the same bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(GUARD, s.read_exact(&mut got))
        .await
        .expect("echo hung")
        .expect("echo failed");
    assert_eq!(got, msg);
}

/// Asserts the peer closes the connection without sending a byte.
async fn assert_closed_empty(s: &mut TcpStream) {
    let mut got = Vec::new();
    let r = tokio::time::timeout(GUARD, s.read_to_end(&mut got))
        .await
        .expect("the connection was not closed");
    assert_eq!((r.map_err(|e| e.kind()), got.as_slice()), (Ok(0), &b""[..]));
}

/// Whether a new connection from `from` is admitted: an echo round trip (admitted) or closed
/// without a byte (turned away).
async fn admitted(from: &str, to: SocketAddr) -> bool {
    let mut s = connect_from(from, to).await;
    if s.write_all(b"ping").await.is_err() {
        return false; // already reset: turned away
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4];
    loop {
        let n = tokio::time::timeout(GUARD, s.read(&mut buf))
            .await
            .expect("neither echoed nor closed")
            .unwrap_or(0);
        if n == 0 {
            assert_eq!(got, b"", "closed after a partial echo");
            return false;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() == 4 {
            assert_eq!(got, b"ping");
            return true;
        }
    }
}

/// One request on a new connection; the answer's body read whole.
async fn send(to: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let tcp = TcpStream::connect(to).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(GUARD, sender.send_request(req))
        .await
        .expect("no answer")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}

fn request(method: &str, path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.test")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// Every value of header `name`.
fn values<'a>(resp: &'a Response<Bytes>, name: &str) -> Vec<&'a str> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// A config with the admin on port 0; `listeners` and `clusters` are list items indented four
/// spaces.
fn config(listeners: &str, clusters: &str) -> String {
    format!(
        "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}

/// A `static` cluster item with one endpoint and no retries.
fn static_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        "    - {{ name: {name}, type: static, endpoints: [ \"{addr}\" ], connect_timeout: 2s, retry: {{ attempts: 1 }} }}\n"
    )
}

/// A tcp listener item on 127.0.0.1:0 with `filters` (a flow sequence) and extra fields.
fn tcp_listener(name: &str, cluster: &str, filters: &str, extra: &str) -> String {
    format!(
        "    - {{ name: {name}, address: 127.0.0.1:0, routes: [ {{ cluster: {cluster} }} ], filters: {filters}{extra} }}\n"
    )
}

/// The bound address of listener `name`, from `/listeners`.
async fn bound(admin: SocketAddr, name: &str) -> SocketAddr {
    let board = admin_json(admin, "/listeners").await;
    let l = board
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}: {board}"));
    assert_eq!(l["state"], "active", "{l}");
    l["bound_address"].as_str().unwrap().parse().unwrap()
}

/// The `/clusters` entry of `name`.
async fn cluster_view(admin: SocketAddr, name: &str) -> serde_json::Value {
    let all = admin_json(admin, "/clusters").await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}: {all}"))
        .clone()
}

/// Polls `/config_dump` until `version_info` is `version`.
async fn wait_for_version(admin: SocketAddr, version: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        let dump = admin_json(admin, "/config_dump").await;
        if dump["version_info"] == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {version} never applied: {}",
            dump["control"]
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Saves like editors do (a temp file renamed over the config), so the watcher never sees a
/// half-written file.
fn save(dir: &Path, text: &str) {
    let tmp = write(dir, ".bindgate.yaml.tmp", text);
    std::fs::rename(&tmp, dir.join("bindgate.yaml")).unwrap();
}

/// Polls an access log until it has `n` lines; returns them parsed (each must be JSON).
async fn log_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + GUARD;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete: Vec<&str> = text.split_inclusive('\n').collect();
        if complete.len() >= n && text.ends_with('\n') {
            assert_eq!(complete.len(), n, "more lines than expected:\n{text}");
            return complete
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{n} lines never came to {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A proxy in a fresh directory (kept alive with it).
async fn proxy(cfg: &str) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = start_proxy(cfg, dir.path()).await;
    let admin = p.admin();
    (p, admin, dir)
}

// ---------------------------------------------------------------------------------------------
// Network filters

#[tokio::test]
async fn network_rate_limit_per_source_ip_keeps_clients_apart() {
    let echo = EchoBackend::start().await;
    let cfg = config(
        &tcp_listener(
            "echo",
            "echo",
            "[ { local_rate_limit: { connections_per_second: 1, burst: 2, per_source_ip: true } } ]",
            "",
        ),
        &static_cluster("echo", echo.addr),
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let addr = bound(admin, "echo").await;

    let mut a = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.2", addr).await;
        round_trip(&mut s, b"from .2").await;
        a.push(s);
    }
    let mut third = connect_from("127.0.0.2", addr).await;
    assert_closed_empty(&mut third).await;
    assert_eq!(echo.accepted(), 2, "the third never reached the backend");

    for _ in 0..2 {
        let mut s = connect_from("127.0.0.3", addr).await;
        round_trip(&mut s, b"from .3").await;
    }
    assert_eq!(echo.accepted(), 4, "127.0.0.3 has a bucket of its own");
}

#[tokio::test]
async fn source_ip_deny_wins_over_allow() {
    let echo = EchoBackend::start().await;
    let cfg = config(
        &tcp_listener(
            "echo",
            "echo",
            "[ { source_ip: { deny: [ 127.0.0.4/32 ], allow: [ 127.0.0.0/8 ] } } ]",
            "",
        ),
        &static_cluster("echo", echo.addr),
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let addr = bound(admin, "echo").await;

    let mut denied = connect_from("127.0.0.4", addr).await;
    assert_closed_empty(&mut denied).await;
    assert_eq!(echo.accepted(), 0);

    let mut allowed = connect_from("127.0.0.1", addr).await;
    round_trip(&mut allowed, b"hello").await;
    assert_eq!(echo.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// Http filters

/// An http listener `web` whose `routes:` are the YAML lines `routes` (a list at indent 0), all
/// to one cluster `api` at `backend`.
fn http_config(routes: &[&str], backend: SocketAddr) -> String {
    let routes: String = routes.iter().map(|l| format!("        {l}\n")).collect();
    config(
        &format!(
            "    - name: web\n      address: 127.0.0.1:0\n      protocol: http\n      routes:\n{routes}"
        ),
        &static_cluster("api", backend),
    )
}

#[tokio::test]
async fn header_mutation_sets_and_removes_both_ways() {
    let backend = HttpBackend::start().await;
    let cfg = http_config(
        &[
            "- cluster: api",
            "  filters:",
            "    - header_mutation:",
            "        request: { set: { x-gateway: gw-1 }, remove: [ x-debug ] }",
            "        response: { set: { x-served-by: bindgate } }",
        ],
        backend.addr,
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let web = bound(admin, "web").await;

    let mut req = request("GET", "/a", b"");
    req.headers_mut()
        .insert("x-gateway", "spoofed".parse().unwrap());
    req.headers_mut().insert("x-debug", "1".parse().unwrap());
    req.headers_mut().insert("x-kept", "yes".parse().unwrap());
    let resp = send(web, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-seen-x-gateway"), ["gw-1"], "set replaces");
    assert_eq!(
        values(&resp, "x-seen-x-debug"),
        Vec::<&str>::new(),
        "removed"
    );
    assert_eq!(values(&resp, "x-seen-x-kept"), ["yes"], "others untouched");
    assert_eq!(values(&resp, "x-served-by"), ["bindgate"]);
    assert_eq!(backend.reached(), 1);
}

#[tokio::test]
async fn request_rate_limit_answers_429_and_body_limit_413() {
    let backend = HttpBackend::start().await;
    let cfg = http_config(
        &[
            "- match: { path_prefix: /limited }",
            "  cluster: api",
            "  filters: [ { local_rate_limit: { requests_per_second: 1, burst: 1 } } ]",
            "- match: { path_prefix: /upload }",
            "  cluster: api",
            "  filters: [ { max_request_body: { bytes: 10 } } ]",
        ],
        backend.addr,
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let web = bound(admin, "web").await;

    let first = send(web, request("GET", "/limited", b"")).await;
    assert_eq!(first.status(), 200);
    let second = send(web, request("GET", "/limited", b"")).await;
    assert_eq!(second.status(), 429);
    assert_eq!(values(&second, "retry-after"), ["1"]);
    assert_eq!(backend.reached(), 1, "the 429 never reached the backend");

    // Exactly the limit passes; one byte more, declared in Content-Length, is refused before
    // anything goes upstream.
    let at_limit = send(web, request("POST", "/upload", b"0123456789")).await;
    assert_eq!(
        (at_limit.status().as_u16(), at_limit.body().as_ref()),
        (200, &b"10"[..])
    );
    assert_eq!(backend.reached(), 2);
    let over = send(web, request("POST", "/upload", b"0123456789A")).await;
    assert_eq!(over.status(), 413);
    assert_eq!(backend.reached(), 2, "a declared 11 bytes never reached it");

    // A chunked body crossing the limit mid-stream: 413, and the backend never got it whole.
    let mut c = TcpStream::connect(web).await.unwrap();
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = String::from_utf8(common::read_all(&mut c).await).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 413 "),
        "not a 413 answer: {reply:?}"
    );
    assert_eq!(backend.whole_bodies(), 2, "only the two admitted bodies");
}

#[tokio::test]
async fn fault_abort_percent_is_exact_at_100_and_0() {
    let backend = HttpBackend::start().await;
    let cfg = http_config(
        &[
            "- match: { path_prefix: /always }",
            "  cluster: api",
            "  filters: [ { fault: { abort: { status: 418, percent: 100 } } } ]",
            "- match: { path_prefix: /never }",
            "  cluster: api",
            "  filters: [ { fault: { abort: { status: 418, percent: 0 } } } ]",
        ],
        backend.addr,
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let web = bound(admin, "web").await;

    let mut statuses = BTreeMap::new();
    for _ in 0..20 {
        let r = send(web, request("GET", "/always", b"")).await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(418, 20)]));
    assert_eq!(backend.reached(), 0);

    let mut statuses = BTreeMap::new();
    for _ in 0..20 {
        let r = send(web, request("GET", "/never", b"")).await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 20)]));
    assert_eq!(backend.reached(), 20);
}

// ---------------------------------------------------------------------------------------------
// Access logs

#[tokio::test]
async fn access_logs_count_exact_bytes_and_name_rejections() {
    let echo = EchoBackend::start().await;
    let backend = HttpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    // In a directory of their own: the config's directory is watched for changes.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let net_log = logs.join("net.log");
    let http_log = logs.join("http.log");
    // The access_log is listed last: it still runs outermost, so it sees the rejection.
    let cfg = config(
        &format!(
            "{}    - name: web\n      address: 127.0.0.1:0\n      protocol: http\n      routes:\n        - match: {{ path_prefix: /api/ }}\n          name: api\n          cluster: api\n          filters: [ {{ access_log: {{ path: {http} }} }} ]\n",
            tcp_listener(
                "echo",
                "echo",
                &format!(
                    "[ {{ source_ip: {{ deny: [ 127.0.0.4/32 ] }} }}, {{ access_log: {{ path: {} }} }} ]",
                    net_log.display()
                ),
                "",
            ),
            http = http_log.display(),
        ),
        &format!(
            "{}{}",
            static_cluster("echo", echo.addr),
            static_cluster("api", backend.addr)
        ),
    );
    let p = start_proxy(&cfg, dir.path()).await;
    let admin = p.admin();
    let addr = bound(admin, "echo").await;

    // Served: 11 bytes each way, then the client half-closes and the proxy closes after it.
    let mut s = connect_from("127.0.0.1", addr).await;
    let served_peer = s.local_addr().unwrap();
    round_trip(&mut s, b"hello there").await;
    s.shutdown().await.unwrap();
    assert_closed_empty(&mut s).await;
    // Rejected by source_ip.
    let mut denied = connect_from("127.0.0.4", addr).await;
    let denied_peer = denied.local_addr().unwrap();
    assert_closed_empty(&mut denied).await;

    let lines = log_lines(&net_log, 2).await;
    let by_peer = |peer: SocketAddr| {
        lines
            .iter()
            .find(|l| l["peer"] == peer.to_string())
            .unwrap_or_else(|| panic!("no line for {peer}: {lines:?}"))
    };
    let served = by_peer(served_peer);
    assert_eq!(served["listener"], "echo");
    assert_eq!(served["cluster"], "echo");
    assert_eq!(served["bytes_received"], 11);
    assert_eq!(served["bytes_sent"], 11);
    assert_eq!(served["outcome"], "ok");
    assert!(served["duration_ms"].is_number(), "{served}");
    assert!(served["time"].is_string(), "{served}");
    let rejected = by_peer(denied_peer);
    assert_eq!(rejected["listener"], "echo");
    assert_eq!(rejected["cluster"], serde_json::Value::Null);
    assert_eq!(rejected["bytes_received"], 0);
    assert_eq!(rejected["bytes_sent"], 0);
    assert_eq!(rejected["outcome"], "rejected:source_ip");

    // Http: one line per request, with the request's and the answer's body sizes.
    let web = bound(admin, "web").await;
    let resp = send(web, request("POST", "/api/orders?x=1", b"twelve bytes")).await;
    assert_eq!(
        (resp.status().as_u16(), resp.body().as_ref()),
        (200, &b"12"[..])
    );
    let lines = log_lines(&http_log, 1).await;
    let l = &lines[0];
    assert_eq!(l["listener"], "web");
    assert_eq!(l["route"], "api");
    assert_eq!(l["cluster"], "api");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["host"], "web.test");
    assert_eq!(l["path"], "/api/orders");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes_received"], 12);
    assert_eq!(l["bytes_sent"], 2, "the body `12`");
    assert_eq!(l["outcome"], "ok");
    assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
}

/// logrotate's default (`create`: the file renamed away, nothing told) and an Envoy- or
/// nginx-style `postrotate` (`kill -USR1`): after each, lines go to a new file at the path, the
/// process lives on, and every connection's line is in one of the files.
#[tokio::test]
async fn a_rotated_access_log_is_reopened_and_sigusr1_reopens_it_without_killing() {
    let echo = EchoBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let log = logs.join("net.log");
    let cfg = config(
        &tcp_listener(
            "echo",
            "echo",
            &format!("[ {{ access_log: {{ path: {} }} }} ]", log.display()),
            "",
        ),
        &static_cluster("echo", echo.addr),
    );
    let mut p = start_proxy(&cfg, dir.path()).await;
    let addr = bound(p.admin(), "echo").await;
    let mut connections = 0;
    let one_connection = async || {
        let mut s = connect_from("127.0.0.1", addr).await;
        round_trip(&mut s, b"ping").await;
        s.shutdown().await.unwrap();
        assert_closed_empty(&mut s).await;
    };
    one_connection().await;
    connections += 1;
    log_lines(&log, 1).await;

    for (rotated, signal) in [("net.log.1", false), ("net.log.2", true)] {
        std::fs::rename(&log, logs.join(rotated)).unwrap();
        if signal {
            let pid = p.child.id().unwrap().to_string();
            let killed = std::process::Command::new("kill")
                .args(["-USR1", &pid])
                .status()
                .unwrap();
            assert!(killed.success());
        }
        // Connections until a line lands at the path again.
        let deadline = Instant::now() + GUARD;
        while std::fs::read_to_string(&log).map_or(true, |t| t.is_empty()) {
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "bindgate exited (signal: {signal})"
            );
            assert!(
                Instant::now() < deadline,
                "no line at the path after {rotated}"
            );
            one_connection().await;
            connections += 1;
            tokio::time::sleep(POLL).await;
        }
    }
    assert!(p.child.try_wait().unwrap().is_none(), "still running");
    // No line lost: one per connection, across the three files.
    let deadline = Instant::now() + GUARD;
    loop {
        let lines: usize = ["net.log", "net.log.1", "net.log.2"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(logs.join(f))
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        if lines == connections {
            break;
        }
        assert!(
            lines < connections,
            "{lines} lines for {connections} connections"
        );
        assert!(
            Instant::now() < deadline,
            "{lines} lines for {connections} connections"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        bound(p.admin(), "echo").await,
        addr,
        "the admin server answers"
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster connect stack

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_closes_after_the_cool_down() {
    // A port with nothing listening on it (bound, noted, released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = config(
        &tcp_listener("echo", "down", "[]", ""),
        &format!(
            "    - name: down\n      type: static\n      endpoints: [ \"{upstream}\" ]\n      connect_timeout: 2s\n      retry: {{ attempts: 1 }}\n      circuit_breaker: {{ consecutive_failures: 3, cool_down: 2s }}\n"
        ),
    );
    let (_p, admin, _dir) = proxy(&cfg).await;
    let addr = bound(admin, "echo").await;
    let breaker = |v: serde_json::Value| v["circuit_breaker"].clone();
    assert_eq!(
        breaker(cluster_view(admin, "down").await)["state"],
        "closed"
    );

    for n in 1..=3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_closed_empty(&mut s).await;
        let b = breaker(cluster_view(admin, "down").await);
        assert_eq!(b["consecutive_failures"], n, "{b}");
    }
    let b = breaker(cluster_view(admin, "down").await);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["opened_total"], 1, "{b}");
    assert_eq!(b["rejected_total"], 0, "{b}");

    // Open: the next connection is failed without a connect attempt.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_closed_empty(&mut s).await;
    let b = breaker(cluster_view(admin, "down").await);
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(
        b["consecutive_failures"], 3,
        "not counted as a connect failure: {b}"
    );
    assert_eq!(b["opened_total"], 1, "{b}");
    assert_eq!(b["rejected_total"], 1, "{b}");

    // The upstream comes back on the same port; once the cool-down is over, the probe
    // connection gets through and closes the breaker.
    let echo = EchoBackend::serve(TcpListener::bind(upstream).await.unwrap());
    let deadline = Instant::now() + GUARD;
    while !admitted("127.0.0.1", addr).await {
        assert!(
            Instant::now() < deadline,
            "the breaker never let a probe through"
        );
        tokio::time::sleep(POLL * 5).await;
    }
    assert_eq!(echo.accepted(), 1, "only the probe reached the upstream");
    let b = breaker(cluster_view(admin, "down").await);
    assert_eq!(b["state"], "closed", "{b}");
    assert_eq!(b["consecutive_failures"], 0, "{b}");
    assert_eq!(b["opened_total"], 1, "{b}");
    assert!(b["rejected_total"].as_u64().unwrap() >= 1, "{b}");
    assert!(
        admitted("127.0.0.1", addr).await,
        "closed: connections flow"
    );
    assert_eq!(echo.accepted(), 2);
}

// ---------------------------------------------------------------------------------------------
// Reloads

#[tokio::test]
async fn reload_keeps_the_rate_limit_state_of_unchanged_listeners() {
    let echo = EchoBackend::start().await;
    let limit = |burst: u32| {
        format!("[ {{ local_rate_limit: {{ connections_per_second: 1, burst: {burst} }} }} ]")
    };
    let v1 = config(
        &format!(
            "{}{}",
            tcp_listener("a", "echo", &limit(2), ""),
            tcp_listener("b", "echo", &limit(2), "")
        ),
        &static_cluster("echo", echo.addr),
    );
    let (_p, admin, dir) = proxy(&v1).await;
    let (a, b) = (bound(admin, "a").await, bound(admin, "b").await);

    // Use up both buckets, a's last. A bucket refills at 1 per second, so a is checked again
    // right after the reload (which takes a fraction of that second).
    assert_eq!(
        [
            admitted("127.0.0.1", b).await,
            admitted("127.0.0.1", b).await,
            admitted("127.0.0.1", b).await
        ],
        [true, true, false]
    );
    assert_eq!(
        [
            admitted("127.0.0.1", a).await,
            admitted("127.0.0.1", a).await,
            admitted("127.0.0.1", a).await
        ],
        [true, true, false]
    );

    let v2 = config(
        &format!(
            "{}{}",
            tcp_listener("a", "echo", &limit(2), ""),
            tcp_listener("b", "echo", &limit(3), "")
        ),
        &static_cluster("echo", echo.addr),
    );
    save(dir.path(), &v2);
    wait_for_version(admin, "2").await;
    assert!(
        !admitted("127.0.0.1", a).await,
        "a's empty bucket carried over"
    );
    assert_eq!(bound(admin, "a").await, a, "a kept its socket");
    assert_eq!(bound(admin, "b").await, b, "b kept its socket");
    assert_eq!(
        [
            admitted("127.0.0.1", b).await,
            admitted("127.0.0.1", b).await,
            admitted("127.0.0.1", b).await,
            admitted("127.0.0.1", b).await
        ],
        [true, true, true, false],
        "b got a fresh bucket of 3"
    );
}

#[tokio::test]
async fn a_removed_listener_drains_for_its_own_drain_timeout() {
    let echo = EchoBackend::start().await;
    let v1 = config(
        &format!(
            "{}{}{}",
            tcp_listener("short", "echo", "[]", ", drain_timeout: 1s"),
            tcp_listener("long", "echo", "[]", ", drain_timeout: 1h"),
            tcp_listener("stays", "echo", "[]", "")
        ),
        &static_cluster("echo", echo.addr),
    );
    let (_p, admin, dir) = proxy(&v1).await;
    let mut short = TcpStream::connect(bound(admin, "short").await)
        .await
        .unwrap();
    let mut long = TcpStream::connect(bound(admin, "long").await)
        .await
        .unwrap();
    round_trip(&mut short, b"short").await;
    round_trip(&mut long, b"long").await;

    save(
        dir.path(),
        &config(
            &tcp_listener("stays", "echo", "[]", ""),
            &static_cluster("echo", echo.addr),
        ),
    );
    wait_for_version(admin, "2").await;

    // The 1s listener's connection is closed when its drain ends (the deadline is a guard).
    assert_closed_empty(&mut short).await;
    // The 1h listener's connection is still open and served, its listener still draining.
    round_trip(&mut long, b"still here").await;
    let board = admin_json(admin, "/listeners").await;
    let long_state = board
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "long")
        .map(|l| l["state"].clone());
    assert_eq!(long_state, Some("draining".into()), "{board}");
    assert_eq!(echo.accepted(), 2);
}
