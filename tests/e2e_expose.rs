//! `expose.mode: virtual | shared` and `expose.hosts_file`, end to end: the real binary
//! discovering endpoints from a sandbox and exposing them on loopback addresses.
//!
//! Every test has addresses of its own: mode virtual a /28 of `127.200.0.0`–`127.249.255.255`
//! (claimed for the test process, like `common::port_range`'s IPs), mode shared the unique IP of
//! `port_range`.
//! Endpoint ports are free ports the OS handed out a moment before.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::{
    EchoStream, Logs, Proc, SANDBOX_API, SandboxProc, admin_json, endpoint_address, port_range,
    start_sandbox_api, write,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port the OS just reported free (on 127.0.0.1), to use as an endpoint URL's port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A /28 of loopback addresses no other test process uses (claimed like `port_range`'s IPs, in
/// a range of second octets of its own).
fn own_cidr() -> String {
    format!("{}/28", common::claim_loopback(200..250, 16))
}

/// A config discovering the sandbox's endpoints and exposing them with `expose` (lines indented
/// six spaces, newline-terminated).
fn config(sb: &SandboxProc, state: &Path, expose: &str) -> String {
    sb.discovery_config(state, "k-e2e", expose, "1s", "")
}

async fn start(dir: &Path, config: &str) -> (Proc, Logs) {
    let path = write(dir, "bindgate.yaml", config);
    let mut p = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(p.event["ready"], true, "{}", p.event);
    let logs = p.logs();
    (p, logs)
}

/// The needle of the line the listener manager logs once `listener` is bound.
fn bound(listener: &str) -> String {
    format!("listener bound listener={listener} ")
}

async fn stream_echo(addr: SocketAddr) {
    let mut s = EchoStream::open(addr, 16 * 1024).await;
    s.send(8).await;
    s.finish().await;
}

/// `GET /` with `Host: host` through `addr`; the whole answer.
async fn get(addr: SocketAddr, host: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8_lossy(&common::read_all(&mut c).await).into_owned()
}

/// A plain HTTP server answering every request with `body` (an endpoint target that is not the
/// sandbox's own backend, so a test can tell which endpoint answered).
async fn http_server(body: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

/// `service.namespace` → IP of every exposed endpoint, from the admin `/endpoints` view, as the
/// hosts-file block should list them (sorted by name).
async fn hosts_block(admin: SocketAddr) -> String {
    let rows = admin_json(admin, "/endpoints").await;
    let mut lines: Vec<(String, IpAddr)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let url = r["endpoint"].as_str().unwrap();
            let host = url.split("://").nth(1).unwrap().split(':').next().unwrap();
            let addr: SocketAddr = r["address"].as_str().unwrap().parse().unwrap();
            (host.to_owned(), addr.ip())
        })
        .collect();
    lines.sort();
    lines.dedup();
    let mut block = String::from("# BEGIN bindgate (managed, do not edit)\n");
    for (host, ip) in lines {
        block.push_str(&format!("{ip} {host}\n"));
    }
    block.push_str("# END bindgate\n");
    block
}

#[tokio::test]
async fn virtual_mode_gives_each_name_its_own_address_at_the_endpoint_port() {
    let port = free_port();
    let (alpha, beta) = (
        format!("tcp://alpha.x:{port}"),
        format!("tcp://beta.x:{port}"),
    );
    let sb = start_sandbox_api(
        SANDBOX_API,
        &format!("  - {{ url: '{alpha}', target: echo }}\n  - {{ url: '{beta}', target: echo }}\n"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cidr = own_cidr();
    let hosts = dir.path().join("hosts");
    let before = "127.0.0.1 localhost\n# a line of the user's own\n::1 ip6-localhost\n";
    std::fs::write(&hosts, before).unwrap();
    // `web.e2e:80` (every sandbox serves it) would need a privileged port: the OS picks one.
    let expose = format!(
        "      mode: virtual\n      cidr: {cidr}\n      hosts_file: {}\n      overrides: [ {{ host: web.e2e, port: 0 }} ]\n",
        hosts.display()
    );
    let cfg = config(&sb, &dir.path().join("state"), &expose);
    let (gw, mut logs) = start(dir.path(), &cfg).await;
    logs.wait_for(&bound(&alpha)).await;
    logs.wait_for(&bound(&beta)).await;
    logs.wait_for("hosts file updated").await;

    let admin = gw.admin();
    let a = endpoint_address(admin, &alpha)
        .await
        .expect("alpha exposed");
    let b = endpoint_address(admin, &beta).await.expect("beta exposed");
    let network = bindgate::host::Cidr::parse(&cidr).unwrap();
    assert_eq!(
        (a.port(), b.port()),
        (port, port),
        "the endpoint URL's port"
    );
    assert_ne!(a.ip(), b.ip(), "an address of its own each");
    assert!(
        network.contains(a.ip()) && network.contains(b.ip()),
        "{a} {b} in {cidr}"
    );
    stream_echo(a).await;
    stream_echo(b).await;

    let block = hosts_block(admin).await;
    assert!(block.contains(&format!("{} alpha.x\n", a.ip())), "{block}");
    assert!(block.contains(&format!("{} beta.x\n", b.ip())), "{block}");
    let written = std::fs::read_to_string(&hosts).unwrap();
    assert_eq!(
        written,
        format!("{before}{block}"),
        "the user's lines kept, the block appended"
    );

    // A restart finds the same addresses (and leaves the hosts file as it is).
    let (status, _) = gw.terminate().await;
    assert!(status.success());
    let (gw, mut logs) = start(dir.path(), &cfg).await;
    logs.wait_for(&bound(&alpha)).await;
    logs.wait_for(&bound(&beta)).await;
    assert_eq!(endpoint_address(gw.admin(), &alpha).await, Some(a));
    assert_eq!(endpoint_address(gw.admin(), &beta).await, Some(b));
    stream_echo(a).await;
    stream_echo(b).await;
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), written);
}

