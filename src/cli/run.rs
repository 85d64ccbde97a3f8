//! `bindgate run -c FILE`: load, build, serve until SIGINT/SIGTERM, then drain and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::control::Gateway;
use crate::{config, snapshot};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Prints one JSON line on stdout once listeners are bound: scripts and tests wait on it.
pub fn announce(gw: &Gateway) {
    let line = serde_json::json!({
        "event": "started",
        "ready": gw.all_bound(),
        "admin": gw.admin_address(),
        "listeners": gw.listener_status(),
    });
    println!("{line}");
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let built = config::load_file(&args.config).and_then(|loaded| snapshot::build(&loaded, 1));
    let snap = match built {
        Ok(s) => s,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut signals = super::ShutdownSignal::install()?;
    let mut gw = Gateway::start(snap).await?;
    announce(&gw);
    signals.recv().await;
    let drain = gw.current().max_drain_timeout();
    tracing::info!("shutting down: no new connections; draining open ones for up to {drain:?}");
    gw.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
