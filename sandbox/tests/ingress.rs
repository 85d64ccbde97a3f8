//! The sandbox's binding ingress, end to end over loopback with real mTLS: the upgrade, the
//! pipe (half-close included), error answers, hostile input, and faults.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bindgate_sandbox::endpoints::{EndpointUrl, endpoint_id};
use bindgate_sandbox::{Sandbox, SandboxCa, SandboxConfig};
use bindgate_wire::{self as wire, ConnRequest, ConnResponse};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

mod common;
use common::{client_config, connector};

/// Guards against hangs only; no assertion depends on it.
const GUARD: Duration = Duration::from_secs(20);

struct Fixture {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    connector: TlsConnector,
}

impl Fixture {
    async fn start(extra_yaml: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {}\n{extra_yaml}",
            dir.path().join("state").display()
        );
        let sandbox = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
            .await
            .unwrap();
        let (cert, key) = sandbox
            .issue_client_cert(&dir.path().join("client"))
            .unwrap();
        let connector = connector(&sandbox.ca_pem_path(), Some((&cert, &key)));
        Fixture {
            sandbox,
            dir,
            connector,
        }
    }

    /// A connector offering ALPN `h2`, with the client certificate the fixture was issued.
    fn h2_connector(&self) -> TlsConnector {
        let client = self.dir.path().join("client");
        h2_connector(
            &self.sandbox.ca_pem_path(),
            Some((&client.join("tls.crt"), &client.join("tls.key"))),
        )
    }

    async fn connect_with(
        &self,
        connector: &TlsConnector,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.sandbox.ingress_addr()).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await
    }

    async fn connect(&self) -> TlsStream<TcpStream> {
        self.connect_with(&self.connector).await.unwrap()
    }

    /// Connects, sends a ConnRequest for `host:port`, and reads the ConnResponse.
    async fn upgrade(&self, host: &str, port: i64) -> (TlsStream<TcpStream>, ConnResponse) {
        let mut tls = self.connect().await;
        let request = ConnRequest {
            host: host.into(),
            port,
            pod_identity: None,
        };
        wire::write_frame(&mut tls, &request).await.unwrap();
        let response: ConnResponse = wire::read_frame(&mut tls).await.unwrap();
        (tls, response)
    }
}

