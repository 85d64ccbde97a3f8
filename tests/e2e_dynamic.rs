//! Dynamic configuration end to end: registration, discovery, runtime changes, reloads, renewal,
//! with the real binary against a sandbox serving the emulated ngrok API.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{
    Proc, SANDBOX_API, SandboxProc, admin_json, endpoint_address, port_range, start_sandbox_api,
    write,
};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO: &str = "tcp://echo.e2e:7000";
const WEB: &str = "http://web.e2e:80";

async fn start_gateway(
    sb: &SandboxProc,
    dir: &std::path::Path,
    ports: &(String, String),
    extra: &str,
) -> Proc {
    let cfg = sb.dynamic_config(&dir.join("state"), ports, "k-e2e", extra);
    let path = write(dir, "bindgate.yaml", &cfg);
    Proc::start(&["run", "-c", &path], &[]).await
}

#[tokio::test]
async fn registers_once_discovers_and_keeps_ports_across_restarts() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = port_range(20);
    let gw = start_gateway(&sb, dir.path(), &ports, "").await;
    let admin = gw.admin();
    let echo = common::wait_endpoint(admin, ECHO).await;
    let web = endpoint_address(admin, WEB).await.expect("web exposed");
    assert_eq!(common::echo_once(echo, b"discovered").await, b"discovered");
    let mut c = TcpStream::connect(web).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.e2e\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("hello from the bindgate sandbox"), "{reply}");
    drop(c);
    assert_eq!(sb.registrations().await, 1);

    let state = dir.path().join("state");
    for f in ["tls.key", "tls.crt", "operator.json", "allocations.json"] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let (status, _) = gw.terminate().await;
    assert!(status.success());
    let gw = start_gateway(&sb, dir.path(), &ports, "").await;
    assert_eq!(
        Some(common::wait_endpoint(gw.admin(), ECHO).await),
        Some(echo),
        "same port after restart"
    );
    assert_eq!(endpoint_address(gw.admin(), WEB).await, Some(web));
    assert_eq!(sb.registrations().await, 1, "no second registration");
    assert_eq!(common::echo_once(echo, b"again").await, b"again");
}

#[tokio::test]
async fn endpoints_added_and_removed_at_run_time() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sb, dir.path(), &port_range(20), "").await;
    let admin = gw.admin();
    common::wait_endpoint(admin, ECHO).await;

    let late = "tcp://late.e2e:7100";
    sb.add_endpoint(late, "echo").await;
    let late_addr = common::wait_endpoint(admin, late).await;
    assert_eq!(common::echo_once(late_addr, b"late").await, b"late");

    // A connection streaming through `echo` when it is removed completes byte-exact.
    let echo = endpoint_address(admin, ECHO).await.unwrap();
    let mut stream = common::EchoStream::open(echo, 64 * 1024).await;
    stream.send(16).await;
    // Established through the ingress before the endpoint goes (else the removal may win the
    // race with the upstream connect, and the connection rightly fails).
    stream.echoed_all().await;
    let (code, _) = sb
        .control(Method::DELETE, &format!("endpoints?url={ECHO}"), None)
        .await;
    assert_eq!(code, 204);
    common::wait_not_accepting(echo).await;
    stream.send(16).await;
    stream.finish().await;
    // The other endpoints are untouched.
    assert_eq!(common::echo_once(late_addr, b"still").await, b"still");
}

#[tokio::test]
async fn two_hundred_fifty_endpoints_over_three_pages() {
    let mut extra = String::new();
    for i in 0..248 {
        extra.push_str(&format!(
            "  - url: tcp://svc{i}.many:7000\n    target: echo\n"
        ));
    }
    let api = format!("{SANDBOX_API}  page_limit_max: 100\n");
    let sb = start_sandbox_api(&api, &extra).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sb, dir.path(), &port_range(300), "").await;
    let rows = common::wait_admin(gw.admin(), "/endpoints", "250 endpoints active", |v| {
        let rows = v.as_array()?;
        (rows.len() == 250 && rows.iter().all(|r| r["state"] == "active")).then(|| rows.clone())
    })
    .await;
    assert_eq!(rows.len(), 250, "all endpoints across pages are exposed");
    let last = endpoint_address(gw.admin(), "tcp://svc247.many:7000")
        .await
        .unwrap();
    assert_eq!(common::echo_once(last, b"page three").await, b"page three");
}

#[tokio::test]
async fn api_failures_keep_the_last_good_endpoints_serving() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sb, dir.path(), &port_range(20), "").await;
    let echo = common::wait_endpoint(gw.admin(), ECHO).await;

    let (code, body) = sb
        .control(
            Method::PUT,
            "api_faults",
            Some(serde_json::json!({"fail_next": 8})),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    // Each poll tries 4 times: 8 failures are exactly 2 failed polls.
    let failures = bindgate::telemetry::DISCOVERY_FAILURES;
    common::wait_for_metric(gw.admin(), failures, &[], 2.0).await;
    assert_eq!(
        common::echo_once(echo, b"during outage").await,
        b"during outage"
    );
    // Discovery resumed: a new endpoint shows up.
    let late = "tcp://after-outage.e2e:7002";
    sb.add_endpoint(late, "echo").await;
    common::wait_endpoint(gw.admin(), late).await;
    assert_eq!(common::echo_once(echo, b"after").await, b"after");
    let scrape = common::scrape(gw.admin()).await;
    assert_eq!(common::metric(&scrape, failures, &[]), 2.0);
    let dump = admin_json(gw.admin(), "/config_dump").await;
    assert_eq!(dump["control"]["rejected_updates"], 0);
}

#[tokio::test]
async fn a_rejected_api_key_is_one_clear_fatal_error() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = sb.dynamic_config(&dir.path().join("state"), &port_range(5), "wrong-key", "");
    let path = write(dir.path(), "bindgate.yaml", &cfg);
    let (code, out, err) = common::run_to_end(&["run", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.matches("API key was rejected").count(),
        1,
        "one clear line: {err}"
    );
    assert!(!err.contains("wrong-key"), "the key never appears: {err}");
    assert!(out.is_empty(), "never announced readiness: {out}");
}

#[tokio::test]
async fn certificate_is_renewed_and_connections_work_before_and_after() {
    let api = format!("{SANDBOX_API}  cert_lifetime: 4s\n");
    let sb = start_sandbox_api(&api, "").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sb, dir.path(), &port_range(20), "").await;
    let echo = common::wait_endpoint(gw.admin(), ECHO).await;
    let before = std::fs::read(dir.path().join("state/tls.crt")).unwrap();
    // Opened before the renewal and kept open across it.
    let mut held = TcpStream::connect(echo).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    common::wait_for_metric(gw.admin(), bindgate::telemetry::CERT_RENEWALS, &[], 1.0).await;
    let after = std::fs::read(dir.path().join("state/tls.crt")).unwrap();
    assert_ne!(before, after, "a new certificate was stored");
    let mode = std::fs::metadata(dir.path().join("state/tls.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(common::echo_once(echo, b"new cert").await, b"new cert");
    held.write_all(b"old conn").await.unwrap();
    held.shutdown().await.unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"old conn");
}
