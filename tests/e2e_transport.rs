//! End to end, the three transports to the ingress: the real `bindgate` binary against a real
//! `bindgate sandbox` process. `direct` dials per connection, `pool` hands out pre-handshaked
//! connections, `multiplex` opens HTTP/2 CONNECT streams (falling back to the pool, or failing,
//! when the ingress does not speak HTTP/2). Counters come from the admin `/clusters` view.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Logs, Proc, SandboxProc, binding_config, start_sandbox_with, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Guards against hangs only; no assertion depends on it.
const GUARD: Duration = Duration::from_secs(60);

const ECHO: (&str, &str) = ("echo", "tcp://echo.e2e:7000");
const WEB: (&str, &str) = ("web", "http://web.e2e:80");

/// The sandbox's `ingress:` entry plus transport lines (indented four spaces).
fn ingress_with(sb: &SandboxProc, transport: &str) -> String {
    format!("{}{transport}", sb.ingress_yaml())
}

async fn start_proxy(config: &str, dir: &std::path::Path, name: &str) -> Proc {
    let path = write(dir, name, config);
    let p = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(p.event["event"], "started");
    assert_eq!(p.event["ready"], true, "{}", p.event);
    p
}

async fn admin_get(admin: SocketAddr, path: &str) -> serde_json::Value {
    let body = admin_text(admin, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The body of an admin GET.
async fn admin_text(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    match raw.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => panic!("{path}: no body in {raw}"),
    }
}

/// The transport description of cluster `name` in `/clusters`.
async fn transport_of(proxy: &Proc, name: &str) -> serde_json::Value {
    let clusters = admin_get(proxy.admin(), "/clusters").await;
    clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}: {clusters}"))["transport"]
        .clone()
}

/// Deterministic bytes unique to `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends a few bytes to a listener whose upstream is unreachable: returns what came back before
/// the proxy closed the connection (by EOF or reset: it closes without reading).
async fn refused(addr: SocketAddr) -> Vec<u8> {
    let work = async {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(b"anyone?").await;
        let mut back = Vec::new();
        let _ = c.read_to_end(&mut back).await;
        back
    };
    tokio::time::timeout(GUARD, work)
        .await
        .expect("client hung")
}

async fn http_get(addr: SocketAddr) -> String {
    let work = async {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /transport HTTP/1.1\r\nHost: web.e2e\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).await.unwrap();
        reply
    };
    tokio::time::timeout(GUARD, work).await.expect("http hung")
}

/// Echo (with half-close) and an HTTP request through `transport`; returns the proxy and its
/// logs.
async fn echo_and_http(sb: &SandboxProc, transport: &str) -> (Proc, Logs) {
    let cfg = binding_config(&ingress_with(sb, transport), &[ECHO, WEB], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let logs = proxy.logs();
    let data = pattern(100_000, 7);
    assert!(common::echo_once(proxy.listener("echo"), &data).await == data);
    let reply = http_get(proxy.listener("web")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("GET /transport HTTP/1.1"), "{reply}");
    (proxy, logs)
}

#[tokio::test]
async fn direct_carries_echo_and_http() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let (proxy, _logs) = echo_and_http(&sb, "    transport: direct\n").await;
    assert_eq!(transport_of(&proxy, "echo").await["kind"], "direct");
}

/// `direct` resumes TLS sessions by default: after the first (full) handshake, each dial resumes
/// with a ticket the previous connection received. `session_resumption: false` makes every dial
/// a full handshake, as ngrok's operator forwarder does. Counted in `/metrics` and `/clusters`.
#[tokio::test]
async fn direct_resumes_tls_sessions_unless_told_not_to() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let cases = [
        ("resumed.yaml", "", (1, 3)),
        ("full.yaml", "    session_resumption: false\n", (4, 0)),
    ];
    for (file, resumption, (want_full, want_resumed)) in cases {
        let transport = format!("    transport: direct\n{resumption}");
        let cfg = binding_config(&ingress_with(&sb, &transport), &[ECHO], "");
        let proxy = start_proxy(&cfg, sb.dir.path(), file).await;
        for seed in 0..4 {
            let data = pattern(1000, seed);
            assert!(common::echo_once(proxy.listener("echo"), &data).await == data);
        }
        let metrics = admin_text(proxy.admin(), "/metrics").await;
        let count = |session: &str| {
            let labels = format!(r#"ingress="sandbox",session="{session}""#);
            metric_value(&metrics, "bindgate_ingress_tls_handshakes_total", &labels)
        };
        assert_eq!(
            (count("full"), count("resumed")),
            (want_full, want_resumed),
            "{file}: {metrics}"
        );
        let t = transport_of(&proxy, "echo").await;
        assert_eq!(t["tls_handshakes"]["full"], want_full, "{t}");
        assert_eq!(t["tls_handshakes"]["resumed"], want_resumed, "{t}");
        let admin = proxy.admin().to_string();
        let (code, out, err) = common::run_to_end(&["status", "--admin", &admin], &[]);
        assert_eq!(code, 0, "{out}{err}");
        let row = format!("direct; TLS handshakes: {want_full} full, {want_resumed} resumed");
        assert!(out.contains(&row), "{row} in {out}");
        proxy.terminate().await;
    }
}

