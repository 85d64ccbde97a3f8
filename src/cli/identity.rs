//! `bindgate identity issue -c FILE --out DIR`: the single writer of a shared identity.
//!
//! Registers, adopts or renews (when `ngrok.registration.renew_before` says so) with the same
//! code a registering `run` uses (`identity::Registrar`), and keeps `operator_id`,
//! `ingress_endpoint`, `tls.crt` and `tls.key` in DIR (atomic writes, 0600; DIR 0700 when
//! created). With nothing due it writes nothing, to the API or to DIR, so a Kubernetes Job or
//! CronJob can run it on any schedule.
//!
//! Which operator: the one DIR names (GET; 404 registers again). With DIR empty, an operator of
//! the same deployment (`deployment_name`, `deployment_namespace`) that a writer of a shared
//! identity registered (metadata node id `shared`) is adopted with a new key, so a Job that
//! lost its output does not leave a ghost; only when there is none is a new one registered.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config;
use crate::control::registration;
use crate::identity::registration::rfc3339;
use crate::identity::store::{CERT_FILE, INGRESS_ENDPOINT_FILE, KEY_FILE, OPERATOR_ID_FILE};
use crate::identity::{Registrar, StateStore};
use crate::ngrok_api::{ApiClient, ApiSettings};

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    pub command: IdentityCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Register, adopt or renew the shared operator identity and write it into DIR (a no-op
    /// when nothing is due).
    Issue {
        /// The config file (its `ngrok:` section: API, key, `registration`).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Where to keep `operator_id`, `tls.crt`, `tls.key` (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub async fn run(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        IdentityCommand::Issue { config, out } => issue(&config, &out).await,
    }
}

/// The files' bytes, to tell what a run changed.
fn snapshot(dir: &Path) -> Vec<Option<Vec<u8>>> {
    [OPERATOR_ID_FILE, INGRESS_ENDPOINT_FILE, CERT_FILE, KEY_FILE]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).ok())
        .collect()
}

async fn issue(config_path: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let loaded = match config::load_file(config_path) {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (Some(ngrok), Some(mut settings)) = (
        loaded.config.ngrok.as_ref(),
        registration::settings(&loaded),
    ) else {
        anyhow::bail!(
            "{}: no `ngrok:` section: `identity issue` needs the API URL, key and `registration`",
            config_path.display()
        );
    };
    // A shared identity is no fleet member: nobody would keep its heartbeat, and peers would
    // reap it; nor may one stopping writer delete what every replica uses.
    let r = &ngrok.registration;
    for (field, set) in [
        ("fleet", r.fleet.is_some()),
        ("deregister_on_shutdown", r.deregister_on_shutdown),
        ("reap_after", r.reap_after.is_some()),
        ("heartbeat_interval", r.heartbeat_interval.is_some()),
    ] {
        if set {
            anyhow::bail!(
                "{}: `ngrok.registration.{field}` is for a process with its own operator; a shared identity written by `identity issue` takes none of the fleet settings",
                config_path.display()
            );
        }
    }
    // The writer may run on any host (any pod of a Job): the host name is no part of the
    // identity, so an unset namespace is `default`, the same on every run.
    if ngrok.registration.deployment_namespace.is_none() {
        settings.deployment_namespace = "default".into();
    }
    settings.api_url = Some(ngrok.api_url.clone());
    let api = ApiClient::new(ApiSettings::from_config(ngrok, &loaded))?;
    let store = StateStore::open_identity_dir(out)?;
    let before = snapshot(out);
    let had_operator = before[0].is_some();

    let credentials = Registrar::ensure(&api, &store, &settings)
        .await
        .map_err(|e| anyhow::anyhow!("identity issue: {e}"))?;
    let renewed = Registrar::renew_if_due(&api, &store, &settings, &credentials)
        .await
        .map_err(|e| anyhow::anyhow!("identity issue: renewal: {e}"))?;
    let credentials = renewed.unwrap_or(credentials);

    let after = snapshot(out);
    let changed = before != after;
    let action = if !changed {
        "unchanged"
    } else if before[0] != after[0] {
        if had_operator { "replaced" } else { "issued" }
    } else if before[2] != after[2] {
        "renewed"
    } else {
        "updated"
    };
    let renew_at = crate::identity::certificate::inspect(&credentials.cert_pem)
        .map(|info| rfc3339(info.renew_at(settings.renew_before)))
        .unwrap_or_default();
    if changed {
        tracing::info!(
            operator_id = %credentials.operator_id,
            dir = %out.display(),
            "shared identity {action}; valid until {}",
            rfc3339(credentials.not_after)
        );
    } else {
        tracing::info!(
            operator_id = %credentials.operator_id,
            dir = %out.display(),
            "shared identity is current; nothing written (renewal due from {renew_at})"
        );
    }
    let line = serde_json::json!({
        "event": "identity",
        "action": action,
        "changed": changed,
        "operator_id": credentials.operator_id,
        "ingress_endpoint": credentials.ingress_endpoint,
        "not_after": rfc3339(credentials.not_after),
        "renew_at": renew_at,
        "dir": out.display().to_string(),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
