//! End to end: the real `bindgate` binary proxying through a real `bindgate sandbox` process,
//! over loopback, mTLS and the binding upgrade.

mod common;

use std::time::Duration;

use common::{binding_config, read_all, start_proxy, start_sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Guard against hangs only; no assertion depends on it.
const GUARD: Duration = common::GUARD;

#[tokio::test]
async fn tcp_echo_through_binding_upstream_with_half_close() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(&sb.ingress_yaml(), &[("echo", "tcp://echo.e2e:7000")], "");
    let proxy = start_proxy(&cfg, sb.dir.path()).await;

    let mut c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
    c.write_all(b"first message").await.unwrap();
    let mut buf = [0u8; 13];
    tokio::time::timeout(GUARD, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"first message");

    // Half-close: send, shut the write side, and still get the whole reply.
    c.write_all(b" and the last words").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c).await, b" and the last words");

    let (status, _) = proxy.terminate().await;
    assert!(status.success(), "bindgate exits 0 on SIGTERM: {status}");
}

#[tokio::test]
async fn http_endpoint_answers_with_host_unchanged() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(&sb.ingress_yaml(), &[("web", "http://web.e2e")], "");
    let proxy = start_proxy(&cfg, sb.dir.path()).await;
    let mut c = TcpStream::connect(proxy.listener("web")).await.unwrap();
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: web.e2e\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8(read_all(&mut c).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("hello from the bindgate sandbox"), "{reply}");
    assert!(reply.contains("GET /hello HTTP/1.1"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("host: web.e2e"),
        "{reply}"
    );
}

#[tokio::test]
async fn unknown_endpoint_closes_client_and_logs_ingress_error_code() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(&sb.ingress_yaml(), &[("ghost", "tcp://ghost.e2e:9999")], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path()).await;
    let mut c = TcpStream::connect(proxy.listener("ghost")).await.unwrap();
    c.write_all(b"anyone?").await.unwrap();
    assert_eq!(
        read_all(&mut c).await,
        b"",
        "the client is closed without data"
    );
    let line = proxy.wait_for_log("upstream unreachable").await;
    assert!(line.contains("ERR_NGROK_3200"), "{line}");
    assert!(
        line.contains("listener=ghost") && line.contains("cluster=ghost"),
        "{line}"
    );
    assert!(line.contains("tcp://ghost.e2e:9999"), "{line}");
}

#[tokio::test]
async fn client_cert_from_another_ca_is_a_clear_tls_error() {
    let sb = start_sandbox("").await;
    // A second sandbox has its own CA; its client cert is foreign to the first.
    let other = start_sandbox("").await;
    let ingress = sb
        .ingress_yaml()
        .replace(&sb.cert, &other.cert)
        .replace(&sb.key, &other.key);
    let cfg = binding_config(&ingress, &[("echo", "tcp://echo.e2e:7000")], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path()).await;
    let mut c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    assert_eq!(read_all(&mut c).await, b"");
    let line = proxy.wait_for_log("upstream unreachable").await;
    assert!(line.contains("rejected our client certificate"), "{line}");
}

#[tokio::test]
async fn ingress_cert_is_refused_unless_its_ca_is_configured() {
    let sb = start_sandbox("").await;
    // Without `ca:` only the system roots are trusted, and they do not know the sandbox CA.
    let without_ca = sb
        .ingress_yaml()
        .replace(&format!("    ca: {}\n", sb.ca), "");
    assert_ne!(without_ca, sb.ingress_yaml());
    let cfg = binding_config(&without_ca, &[("echo", "tcp://echo.e2e:7000")], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path()).await;
    let mut c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    assert_eq!(read_all(&mut c).await, b"");
    let line = proxy.wait_for_log("upstream unreachable").await;
    assert!(line.contains("certificate is not trusted"), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");

    // A CA that is not the sandbox's is refused just the same.
    let other = start_sandbox("").await;
    let wrong_ca = sb.ingress_yaml().replace(&sb.ca, &other.ca);
    let cfg = binding_config(&wrong_ca, &[("echo", "tcp://echo.e2e:7000")], "");
    let mut proxy = start_proxy(&cfg, other.dir.path()).await;
    let mut c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    assert_eq!(read_all(&mut c).await, b"");
    let line = proxy.wait_for_log("upstream unreachable").await;
    assert!(line.contains("certificate is not trusted"), "{line}");
}

/// Deterministic bytes that are not a short repeating pattern.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn sixty_four_mib_each_way_arrive_byte_exact() {
    const LEN: usize = 64 * 1024 * 1024;
    let sb = start_sandbox("").await;
    let cfg = binding_config(&sb.ingress_yaml(), &[("echo", "tcp://echo.e2e:7000")], "");
    let proxy = start_proxy(&cfg, sb.dir.path()).await;
    let c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let data = pattern(LEN, 42);
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut got))
        .await
        .expect("stream hung")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == expected, "echoed bytes differ from what was sent");
}

#[tokio::test]
async fn sigterm_drains_open_connections_then_exits_zero() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(
        &sb.ingress_yaml(),
        &[("echo", "tcp://echo.e2e:7000")],
        "      drain_timeout: 30s\n",
    );
    let mut proxy = start_proxy(&cfg, sb.dir.path()).await;
    let addr = proxy.listener("echo");
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();

    let pid = proxy.child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    proxy.wait_for_log("stopped accepting").await;
    // The listener no longer accepts, but the open connection keeps working while draining.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    c.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(GUARD, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c).await, b"");
    let status = tokio::time::timeout(GUARD, proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit after the drain: {status}");
}

/// Threads of process `pid` named like tokio's runtime workers.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn concurrency_sets_the_worker_threads() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(&sb.ingress_yaml(), &[("echo", "tcp://echo.e2e:7000")], "");
    let path = common::write(sb.dir.path(), "bindgate.yaml", &cfg);
    for n in [1usize, 3] {
        let threads = n.to_string();
        let proxy =
            common::Proc::start(&["--concurrency", &threads, "run", "-c", &path], &[]).await;
        assert_eq!(proxy.event["ready"], true, "{}", proxy.event);
        let pid = proxy.child.id().unwrap();
        // A new thread names itself once it first runs: on a loaded machine that can be after
        // the started line. Wait for the names, then check none more come.
        let deadline = tokio::time::Instant::now() + common::GUARD;
        while worker_threads(pid) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "--concurrency {n}: {} workers",
                worker_threads(pid)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(worker_threads(pid), n, "--concurrency {n}");
        // And it serves.
        let mut c = TcpStream::connect(proxy.listener("echo")).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(read_all(&mut c).await, b"ping");
    }
}