#[tokio::test]
async fn shared_mode_routes_one_port_by_host_and_refuses_a_second_tcp_endpoint() {
    let (http_port, tcp_port) = (free_port(), free_port());
    let (shop, cart) = (
        format!("http://shop.x:{http_port}"),
        format!("http://cart.x:{http_port}"),
    );
    let (first, second) = (
        format!("tcp://first.x:{tcp_port}"),
        format!("tcp://second.x:{tcp_port}"),
    );
    let cart_server = http_server("served by cart.x\n").await;
    let sb = start_sandbox_api(
        SANDBOX_API,
        &format!(
            "  - {{ url: '{shop}', target: http }}\n  - {{ url: '{cart}', target: '{cart_server}' }}\n  - {{ url: '{first}', target: echo }}\n  - {{ url: '{second}', target: echo }}\n"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ip = port_range(1).0;
    let expose = format!(
        "      mode: shared\n      address: {ip}\n      overrides: [ {{ host: web.e2e, port: 0 }} ]\n"
    );
    let (gw, mut logs) = start(dir.path(), &config(&sb, &dir.path().join("state"), &expose)).await;
    let shared = format!("http@{ip}:{http_port}");
    logs.wait_for(&bound(&shared)).await;
    logs.wait_for(&bound(&first)).await;
    let conflict = logs
        .wait_for(&format!("{second}: {ip}:{tcp_port} is taken by {first}"))
        .await;
    assert!(
        conflict.contains("a tcp listener cannot be shared"),
        "{conflict}"
    );

    let addr: SocketAddr = format!("{ip}:{http_port}").parse().unwrap();
    let reply = get(addr, "shop.x").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("hello from the bindgate sandbox"), "{reply}");
    assert!(
        reply.contains("host: shop.x\n"),
        "Host arrives unchanged: {reply}"
    );
    let reply = get(addr, &format!("cart.x:{http_port}")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("served by cart.x\n"), "{reply}");
    let reply = get(addr, "other.x").await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");

    stream_echo(format!("{ip}:{tcp_port}").parse().unwrap()).await;
    let admin = gw.admin();
    assert_eq!(endpoint_address(admin, &shop).await, Some(addr));
    assert_eq!(endpoint_address(admin, &cart).await, Some(addr));
    assert_eq!(endpoint_address(admin, &second).await, None, "not exposed");
    let rows = admin_json(admin, "/endpoints").await;
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"] == cart)
        .unwrap();
    assert_eq!(row["listener"], shared.as_str());
    assert_eq!(row["state"], "active");
}

#[tokio::test]
async fn a_hosts_file_that_cannot_be_written_is_retried_on_later_polls() {
    let port = free_port();
    let alpha = format!("tcp://alpha.x:{port}");
    let sb = start_sandbox_api(
        SANDBOX_API,
        &format!("  - {{ url: '{alpha}', target: echo }}\n"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A symlink loop where the file should be: every write fails (even as root), and `validate`
    // cannot tell (the directory is there).
    let hosts = dir.path().join("hosts");
    let other = dir.path().join("hosts.loop");
    std::os::unix::fs::symlink(&other, &hosts).unwrap();
    std::os::unix::fs::symlink(&hosts, &other).unwrap();
    let expose = format!(
        "      mode: virtual\n      cidr: {}\n      hosts_file: {}\n      overrides: [ {{ host: web.e2e, port: 0 }} ]\n",
        own_cidr(),
        hosts.display()
    );
    let cfg = config(&sb, &dir.path().join("state"), &expose);
    let (gw, mut logs) = start(dir.path(), &cfg).await;
    logs.wait_for(&bound(&alpha)).await;
    let warning = logs.wait_for("cannot update the hosts file").await;
    assert!(warning.contains("endpoints are still served"), "{warning}");
    let a = endpoint_address(gw.admin(), &alpha)
        .await
        .expect("alpha exposed");
    stream_echo(a).await;

    // Fixed by the user: the next poll (every second here) writes it, nothing else changed.
    std::fs::remove_file(&hosts).unwrap();
    logs.wait_for("hosts file writable again").await;
    let written = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        written.contains(&format!("{} alpha.x\n", a.ip())),
        "{written}"
    );
    assert_eq!(
        logs.matching("cannot update the hosts file").len(),
        1,
        "warned once while failing"
    );
}

/// A port range that holds the admin server's port: discovered endpoints are placed around it
/// (the allocator skips ports it finds taken).
#[tokio::test]
async fn a_port_range_holding_the_admin_port_places_endpoints_around_it() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let range = port_range(3);
    let admin = format!("{}:20000", range.0);
    let cfg = sb
        .dynamic_config(&dir.path().join("state"), &range, "k-e2e", "")
        .replace(
            "admin: { address: 127.0.0.1:0 }",
            &format!("admin: {{ address: \"{admin}\" }}"),
        );
    assert!(cfg.contains(&admin), "{cfg}");
    let (p, _logs) = start(dir.path(), &cfg).await;
    assert_eq!(p.admin().to_string(), admin);
    let echo = common::wait_endpoint(p.admin(), "tcp://echo.e2e:7000").await;
    assert_ne!(echo.to_string(), admin);
    assert_eq!(common::echo_once(echo, b"around").await, b"around");
}
