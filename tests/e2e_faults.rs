//! The fault matrix: what bindgate does when the ingress, the host or the operator misbehaves.
//! Each case is a row of the README's "Failure modes" table.

mod common;

use std::net::SocketAddr;

use common::{Proc, binding_config, read_all, start_proxy, start_sandbox, wait_for_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `ingresses:` entry for the sandbox with `extra` settings (indented 4 spaces).
fn ingress(sb: &common::SandboxProc, extra: &str) -> String {
    sb.ingress_yaml()
        .replace("    connect_timeout: 5s\n", "    connect_timeout: 1s\n")
        + extra
}

async fn echo_once(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(data).await.unwrap();
    c.shutdown().await.unwrap();
    read_all(&mut c).await
}

/// The ingress takes the connection and the client's early bytes, then never answers: the
/// client is closed after the ingress's `connect_timeout` (not the hour-long `idle_timeout`),
/// the failure is counted once, and other endpoints keep working.
#[tokio::test]
async fn an_ingress_that_never_answers_after_early_data_is_given_up_on() {
    let sb = start_sandbox(
        "  - { url: 'tcp://stall.e2e:7000', target: echo, faults: { latency: 10m } }\n",
    )
    .await;
    for transport in ["pool", "multiplex"] {
        let ing = ingress(
            &sb,
            &format!("    transport: {transport}\n    early_data: true\n"),
        );
        let cfg = binding_config(
            &ing,
            &[
                ("stall", "tcp://stall.e2e:7000"),
                ("echo", "tcp://echo.e2e:7000"),
            ],
            "",
        );
        let dir = tempfile::tempdir().unwrap();
        let proxy = start_proxy(&cfg, dir.path()).await;
        let mut c = TcpStream::connect(proxy.listener("stall")).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        assert_eq!(read_all(&mut c).await, b"", "{transport}");
        wait_for_metric(
            proxy.admin(),
            "bindgate_upstream_connect_failures_total",
            &[],
            1.0,
        )
        .await;
        assert_eq!(
            echo_once(proxy.listener("echo"), b"still here").await,
            b"still here",
            "{transport}"
        );
    }
}

/// The ingress resets one connection mid-stream: that client is closed, the others are not.
#[tokio::test]
async fn a_reset_mid_stream_closes_only_its_connection() {
    let sb = start_sandbox(
        "  - { url: 'tcp://reset.e2e:7000', target: echo, faults: { reset_after_bytes: 1000 } }\n",
    )
    .await;
    let cfg = binding_config(
        &ingress(&sb, ""),
        &[
            ("reset", "tcp://reset.e2e:7000"),
            ("echo", "tcp://echo.e2e:7000"),
        ],
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&cfg, dir.path()).await;
    let mut steady = common::EchoStream::open(proxy.listener("echo"), 512).await;
    steady.send(4).await;
    let mut c = TcpStream::connect(proxy.listener("reset")).await.unwrap();
    let _ = c.write_all(&[7u8; 4000]).await;
    let mut sink = Vec::new();
    let got = tokio::time::timeout(common::GUARD, c.read_to_end(&mut sink))
        .await
        .expect("the reset connection stayed open");
    assert!(
        got.is_err() || sink.len() < 4000,
        "{} bytes came back",
        sink.len()
    );
    steady.send(4).await;
    steady.echoed_all().await;
    steady.finish().await;
}

/// A listener whose port is taken fails alone: it is reported in `/listeners` with the error,
/// `/ready` says why it is not ready, and the other listener serves.
#[tokio::test]
async fn a_port_conflict_fails_only_that_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let echo_addr = common::echo_server().await;
    let cfg = format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - {{ name: blocked, address: \"{port}\", routes: [ {{ cluster: c }} ] }}
    - {{ name: free, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}
  clusters:
    - {{ name: c, type: static, endpoints: [ \"{echo_addr}\" ] }}
"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(dir.path(), "bindgate.yaml", &cfg);
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(proxy.event["ready"], false, "{}", proxy.event);
    let rows = common::admin_json(proxy.admin(), "/listeners").await;
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("blocked")["state"], "failed", "{rows}");
    assert!(
        row("blocked")["error"].as_str().unwrap().contains("in use"),
        "{rows}"
    );
    assert_eq!(row("free")["state"], "active", "{rows}");
    let free: SocketAddr = row("free")["bound_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(echo_once(free, b"ok").await, b"ok");
    let ready = reqwest::get(format!("http://{}/ready", proxy.admin()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("blocked"));
    drop(taken);
}

/// Out of file descriptors: with a hard limit of 64, the default global cap admits what the
/// process can carry and turns the rest away at accept; the admin API keeps answering and the
/// admitted connections keep working.
#[tokio::test]
async fn a_low_fd_limit_turns_connections_away_instead_of_failing() {
    let echo_addr = common::echo_server().await;
    let cfg = format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - {{ name: echo, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}
  clusters:
    - {{ name: c, type: static, endpoints: [ \"{echo_addr}\" ] }}
"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(dir.path(), "bindgate.yaml", &cfg);
    let proxy = Proc::start_with_fd_limit(&["run", "-c", &path], 64).await;
    let addr = proxy.listener("echo");
    // The default cap under a limit of 64 is its floor, 16.
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        open.push(c);
    }
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(b"x").await;
        assert_eq!(read_all(&mut c).await, b"");
    }
    let scrape = common::scrape(proxy.admin()).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_connections_refused_total", &[]),
        40.0
    );
    assert_eq!(
        common::metric(&scrape, "bindgate_connections_active", &[]),
        16.0
    );
    for c in &mut open {
        c.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
    }
}

/// A storm of SIGHUPs while traffic flows: the process stays up and ready, an open stream keeps
/// every byte, the listener keeps its socket, and versions only move forward (each SIGHUP that
/// is not coalesced rebuilds, so that rotated files named by the config are read again).
#[tokio::test]
async fn a_sighup_storm_changes_nothing_for_traffic() {
    let sb = start_sandbox("").await;
    let cfg = binding_config(&ingress(&sb, ""), &[("echo", "tcp://echo.e2e:7000")], "");
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&cfg, dir.path()).await;
    let before = common::admin_json(proxy.admin(), "/config_dump").await["version_info"].clone();
    let mut stream = common::EchoStream::open(proxy.listener("echo"), 1024).await;
    let pid = proxy.child.id().unwrap().to_string();
    for _ in 0..100 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        stream.send(1).await;
    }
    stream.echoed_all().await;
    stream.finish().await;
    let ready = reqwest::get(format!("http://{}/ready", proxy.admin()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let after = common::admin_json(proxy.admin(), "/config_dump").await["version_info"].clone();
    let version = |v: &serde_json::Value| v.as_str().unwrap().parse::<u64>().unwrap();
    assert!(version(&after) >= version(&before), "{before} -> {after}");
    assert_eq!(echo_once(proxy.listener("echo"), b"after").await, b"after");
}

/// SIGTERM with 1,000 streams in flight: no new connections, every stream finishes with every
/// byte it sent back, then the process exits 0.
#[tokio::test]
async fn sigterm_with_a_thousand_streams_in_flight_loses_no_byte() {
    const STREAMS: usize = 1000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sb = start_sandbox("").await;
    let cfg = binding_config(
        &ingress(
            &sb,
            "    transport: multiplex\n    multiplex: { connections: 2, max_streams: 500 }\n",
        ),
        &[("echo", "tcp://echo.e2e:7000")],
        "      drain_timeout: 60s\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start_proxy(&cfg, dir.path()).await;
    let addr = proxy.listener("echo");
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut s = common::EchoStream::open(addr, 256).await;
        s.send(1).await;
        streams.push(s);
    }
    for s in &mut streams {
        s.echoed_all().await;
    }
    wait_for_metric(
        proxy.admin(),
        "bindgate_connections_active",
        &[],
        STREAMS as f64,
    )
    .await;
    let pid = proxy.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Draining: the listener stops accepting (polled), and the open streams keep flowing.
    let deadline = tokio::time::Instant::now() + common::GUARD;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let finishing = streams.into_iter().map(|mut s| async move {
        s.send(3).await;
        s.finish().await;
    });
    futures_util::future::join_all(finishing).await;
    let status = tokio::time::timeout(common::GUARD, proxy.child.wait())
        .await
        .expect("did not exit after the drain")
        .unwrap();
    assert!(status.success(), "{status}");
}