/// An ingress named by host name is looked up once, not per connection (the answer is reused for
/// 30 s); an IP address is never looked up.
#[tokio::test]
async fn the_ingress_host_name_is_looked_up_once_for_many_connections() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let by_name = format!("localhost:{}", sb.ingress.port());
    let cases = [("by-name.yaml", by_name.as_str(), 1), ("by-ip.yaml", "", 0)];
    for (file, address, want_lookups) in cases {
        let mut ingress = ingress_with(&sb, "    transport: direct\n");
        if !address.is_empty() {
            ingress = ingress.replace(&sb.ingress.to_string(), address);
        }
        let cfg = binding_config(&ingress, &[ECHO], "");
        let proxy = start_proxy(&cfg, sb.dir.path(), file).await;
        for seed in 0..5 {
            let data = pattern(1000, seed);
            assert!(common::echo_once(proxy.listener("echo"), &data).await == data);
        }
        let metrics = admin_text(proxy.admin(), "/metrics").await;
        let lookups = metric_value(
            &metrics,
            "bindgate_ingress_dns_lookups_total",
            r#"ingress="sandbox""#,
        );
        assert_eq!(lookups, want_lookups, "{file}: {metrics}");
        proxy.terminate().await;
    }
}

#[tokio::test]
async fn pool_carries_echo_and_http() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let (proxy, _logs) = echo_and_http(&sb, "    transport: pool\n").await;
    let t = transport_of(&proxy, "echo").await;
    assert_eq!(t["kind"], "pool");
    let stats = &t["stats"];
    assert_eq!(
        stats["hits"].as_u64().unwrap() + stats["misses"].as_u64().unwrap(),
        2,
        "two checkouts: {t}"
    );
    assert_eq!(stats["redials"], 0, "{t}");
    // The same counters in /metrics, labelled by ingress (read after /clusters: they only grow).
    let metrics = admin_text(proxy.admin(), "/metrics").await;
    let sample = |labels: &str| metric_value(&metrics, "bindgate_pool_checkouts_total", labels);
    let hits = sample(r#"ingress="sandbox",result="hit""#);
    let misses = sample(r#"ingress="sandbox",result="miss""#);
    assert_eq!(hits + misses, 2, "{metrics}");
    assert!(
        metrics.contains("# TYPE bindgate_pool_idle_connections gauge"),
        "{metrics}"
    );
}

/// The value of `name{labels}` in Prometheus text.
fn metric_value(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"));
    line[prefix.len()..].parse().unwrap()
}

#[tokio::test]
async fn multiplex_carries_echo_and_http() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let (proxy, mut logs) = echo_and_http(&sb, "    transport: multiplex\n").await;
    // Both persistent connections are dialed at startup; wait for the second if still under way.
    logs.wait_for_count("HTTP/2 connection established", 2)
        .await;
    let t = transport_of(&proxy, "web").await;
    assert_eq!(t["kind"], "multiplex");
    let stats = &t["stats"];
    assert_eq!(stats["streams_opened"], 2, "{t}");
    assert_eq!(
        stats["connections_opened"], 2,
        "`connections: 2` by default: {t}"
    );
    assert_eq!(stats["h2_refused"], false, "{t}");
    assert_eq!(t["fallback_pool"], serde_json::Value::Null, "{t}");
    let metrics = admin_text(proxy.admin(), "/metrics").await;
    let streams = r#"ingress="sandbox",result="opened""#;
    assert_eq!(
        metric_value(&metrics, "bindgate_h2_streams_total", streams),
        2
    );
    assert_eq!(
        metric_value(&metrics, "bindgate_h2_connections", r#"ingress="sandbox""#),
        2
    );
    assert!(
        !metrics.contains("bindgate_pool_"),
        "no pool yet: {metrics}"
    );
}

#[tokio::test]
async fn the_pool_never_hands_out_a_connection_the_ingress_closed_while_idle() {
    // The sandbox closes connections that send no ConnRequest within 200ms: every idle pooled
    // connection dies young, over and over.
    let mut sb = start_sandbox_with("  handshake_timeout: 200ms\n", "").await;
    let mut sandbox_logs = sb.proc.logs();
    let transport = "    transport: pool\n    pool: { min_idle: 4, max_idle: 4, max_age: 5m }\n";
    let cfg = binding_config(&ingress_with(&sb, transport), &[ECHO], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let mut logs = proxy.logs();

    // The pool warmed at startup; wait until the ingress closed one of its idle connections
    // and the proxy noticed.
    sandbox_logs
        .wait_for("closing idle connection: no ConnRequest within 200ms")
        .await;
    logs.wait_for("idle pooled connection discarded: the ingress closed it")
        .await;

    let addr = proxy.listener("echo");
    for i in 0..50u64 {
        let data = pattern(4096, i);
        assert!(
            common::echo_once(addr, &data).await == data,
            "connection {i}"
        );
    }
    let t = transport_of(&proxy, "echo").await;
    let stats = &t["stats"];
    assert_eq!(
        stats["hits"].as_u64().unwrap() + stats["misses"].as_u64().unwrap(),
        50,
        "{t}"
    );
    assert!(stats["closed_idle"].as_u64().unwrap() >= 1, "{t}");
    assert_eq!(logs.matching("upstream unreachable"), Vec::<String>::new());
}

#[tokio::test]
async fn multiplex_carries_1000_concurrent_streams_over_two_connections_byte_exact() {
    const STREAMS: usize = 1000;
    let mut sb = start_sandbox_with("", "").await;
    let mut sandbox_logs = sb.proc.logs();
    let transport =
        "    transport: multiplex\n    multiplex: { connections: 2, max_streams: 500 }\n";
    let cfg = binding_config(&ingress_with(&sb, transport), &[ECHO], "");
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let mut logs = proxy.logs();
    let addr = proxy.listener("echo");

    // Every client connects and sends its 4 KiB (one after the other, so the test's own burst
    // of connects does not overflow an accept queue), then waits until all have: all streams are
    // open at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut clients = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let data = pattern(4096, 1_000 + i as u64);
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&data).await.unwrap();
        let barrier = barrier.clone();
        clients.push(tokio::spawn(async move {
            barrier.wait().await;
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            let r = c.read_to_end(&mut back).await;
            if back != data {
                eprintln!("client {i}: {} bytes back, {r:?}", back.len());
            }
            back == data
        }));
    }
    let mut exact = 0;
    for client in clients {
        if tokio::time::timeout(GUARD, client).await.unwrap().unwrap() {
            exact += 1;
        }
    }
    if exact != STREAMS {
        eprintln!("{:#?}", logs.matching("WARN"));
        eprintln!("{:#?}", logs.matching("connection ended"));
        eprintln!("{:#?}", sandbox_logs.matching("failed"));
        eprintln!("{:#?}", sandbox_logs.matching("reset"));
        eprintln!("{:#?}", sandbox_logs.matching("echo connection failed"));
        eprintln!("{:#?}", sandbox_logs.matching("WARN"));
    }
    assert_eq!(exact, STREAMS, "every stream echoed its own bytes exactly");

    let t = transport_of(&proxy, "echo").await;
    let stats = &t["stats"];
    assert_eq!(stats["streams_opened"], STREAMS, "{t}");
    assert_eq!(stats["connections_opened"], 2, "{t}");
    assert_eq!(stats["stream_retries"], 0, "{t}");
}

