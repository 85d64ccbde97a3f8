//! `bindgate demo`: the sandbox (an emulated ngrok binding ingress) and a proxy in one process,
//! from `examples/sandbox/demo.yaml` and `examples/configs/demo.yaml`, embedded in the binary.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::control::Gateway;
use crate::sandbox::{Sandbox, SandboxConfig};
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
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("bindgate-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let result = serve(&dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn serve(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut signals = super::ShutdownSignal::install()?;
    let mut sandbox_cfg = SandboxConfig::from_yaml(SANDBOX_YAML)?;
    sandbox_cfg.state_dir = dir.join("sandbox");
    let sandbox = Sandbox::start(sandbox_cfg).await?;
    sandbox.issue_client_cert(dir)?;
    std::fs::copy(sandbox.ca_pem_path(), dir.join("ca.pem"))?;

    let ingress = sandbox.ingress_addr().to_string();
    let dir_text = dir.display().to_string();
    let lookup = |name: &str| match name {
        "BINDGATE_DEMO_DIR" => Some(dir_text.clone()),
        "BINDGATE_DEMO_INGRESS" => Some(ingress.clone()),
        other => std::env::var(other).ok(),
    };
    let built = config::parse(
        PROXY_YAML,
        "examples/configs/demo.yaml",
        dir.to_owned(),
        lookup,
    )
    .and_then(|loaded| snapshot::build(&loaded, 1));
    let snap = match built {
        Ok(s) => s,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut gw = Gateway::start(snap, Default::default()).await?;
    let status = gw.listener_status();
    let bound = |name: &str| {
        status
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.bound_address.map(|a| a.to_string()))
    };
    let (Some(web), Some(echo)) = (bound("web"), bound("echo")) else {
        for l in status.iter().filter(|l| l.error.is_some()) {
            eprintln!(
                "listener `{}`: {}",
                l.name,
                l.error.as_deref().unwrap_or_default()
            );
        }
        eprintln!(
            "pick free ports with BINDGATE_DEMO_WEB=127.0.0.1:PORT and BINDGATE_DEMO_ECHO=127.0.0.1:PORT"
        );
        gw.shutdown().await;
        sandbox.shutdown().await;
        return Ok(ExitCode::FAILURE);
    };
    let admin = gw
        .admin_address()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "(disabled)".into());
    println!(
        "\
bindgate demo is running: a sandbox ngrok binding ingress at {ingress} (mTLS, CA in {dir}),
and a proxy with two listeners that reach bound endpoints through it.

Try:
  curl http://{web}/                      # http://web.demo:80 through the binding upgrade
  echo hello | nc -q 2 {echo_host} {echo_port}          # tcp://echo.demo:7000 echoes back
  curl -s http://{admin}/listeners        # the admin API (also /ready, /clusters, /config_dump)

Press Ctrl-C to stop.",
        dir = dir.display(),
        echo_host = echo.rsplit_once(':').map_or("", |(h, _)| h),
        echo_port = echo.rsplit_once(':').map_or("", |(_, p)| p),
    );
    signals.recv().await;
    tracing::info!("stopping the demo");
    gw.shutdown().await;
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