/// Offers ALPN `h2`, as bindgate's multiplexed transport does.
fn h2_connector(ca: &Path, client: Option<(&Path, &Path)>) -> TlsConnector {
    let mut config = client_config(ca, client);
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn id_of(url: &str) -> String {
    endpoint_id(&url.parse::<EndpointUrl>().unwrap())
}

/// Reads until EOF or error; returns what arrived and how the stream ended.
async fn read_until_end(tls: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

const ECHO: &str = "endpoints:\n  - { url: 'tcp://svc.ns:80', target: echo }\n";

#[tokio::test]
async fn echo_through_an_upgrade_framed_like_the_vectors() {
    let f = Fixture::start(ECHO).await;
    let mut tls = f.connect().await;
    // PROTOCOL.md's vector for ConnRequest{host:"svc.ns", port:80, pod_identity:{}}, with the
    // first payload bytes in the same write: they must reach the pipe, not be lost.
    let mut first = vec![
        0x0c, 0x00, 0x0a, 0x06, 0x73, 0x76, 0x63, 0x2e, 0x6e, 0x73, 0x10, 0x50, 0x1a, 0x00,
    ];
    first.extend_from_slice(b"ping ");
    timeout(GUARD, async {
        tls.write_all(&first).await.unwrap();
        let response: ConnResponse = wire::read_frame(&mut tls).await.unwrap();
        assert_eq!(
            response,
            ConnResponse {
                endpoint_id: id_of("tcp://svc.ns:80"),
                proto: "tcp".into(),
                ..Default::default()
            }
        );
        tls.write_all(b"pong").await.unwrap();
        let mut echoed = [0u8; 9];
        tls.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping pong");
    })
    .await
    .unwrap();
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn half_close_still_returns_the_whole_echo() {
    let f = Fixture::start(ECHO).await;
    echoes_through_half_close(&f, "svc.ns", 80).await;
    f.sandbox.shutdown().await;
}

/// Upgrades to `host:port`, writes 512 KiB while reading, then sends close_notify: the whole
/// echo must still come back, then a clean end.
async fn echoes_through_half_close(f: &Fixture, host: &str, port: i64) {
    let (tls, response) = f.upgrade(host, port).await;
    assert_eq!(response.failure(), None);
    let payload: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        // close_notify: the client is done writing but still reading.
        writer.shutdown().await.unwrap();
    });
    let (got, end) = timeout(GUARD, read_until_end(&mut reader)).await.unwrap();
    writing.await.unwrap();
    end.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echo differs from what was sent");
}

#[tokio::test]
async fn unknown_endpoint_is_answered_3200_then_closed() {
    let f = Fixture::start(ECHO).await;
    let (mut tls, response) = f.upgrade("nope.demo", 1).await;
    assert_eq!(
        response,
        ConnResponse::error(
            "ERR_NGROK_3200",
            "endpoint nope.demo:1 is offline or not found"
        )
    );
    let (rest, end) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    assert!(rest.is_empty());
    end.unwrap();
    // Same host, wrong port: the lookup is by (host, port).
    let (_, response) = f.upgrade("svc.ns", 81).await;
    assert_eq!(response.error_code, "ERR_NGROK_3200");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_another_account_is_answered_15010() {
    let f = Fixture::start(ECHO).await;
    let (cert_pem, key_pem) = f.sandbox.ca().issue_client_cert("ac_other").unwrap();
    let cert = f.dir.path().join("other.crt");
    let key = f.dir.path().join("other.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let other = connector(&f.sandbox.ca_pem_path(), Some((&cert, &key)));
    let mut tls = f.connect_with(&other).await.unwrap();
    let request = ConnRequest {
        host: "svc.ns".into(),
        port: 80,
        pod_identity: None,
    };
    wire::write_frame(&mut tls, &request).await.unwrap();
    let response: ConnResponse = wire::read_frame(&mut tls).await.unwrap();
    assert_eq!(response.error_code, "ERR_NGROK_15010");
    assert!(
        response.error_message.contains("`ac_other`"),
        "{response:?}"
    );
    f.sandbox.shutdown().await;
}

/// Connects, sends a valid ConnRequest and reads the answer: what a client with a bad identity
/// sees (TLS 1.3 reports the server's rejection of its certificate on the first read).
async fn try_upgrade(f: &Fixture, connector: &TlsConnector) -> Result<ConnResponse, String> {
    let mut tls = f.connect_with(connector).await.map_err(|e| e.to_string())?;
    let request = ConnRequest {
        host: "svc.ns".into(),
        port: 80,
        pod_identity: None,
    };
    wire::write_frame(&mut tls, &request)
        .await
        .map_err(|e| e.to_string())?;
    wire::read_frame::<_, ConnResponse>(&mut tls)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected() {
    let f = Fixture::start(ECHO).await;
    let foreign = SandboxCa::load_or_create(&f.dir.path().join("foreign")).unwrap();
    let (cert_pem, key_pem) = foreign.issue_client_cert("ac_sandbox").unwrap();
    let cert = f.dir.path().join("foreign.crt");
    let key = f.dir.path().join("foreign.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let foreign = connector(&f.sandbox.ca_pem_path(), Some((&cert, &key)));
    let outcome = timeout(GUARD, try_upgrade(&f, &foreign)).await.unwrap();
    let err = outcome.unwrap_err();
    assert!(err.contains("received fatal alert: UnknownCA"), "{err}");
    // The ingress is unharmed.
    let (_, response) = f.upgrade("svc.ns", 80).await;
    assert_eq!(response.failure(), None);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn no_client_certificate_is_rejected() {
    let f = Fixture::start(ECHO).await;
    let anonymous = connector(&f.sandbox.ca_pem_path(), None);
    let outcome = timeout(GUARD, try_upgrade(&f, &anonymous)).await.unwrap();
    let err = outcome.unwrap_err();
    assert!(
        err.contains("received fatal alert: CertificateRequired"),
        "{err}"
    );
    f.sandbox.shutdown().await;
}

/// Everything the process logs, for assertions on the ingress's warnings. Tests run in parallel
/// in this process, so assertions pick their lines by the client's own address.
// tracing's writer is synchronous, so a std mutex (never held across an await) is the right tool.
#[allow(clippy::disallowed_types)]
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .try_init();
        logs
    })
}

#[allow(clippy::disallowed_types)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines mentioning `peer`.
fn log_lines_of(peer: std::net::SocketAddr) -> Vec<String> {
    let logs = captured_logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == format!("peer={peer}")))
        .map(str::to_string)
        .collect()
}

/// Sends `bytes` after the TLS handshake, then close_notify; returns what the ingress sent back
/// and the client's address.
async fn send_raw(f: &Fixture, bytes: &[u8]) -> (Vec<u8>, std::net::SocketAddr) {
    let mut tls = f.connect().await;
    let local = tls.get_ref().0.local_addr().unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.shutdown().await.unwrap();
    let (got, _) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    (got, local)
}

/// The ingress logged exactly one line for this connection, a WARN with the cause.
fn assert_one_warning(peer: std::net::SocketAddr, cause: &str) {
    assert_one_line(peer, " WARN ", cause);
}

/// The ingress logged exactly one line for this connection, at `level` (e.g. `" DEBUG "`), with
/// the cause.
fn assert_one_line(peer: std::net::SocketAddr, level: &str, cause: &str) {
    let lines = log_lines_of(peer);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(level), "{}", lines[0]);
    assert!(lines[0].contains(cause), "{}", lines[0]);
}

