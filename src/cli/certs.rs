//! `bindgate certs`: inspect, renew or remove this host's ngrok registration and client
//! certificate. Never prints key material.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use time::OffsetDateTime;

use crate::config::{self, LoadedConfig, NgrokConfig};
use crate::identity::registration::rfc3339;
use crate::identity::{CertInfo, Registrar, RegistrationSettings, StateStore};
use crate::ngrok_api::{ApiClient, ApiSettings};

/// Where state lives when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bindgate";

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The config file (its `state_dir` and `ngrok:` section are used).
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: CertsAction,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CertsAction {
    /// Show the registration and client certificate (paths only, never the key).
    Show,
    /// Renew the client certificate now: a new key and CSR, signed by ngrok.
    Renew,
    /// Delete this host's ngrok operator, which invalidates its certificate, and remove the
    /// local registration files.
    Deregister {
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    run_with(args, &mut out, &mut err).await
}

/// `run` with its output streams given (tests capture them).
pub async fn run_with(
    args: CertsArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let Some(path) = args.config else {
        writeln!(
            err,
            "error: `bindgate certs` needs the config file: -c/--config FILE"
        )?;
        return Ok(ExitCode::from(2));
    };
    let loaded = match config::load_file(&path) {
        Ok(l) => l,
        Err(errors) => {
            write!(err, "{errors}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let state_dir = state_dir(&loaded);
    match args.action {
        CertsAction::Show => show(&state_dir, OffsetDateTime::now_utc(), out),
        CertsAction::Renew => {
            let (api, settings) = api_and_settings(&loaded)?;
            let store = StateStore::open(&state_dir)?;
            let creds = Registrar::renew(&api, &store, &settings)
                .await
                .context("renewal failed")?;
            writeln!(
                out,
                "renewed the client certificate of operator {}; valid until {} ({})",
                creds.operator_id,
                rfc3339(creds.not_after),
                days_left(creds.not_after, OffsetDateTime::now_utc())
            )?;
            writeln!(
                out,
                "bindgate processes already running keep the certificate they loaded until they restart or renew it themselves"
            )?;
            Ok(ExitCode::SUCCESS)
        }
        CertsAction::Deregister { yes } => {
            let store = StateStore::open_existing(&state_dir)?;
            let saved = match &store {
                Some(s) => s.load_operator()?,
                None => None,
            };
            let (Some(store), Some(saved)) = (store, saved) else {
                writeln!(
                    err,
                    "nothing to deregister: no registration in {}",
                    state_dir.display()
                )?;
                return Ok(ExitCode::FAILURE);
            };
            if !yes {
                writeln!(
                    err,
                    "refusing to deregister without --yes.\n\
                     This deletes ngrok operator {} and invalidates its client certificate: every \
                     bindgate using {} loses access to bound endpoints at once, and the next start \
                     registers a new operator. Run `bindgate certs -c {} deregister --yes` to proceed.",
                    saved.operator_id,
                    state_dir.display(),
                    path.display()
                )?;
                return Ok(ExitCode::FAILURE);
            }
            let (api, _) = api_and_settings(&loaded)?;
            let done = Registrar::deregister(&api, &store)
                .await
                .context("deregistration failed")?;
            if done.already_gone {
                writeln!(
                    out,
                    "operator {} was already gone from ngrok",
                    done.operator_id
                )?;
            } else {
                writeln!(out, "deleted operator {} from ngrok", done.operator_id)?;
            }
            for f in &done.removed_files {
                writeln!(out, "removed {}", f.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn state_dir(loaded: &LoadedConfig) -> PathBuf {
    match &loaded.config.state_dir {
        Some(p) => loaded.resolve(p),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

fn api_and_settings(loaded: &LoadedConfig) -> anyhow::Result<(ApiClient, RegistrationSettings)> {
    let ngrok: &NgrokConfig = loaded.config.ngrok.as_ref().with_context(|| {
        format!(
            "{}: no `ngrok:` section; this command needs the ngrok API (api_key)",
            loaded.source
        )
    })?;
    let api = ApiClient::new(ApiSettings::from_config(ngrok, loaded))?;
    let mut settings = RegistrationSettings::from_config(&ngrok.registration);
    settings.api_url = Some(ngrok.api_url.clone());
    Ok((api, settings))
}

fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> String {
    let days = (not_after - now).whole_days();
    if not_after <= now {
        format!("EXPIRED {} days ago", -days)
    } else {
        format!("{days} days left")
    }
}

/// Prints the saved registration; exit 1 when there is none or no usable certificate.
fn show(state_dir: &Path, now: OffsetDateTime, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    writeln!(out, "state dir:         {}", state_dir.display())?;
    let Some(store) = StateStore::open_existing(state_dir)? else {
        writeln!(out, "not registered:    the state directory does not exist")?;
        return Ok(ExitCode::FAILURE);
    };
    if let Some(node) = store.existing_node_id()? {
        writeln!(out, "node id:           {node}")?;
    }
    let Some((saved, info)) = Registrar::saved(&store)? else {
        writeln!(
            out,
            "not registered:    no {}",
            store.operator_path().display()
        )?;
        return Ok(ExitCode::FAILURE);
    };
    writeln!(out, "operator:          {}", saved.operator_id)?;
    if let Some(api) = &saved.api_url {
        writeln!(out, "api:               {api}")?;
    }
    writeln!(out, "ingress endpoint:  {}", saved.ingress_endpoint)?;
    writeln!(out, "certificate:       {}", store.cert_path().display())?;
    let code = match info {
        Some(info) => {
            print_cert(&info, now, out)?;
            if info.not_after <= now {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        None => {
            writeln!(out, "  (missing or unreadable)")?;
            ExitCode::FAILURE
        }
    };
    writeln!(out, "private key:       {}", store.key_path().display())?;
    Ok(code)
}

fn print_cert(info: &CertInfo, now: OffsetDateTime, out: &mut impl Write) -> std::io::Result<()> {
    let subject = if info.subject.is_empty() {
        "(empty)"
    } else {
        &info.subject
    };
    writeln!(out, "  subject:         {subject}")?;
    writeln!(out, "  issuer:          {}", info.issuer)?;
    let sans = if info.sans.is_empty() {
        "(none)".to_owned()
    } else {
        info.sans.join(", ")
    };
    writeln!(out, "  SANs:            {sans}")?;
    writeln!(out, "  serial:          {}", info.serial)?;
    writeln!(out, "  not before:      {}", rfc3339(info.not_before))?;
    writeln!(
        out,
        "  not after:       {} ({})",
        rfc3339(info.not_after),
        days_left(info.not_after, now)
    )?;
    writeln!(out, "  key type:        {}", info.key_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ngrok_api::mock::{MOCK_INGRESS, MOCK_KEY, MockApi};

    struct Fixture {
        mock: MockApi,
        dir: tempfile::TempDir,
        config: PathBuf,
    }

    async fn fixture() -> Fixture {
        let mock = MockApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gw.yaml");
        std::fs::write(
            &config,
            format!(
                "version: 1\nstate_dir: state\nngrok:\n  api_url: {}\n  api_key: {MOCK_KEY}\n  registration:\n    deployment_namespace: testns\n",
                mock.url
            ),
        )
        .unwrap();
        Fixture { mock, dir, config }
    }

    async fn certs(f: &Fixture, action: CertsAction) -> (ExitCode, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = CertsArgs {
            config: Some(f.config.clone()),
            action,
        };
        let code = run_with(args, &mut out, &mut err).await.unwrap();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    async fn register(f: &Fixture) -> crate::identity::Credentials {
        let store = StateStore::open(f.dir.path().join("state")).unwrap();
        let mut settings = RegistrationSettings::from_config(&Default::default());
        settings.deployment_namespace = "testns".into();
        Registrar::ensure(&f.mock.client(), &store, &settings)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn show_prints_public_facts_and_never_the_key() {
        let f = fixture().await;
        let (code, out, _) = certs(&f, CertsAction::Show).await;
        assert_eq!(code, ExitCode::FAILURE);
        assert!(
            out.contains("not registered:    the state directory does not exist"),
            "{out}"
        );
        assert!(
            !f.dir.path().join("state").exists(),
            "show must not create the state dir"
        );

        let creds = register(&f).await;
        let (code, out, _) = certs(&f, CertsAction::Show).await;
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
        let state = f.dir.path().join("state");
        for line in [
            format!("operator:          {}", creds.operator_id),
            format!("ingress endpoint:  {MOCK_INGRESS}:443"),
            format!("certificate:       {}", state.join("tls.crt").display()),
            "  subject:         (empty)".to_owned(),
            "  SANs:            DNS:acct-mock.bindings.ngrok.test".to_owned(),
            format!(
                "  not after:       {} (89 days left)",
                rfc3339(creds.not_after)
            ),
            "  key type:        ECDSA P-256".to_owned(),
            format!("private key:       {}", state.join("tls.key").display()),
        ] {
            assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
        }
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        let key_body: String = creds.key.expose().lines().nth(1).unwrap().to_owned();
        assert!(!out.contains(&key_body), "{out}");
    }

    #[tokio::test]
    async fn renew_patches_a_new_certificate() {
        let f = fixture().await;
        let creds = register(&f).await;
        let (code, out, err) = certs(&f, CertsAction::Renew).await;
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert!(
            out.starts_with(&format!(
                "renewed the client certificate of operator {}; valid until ",
                creds.operator_id
            )),
            "{out}"
        );
        assert_eq!(
            f.mock.state().count(
                "PATCH",
                &format!("/kubernetes_operators/{}", creds.operator_id)
            ),
            1
        );
        let key = std::fs::read_to_string(f.dir.path().join("state/tls.key")).unwrap();
        assert_ne!(key, creds.key.expose());
    }

    #[tokio::test]
    async fn deregister_needs_yes() {
        let f = fixture().await;
        let creds = register(&f).await;
        let (code, out, err) = certs(&f, CertsAction::Deregister { yes: false }).await;
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(out, "");
        assert!(
            err.starts_with("refusing to deregister without --yes."),
            "{err}"
        );
        assert!(err.contains(&creds.operator_id), "{err}");
        assert_eq!(
            f.mock.state().count(
                "DELETE",
                &format!("/kubernetes_operators/{}", creds.operator_id)
            ),
            0
        );
        assert!(f.dir.path().join("state/tls.key").exists());

        let (code, out, err) = certs(&f, CertsAction::Deregister { yes: true }).await;
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert!(
            out.starts_with(&format!(
                "deleted operator {} from ngrok\n",
                creds.operator_id
            )),
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with("removed ")).count(),
            3,
            "{out}"
        );
        assert!(f.mock.state().operators.is_empty());
        assert!(!f.dir.path().join("state/tls.key").exists());
        let (code, _, err) = certs(&f, CertsAction::Deregister { yes: true }).await;
        assert_eq!(code, ExitCode::FAILURE);
        assert!(err.starts_with("nothing to deregister"), "{err}");
    }

    #[tokio::test]
    async fn missing_config_flag_is_a_usage_error() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(
            CertsArgs {
                config: None,
                action: CertsAction::Show,
            },
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::from(2));
        assert!(String::from_utf8(err).unwrap().contains("-c/--config FILE"));
    }

    #[test]
    fn days_left_reads_well() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(100);
        assert_eq!(
            days_left(now + time::Duration::hours(49), now),
            "2 days left"
        );
        assert_eq!(
            days_left(now - time::Duration::days(3), now),
            "EXPIRED 3 days ago"
        );
    }
}
