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
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Settings;
use super::process::{
    LoggedProcess, StopWith, find_executable, free_loopback_port, program_version,
};
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

impl PeerInfo {
    /// `bin`'s version line (see [`program_version`]).
    pub async fn of(
        bin: &Path,
        flag: &str,
        wanted: &str,
        limit: Duration,
    ) -> anyhow::Result<PeerInfo> {
        Ok(PeerInfo {
            binary: bin.display().to_string(),
            version: program_version(bin, flag, wanted, limit).await?,
        })
    }
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
        find_executable(self.executables(), &[])
    }

    /// `haproxy -v` / `stunnel -version`: the line naming the version.
    pub async fn info(self, bin: &Path, limit: Duration) -> anyhow::Result<PeerInfo> {
        // stunnel prints its version on stderr, after a line about inetd mode.
        let (flag, wanted) = match self {
            Peer::Haproxy => ("-v", "HAProxy version "),
            Peer::Stunnel => ("-version", "stunnel "),
        };
        PeerInfo::of(bin, flag, wanted, limit).await
    }
}

/// A running peer, killed when stopped or dropped.
pub struct PeerProcess {
    process: LoggedProcess,
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
        let info = peer.info(bin, settings.startup_timeout).await?;
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
        std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
        let config_arg = config
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", config.display()))?;
        let args: Vec<&str> = match peer {
            // `-db`: foreground, no daemon and no master process: the pid is the proxy's.
            Peer::Haproxy => vec!["-db", "-f", config_arg],
            Peer::Stunnel => vec![config_arg],
        };
        let log = dir.join(format!("{name}.log"));
        let mut process = LoggedProcess::spawn(bin, &args, log, StopWith::Kill)?;
        // Ready when one byte echoes through the peer: the listener is up and the whole mTLS
        // hop works.
        if let Err(e) = process
            .wait_ready(settings.startup_timeout, || echo_one_byte(listen))
            .await
        {
            let output = process.output();
            process.stop().await;
            bail!("{name}: {e:#}; its output:\n{output}\nits config:\n{text}");
        }
        Ok(PeerProcess {
            process,
            listen,
            info,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub async fn stop(self) {
        self.process.stop().await;
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