/// A sandbox (its config plus `sandbox_extra`) and a proxy whose `echo` listener reaches the
/// sandbox's echo endpoint over one multiplex connection (their logs are read on, unused).
async fn over_one_multiplex_connection(sandbox_extra: &str) -> (SandboxProc, Proc, SocketAddr) {
    let sb = start_sandbox_with(sandbox_extra, "").await;
    let transport = "    transport: multiplex\n    multiplex: { connections: 1 }\n";
    let cfg = binding_config(&ingress_with(&sb, transport), &[ECHO], "");
    let proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let addr = proxy.listener("echo");
    (sb, proxy, addr)
}

#[tokio::test]
async fn goaway_moves_new_streams_to_a_new_connection() {
    // Each HTTP/2 connection takes 5 streams, then the sandbox sends GOAWAY.
    let (_sb, proxy, addr) = over_one_multiplex_connection("  h2_goaway_after_streams: 5\n").await;
    for i in 0..18u64 {
        let data = pattern(4096, 5_000 + i);
        assert!(
            common::echo_once(addr, &data).await == data,
            "connection {i}"
        );
    }
    let t = transport_of(&proxy, "echo").await;
    let stats = &t["stats"];
    assert_eq!(stats["streams_opened"], 18, "{t}");
    assert_eq!(stats["connections_opened"], 4, "5 + 5 + 5 + 3 streams: {t}");
}

