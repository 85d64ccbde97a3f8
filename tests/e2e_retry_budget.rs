//! A cluster's retry budget is state that outlives a snapshot: a reload that leaves the cluster
//! and its retry config alone keeps the budget already spent (it used to start afresh on every
//! applied snapshot).

mod common;

use common::{Proc, admin_json, read_all, write};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Saves like editors and config management do: write a temp file, rename it over the config.
fn save(dir: &std::path::Path, path: &str, text: &str) {
    let tmp = write(dir, ".bindgate.yaml.tmp", text);
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of `name{labels}` in `/metrics` (0 when the series is not there yet).
async fn metric(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::sample(&common::scrape(admin).await, name, labels).unwrap_or(0.0)
}

fn config(dead: std::net::SocketAddr, extra_listener: &str) -> String {
    format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - {{ name: front, address: 127.0.0.1:0, routes: [ {{ cluster: dead }} ] }}
{extra_listener}
  clusters:
    - name: dead
      type: static
      endpoints: [ {dead} ]
      connect_timeout: 1s
      # budget_percent 0: no credit from traffic, only the floor of 10 retries per 10 s window.
      retry: {{ attempts: 100, base_backoff: 1ms, max_backoff: 1ms, budget_percent: 0 }}
    - {{ name: other, type: static, endpoints: [ 127.0.0.1:9 ] }}
"
    )
}

/// One client connection through `front`: the dead upstream makes the proxy close it.
async fn one_connection(front: std::net::SocketAddr) {
    let mut c = TcpStream::connect(front).await.unwrap();
    let _ = c.write_all(b"x").await;
    assert_eq!(read_all(&mut c).await, b"", "closed without an answer");
}

#[tokio::test]
async fn a_reload_keeps_the_retry_budget_already_spent() {
    // A port with nothing behind it: connects are refused at once.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bindgate.yaml", &config(dead, ""));
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let front = gw.listener("front");
    let retries = [("cluster", "dead")];

    one_connection(front).await;
    assert_eq!(
        metric(admin, "bindgate_cluster_retries_total", &retries).await,
        10.0,
        "the first connection spends the floor of 10 retries"
    );
    assert_eq!(
        metric(
            admin,
            "bindgate_cluster_retry_budget_exhausted_total",
            &retries
        )
        .await,
        1.0
    );

    // A reload that only adds a listener: the cluster and its retry config are unchanged.
    let extra = "    - { name: added, address: 127.0.0.1:0, routes: [ { cluster: other } ] }";
    save(dir.path(), &path, &config(dead, extra));
    let deadline = tokio::time::Instant::now() + common::GUARD;
    while admin_json(admin, "/config_dump").await["version_info"] != "2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reload was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    one_connection(front).await;
    assert_eq!(
        metric(admin, "bindgate_cluster_retries_total", &retries).await,
        10.0,
        "the budget spent before the reload is still spent: no retry"
    );
    assert_eq!(
        metric(
            admin,
            "bindgate_cluster_retry_budget_exhausted_total",
            &retries
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(admin, "bindgate_upstream_connect_failures_total", &[]).await,
        2.0
    );
}
