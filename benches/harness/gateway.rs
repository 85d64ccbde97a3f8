//! The proxy side: for one ingress transport, generate a config, ask `bindgate validate` whether
//! this build supports it, and run it.
//!
//! Each gateway has three listeners on OS-chosen ports: `echo` (tcp → the echo endpoint), `web`
//! (tcp → the http endpoint, bytes only) and, when the build has `protocol: http` listeners,
//! `web_http` (http → the same endpoint). A mode or listener protocol this build does not know is
//! reported as not supported (serde's "unknown variant"); any other validation error is a bug in
//! the harness or the build and fails the run, with `bindgate validate`'s output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Settings;
use super::process::{ChildProcess, run_to_end};
use super::report::Support;
use super::sandbox::{ECHO_ENDPOINT, SandboxProcess, WEB_ENDPOINT, path_arg};

/// Names of the listeners in every generated config.
const ECHO: &str = "echo";
const WEB_TCP: &str = "web";
const WEB_HTTP: &str = "web_http";

/// Route shapes tried for the `http` listener, in order: a catch-all route without `match`, then
/// an explicit catch-all prefix, whichever the build accepts.
pub const HTTP_ROUTES: [&str; 2] = [
    "[ { cluster: web } ]",
    "[ { match: { path_prefix: \"/\" }, cluster: web } ]",
];

/// YAML added to a generated config (the soak's limits and admin server); empty for the load
/// bench.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Top-level lines (no indentation), e.g. `limits: { max_connections: 20000 }`.
    pub top_level: String,
    /// Lines added to every listener, indented as its fields (6 spaces).
    pub listener: String,
}

pub enum Prepared {
    /// This build rejects the transport itself.
    NotSupported(String),
    Config(GatewayConfig),
}

pub struct GatewayConfig {
    path: PathBuf,
    /// The target's name, e.g. `pool+early`.
    name: String,
    /// Whether the config has the `web_http` listener, or why not.
    http_listener: Support,
}

/// Writes and validates the config of gateway `name`, whose ingress has `transport` (the value
/// and any settings lines after it), with an http listener when supported.
/// `ingress` is the address gateways dial: the sandbox's ingress, or a relay in front of it.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    bin: &Path,
    dir: &Path,
    sandbox: &SandboxProcess,
    ingress: SocketAddr,
    name: &str,
    transport: &str,
    extra: &Extra,
    settings: &Settings,
) -> anyhow::Result<Prepared> {
    let path = dir.join(format!("gateway-{name}.yaml"));
    let base = config_text(sandbox, ingress, transport, extra, None);
    match validate(bin, &path, &base, settings).await? {
        Validation::Ok => {}
        Validation::Unsupported(reason) => return Ok(Prepared::NotSupported(reason)),
        Validation::Invalid(output) => {
            bail!("the generated config for `{name}` is rejected:\n{output}\n{base}")
        }
    }
    let mut rejected = Vec::new();
    let mut outcome = None;
    for routes in HTTP_ROUTES {
        let text = config_text(sandbox, ingress, transport, extra, Some(routes));
        match validate(bin, &path, &text, settings).await? {
            Validation::Ok => {
                outcome = Some((Support::Measured, Some(routes)));
                break;
            }
            Validation::Unsupported(reason) => {
                outcome = Some((Support::NotSupported { reason }, None));
                break;
            }
            Validation::Invalid(output) => rejected.push(format!("routes: {routes}\n{output}")),
        }
    }
    let Some((http_listener, routes)) = outcome else {
        bail!(
            "every generated `protocol: http` listener is rejected:\n{}",
            rejected.join("\n")
        );
    };
    // The file on disk is the last one validated: write the one that will run.
    let text = config_text(sandbox, ingress, transport, extra, routes);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Prepared::Config(GatewayConfig {
        path,
        name: name.to_owned(),
        http_listener,
    }))
}

pub enum Validation {
    Ok,
    /// A value this build does not know (the feature is not merged yet).
    Unsupported(String),
    /// Any other error: `bindgate validate`'s output.
    Invalid(String),
}