#[tokio::test]
async fn malformed_frames_close_the_connection_and_spare_the_ingress() {
    captured_logs();
    let f = Fixture::start(ECHO).await;
    // A length prefix announcing 16 bytes, one byte, then EOF.
    let (got, peer) = send_raw(&f, &[0x10, 0x00, 0x0a]).await;
    assert!(got.is_empty(), "no answer expected, got {got:?}");
    assert_one_warning(peer, "stream ended 1 bytes into a frame that announced 16");
    // Three bytes that are not a ConnRequest.
    let (got, peer) = send_raw(&f, &[0x03, 0x00, 0xff, 0xff, 0xff]).await;
    assert!(got.is_empty(), "no answer expected, got {got:?}");
    assert_one_warning(peer, "frame is not a valid ConnRequest");
    // Half a length prefix.
    let (got, peer) = send_raw(&f, &[0x01]).await;
    assert!(got.is_empty(), "no answer expected, got {got:?}");
    assert_one_warning(peer, "stream ended 1 bytes into a frame that announced 2");
    let (mut tls, response) = f.upgrade("svc.ns", 80).await;
    assert_eq!(response.failure(), None);
    tls.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"still here");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    captured_logs();
    let f = Fixture::start(&format!("ingress: {{ handshake_timeout: 200ms }}\n{ECHO}")).await;
    let mut tls = f.connect().await;
    let peer = tls.get_ref().0.local_addr().unwrap();
    // The ingress's close is the signal; the guard only bounds a failure.
    let (got, _) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    assert!(got.is_empty());
    // Idle is what a warm pool's connections are: closed, logged at debug, not a warning.
    assert_one_line(
        peer,
        " DEBUG ",
        "closing idle connection: no ConnRequest within 200ms",
    );

    // A client that stalls in the middle of its frame is a fault.
    let mut tls = f.connect().await;
    let peer = tls.get_ref().0.local_addr().unwrap();
    tls.write_all(&[0x0c]).await.unwrap();
    let (got, _) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    assert!(got.is_empty());
    assert_one_warning(peer, "no complete ConnRequest within 200ms");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_http_backend_answers_with_the_host_header_unchanged() {
    let f = Fixture::start("endpoints:\n  - { url: 'http://web.demo', target: http }\n").await;
    let (tls, response) = f.upgrade("web.demo", 80).await;
    assert_eq!(
        response,
        ConnResponse {
            endpoint_id: id_of("http://web.demo:80"),
            proto: "http".into(),
            ..Default::default()
        }
    );
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    // Two requests on one upgraded connection: the backend keeps it alive.
    for path in ["/first", "/second?x=1"] {
        let request = hyper::Request::get(path)
            .header("host", "web.demo")
            .header("x-test", "kept")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let answer = timeout(GUARD, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "hello from the bindgate sandbox\nGET {path} HTTP/1.1\nhost: web.demo\nx-test: kept\n"
            )
        );
    }
    drop(sender);
    driver.await.unwrap().unwrap();
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn reset_after_bytes_aborts_before_the_echo_completes() {
    let f = Fixture::start(
        "endpoints:\n  - { url: 'tcp://reset.demo:7000', target: echo, faults: { reset_after_bytes: 1000 } }\n",
    )
    .await;
    resets_after_1000_bytes(&f, "reset.demo", 7000).await;
    f.sandbox.shutdown().await;
}

