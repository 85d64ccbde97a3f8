//! The ngrok side: one `bindgate sandbox` process (binding ingress + echo and http backends, and
//! the raw mTLS echo port the peers dial) and a client certificate it issued, which every
//! gateway and peer presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Settings;
use super::process::{ChildProcess, run_to_end};

/// The bound endpoints the sandbox serves; gateways' clusters name them.
pub const ECHO_ENDPOINT: &str = "tcp://echo.bench:7000";
pub const WEB_ENDPOINT: &str = "http://web.bench:80";

pub struct SandboxProcess {
    process: ChildProcess,
    pub ingress: SocketAddr,
    /// The raw mTLS echo port: the ingress's TLS and client check, then an echo, no upgrade.
    pub raw_echo: SocketAddr,
    /// The sandbox CA (PEM) gateways trust.
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The echo backend itself (the baseline's target).
    pub echo: SocketAddr,
    /// The http backend itself (the baseline's target).
    pub http: SocketAddr,
}

impl SandboxProcess {
    pub async fn start(bin: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<Self> {
        Self::start_with_echo(bin, dir, settings, None).await
    }

    /// `start`, with the echo endpoint's target at `echo` (another process's echo backend) when
    /// set: the soak's 10,000 connections do not fit one process's open-file limit otherwise.
    pub async fn start_with_echo(
        bin: &Path,
        dir: &Path,
        settings: &Settings,
        echo: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        // `inline_echo`: the ingress echoes on the upgraded connection itself, as its raw echo
        // port does for HAProxy and stunnel, so bindgate's hop ends where theirs ends (the
        // built-in `echo` would add a loopback connection per proxied one, inside the sandbox).
        let echo_target = echo.map_or_else(|| "inline_echo".to_owned(), |a| a.to_string());
        let config = dir.join("sandbox.yaml");
        let text = format!(
            "\
state_dir: {state}
account_id: ac_bench
ingress:
  address: 127.0.0.1:0
  server_names: [localhost]
raw_echo:
  address: 127.0.0.1:0
backends:
  echo: 127.0.0.1:0
  http: 127.0.0.1:0
endpoints:
  - url: {ECHO_ENDPOINT}
    target: {echo_target}
  - url: {WEB_ENDPOINT}
    target: http
",
            state = dir.join("sandbox-state").display()
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let config = path_arg(&config)?;

        let certs = dir.join("client");
        let (ok, out) = run_to_end(
            bin,
            &[
                "sandbox",
                "-c",
                config,
                "client-cert",
                "--out",
                path_arg(&certs)?,
            ],
            settings.startup_timeout,
        )
        .await?;
        if !ok {
            bail!("`bindgate sandbox client-cert` failed:\n{out}");
        }

        let (process, ready) = ChildProcess::start(
            bin,
            &["sandbox", "-c", config],
            "sandbox",
            settings.startup_timeout,
        )
        .await?;
        if ready["event"] != "ready" {
            bail!("the sandbox's first line is not its ready event: {ready}");
        }
        let addr = |pointer: &str| -> anyhow::Result<SocketAddr> {
            ready
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
                .with_context(|| {
                    format!("the sandbox's ready line has no address at {pointer}: {ready}")
                })
        };
        let ca = ready["ca"]
            .as_str()
            .with_context(|| format!("the sandbox's ready line has no `ca`: {ready}"))?;
        Ok(SandboxProcess {
            ingress: addr("/ingress")?,
            raw_echo: addr("/raw_echo")?,
            echo: addr("/backends/echo")?,
            http: addr("/backends/http")?,
            ca: PathBuf::from(ca),
            client_cert: certs.join("tls.crt"),
            client_key: certs.join("tls.key"),
            process,
        })
    }

    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// A path as a command-line argument (the temporary directory's paths are UTF-8 on Linux).
pub fn path_arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}
