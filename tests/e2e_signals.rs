//! Signals at start-up: a config reloader that sends SIGHUP while bindgate starts must not kill
//! it; the reload it asked for happens once the first config is in force. (Before `main` runs no
//! process can catch a signal; bindgate catches SIGHUP from the first line of `main`.)

mod common;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn sighup_during_start_up_neither_kills_nor_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(
        dir.path(),
        "bindgate.yaml",
        "version: 1
admin: { address: 127.0.0.1:0 }
static_resources:
  listeners:
    - { name: a, address: 127.0.0.1:0, routes: [ { cluster: c } ] }
  clusters:
    - { name: c, type: static, endpoints: [ 127.0.0.1:9 ] }
",
    );
    let mut child = spawn_run(&path);
    let pid = child.id().unwrap().to_string();
    // Until `main` runs, no process can catch a signal (its default action applies). Start once
    // bindgate catches SIGTERM (installed early in `run`, before the start-up work), and keep
    // signalling through the rest of the start-up.
    let deadline = tokio::time::Instant::now() + common::GUARD;
    while caught(&pid) & (1 << (15 - 1)) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGTERM never caught"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status();
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(common::GUARD, stdout.next_line())
        .await
        .expect("no start-up line")
        .unwrap();
    let Some(line) = line else {
        let status = child.wait().await.unwrap();
        panic!("bindgate exited during start-up: {status}");
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["ready"], true, "{event}");
    let admin: std::net::SocketAddr = event["admin"].as_str().unwrap().parse().unwrap();
    // The SIGHUPs that came before the control loop ran are applied as one forced reload.
    let deadline = tokio::time::Instant::now() + common::GUARD;
    loop {
        let dump = common::admin_json(admin, "/config_dump").await;
        if dump["control"]["applied_updates"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload: {dump}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
}

/// SIGTERM while registration waits on an API that accepts and never answers (a firewall, a
/// hung load balancer; `api_timeout` here is an hour): bindgate stops at once with exit 0
/// instead of holding the stop until systemd's or Kubernetes' timeout kills it. Before the
/// fix the signal was caught and ignored until start-up ended.
#[tokio::test]
async fn sigterm_while_registration_waits_on_the_api_stops_at_once() {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(
        dir.path(),
        "bindgate.yaml",
        &format!(
            "version: 1
admin: {{ address: 127.0.0.1:0 }}
state_dir: {state}
ngrok: {{ api_url: \"http://{api_addr}\", api_key: k, api_timeout: 1h }}
ingresses: [ {{ name: ngrok }} ]
dynamic_resources:
  bound_endpoints:
    ingress: ngrok
    expose: {{ mode: port_range, ports: 21000-21100 }}
",
            state = dir.path().join("state").display()
        ),
    );
    let mut child = spawn_run(&path);
    // The registration's first request is in flight once the API has its connection.
    let (mut held, _) = tokio::time::timeout(common::GUARD, api.accept())
        .await
        .expect("bindgate never called the API")
        .unwrap();
    let mut head = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut held, &mut head)
        .await
        .unwrap();
    assert!(
        [&b"GET "[..], b"POST"].contains(&&head[..]),
        "an API request: {head:?}"
    );
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(common::GUARD, child.wait())
        .await
        .expect("SIGTERM during registration did not stop bindgate")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert_eq!(stdout, "", "nothing was announced as started");
}

/// While bindgate drains after SIGTERM, `/ready` answers 503 (before, it stayed 200 while the
/// listeners refused connections), and a second SIGTERM (here with a connection that would
/// hold the drain for its hour-long `drain_timeout`) stops it at once, exit 1, and cuts that
/// connection: the operator's way out of a drain, as a second Ctrl-C is elsewhere. Before the
/// fix the second signal was ignored until the drain ended.
#[tokio::test]
async fn draining_is_not_ready_and_a_second_sigterm_stops_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = common::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(
        dir.path(),
        "bindgate.yaml",
        &format!(
            "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - {{ name: a, address: 127.0.0.1:0, drain_timeout: 1h, routes: [ {{ cluster: c }} ] }}
  clusters:
    - {{ name: c, type: static, endpoints: [ \"{echo}\" ] }}
"
        ),
    );
    let mut gw = common::Proc::start(&["run", "-c", &path], &[]).await;
    let listener = gw.listener("a");
    let mut held = tokio::net::TcpStream::connect(listener).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.unwrap();
    let pid = gw.child.id().unwrap().to_string();
    let term = || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
    };
    let admin = gw.admin();
    bindgate::identity::install_crypto_provider(); // for reqwest
    let ready = || async move {
        let r = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(ready().await, (200, "ready\n".to_owned()));
    term();
    // Draining: `/ready` says so (as Envoy's DRAINING) while `/live` stays up, the listener no
    // longer accepts, and the held connection keeps the process up.
    let deadline = tokio::time::Instant::now() + common::GUARD;
    let (code, body) = loop {
        let (code, body) = ready().await;
        if code != 200 {
            break (code, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "/ready stayed 200");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(code, 503);
    assert!(body.starts_with("not ready: shutting down"), "{body}");
    let live = reqwest::get(format!("http://{admin}/live")).await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    common::wait_not_accepting(listener).await;
    assert!(gw.child.try_wait().unwrap().is_none(), "draining");
    held.write_all(b"y").await.unwrap();
    held.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y", "the open connection still flows while draining");
    term();
    let status = tokio::time::timeout(common::GUARD, gw.child.wait())
        .await
        .expect("a second SIGTERM did not stop the drain")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
}

/// `bindgate run -c PATH`, its stdout piped (the start-up line), its stderr dropped.
fn spawn_run(path: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["run", "-c", path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The signals a process catches (`SigCgt` in `/proc/PID/status`, bit N-1 for signal N); 0 when
/// it is not readable yet.
fn caught(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}
