//! Serving without the ngrok API: a restart while the API is down starts with the saved
//! identity and the endpoints the last run discovered; `/ready` follows `ready_when`; a revoked
//! key stops discovery, not the listeners.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Proc, SandboxProc, admin_json, start_sandbox_api, write};
use reqwest::Method;

const ECHO: &str = "tcp://echo.e2e:7000";

async fn api_faults(sb: &SandboxProc, faults: serde_json::Value) {
    let (code, body) = sb.control(Method::PUT, "api_faults", Some(faults)).await;
    assert_eq!(code, 204, "{body}");
}

/// `/ready`: status and body.
async fn ready(admin: SocketAddr) -> (u16, String) {
    let r = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn discovery(admin: SocketAddr) -> serde_json::Value {
    admin_json(admin, "/config_dump").await["control"]["discovery"].clone()
}

/// A config registering with `sb` with API calls bounded by 1 s, `key` as the API key and
/// `extra` at the top level; `ready_when` set when given.
fn config(
    sb: &SandboxProc,
    dir: &Path,
    ports: &(String, String),
    key: &str,
    ready_when: Option<&str>,
    extra: &str,
) -> String {
    let mut cfg = sb
        .dynamic_config(&dir.join("state"), ports, key, extra)
        .replace(
            &format!("  api_key: {key}\n"),
            &format!("  api_key: {key}\n  api_timeout: 1s\n"),
        );
    if let Some(r) = ready_when {
        cfg = cfg.replace(
            "    poll_interval: 1s\n",
            &format!("    poll_interval: 1s\n    ready_when: {r}\n"),
        );
        assert!(cfg.contains("ready_when"), "{cfg}");
    }
    assert!(cfg.contains("api_timeout: 1s"), "{cfg}");
    cfg
}

#[tokio::test]
async fn with_the_api_down_a_restart_serves_the_saved_identity_and_endpoints() {
    let sb = start_sandbox_api(common::SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = common::port_range(10);
    let path = write(
        dir.path(),
        "bindgate.yaml",
        &config(&sb, dir.path(), &ports, "k-e2e", None, ""),
    );

    // A first run registers, discovers and saves what it found.
    let first = Proc::start(&["run", "-c", &path], &[]).await;
    let echo = common::wait_endpoint(first.admin(), ECHO).await;
    common::wait_admin(first.admin(), "/config_dump", "a poll succeeded", |v| {
        (v["control"]["discovery"]["state"] == "current").then_some(())
    })
    .await;
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/endpoints.json")).unwrap(),
    )
    .unwrap();
    assert!(
        saved["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == ECHO),
        "{saved}"
    );
    let (status, _) = first.terminate().await;
    assert!(status.success());
    let registrations = sb.registrations().await;

    // The API now answers nothing: every request times out.
    api_faults(&sb, serde_json::json!({ "hang_next": 1_000_000 })).await;
    let second = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = second.admin();
    assert_eq!(
        common::wait_endpoint(admin, ECHO).await,
        echo,
        "the same address"
    );
    assert_eq!(common::echo_once(echo, b"offline").await, b"offline");
    let (code, body) = ready(admin).await;
    assert_eq!(
        code, 200,
        "ready_when: cached (the default) is met by the saved set: {body}"
    );
    let d = discovery(admin).await;
    assert_eq!(d["state"], "cached", "{d}");
    assert_eq!(d["ready_when"], "cached", "{d}");
    let scrape = common::scrape(admin).await;
    assert_eq!(
        common::metric(&scrape, bindgate::telemetry::DISCOVERY_LAST_SUCCESS, &[]),
        0.0
    );

    // The API returns: discovery resumes and finds a new endpoint.
    api_faults(&sb, serde_json::json!({})).await;
    let late = "tcp://late.e2e:7001";
    sb.add_endpoint(late, "echo").await;
    let late_addr = common::wait_endpoint(admin, late).await;
    assert_eq!(common::echo_once(late_addr, b"late").await, b"late");
    assert_eq!(discovery(admin).await["state"], "current");
    assert_eq!(
        sb.registrations().await,
        registrations,
        "no new registration"
    );
    let (status, _) = second.terminate().await;
    assert!(status.success());

    // With `ready_when: discovered`, the saved set serves but `/ready` waits for a poll.
    api_faults(&sb, serde_json::json!({ "hang_next": 1_000_000 })).await;
    let strict = write(
        dir.path(),
        "strict.yaml",
        &config(&sb, dir.path(), &ports, "k-e2e", Some("discovered"), ""),
    );
    let third = Proc::start(&["run", "-c", &strict], &[]).await;
    let admin = third.admin();
    assert_eq!(common::wait_endpoint(admin, ECHO).await, echo);
    let (code, body) = ready(admin).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no bound-endpoint poll has succeeded yet"),
        "{body}"
    );
    api_faults(&sb, serde_json::json!({})).await;
    common::wait_admin(admin, "/config_dump", "a poll succeeded", |v| {
        (v["control"]["discovery"]["state"] == "current").then_some(())
    })
    .await;
    let (code, body) = ready(admin).await;
    assert_eq!(code, 200, "{body}");
}

/// An API that accepts and never answers (packets dropped by a firewall, a hung load
/// balancer), with `api_timeout: 1h`: a restart with a usable saved identity gives the API one
/// try of at most `SAVED_IDENTITY_WAIT` and then serves the saved endpoints, instead of waiting
/// out four tries of `api_timeout` (before the fix it never started within this test).
#[tokio::test]
async fn a_restart_with_a_silent_api_serves_the_saved_identity_without_waiting_out_api_timeout() {
    let sb = start_sandbox_api(common::SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = common::port_range(10);
    let cfg = config(&sb, dir.path(), &ports, "k-e2e", None, "");
    let path = write(dir.path(), "bindgate.yaml", &cfg);
    let first = Proc::start(&["run", "-c", &path], &[]).await;
    let echo = common::wait_endpoint(first.admin(), ECHO).await;
    common::wait_admin(first.admin(), "/config_dump", "a poll succeeded", |v| {
        (v["control"]["discovery"]["state"] == "current").then_some(())
    })
    .await;
    assert!(first.terminate().await.0.success());

    api_faults(&sb, serde_json::json!({ "hang_next": 1_000_000 })).await;
    let patient = write(
        dir.path(),
        "patient.yaml",
        &cfg.replace("api_timeout: 1s", "api_timeout: 1h"),
    );
    let second = tokio::time::timeout(common::GUARD, Proc::start(&["run", "-c", &patient], &[]))
        .await
        .expect("start-up waited on the silent API");
    let admin = second.admin();
    assert_eq!(common::wait_endpoint(admin, ECHO).await, echo);
    assert_eq!(common::echo_once(echo, b"saved").await, b"saved");
    assert_eq!(discovery(admin).await["state"], "cached");
}

/// A key revoked while running: discovery stops (logged, in `/ready`'s body, in
/// `/config_dump` and as a metric); the static listener and the discovered endpoints keep
/// serving, and the process stays up and ready.
#[tokio::test]
async fn a_revoked_key_stops_discovery_but_not_the_listeners() {
    let api = "api:\n  address: 127.0.0.1:0\n  api_keys: [k-e2e, k-gw]\n";
    let sb = start_sandbox_api(api, "").await;
    let echo_backend = common::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let statics = format!(
        "static_resources:\n  listeners:\n    - {{ name: local, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}\n  clusters:\n    - {{ name: c, type: static, endpoints: [ \"{echo_backend}\" ] }}\n"
    );
    let path = write(
        dir.path(),
        "bindgate.yaml",
        &config(
            &sb,
            dir.path(),
            &common::port_range(10),
            "k-gw",
            None,
            &statics,
        ),
    );
    let mut gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let echo = common::wait_endpoint(admin, ECHO).await;
    let local = gw.listener("local");

    let (code, body) = sb
        .control(
            Method::PUT,
            "api_keys",
            Some(serde_json::json!({"api_keys": ["k-e2e"]})),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    common::wait_for_metric(admin, bindgate::telemetry::DISCOVERY_STOPPED, &[], 1.0).await;
    let d = discovery(admin).await;
    assert_eq!(d["state"], "stopped", "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("API key was rejected"),
        "{d}"
    );
    let (code, body) = ready(admin).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("discovery stopped"), "{body}");
    assert_eq!(common::echo_once(local, b"static").await, b"static");
    assert_eq!(common::echo_once(echo, b"discovered").await, b"discovered");
    assert!(!body.contains("k-gw"), "the key never appears: {body}");
    let (code, out, err) = common::run_to_end(&["status", "--admin", &admin.to_string()], &[]);
    assert_eq!(code, 0, "still ready: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("discovery: "))
        .unwrap_or_else(|| panic!("no discovery line: {out}"));
    assert!(
        line.starts_with("discovery: stopped, last poll succeeded at "),
        "{line}"
    );
    assert!(
        line.contains("last error: the API key was rejected"),
        "{line}"
    );
    gw.wait_for_log("discovery stopped").await;
}