/// Writes `text` to `path` and runs `bindgate validate` on it.
pub async fn validate(
    bin: &Path,
    path: &Path,
    text: &str,
    settings: &Settings,
) -> anyhow::Result<Validation> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    let (ok, output) = run_to_end(
        bin,
        &["validate", "-c", path_arg(path)?],
        settings.startup_timeout,
    )
    .await?;
    if ok {
        return Ok(Validation::Ok);
    }
    let unknown = output
        .lines()
        .map(str::trim)
        .find(|l| l.contains("unknown variant") || l.contains("unknown field"));
    Ok(match unknown {
        Some(line) => Validation::Unsupported(strip_position(line).to_owned()),
        None => Validation::Invalid(output),
    })
}

/// `line 9, column 16: `ingresses[0].transport`: …` → `` `ingresses[0].transport`: … ``.
fn strip_position(line: &str) -> &str {
    match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => line,
    }
}

fn config_text(
    sandbox: &SandboxProcess,
    ingress: SocketAddr,
    transport: &str,
    extra: &Extra,
    http_routes: Option<&str>,
) -> String {
    let listener_extra = &extra.listener;
    let http_listener = http_routes
        .map(|routes| {
            format!(
                "    - name: {WEB_HTTP}\n      address: 127.0.0.1:0\n      protocol: http\n      routes: {routes}\n{listener_extra}"
            )
        })
        .unwrap_or_default();
    let top_level = &extra.top_level;
    format!(
        "\
version: 1
ingresses:
  - name: sandbox
    address: {ingress}
    server_name: localhost
    ca: {ca}
    system_roots: false
    client_cert: {cert}
    client_key: {key}
    connect_timeout: 5s
    transport: {transport}
static_resources:
  listeners:
    - name: {ECHO}
      address: 127.0.0.1:0
      routes: [ {{ cluster: echo }} ]
{listener_extra}    - name: {WEB_TCP}
      address: 127.0.0.1:0
      routes: [ {{ cluster: web }} ]
{listener_extra}{http_listener}  clusters:
    - name: echo
      type: binding_upstream
      endpoint: {ECHO_ENDPOINT}
      ingress: sandbox
    - name: web
      type: binding_upstream
      endpoint: {WEB_ENDPOINT}
      ingress: sandbox
{top_level}",
        ca = sandbox.ca.display(),
        cert = sandbox.client_cert.display(),
        key = sandbox.client_key.display(),
    )
}

/// Where listener `wanted` is bound, from the readiness line of `bindgate run` (process `name`).
pub fn bound_address(
    started: &serde_json::Value,
    wanted: &str,
    name: &str,
) -> anyhow::Result<SocketAddr> {
    started["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == wanted))
        .and_then(|l| l["bound_address"].as_str())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{name}: listener `{wanted}` is not bound: {started}"))
}

/// A running `bindgate run` and where its listeners are bound.
pub struct GatewayProcess {
    process: ChildProcess,
    /// The admin server's address, when the config has one (the soak's does).
    #[allow(dead_code)] // used by benches/soak.rs, not by the load bench
    pub admin: Option<SocketAddr>,
    pub echo: SocketAddr,
    pub web_tcp: SocketAddr,
    pub web_http: Result<SocketAddr, Support>,
}

impl GatewayProcess {
    pub async fn start(
        bin: &Path,
        config: &GatewayConfig,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let name = format!("bindgate {}", config.name);
        let (process, started) = ChildProcess::start(
            bin,
            &["run", "-c", path_arg(&config.path)?],
            &name,
            settings.startup_timeout,
        )
        .await?;
        if started["event"] != "started" || started["ready"] != true {
            bail!("{name}: not started and ready: {started}");
        }
        let listener = |wanted: &str| bound_address(&started, wanted, &name);
        let web_http = match &config.http_listener {
            Support::Measured => Ok(listener(WEB_HTTP)?),
            other => Err(other.clone()),
        };
        Ok(GatewayProcess {
            admin: started["admin"].as_str().and_then(|a| a.parse().ok()),
            echo: listener(ECHO)?,
            web_tcp: listener(WEB_TCP)?,
            web_http,
            process,
        })
    }

    #[allow(dead_code)] // used by benches/soak.rs, not by the load bench
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub async fn stop(self) {
        self.process.stop().await;
    }
}
