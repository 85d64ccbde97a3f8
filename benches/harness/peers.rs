//! The peers a user would pick instead of bindgate for the same hop: HAProxy and stunnel, each a
//! local tcp listener that connects with mTLS (the sandbox-issued client certificate, the
//! sandbox CA verified, TLS 1.3, session resumption on) to the sandbox's raw echo port, which
//! makes the ingress's TLS and client-certificate check and then echoes. That is the hop a
//! bindgate gateway makes to the ingress, minus the binding upgrade (which they cannot speak).
//!
//! A peer is found on `PATH` (`haproxy`; `stunnel4` or `stunnel`); when it is not installed its
//! row says so and the run goes on. Configs are generated into the run's temporary directory,
//! the listener port is one the OS chose for a probe socket just before, and a peer is ready when
//! a byte echoes through it (polled, bounded by the startup timeout).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

use super::Settings;
use super::sandbox::SandboxProcess;

/// A generic TLS proxy measured beside bindgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Haproxy,
    Stunnel,
}

/// What was run, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub binary: String,
    pub version: String,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "haproxy",
            Peer::Stunnel => "stunnel",
        }
    }

    /// Executable names looked for on `PATH`, in order (Debian installs stunnel 5 as both).
    pub fn executables(self) -> &'static [&'static str] {
        match self {
            Peer::Haproxy => &["haproxy"],
            Peer::Stunnel => &["stunnel4", "stunnel"],
        }
    }

    /// The first of [`Peer::executables`] found on `PATH`.
    pub fn find(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        self.executables().iter().find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| is_executable(candidate))
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running peer, killed when stopped or dropped.
pub struct PeerProcess {
    child: Child,
    /// Where local clients connect.
    pub listen: SocketAddr,
    pub info: PeerInfo,
}

impl PeerProcess {
    /// Writes `peer`'s config into `dir` (its upstream is `upstream`: the raw echo port, or a
    /// relay in front of it), starts `bin` with it, and returns once a byte echoes through it.
    pub async fn start(
        peer: Peer,
        bin: &Path,
        dir: &Path,
        sandbox: &SandboxProcess,
        upstream: SocketAddr,
        settings: &Settings,
    ) -> anyhow::Result<PeerProcess> {
        let name = peer.name();
        let version = version(peer, bin, settings.startup_timeout).await?;
        let listen = free_loopback_port()?;
        let config = dir.join(format!("{name}.cfg"));
        let text = match peer {
            Peer::Haproxy => {
                // HAProxy reads the client certificate and its key from one PEM file.
                let bundle = dir.join("haproxy-client.pem");
                let mut pem = std::fs::read(&sandbox.client_cert)
                    .with_context(|| format!("reading {}", sandbox.client_cert.display()))?;
                pem.extend(
                    std::fs::read(&sandbox.client_key)
                        .with_context(|| format!("reading {}", sandbox.client_key.display()))?,
                );
                write_private(&bundle, &pem)?;
                haproxy_config(listen, upstream, &sandbox.ca, &bundle)
            }
            Peer::Stunnel => stunnel_config(
                listen,
                upstream,
                &sandbox.ca,
                &sandbox.client_cert,
                &sandbox.client_key,
            ),
        };
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file")?;
        let config_arg = config
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", config.display()))?;
        let args: Vec<&str> = match peer {
            // `-db`: foreground, no daemon and no master process: the pid is the proxy's.
            Peer::Haproxy => vec!["-db", "-f", config_arg],
            Peer::Stunnel => vec![config_arg],
        };
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", bin.display()))?;
        let mut running = PeerProcess {
            child,
            listen,
            info: PeerInfo {
                binary: bin.display().to_string(),
                version,
            },
        };
        if let Err(e) = running.wait_ready(settings.startup_timeout).await {
            let _ = running.child.start_kill();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let config = std::fs::read_to_string(&config).unwrap_or_default();
            bail!("{name}: {e:#}; its output:\n{log}\nits config:\n{config}");
        }
        Ok(running)
    }

    /// Polls until one byte echoes through the peer (the listener is up and the whole mTLS hop
    /// works), the process exits, or `limit` passes.
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last_error = String::from("never tried");
        loop {
            if let Some(status) = self.child.try_wait().context("polling the process")? {
                bail!("exited before it was ready ({status}); last probe: {last_error}");
            }
            match timeout(Duration::from_secs(2), echo_one_byte(self.listen)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "the probe timed out".to_owned(),
            }
            if Instant::now() >= deadline {
                bail!(
                    "not echoing through {} within {limit:?}: {last_error}",
                    self.listen
                );
            }
            // A retry interval for the poll, not a guess at readiness.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

async fn echo_one_byte(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"r").await?;
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await?;
    if &back != b"r" {
        return Err(std::io::Error::other("the echo differs from what was sent"));
    }
    Ok(())
}

/// A loopback port the OS chose: bound by a probe socket, which is closed for the peer to bind.
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let probe =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe on 127.0.0.1:0")?;
    probe.local_addr().context("the probe's address")
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// `haproxy -v` / `stunnel -version`: the line naming the version.
async fn version(peer: Peer, bin: &Path, limit: Duration) -> anyhow::Result<String> {
    let flag = match peer {
        Peer::Haproxy => "-v",
        Peer::Stunnel => "-version",
    };
    let output = Command::new(bin)
        .arg(flag)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(limit, output)
        .await
        .with_context(|| format!("{} {flag} did not finish within {limit:?}", bin.display()))?
        .with_context(|| format!("running {} {flag}", bin.display()))?;
    // stunnel prints its version on stderr, after a line about inetd mode.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let wanted = match peer {
        Peer::Haproxy => "HAProxy version ",
        Peer::Stunnel => "stunnel ",
    };
    Ok(text
        .lines()
        .find(|l| l.starts_with(wanted))
        .unwrap_or_else(|| text.lines().next().unwrap_or(""))
        .trim()
        .to_owned())
}

/// HAProxy in tcp mode: one frontend, one server reached with mTLS. Server-side TLS sessions are
/// reused by default (HAProxy keeps the last session per server and thread); `nbthread` is left
/// at its default, one thread per CPU. `maxconn` is far above the harness's concurrency but low
/// enough for a small open-file limit, which HAProxy then only warns about (`no strict-limits`).
fn haproxy_config(listen: SocketAddr, upstream: SocketAddr, ca: &Path, bundle: &Path) -> String {
    format!(
        "\
global
    maxconn 1000
    no strict-limits
    ssl-server-verify required

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend echo
    bind {listen}
    default_backend raw_echo

backend raw_echo
    server sandbox {upstream} ssl verify required ca-file {ca} crt {bundle} sni str(localhost) verifyhost localhost ssl-min-ver TLSv1.3
",
        ca = ca.display(),
        bundle = bundle.display(),
    )
}

/// stunnel in client mode: one service, mTLS to the upstream. A client service caches its
/// session and resumes it on the next connection by default.
fn stunnel_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> String {
    format!(
        "\
foreground = yes
pid =
debug = warning

[echo]
client = yes
accept = {listen}
connect = {upstream}
cert = {cert}
key = {key}
CAfile = {ca}
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}
