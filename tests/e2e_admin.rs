//! The admin API and listener failures, through the real binary.

mod common;

use std::net::SocketAddr;

use common::{Proc, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_listener_that_cannot_bind_is_reported_and_does_not_block_the_others() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = occupied.local_addr().unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - name: blocked
      address: {taken}
      routes: [ {{ cluster: echo }} ]
    - name: fine
      address: 127.0.0.1:0
      routes: [ {{ cluster: echo }} ]
  clusters:
    - name: echo
      type: static
      endpoints: [ \"{echo_addr}\" ]
"
    );
    let path = write(dir.path(), "cfg.yaml", &cfg);
    let mut proxy = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(proxy.event["ready"], false, "{}", proxy.event);
    let admin = proxy.admin();

    let (code, body) = get(admin, "/ready").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("listener `blocked`") && body.contains(&taken.to_string()),
        "{body}"
    );
    assert_eq!(get(admin, "/live").await.0, 200);

    let (code, body) = get(admin, "/listeners").await;
    assert_eq!(code, 200);
    let listeners: serde_json::Value = serde_json::from_str(&body).unwrap();
    let blocked = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "blocked")
        .unwrap();
    assert_eq!(blocked["state"], "failed");
    assert!(
        blocked["error"].as_str().unwrap().contains("in use"),
        "{blocked}"
    );
    let fine = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "fine")
        .unwrap();
    assert_eq!(fine["state"], "active");

    // The listener that did bind serves.
    let mut c = TcpStream::connect(proxy.listener("fine")).await.unwrap();
    c.write_all(b"ok?").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok?");

    let (code, body) = get(admin, "/clusters").await;
    assert_eq!(code, 200);
    assert!(body.contains(&echo_addr.to_string()), "{body}");
    let (code, body) = get(admin, "/config_dump").await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version_info"], "1");
    assert_eq!(
        dump["config"]["static_resources"]["listeners"][1]["name"],
        "fine"
    );
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(metrics.contains("bindgate_listeners_failed 1"), "{metrics}");

    // Once the port is free, the listener binds by itself and the gateway becomes ready.
    drop(occupied);
    proxy
        .wait_for_log_all(&["listener bound", "listener=blocked"])
        .await;
    assert_eq!(get(admin, "/ready").await, (200, "ready\n".to_owned()));
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(metrics.contains("bindgate_listeners_failed 0"), "{metrics}");
}

#[tokio::test]
async fn ready_once_every_listener_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "\
version: 1
admin: { address: 127.0.0.1:0 }
static_resources:
  listeners:
    - name: a
      address: 127.0.0.1:0
      routes: [ { cluster: c } ]
  clusters:
    - name: c
      type: static
      endpoints: [ \"127.0.0.1:9\" ]
";
    let path = write(dir.path(), "cfg.yaml", cfg);
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(proxy.event["ready"], true);
    assert_eq!(
        get(proxy.admin(), "/ready").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(get(proxy.admin(), "/nope").await.0, 404);
}

#[tokio::test]
async fn non_loopback_admin_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "cfg.yaml",
        "version: 1\nadmin: { address: 0.0.0.0:9901 }\n",
    );
    let (code, out, _) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("line 2") && out.contains("not a loopback address"),
        "{out}"
    );
}

#[tokio::test]
async fn status_summarizes_a_running_instance_and_exits_by_readiness() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = occupied.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |blocked: &str| {
        format!(
            "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
{blocked}    - name: fine
      address: 127.0.0.1:0
      routes: [ {{ cluster: echo }} ]
  clusters:
    - name: echo
      type: static
      endpoints: [ \"127.0.0.1:9\" ]
"
        )
    };
    let blocked = format!(
        "    - name: blocked\n      address: {taken}\n      routes: [ {{ cluster: echo }} ]\n"
    );

    // Not ready: one listener cannot bind.
    let path = write(dir.path(), "blocked.yaml", &cfg(&blocked));
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = proxy.admin().to_string();
    let (code, out, err) = common::run_to_end(&["status", "--admin", &admin], &[]);
    assert_eq!(code, 1, "not ready exits 1: {out}{err}");
    assert!(
        out.contains(&format!("bindgate at {admin}: NOT READY")),
        "{out}"
    );
    assert!(out.contains("listener `blocked`"), "the reason: {out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))
            .to_owned()
    };
    assert!(line("blocked").contains("failed"), "{out}");
    assert!(line("blocked").contains(&taken.to_string()), "{out}");
    assert!(line("fine").contains("active"), "{out}");
    assert!(line("echo").contains("static"), "{out}");
    assert!(line("echo").contains("127.0.0.1:9"), "{out}");

    // The same as JSON.
    let (code, out, _) = common::run_to_end(&["status", "--admin", &admin, "--json"], &[]);
    assert_eq!(code, 1);
    let dump: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dump["ready"], false, "{dump}");
    assert_eq!(dump["listeners"].as_array().unwrap().len(), 2, "{dump}");
    drop(proxy);

    // Ready: exit 0.
    let path = write(dir.path(), "fine.yaml", &cfg(""));
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = proxy.admin().to_string();
    let (code, out, err) = common::run_to_end(&["status", "--admin", &admin], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("bindgate at {admin}: ready (config version ")),
        "{out}"
    );

    // `-c` with an OS-chosen admin port cannot know where to ask, and says so.
    let (code, _, err) = common::run_to_end(&["status", "-c", &path], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("pass the bound one with --admin"), "{err}");

    // Nothing listening: a clear error.
    drop(proxy);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, _, err) = common::run_to_end(&["status", "--admin", &nobody], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("is bindgate running?"), "{err}");
}