#[tokio::test]
async fn multiplex_refusals_carry_the_ngrok_error_code() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    let cfg = binding_config(
        &ingress_with(&sb, "    transport: multiplex\n"),
        &[("ghost", "tcp://ghost.e2e:9999")],
        "",
    );
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let mut logs = proxy.logs();
    assert_eq!(refused(proxy.listener("ghost")).await, b"");
    let line = logs.wait_for("upstream unreachable").await;
    assert!(line.contains("[ERR_NGROK_3200]"), "{line}");
    assert!(line.contains("tcp://ghost.e2e:9999"), "{line}");
    let t = transport_of(&proxy, "ghost").await;
    assert_eq!(
        t["stats"]["streams_refused"], 2,
        "first try + one retry: {t}"
    );
}

#[tokio::test]
async fn multiplex_falls_back_to_the_pool_when_the_ingress_refuses_h2() {
    let mut sb = start_sandbox_with("  h2: false\n", "").await;
    let _sandbox_logs = sb.proc.logs();
    let cfg = binding_config(
        &ingress_with(&sb, "    transport: multiplex\n"),
        &[ECHO],
        "",
    );
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let mut logs = proxy.logs();
    for i in 0..3u64 {
        let data = pattern(10_000, 9_000 + i);
        assert!(common::echo_once(proxy.listener("echo"), &data).await == data);
    }
    let line = logs.wait_for("did not negotiate HTTP/2").await;
    assert!(line.contains("INFO"), "{line}");
    assert_eq!(
        logs.matching("did not negotiate HTTP/2").len(),
        1,
        "logged once"
    );
    let t = transport_of(&proxy, "echo").await;
    assert_eq!(t["stats"]["h2_refused"], true, "{t}");
    assert_eq!(t["stats"]["streams_opened"], 0, "{t}");
    let pool = &t["fallback_pool"]["stats"];
    assert_eq!(
        pool["hits"].as_u64().unwrap() + pool["misses"].as_u64().unwrap(),
        3,
        "{t}"
    );
}

#[tokio::test]
async fn multiplex_without_fallback_fails_with_a_clear_log_line() {
    let mut sb = start_sandbox_with("  h2: false\n", "").await;
    let _sandbox_logs = sb.proc.logs();
    let cfg = binding_config(
        &ingress_with(
            &sb,
            "    transport: multiplex\n    multiplex: { fallback: none }\n",
        ),
        &[ECHO],
        "",
    );
    let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    let mut logs = proxy.logs();
    assert_eq!(refused(proxy.listener("echo")).await, b"");
    let line = logs.wait_for("upstream unreachable").await;
    assert!(
        line.contains("does not speak HTTP/2") && line.contains("`multiplex.fallback` is `none`"),
        "{line}"
    );
    assert!(line.contains("listener=echo"), "{line}");
    logs.wait_for("ERROR").await;
    let errors = logs.matching("ERROR");
    assert_eq!(errors.len(), 1, "one error line when detected: {errors:?}");
    assert!(errors[0].contains("does not speak HTTP/2"), "{errors:?}");
}

/// `early_data: true` on top of `transport`.
fn with_early_data(transport: &str) -> String {
    format!("    transport: {transport}\n    early_data: true\n")
}

