//! `bindgate run -c FILE`: load, build, serve until SIGINT/SIGTERM, then drain and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::control::{ControlPlane, Gateway, registration, sources};

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

/// `early_hangup`: set when a SIGHUP arrived before the control loop runs; it reloads once the
/// first config is applied.
pub async fn run(
    args: RunArgs,
    early_hangup: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<ExitCode> {
    let mut signals = super::ShutdownSignal::install()?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Before the first build: the default global connection cap follows the limit.
    let fds = crate::listener::raise_fd_limit();
    tracing::debug!(open_files = fds, "open-file limit");
    // Validate fully (same path as `validate`) before registering or binding anything.
    let text = config::read_text(&args.config)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the file: {e}", args.config.display()))?;
    // The file with its `path` sources' resources (a source whose files do not build with it is
    // refused and left out; the file itself must build).
    // From the text just read: the control plane compares later reads with it.
    let checked = config::parse_file(&args.config, &text)
        .and_then(|loaded| sources::initial(&loaded).map(|initial| (loaded, initial)));
    let (loaded, initial) = match checked {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Registration can wait minutes on an API that does not answer (`api_timeout`, 4 tries):
    // SIGINT/SIGTERM stop start-up at once rather than waiting for it (systemd and Kubernetes
    // would otherwise kill the process when their stop timeout runs out).
    let starting = async {
        // One process per state_dir: held until this process ends.
        let state_lock = if registration::needed(&loaded.config) {
            let dir = registration::state_dir(&loaded);
            match crate::identity::StateStore::open(&dir).and_then(|s| s.lock()) {
                Ok(lock) => Some(lock),
                Err(e) => return Ok(Err(e.to_string())),
            }
        } else {
            None
        };
        let registration = if registration::needed(&loaded.config) {
            match registration::obtain(&loaded).await {
                Ok(r) => Some(r),
                Err(e) => return Ok(Err(e.to_string())),
            }
        } else {
            None
        };
        let deregistration = registration
            .as_ref()
            .and_then(registration::Registration::deregistration);
        let plane = ControlPlane::start(
            Some(args.config.clone()),
            text,
            loaded,
            initial,
            registration,
        )
        .await?;
        anyhow::Ok(Ok((state_lock, deregistration, plane)))
    };
    let (_state_lock, deregistration, mut plane) = tokio::select! {
        started = starting => match started? {
            Ok(started) => started,
            Err(e) => {
                tracing::error!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        () = signals.recv() => {
            tracing::info!("stop requested during start-up: exiting before serving");
            return Ok(ExitCode::SUCCESS);
        }
    };
    announce(plane.gateway());
    let mut clean_stop = false;
    let outcome = tokio::select! {
        _ = signals.recv() => {
            clean_stop = true;
            Ok(())
        }
        r = plane.run(hangup, early_hangup) => r,
    };
    let drain = plane.gateway().current().max_drain_timeout();
    if let Err(e) = &outcome {
        tracing::error!("stopping: {e}");
    }
    tracing::info!(
        "shutting down: no new connections; draining open ones for up to {drain:?} (a second SIGINT or SIGTERM stops at once)"
    );
    let stopping = async {
        plane.shutdown().await;
        // After the drain (renewal and heartbeats are stopped): the certificate dies with it.
        if let (true, Some(d)) = (clean_stop, deregistration) {
            if let Err(e) = d.run().await {
                tracing::error!("{e}");
                return false;
            }
        }
        true
    };
    let deregistered = tokio::select! {
        deregistered = stopping => deregistered,
        () = signals.recv() => {
            tracing::warn!("a second stop signal: exiting now; connections still open are cut");
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing::info!("stopped");
    Ok(if outcome.is_ok() && deregistered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
