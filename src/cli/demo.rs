//! `bindgate demo`: the sandbox (an emulated ngrok binding ingress) and a proxy in one process,
//! from `examples/sandbox/demo.yaml` and `examples/configs/demo.yaml`, embedded in the binary.

use std::path::PathBuf;
use std::process::ExitCode;

use bindgate_sandbox::{Sandbox, SandboxConfig};

use crate::control::{ControlPlane, registration};
use crate::{config, snapshot};

const SANDBOX_YAML: &str = include_str!("../../examples/sandbox/demo.yaml");
const PROXY_YAML: &str = include_str!("../../examples/configs/demo.yaml");

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its CA and client certificate (default: a fresh temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (dir, temporary) = match args.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (d, false)
        }
        None => (private_temp_dir()?, true),
    };
    let result = serve(&dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// A new directory under the system's temporary directory that only this user can enter, at a
/// name nobody can guess, created exclusively: a directory (or link) someone planted at a
/// predictable name such as `bindgate-demo-<pid>` would have received the demo's CA key and
/// client key, and let its owner swap the CA the proxy trusts.
fn private_temp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("bindgate-demo-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

async fn serve(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut signals = super::ShutdownSignal::install()?;
    // The proxy's provider is the process default; the sandbox names its own explicitly.
    crate::identity::install_crypto_provider();
    let mut sandbox_cfg = SandboxConfig::from_yaml(SANDBOX_YAML)?;
    sandbox_cfg.state_dir = dir.join("sandbox");
    let sandbox = Sandbox::start(sandbox_cfg).await?;
    std::fs::copy(sandbox.ca_pem_path(), dir.join("ca.pem"))?;
    let api = sandbox
        .api_url()
        .ok_or_else(|| anyhow::anyhow!("the demo sandbox config has no `api:` section"))?;

    let dir_text = dir.display().to_string();
    let lookup = |name: &str| match name {
        "BINDGATE_DEMO_DIR" => Some(dir_text.clone()),
        "BINDGATE_DEMO_API" => Some(api.clone()),
        other => std::env::var(other).ok(),
    };
    let parsed = config::parse(
        PROXY_YAML,
        "examples/configs/demo.yaml",
        dir.to_owned(),
        lookup,
    );
    let loaded = match snapshot::check(parsed) {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let registration = registration::register(&loaded).await?;
    let ingress = registration.ingress_endpoint.clone();
    let mut plane = ControlPlane::start(
        None,
        PROXY_YAML.to_owned(),
        loaded,
        Vec::new(),
        Some(registration),
    )
    .await?;
    let applied = plane.on_applied();
    let board = plane.gateway().board();
    let admin = plane
        .gateway()
        .admin_address()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "(disabled)".into());
    let dir_shown = dir.display().to_string();
    // Prints what to try once discovery has exposed both endpoints (or says why it could not).
    let announce = async move {
        loop {
            applied.notified().await;
            let status = board.load();
            let find = |name: &str| status.iter().find(|l| l.name == name).cloned();
            let (Some(web), Some(echo)) = (find(WEB), find(ECHO)) else {
                continue;
            };
            match (web.bound_address, echo.bound_address) {
                (Some(web), Some(echo)) => {
                    println!(
                        "\
bindgate demo is running. It registered with a sandbox ngrok API ({api}), got a client
certificate, discovered two Kubernetes-bound endpoints, and exposes each on a local port,
reached over mTLS through the sandbox binding ingress at {ingress} (CA in {dir_shown}).

Try:
  curl http://{web}/                      # {WEB} through the binding upgrade
  bash -c 'exec 3<>/dev/tcp/{echo_host}/{echo_port}; echo hello >&3; head -1 <&3'   # {ECHO} echoes back
  curl -s http://{admin}/endpoints        # the admin API (also /ready, /listeners, /config_dump, /metrics)

Press Ctrl-C to stop.",
                        echo_host = echo.ip(),
                        echo_port = echo.port(),
                    );
                }
                _ => {
                    for l in [web, echo] {
                        if let Some(e) = l.error {
                            eprintln!("listener `{}`: {e}", l.name);
                        }
                    }
                    eprintln!(
                        "pick free ports with BINDGATE_DEMO_WEB_PORT and BINDGATE_DEMO_ECHO_PORT (0 lets the OS choose)"
                    );
                }
            }
            break;
        }
        std::future::pending::<()>().await
    };
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let outcome = tokio::select! {
        _ = signals.recv() => Ok(()),
        r = plane.run(hangup, Default::default()) => r,
        _ = announce => Ok(()),
    };
    tracing::info!("stopping the demo");
    plane.shutdown().await;
    sandbox.shutdown().await;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

const WEB: &str = "http://web.demo:80";
const ECHO: &str = "tcp://echo.demo:7000";