#[tokio::test]
async fn early_data_carries_echo_and_http_through_every_transport() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    for transport in ["direct", "pool", "multiplex"] {
        let (proxy, mut logs) = echo_and_http(&sb, &with_early_data(transport)).await;
        assert_eq!(transport_of(&proxy, "echo").await["kind"], transport);
        assert_eq!(logs.matching("upgrade failed"), Vec::<String>::new());
    }
}

#[tokio::test]
async fn early_data_hands_the_first_server_bytes_to_the_client_intact() {
    // A server-speaks-first upstream: its greeting follows the ConnResponse on the same TLS
    // stream, so reading the answer must stop exactly at its end.
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = greeter.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 hello from the greeter\r\n").await?;
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            });
        }
    });
    let extra = format!("  - url: tcp://greeter.e2e:2525\n    target: {greeter_addr}\n");
    let mut sb = start_sandbox_with("", &extra).await;
    let _sandbox_logs = sb.proc.logs();
    let cfg = binding_config(
        &ingress_with(&sb, &with_early_data("pool")),
        &[("greeter", "tcp://greeter.e2e:2525")],
        "",
    );
    let proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
    for i in 0..20u64 {
        let work = async {
            let mut c = TcpStream::connect(proxy.listener("greeter")).await.unwrap();
            let mut greeting = [0u8; 28];
            c.read_exact(&mut greeting).await.unwrap();
            assert_eq!(
                &greeting, b"220 hello from the greeter\r\n",
                "connection {i}"
            );
            let data = pattern(10_000, i);
            c.write_all(&data).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert!(back == data, "connection {i}: echo differs");
        };
        tokio::time::timeout(GUARD, work)
            .await
            .expect("greeter hung");
    }
}

#[tokio::test]
async fn early_data_refusal_closes_the_client_and_names_the_ngrok_error() {
    let mut sb = start_sandbox_with("", "").await;
    let _sandbox_logs = sb.proc.logs();
    for transport in ["pool", "multiplex"] {
        let cfg = binding_config(
            &ingress_with(&sb, &with_early_data(transport)),
            &[("ghost", "tcp://ghost.e2e:7000")],
            "",
        );
        let mut proxy = start_proxy(&cfg, sb.dir.path(), "bindgate.yaml").await;
        let mut logs = proxy.logs();
        assert_eq!(refused(proxy.listener("ghost")).await, Vec::<u8>::new());
        let line = logs
            .wait_for("binding upgrade failed after early data")
            .await;
        assert!(line.contains("ERR_NGROK_3200"), "{transport}: {line}");
        assert!(line.contains("ghost.e2e:7000"), "{transport}: {line}");
        let scrape = common::scrape(proxy.admin()).await;
        assert_eq!(
            common::metric(&scrape, "bindgate_upstream_connect_failures_total", &[]),
            1.0,
            "{transport}"
        );
        if transport == "multiplex" {
            let t = transport_of(&proxy, "ghost").await;
            assert_eq!(t["stats"]["streams_refused"], 1, "{t}");
        }
    }
}

/// Clients that stop reading while their echo keeps coming (eight of them, each filling its
/// stream's 4 MiB window in bindgate and in the ingress) do not hold up the other streams of
/// their HTTP/2 connection: the connections' windows (1 GiB on both sides, as Go's HTTP/2
/// client grants) outlast the streams'. With 16 MiB, four stalled streams stopped every stream
/// of the connection, and the fresh echo below never came.
#[tokio::test]
async fn stalled_streams_do_not_hold_up_the_others_on_their_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_sb, _proxy, addr) = over_one_multiplex_connection("").await;
    let written = Arc::new(AtomicUsize::new(0));
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let written = written.clone();
        stalled.push(tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            while c.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }));
    }
    // No event says every buffer on the way is full: wait until the writers stop moving (two
    // looks 200 ms apart see the same count). Stopping early only makes the check weaker.
    let deadline = tokio::time::Instant::now() + GUARD;
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writers never stalled"
        );
        last = now;
    }
    assert!(last >= 1 << 20, "the stalled clients sent {last} bytes");
    let fresh = tokio::time::timeout(GUARD, common::echo_once(addr, b"fresh"))
        .await
        .expect("a fresh stream was held up by the stalled ones");
    assert_eq!(fresh, b"fresh");
    for w in stalled {
        w.abort();
    }
}
