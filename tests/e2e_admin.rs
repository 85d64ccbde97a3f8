//! The admin API and listener failures, through the real binary.

mod common;

use std::net::SocketAddr;

use common::{Proc, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    get_as(admin, path, "localhost").await
}

async fn get_as(admin: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
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
    let echo_addr = common::echo_server().await;
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
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
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
    let scrape = common::scrape(admin).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_listeners_failed", &[]),
        1.0
    );

    // Once the port is free, the listener binds by itself and the gateway becomes ready.
    drop(occupied);
    common::wait_for_metric(admin, "bindgate_listeners_failed", &[], 0.0).await;
    assert_eq!(get(admin, "/ready").await, (200, "ready\n".to_owned()));
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

    // DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends its own Host.
    let admin = proxy.admin();
    assert_eq!(get_as(admin, "/config_dump", "evil.example").await.0, 403);
    assert_eq!(get_as(admin, "/ready", "evil.example:9901").await.0, 403);
    assert_eq!(get_as(admin, "/ready", &admin.to_string()).await.0, 200);
    assert_eq!(get_as(admin, "/ready", "localhost:9901").await.0, 200);
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

#[tokio::test]
async fn metrics_parse_and_count_known_traffic() {
    let sandbox = common::start_sandbox("").await;
    let echo_addr = common::echo_server().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
{ingresses}static_resources:
  listeners:
    - name: echo
      address: 127.0.0.1:0
      routes: [ {{ cluster: echo }} ]
    - name: dead
      address: 127.0.0.1:0
      routes: [ {{ cluster: dead }} ]
    - name: bound
      address: 127.0.0.1:0
      routes: [ {{ cluster: bound }} ]
  clusters:
    - name: echo
      type: static
      endpoints: [ \"{echo_addr}\" ]
    - name: dead
      type: static
      endpoints: [ \"{dead_addr}\" ]
      retry: {{ attempts: 1 }}
    - name: bound
      type: binding_upstream
      endpoint: tcp://echo.e2e:7000
      ingress: sandbox
",
        ingresses = sandbox.ingress_yaml()
    );
    let proxy = common::start_proxy(&cfg, dir.path()).await;
    let admin = proxy.admin();

    // Before any traffic: the unlabelled families are there, at 0.
    let scrape = common::parse_scrape(&get(admin, "/metrics").await.1);
    assert_eq!(
        common::metric(&scrape, "bindgate_connections_accepted_total", &[]),
        0.0
    );
    assert_eq!(
        common::metric(&scrape, "bindgate_connections_refused_total", &[]),
        0.0
    );

    // Three echoes through the static listener, one through the bound endpoint, one to a dead
    // upstream (closed without a byte).
    for (listener, n) in [("echo", 3), ("bound", 1)] {
        for i in 0..n {
            let mut c = TcpStream::connect(proxy.listener(listener)).await.unwrap();
            let msg = format!("{listener} {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            c.shutdown().await.unwrap();
            assert_eq!(common::read_all(&mut c).await, msg.as_bytes());
        }
    }
    let mut c = TcpStream::connect(proxy.listener("dead")).await.unwrap();
    assert!(common::read_all(&mut c).await.is_empty());

    // The proxy's side of the connections ends after the client's: wait until none is active.
    let deadline = tokio::time::Instant::now() + common::GUARD;
    let scrape = loop {
        let body = get(admin, "/metrics").await.1;
        let scrape = common::parse_scrape(&body);
        if common::metric(&scrape, "bindgate_connections_active", &[]) == 0.0
            && common::metric(&scrape, "bindgate_upstream_connect_failures_total", &[]) == 1.0
        {
            break scrape;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for (name, want) in [
        ("bindgate_connections_accepted_total", 5.0),
        ("bindgate_connections_refused_total", 0.0),
        ("bindgate_upstream_connect_failures_total", 1.0),
        ("bindgate_listeners_failed", 0.0),
        ("bindgate_config_applied_total", 1.0),
        ("bindgate_config_rejected_total", 0.0),
        ("bindgate_snapshot_version", 1.0),
        ("bindgate_discovery_polls_total", 0.0),
    ] {
        assert_eq!(common::metric(&scrape, name, &[]), want, "{name}");
    }
    let sandbox_ingress = [("ingress", "sandbox")];
    let checkouts = common::metric(
        &scrape,
        "bindgate_pool_checkouts_total",
        &[("ingress", "sandbox"), ("result", "hit")],
    ) + common::metric(
        &scrape,
        "bindgate_pool_checkouts_total",
        &[("ingress", "sandbox"), ("result", "miss")],
    );
    assert_eq!(checkouts, 1.0);

    // One binding upgrade and one pool checkout, as histograms with every bucket.
    for name in [
        "bindgate_binding_upgrade_duration_seconds",
        "bindgate_pool_checkout_duration_seconds",
    ] {
        let hist = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("ingress") == Some("sandbox"))
            .unwrap_or_else(|| panic!("no {name}"));
        let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
            panic!("{name} is not a histogram: {hist:?}");
        };
        assert_eq!(buckets.len(), 17, "{name}: {buckets:?}");
        assert_eq!(buckets.last().map(|b| b.count), Some(1.0), "{name}");
        assert_eq!(
            common::metric(&scrape, &format!("{name}_count"), &sandbox_ingress),
            1.0
        );
        assert!(common::metric(&scrape, &format!("{name}_sum"), &sandbox_ingress) > 0.0);
    }

    // Labelled by listener and cluster: exact counts and bytes of the traffic above.
    for (listener, accepted, bytes) in
        [("echo", 3.0, 18.0), ("bound", 1.0, 7.0), ("dead", 1.0, 0.0)]
    {
        let l = [("listener", listener)];
        assert_eq!(
            common::metric(&scrape, "bindgate_listener_connections_accepted_total", &l),
            accepted,
            "{listener}"
        );
        assert_eq!(
            common::metric(&scrape, "bindgate_listener_connections_active", &l),
            0.0
        );
        assert_eq!(
            common::metric(&scrape, "bindgate_listener_received_bytes_total", &l),
            bytes,
            "{listener}: bytes from the clients"
        );
        assert_eq!(
            common::metric(&scrape, "bindgate_listener_sent_bytes_total", &l),
            bytes,
            "{listener}: bytes echoed back"
        );
    }
    assert_eq!(
        common::metric(
            &scrape,
            "bindgate_cluster_connect_failures_total",
            &[("cluster", "dead")]
        ),
        1.0
    );
    assert_eq!(
        common::metric(
            &scrape,
            "bindgate_upstream_connect_duration_seconds_count",
            &[("cluster", "echo")]
        ),
        3.0
    );
    assert_eq!(
        common::metric(
            &scrape,
            "bindgate_upstream_connect_duration_seconds_count",
            &[("cluster", "bound")]
        ),
        1.0
    );
    assert!(common::metric(&scrape, "process_start_time_seconds", &[]) > 1.5e9);
    assert!(common::metric(&scrape, "process_open_fds", &[]) > 0.0);
}

/// A gateway with its admin server and one listener routed to a port nothing answers on.
async fn start_one_listener(dir: &std::path::Path) -> Proc {
    let cfg = "\
version: 1
admin: { address: 127.0.0.1:0 }
static_resources:
  listeners:
    - { name: a, address: 127.0.0.1:0, routes: [ { cluster: c } ] }
  clusters:
    - { name: c, type: static, endpoints: [ \"127.0.0.1:9\" ] }
";
    let path = write(dir, "cfg.yaml", cfg);
    Proc::start(&["run", "-c", &path], &[]).await
}

#[tokio::test]
async fn idle_admin_connections_are_capped_make_room_for_a_probe_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_one_listener(dir.path()).await;
    let admin = proxy.admin();
    // 64 clients that connect and send nothing, or half a request head, hold every admin slot...
    let mut held = Vec::new();
    for i in 0..64 {
        let mut c = TcpStream::connect(admin).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /ready HTTP/1.1\r\nHo").await.unwrap();
        }
        held.push(c);
    }
    // ...yet a probe is answered: it takes the place of the one idle longest.
    assert_eq!(get(admin, "/ready").await, (200, "ready\n".to_owned()));
    let held: Vec<std::net::TcpStream> = held.into_iter().map(|c| c.into_std().unwrap()).collect();
    let closed = held
        .iter()
        .filter(|c| {
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut &**c, &mut buf) {
                Ok(0) => true,
                Ok(n) => panic!("a held connection was answered: {:?}", &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(_) => true, // reset
            }
        })
        .count();
    assert_eq!(closed, 1, "exactly one held connection made room");
    // The rest are closed after the header timeout, and the admin answers again.
    for c in held {
        let mut c = TcpStream::from_std(c).unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(common::GUARD, c.read_to_end(&mut buf))
            .await
            .expect("an idle admin connection stayed open");
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
            "{buf:?}"
        );
    }
    assert_eq!(get(admin, "/ready").await, (200, "ready\n".to_owned()));
}

/// The binary defines the few libm functions its dependencies call (`libm_in_rust` in
/// `src/main.rs`), so a running gateway maps no `libm.so` (about 0.5 MiB resident at rest when
/// it did). A dependency that starts calling another libm function fails this test: add that
/// function there.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn a_running_gateway_maps_no_libm() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_one_listener(dir.path()).await;
    assert_eq!(get(proxy.admin(), "/ready").await.0, 200);
    let pid = proxy.child.id().expect("running");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains("libc.so"), "the maps name libraries:\n{maps}");
    let libm: Vec<&str> = maps.lines().filter(|l| l.contains("/libm.so")).collect();
    assert!(libm.is_empty(), "libm is mapped: {libm:#?}");
}
