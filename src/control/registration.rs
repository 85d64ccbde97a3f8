//! This process's identity with the ngrok API at startup, from one of two sources:
//! - **registration** (`ngrok.registration`): reuse or obtain this host's operator and client
//!   certificate under `state_dir`, and keep renewing it in the background;
//! - **a shared identity directory** (`ngrok.identity_dir`): read the operator id and client
//!   certificate that `bindgate identity issue` wrote, follow their rotations, and never write
//!   to the API (reads only: discovery, and the operator's ingress address when no file or
//!   config says it).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LoadedConfig};
use crate::identity::registration::{ingress_of, rfc3339, with_default_port};
use crate::identity::{
    ClientIdentity, IdentityError, IdentityFiles, Registrar, RegistrationSettings, StateStore,
    WatchedIdentity,
};
use crate::ngrok_api::{ApiClient, ApiError, ApiSettings};
use crate::snapshot::RegisteredIdentity;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/bindgate";

/// The identity ingresses without static files present, and the operator discovery asks about.
pub struct Registration {
    pub api: ApiClient,
    pub identity: Arc<ClientIdentity>,
    /// `host:port` of the binding ingress the operator was given.
    pub ingress_endpoint: String,
    /// The operator id in force (changes when a shared identity directory is rotated to
    /// another operator).
    pub operator_id: watch::Receiver<String>,
    source: Source,
}

enum Source {
    /// This process registered and renews.
    Registered {
        store: StateStore,
        settings: Box<RegistrationSettings>,
    },
    /// Read from `ngrok.identity_dir`.
    Mounted(Arc<WatchedIdentity>),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("{0}")]
    KeyRejected(String),
    #[error("{0}")]
    Other(String),
}

/// Whether this config needs the API: discovery, or an ingress without a static certificate.
pub fn needed(cfg: &Config) -> bool {
    let discovery = cfg
        .dynamic_resources
        .as_ref()
        .is_some_and(|d| d.bound_endpoints.is_some());
    cfg.ngrok.is_some() && (discovery || uses_registered_ingress(cfg))
}

fn uses_registered_ingress(cfg: &Config) -> bool {
    cfg.ingresses
        .iter()
        .any(|i| i.client_cert.is_none() && i.client_key.is_none())
}

pub fn state_dir(loaded: &LoadedConfig) -> PathBuf {
    let dir = loaded
        .config
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    loaded.resolve(&dir)
}

/// The registration parameters the config asks for (`ngrok.registration`, with the discovery
/// selectors when discovery is configured).
pub fn settings(loaded: &LoadedConfig) -> Option<RegistrationSettings> {
    let ngrok = loaded.config.ngrok.as_ref()?;
    let mut settings = RegistrationSettings::from_config(&ngrok.registration);
    if let Some(d) = loaded
        .config
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.bound_endpoints.as_ref())
    {
        settings.endpoint_selectors = d.selectors.clone();
    }
    Some(settings)
}

fn classify(what: &str, e: IdentityError) -> RegistrationError {
    match e.api_error() {
        Some(api_err @ ApiError::Unauthorized { .. }) => {
            RegistrationError::KeyRejected(api_err.to_string())
        }
        _ => RegistrationError::Other(format!("{what}: {e}")),
    }
}

/// The identity this config says to use: the shared directory's when `ngrok.identity_dir` is
/// set, else this host's own registration.
pub async fn obtain(loaded: &LoadedConfig) -> Result<Registration, RegistrationError> {
    match loaded
        .config
        .ngrok
        .as_ref()
        .and_then(|n| n.identity_dir.as_ref())
    {
        Some(dir) => mount(loaded, loaded.resolve(dir)).await,
        None => register(loaded).await,
    }
}

pub async fn register(loaded: &LoadedConfig) -> Result<Registration, RegistrationError> {
    let other = |e: &dyn std::fmt::Display| RegistrationError::Other(e.to_string());
    let (Some(ngrok), Some(settings)) = (loaded.config.ngrok.as_ref(), settings(loaded)) else {
        return Err(RegistrationError::Other("no `ngrok:` section".into()));
    };
    let api = ApiClient::new(ApiSettings::from_config(ngrok, loaded)).map_err(|e| other(&e))?;
    let store = StateStore::open(state_dir(loaded)).map_err(|e| other(&e))?;
    tracing::info!(api = %ngrok.api_url, "registering with the ngrok API");
    let credentials = Registrar::ensure(&api, &store, &settings)
        .await
        .map_err(|e| classify("registration with the ngrok API failed", e))?;
    let identity = Arc::new(
        ClientIdentity::from_credentials(&credentials).map_err(|e: IdentityError| other(&e))?,
    );
    tracing::info!(
        operator = %credentials.operator_id,
        ingress = %credentials.ingress_endpoint,
        valid_until = %credentials.not_after,
        "registered with the ngrok API"
    );
    let (_, operator_id) = watch::channel(credentials.operator_id.clone());
    Ok(Registration {
        api,
        identity,
        ingress_endpoint: credentials.ingress_endpoint,
        operator_id,
        source: Source::Registered {
            store,
            settings: Box::new(settings),
        },
    })
}