/// Upgrades to `host:port`, whose endpoint has `reset_after_bytes: 1000`, and writes 100 kB.
async fn resets_after_1000_bytes(f: &Fixture, host: &str, port: i64) {
    let (tls, response) = f.upgrade(host, port).await;
    assert_eq!(response.failure(), None);
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        // Fails part-way once the ingress resets; that is the point.
        let _ = writer.write_all(&vec![7u8; 100_000]).await;
        let _ = writer.shutdown().await;
    });
    let (got, end) = timeout(GUARD, read_until_end(&mut reader)).await.unwrap();
    writing.await.unwrap();
    assert!(
        got.len() <= 1000,
        "only the first 1000 bytes reach the echo, got {}",
        got.len()
    );
    // No close_notify: the stream ends with an error, never a clean EOF.
    let err = end.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refuse_and_latency_faults() {
    let f = Fixture::start(
        "endpoints:\n  - { url: 'tcp://down.demo:1', target: echo, faults: { refuse: true } }\n  - { url: 'tcp://slow.demo:1', target: echo, faults: { latency: 300ms } }\n",
    )
    .await;
    let (_, response) = f.upgrade("down.demo", 1).await;
    assert_eq!(
        response,
        ConnResponse::error(
            "ERR_NGROK_3200",
            "endpoint down.demo:1 is offline (sandbox fault: refuse)"
        )
    );
    let started = tokio::time::Instant::now();
    let (_, response) = f.upgrade("slow.demo", 1).await;
    assert_eq!(response.failure(), None);
    // A lower bound only: the fault guarantees at least this delay.
    assert!(started.elapsed() >= Duration::from_millis(300));
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_target_is_answered_8012() {
    // A port that was just free: nothing listens there.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let f = Fixture::start(&format!(
        "endpoints:\n  - {{ url: 'tcp://gone.demo:5432', target: '127.0.0.1:{port}' }}\n"
    ))
    .await;
    let (mut tls, response) = f.upgrade("gone.demo", 5432).await;
    assert_eq!(response.error_code, "ERR_NGROK_8012");
    assert!(
        response.error_message.starts_with(&format!(
            "endpoint tcp://gone.demo:5432 could not reach its upstream 127.0.0.1:{port}"
        )),
        "{}",
        response.error_message
    );
    let (rest, end) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    assert!(rest.is_empty());
    end.unwrap();
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn read_rate_paces_the_client_side() {
    let f = Fixture::start(
        "endpoints:\n  - { url: 'tcp://slow.demo:7000', target: echo, faults: { read_rate: 1000 } }\n",
    )
    .await;
    let (mut tls, response) = f.upgrade("slow.demo", 7000).await;
    assert_eq!(response.failure(), None);
    let started = tokio::time::Instant::now();
    tls.write_all(&[1u8; 400]).await.unwrap();
    tls.shutdown().await.unwrap();
    let (got, end) = timeout(GUARD, read_until_end(&mut tls)).await.unwrap();
    end.unwrap();
    assert_eq!(got, vec![1u8; 400]);
    // 400 bytes at 1000 B/s: at least 0.4 s (a lower bound, never an upper one).
    assert!(started.elapsed() >= Duration::from_millis(400));
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_failed_start_leaves_no_listener_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a)).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = free.local_addr().unwrap();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    // The echo backend binds first, then the ingress fails on a taken port.
    let yaml = format!(
        "state_dir: {}\nbackends: {{ echo: '{echo}' }}\ningress: {{ address: '{}' }}\n",
        dir.path().display(),
        taken.1
    );
    let err = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("ingress: bind {}:", taken.1)),
        "{err}"
    );
    // The echo listener was closed with the failed start: its port is free again.
    let rebound = tokio::time::timeout(GUARD, async {
        loop {
            match std::net::TcpListener::bind(echo) {
                Ok(listener) => return listener,
                // The accept loop closes its socket as it observes the cancellation.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(rebound.is_ok(), "the echo backend still holds {echo}");
}

#[tokio::test]
async fn the_ca_is_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("state_dir: {}\n", dir.path().display());
    let first = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    let ca = std::fs::read(first.ca_pem_path()).unwrap();
    let (cert, key) = first.issue_client_cert(&dir.path().join("c")).unwrap();
    first.shutdown().await;
    let second = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    assert_eq!(std::fs::read(second.ca_pem_path()).unwrap(), ca);
    // A client certificate issued by the first run still works against the second.
    let connector = connector(&second.ca_pem_path(), Some((&cert, &key)));
    let tcp = TcpStream::connect(second.ingress_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = ConnRequest {
        host: "none.demo".into(),
        port: 1,
        pod_identity: None,
    };
    wire::write_frame(&mut tls, &request).await.unwrap();
    let response: ConnResponse = wire::read_frame(&mut tls).await.unwrap();
    assert_eq!(response.error_code, "ERR_NGROK_3200");
    second.shutdown().await;
}

/// An HTTP/2 connection to the ingress over `connector` (which offers ALPN `h2`).
async fn h2_client(f: &Fixture, connector: &TlsConnector) -> h2::client::SendRequest<Bytes> {
    let tls = f.connect_with(connector).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends `method` `authority` and returns the response head and the stream's two halves.
async fn h2_request(
    send: &h2::client::SendRequest<Bytes>,
    method: http::Method,
    authority: &str,
) -> (http::response::Parts, h2::SendStream<Bytes>, h2::RecvStream) {
    let mut send = send.clone().ready().await.unwrap();
    let request = http::Request::builder()
        .method(method.clone())
        .uri(if method == http::Method::CONNECT {
            authority.to_owned()
        } else {
            format!("https://{authority}/")
        })
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(request, false).unwrap();
    let (head, body) = timeout(GUARD, response)
        .await
        .unwrap()
        .unwrap()
        .into_parts();
    (head, stream, body)
}

async fn h2_body(recv: &mut h2::RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = timeout(GUARD, recv.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

fn header(head: &http::response::Parts, name: &str) -> String {
    head.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn h2_connect_streams_are_upgrades_with_half_close() {
    let f = Fixture::start(ECHO).await;
    let connector = f.h2_connector();
    let send = h2_client(&f, &connector).await;
    h2_streams_echo(&send, "svc.ns:80").await;
    f.sandbox.shutdown().await;
}

/// Several CONNECT streams to `authority` on one connection, each its own upgrade, each echoing
/// 100 kB through the client's END_STREAM.
async fn h2_streams_echo(send: &h2::client::SendRequest<Bytes>, authority: &str) {
    for i in 0..3u8 {
        let (head, mut up, mut down) = h2_request(send, http::Method::CONNECT, authority).await;
        assert_eq!(head.status, http::StatusCode::OK);
        let text = Bytes::from(vec![b'a' + i; 100_000]);
        up.send_data(text.clone(), false).unwrap();
        up.send_data(Bytes::new(), true).unwrap();
        // END_STREAM reached the echo target as a write shutdown: the echo ends too.
        assert_eq!(h2_body(&mut down).await, text);
    }
}

#[tokio::test]
async fn h2_refusals_carry_the_ngrok_code_in_headers() {
    let f = Fixture::start(ECHO).await;
    let connector = f.h2_connector();
    let send = h2_client(&f, &connector).await;

    let (head, _, _) = h2_request(&send, http::Method::CONNECT, "ghost.ns:1").await;
    assert_eq!(head.status, http::StatusCode::NOT_FOUND);
    assert_eq!(header(&head, "ngrok-error-code"), "ERR_NGROK_3200");
    assert!(header(&head, "ngrok-error-message").contains("ghost.ns:1"));

    let (head, _, _) = h2_request(&send, http::Method::GET, "svc.ns:80").await;
    assert_eq!(head.status, http::StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&head, "ngrok-error-code"), "");
    assert!(header(&head, "ngrok-error-message").contains("only CONNECT"));

    // The same account check as a ConnRequest, from the connection's client certificate.
    let (cert_pem, key_pem) = f.sandbox.ca().issue_client_cert("ac_other").unwrap();
    let cert = f.dir.path().join("other.crt");
    let key = f.dir.path().join("other.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let other = h2_client(
        &f,
        &h2_connector(&f.sandbox.ca_pem_path(), Some((&cert, &key))),
    )
    .await;
    let (head, _, _) = h2_request(&other, http::Method::CONNECT, "svc.ns:80").await;
    assert_eq!(head.status, http::StatusCode::FORBIDDEN);
    assert_eq!(header(&head, "ngrok-error-code"), "ERR_NGROK_15010");
    assert!(header(&head, "ngrok-error-message").contains("`ac_other`"));
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn with_h2_off_alpn_is_not_selected_and_the_plain_upgrade_works() {
    let f = Fixture::start(&format!("ingress: {{ h2: false }}\n{ECHO}")).await;
    let connector = f.h2_connector();
    let mut tls = f.connect_with(&connector).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let request = ConnRequest {
        host: "svc.ns".into(),
        port: 80,
        pod_identity: None,
    };
    wire::write_frame(&mut tls, &request).await.unwrap();
    let response: ConnResponse = wire::read_frame(&mut tls).await.unwrap();
    assert_eq!(response.failure(), None);
    tls.write_all(b"plain").await.unwrap();
    tls.shutdown().await.unwrap();
    let (got, end) = read_until_end(&mut tls).await;
    assert_eq!(got, b"plain");
    assert!(end.is_ok(), "{end:?}");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_client_offering_no_alpn_gets_the_plain_upgrade_even_with_h2_on() {
    let f = Fixture::start(ECHO).await;
    let tls = f.connect().await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (_tls, response) = f.upgrade("svc.ns", 80).await;
    assert_eq!(response.failure(), None);
    f.sandbox.shutdown().await;
}

const INLINE: &str = "endpoints:\n  - { url: 'tcp://inline.ns:7000', target: inline_echo }\n  - { url: 'tcp://cut.ns:7000', target: inline_echo, faults: { reset_after_bytes: 1000 } }\n";

#[tokio::test]
async fn inline_echo_answers_from_the_ingress_with_half_close() {
    let f = Fixture::start(INLINE).await;
    echoes_through_half_close(&f, "inline.ns", 7000).await;
    let connector = f.h2_connector();
    let send = h2_client(&f, &connector).await;
    h2_streams_echo(&send, "inline.ns:7000").await;
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn inline_echo_applies_the_reset_fault() {
    let f = Fixture::start(INLINE).await;
    resets_after_1000_bytes(&f, "cut.ns", 7000).await;
    f.sandbox.shutdown().await;
}

/// Counts the TLS 1.3 tickets a client is given, and keeps none (every dial is a full handshake).
#[derive(Debug, Default)]
struct TicketCounter(std::sync::atomic::AtomicUsize);

impl rustls::client::ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(
        &self,
        _: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn take_tls13_ticket(
        &self,
        _: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// The ingress sends one session ticket per handshake, as Go's `crypto/tls` (ngrok's ingress)
/// does, unless `ingress.tls13_tickets` says otherwise; so does the raw echo port.
#[tokio::test]
async fn the_ingress_sends_as_many_session_tickets_as_configured() {
    for (yaml, want) in [("", 1), ("ingress: { tls13_tickets: 3 }\n", 3)] {
        let f = Fixture::start(&format!("{ECHO}raw_echo: {{}}\n{yaml}")).await;
        let client = f.dir.path().join("client");
        let tickets = Arc::new(TicketCounter::default());
        let mut config = client_config(
            &f.sandbox.ca_pem_path(),
            Some((&client.join("tls.crt"), &client.join("tls.key"))),
        );
        config.resumption = rustls::client::Resumption::store(tickets.clone());
        let connector = TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        timeout(GUARD, async {
            // The tickets come right after the handshake, so they are read before the answer.
            try_upgrade(&f, &connector).await.unwrap();
            assert_eq!(
                tickets.0.load(std::sync::atomic::Ordering::Relaxed),
                want,
                "{yaml}"
            );

            let raw = f.sandbox.raw_echo_addr().expect("raw echo configured");
            let tcp = TcpStream::connect(raw).await.unwrap();
            let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut echoed = [0u8; 4];
            tls.read_exact(&mut echoed).await.unwrap();
            assert_eq!(
                tickets.0.load(std::sync::atomic::Ordering::Relaxed),
                2 * want,
                "{yaml}"
            );
        })
        .await
        .unwrap();
        f.sandbox.shutdown().await;
    }
}
