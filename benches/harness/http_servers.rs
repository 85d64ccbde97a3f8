//! The servers of the `http_peers` group: one nginx answering every request with the same small
//! body (the upstream of both proxies, and measured directly as the ceiling), and the two http
//! reverse proxies in front of it: a `bindgate run` with one `protocol: http` listener routing
//! to a `static` cluster, and HAProxy in `mode http`.
//!
//! Configs are generated into the run's temporary directory; nginx and HAProxy listen on ports
//! the OS chose for a probe socket just before, bindgate on `127.0.0.1:0` (its readiness line
//! says where). Each is ready when a `GET /` through it answers `200` (polled, bounded by the
//! startup timeout); an exit or a timeout fails the run with its output and config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Settings;
use super::gateway::{self, HTTP_ROUTES, Validation};
use super::http1::Http1Connection;
use super::peers::{Peer, PeerInfo};
use super::process::{
    ChildProcess, LoggedProcess, StopWith, find_executable, free_loopback_port, poll_ready,
};
use super::sandbox::path_arg;

/// Where nginx is looked for when it is not on `PATH` (Debian installs it in `/usr/sbin`, which
/// is not on every user's `PATH`).
pub const NGINX_FALLBACK_DIR: &str = "/usr/sbin";

/// `nginx` on `PATH`, else in [`NGINX_FALLBACK_DIR`].
pub fn find_nginx() -> Option<PathBuf> {
    find_executable(&["nginx"], &[NGINX_FALLBACK_DIR])
}

/// One `GET /` with `Connection: close`, which must answer `200`.
pub async fn get_ok(addr: SocketAddr) -> std::io::Result<()> {
    let mut conn = Http1Connection::connect(addr).await?;
    conn.get(false).await.map(|_| ())
}

/// nginx's answer to every request: `len` bytes of letters and digits, nothing an nginx string
/// would need escaped.
fn body(len: usize) -> String {
    (b'a'..=b'z')
        .chain(b'0'..=b'9')
        .cycle()
        .take(len)
        .map(char::from)
        .collect()
}

/// A running nginx: its master process and `worker_processes auto` workers.
pub struct NginxProcess {
    process: LoggedProcess,
    pub listen: SocketAddr,
    pub info: PeerInfo,
}

impl NginxProcess {
    pub async fn start(bin: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<Self> {
        let mut info = PeerInfo::of(bin, "-v", "nginx version", settings.startup_timeout).await?;
        // "nginx version: nginx/1.22.1" → "nginx/1.22.1".
        if let Some(version) = info.version.strip_prefix("nginx version: ") {
            info.version = version.to_owned();
        }
        let listen = free_loopback_port()?;
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix)
            .with_context(|| format!("creating {}", prefix.display()))?;
        let config = prefix.join("nginx.conf");
        let text = nginx_config(&prefix, listen, settings.http_peers.body_bytes);
        std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
        // `-p`: relative paths and the default temp paths under the prefix, not /var.
        let args = ["-c", path_arg(&config)?, "-p", path_arg(&prefix)?];
        // SIGTERM: nginx's workers outlive a SIGKILL of the master.
        let mut process =
            LoggedProcess::spawn(bin, &args, prefix.join("nginx.out"), StopWith::Terminate)?;
        if let Err(e) = process
            .wait_ready(settings.startup_timeout, || get_ok(listen))
            .await
        {
            let output = process.output();
            let errors = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            process.stop().await;
            bail!("nginx: {e:#}; its output:\n{output}{errors}\nits config:\n{text}");
        }
        Ok(NginxProcess {
            process,
            listen,
            info,
        })
    }

    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// nginx in the foreground (`daemon off`) with its master process and one worker per CPU,
/// answering every request from the config (no file system access per request), no access log,
/// and every path it would write under `prefix`. `keepalive_requests` is raised from its
/// default of 1,000 so that neither the load generators nor the proxies' upstream connections
/// are closed in the middle of a measurement.
fn nginx_config(prefix: &Path, listen: SocketAddr, body_bytes: usize) -> String {
    let prefix = prefix.display();
    let body = body(body_bytes);
    format!(
        "\
daemon off;
master_process on;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
        listen {listen};
        location / {{
            default_type text/plain;
            return 200 \"{body}\";
        }}
    }}
}}
"
    )
}

/// A running proxy of the group.
pub enum ProxyProcess {
    Bindgate(ChildProcess),
    Haproxy(LoggedProcess),
}

impl ProxyProcess {
    pub fn pid(&self) -> Option<u32> {
        match self {
            ProxyProcess::Bindgate(p) => p.pid(),
            ProxyProcess::Haproxy(p) => p.pid(),
        }
    }

    pub async fn stop(self) {
        match self {
            ProxyProcess::Bindgate(p) => p.stop().await,
            ProxyProcess::Haproxy(p) => p.stop().await,
        }
    }
}