/// Reads the shared identity in `dir`. Calls the API only to read the operator's ingress
/// address, and only when neither the directory's `ingress_endpoint` nor every ingress's
/// `address` says it.
pub async fn mount(loaded: &LoadedConfig, dir: PathBuf) -> Result<Registration, RegistrationError> {
    let other = |e: &dyn std::fmt::Display| RegistrationError::Other(e.to_string());
    let Some(ngrok) = loaded.config.ngrok.as_ref() else {
        return Err(RegistrationError::Other("no `ngrok:` section".into()));
    };
    let api = ApiClient::new(ApiSettings::from_config(ngrok, loaded)).map_err(|e| other(&e))?;
    let watched = WatchedIdentity::load(IdentityFiles::identity_dir(&dir)).map_err(|e| {
        RegistrationError::Other(format!(
            "`ngrok.identity_dir` {}: {e} (write it with `bindgate identity issue --out DIR`)",
            dir.display()
        ))
    })?;
    let watched = Arc::new(watched);
    let operator_id = watched.operator_id();
    let id = operator_id.borrow().clone();
    let saved = crate::identity::store::load_identity_operator(&dir).map_err(|e| other(&e))?;
    let from_file = saved
        .map(|s| s.ingress_endpoint)
        .filter(|e| !e.is_empty())
        .map(|e| with_default_port(&e));
    let needs_address = loaded
        .config
        .ingresses
        .iter()
        .any(|i| i.client_cert.is_none() && i.client_key.is_none() && i.address.is_none());
    let ingress_endpoint = match from_file {
        Some(e) => e,
        None if needs_address => {
            let op = api.get_operator(&id).await.map_err(|e| {
                classify(
                    &format!("`ngrok.identity_dir`: look up operator {id} for its ingress address"),
                    IdentityError::Api {
                        action: "get operator".into(),
                        source: e,
                    },
                )
            })?;
            ingress_of(&op)
        }
        None => String::new(),
    };
    let info = watched
        .identity()
        .certificate_info()
        .map_err(|e| other(&e))?;
    tracing::info!(
        operator = %id,
        dir = %dir.display(),
        valid_until = %rfc3339(info.not_after),
        "client identity loaded from the identity directory; this process never registers"
    );
    Ok(Registration {
        api,
        identity: watched.identity(),
        ingress_endpoint,
        operator_id,
        source: Source::Mounted(watched),
    })
}

/// What `deregister_on_shutdown: true` does on a clean stop: delete our operator.
pub struct Deregistration {
    api: ApiClient,
    store: StateStore,
}

impl Deregistration {
    /// Deletes the operator (which invalidates its certificate) and its files in `state_dir`.
    pub async fn run(self) -> Result<(), RegistrationError> {
        match Registrar::deregister(&self.api, &self.store).await {
            Ok(done) => {
                tracing::info!(
                    operator_id = %done.operator_id,
                    already_gone = done.already_gone,
                    "deleted this host's ngrok operator (deregister_on_shutdown)"
                );
                Ok(())
            }
            Err(e) => Err(classify("deregister_on_shutdown", e)),
        }
    }
}

impl Registration {
    /// `Some` when the config asks to delete our own operator on a clean stop.
    pub fn deregistration(&self) -> Option<Deregistration> {
        match &self.source {
            Source::Registered { store, settings } if settings.deregister_on_shutdown => {
                Some(Deregistration {
                    api: self.api.clone(),
                    store: store.clone(),
                })
            }
            _ => None,
        }
    }

    pub fn for_build(&self) -> RegisteredIdentity {
        RegisteredIdentity {
            identity: self.identity.clone(),
            ingress_endpoint: self.ingress_endpoint.clone(),
        }
    }

    /// Keeps the identity current until `shutdown`: renews our own registration before it
    /// expires, or follows the identity directory's rotations.
    pub fn spawn_upkeep(&self, shutdown: CancellationToken) {
        match &self.source {
            Source::Registered { store, settings } => {
                if settings.fleet.is_some() {
                    tokio::spawn(crate::identity::fleet::run_fleet(
                        self.api.clone(),
                        store.clone(),
                        (**settings).clone(),
                        shutdown.clone(),
                    ));
                }
                tokio::spawn(crate::identity::run_renewal(
                    self.api.clone(),
                    store.clone(),
                    (**settings).clone(),
                    self.identity.clone(),
                    shutdown,
                ));
            }
            Source::Mounted(watched) => {
                watched.watch();
                // The watch lives as long as the identity does: until shutdown.
                let watched = watched.clone();
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    drop(watched);
                });
            }
        }
    }
}