/// A proxy in front of nginx, ready: where clients connect, and its process.
pub struct RunningProxy {
    pub listen: SocketAddr,
    pub process: ProxyProcess,
}

/// The bindgate listener's name in its generated config.
const BINDGATE_LISTENER: &str = "web";

/// `bindgate run` with one `protocol: http` listener, whose one catch-all route goes to a
/// `static` cluster with nginx as its only endpoint; every other setting at its default (no
/// access log, no filters, no admin server) but, with `lowercase`, `preserve_header_case:
/// false`. `Err(reason)`: this build has no http listener, or no `preserve_header_case`.
pub async fn start_bindgate(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    settings: &Settings,
    lowercase: bool,
) -> anyhow::Result<Result<RunningProxy, String>> {
    let (name, file) = if lowercase {
        (
            "bindgate http lowercase",
            "http-peers-bindgate-lowercase.yaml",
        )
    } else {
        ("bindgate http listener", "http-peers-bindgate.yaml")
    };
    let path = dir.join(file);
    let mut rejected = Vec::new();
    let mut accepted = None;
    for routes in HTTP_ROUTES {
        let text = bindgate_config(upstream, routes, lowercase);
        match gateway::validate(bin, &path, &text, settings).await? {
            Validation::Ok => {
                accepted = Some(text);
                break;
            }
            Validation::Unsupported(reason) => return Ok(Err(reason)),
            Validation::Invalid(output) => rejected.push(format!("{text}\n{output}")),
        }
    }
    let Some(text) = accepted else {
        // A build from before the setting names it in its refusal; any other refusal is a
        // broken harness or build, reported whole below.
        if lowercase && rejected.iter().all(|r| r.contains("preserve_header_case")) {
            return Ok(Err(
                "this build refuses `preserve_header_case` (added after it)".to_owned(),
            ));
        }
        bail!(
            "every generated bindgate config of the http_peers group is rejected:\n{}",
            rejected.join("\n")
        );
    };
    // The file on disk is the last one validated: the one that runs.
    let (mut process, started) = ChildProcess::start(
        bin,
        &["run", "-c", path_arg(&path)?],
        name,
        settings.startup_timeout,
    )
    .await?;
    if started["event"] != "started" || started["ready"] != true {
        bail!("{name}: not started and ready: {started}");
    }
    let listen = gateway::bound_address(&started, BINDGATE_LISTENER, name)?;
    if let Err(e) = poll_ready(
        settings.startup_timeout,
        || process.exited(),
        || get_ok(listen),
    )
    .await
    {
        process.stop().await;
        bail!("{name}: {e:#}; its config:\n{text}");
    }
    Ok(Ok(RunningProxy {
        listen,
        process: ProxyProcess::Bindgate(process),
    }))
}

fn bindgate_config(upstream: SocketAddr, routes: &str, lowercase: bool) -> String {
    let case = if lowercase {
        "\n      preserve_header_case: false"
    } else {
        ""
    };
    format!(
        "\
version: 1
static_resources:
  listeners:
    - name: {BINDGATE_LISTENER}
      address: 127.0.0.1:0
      protocol: http{case}
      routes: {routes}
  clusters:
    - name: web
      type: static
      endpoints: [ \"{upstream}\" ]
"
    )
}

/// HAProxy in `mode http` in front of nginx: client and server keep-alive, idle server
/// connections shared between clients (`http-reuse always`), `nbthread` at its default (one
/// thread per CPU), no logging. `-db`: foreground, no master process, so the pid is the proxy's.
pub async fn start_haproxy(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    settings: &Settings,
) -> anyhow::Result<(RunningProxy, PeerInfo)> {
    let info = Peer::Haproxy.info(bin, settings.startup_timeout).await?;
    let listen = free_loopback_port()?;
    let config = dir.join("haproxy-http.cfg");
    let text = haproxy_http_config(listen, upstream);
    std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
    let mut process = LoggedProcess::spawn(
        bin,
        &["-db", "-f", path_arg(&config)?],
        dir.join("haproxy-http.log"),
        StopWith::Kill,
    )?;
    if let Err(e) = process
        .wait_ready(settings.startup_timeout, || get_ok(listen))
        .await
    {
        let output = process.output();
        process.stop().await;
        bail!("haproxy http: {e:#}; its output:\n{output}\nits config:\n{text}");
    }
    Ok((
        RunningProxy {
            listen,
            process: ProxyProcess::Haproxy(process),
        },
        info,
    ))
}

/// `maxconn` is far above the group's concurrency (64 wrk connections) but low enough for a
/// small open-file limit, which HAProxy then only warns about (`no strict-limits`).
fn haproxy_http_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "\
global
    maxconn 1000
    no strict-limits

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend web
    bind {listen}
    default_backend nginx

backend nginx
    server nginx {upstream}
"
    )
}
