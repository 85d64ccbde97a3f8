//! Registration with the ngrok API at startup: reuse or obtain this host's operator and client
//! certificate, and keep renewing it in the background.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, LoadedConfig};
use crate::identity::{
    ClientIdentity, Credentials, IdentityError, Registrar, RegistrationSettings, StateStore,
};
use crate::ngrok_api::{ApiClient, ApiError, ApiSettings};
use crate::snapshot::RegisteredIdentity;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/bindgate";

pub struct Registration {
    pub api: ApiClient,
    pub store: StateStore,
    pub settings: RegistrationSettings,
    pub credentials: Credentials,
    pub identity: Arc<ClientIdentity>,
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
    let registered_ingress = cfg
        .ingresses
        .iter()
        .any(|i| i.client_cert.is_none() && i.client_key.is_none());
    cfg.ngrok.is_some() && (discovery || registered_ingress)
}

pub fn state_dir(loaded: &LoadedConfig) -> PathBuf {
    let dir = loaded
        .config
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    loaded.resolve(&dir)
}

pub async fn register(loaded: &LoadedConfig) -> Result<Registration, RegistrationError> {
    let other = |e: &dyn std::fmt::Display| RegistrationError::Other(e.to_string());
    let Some(ngrok) = loaded.config.ngrok.as_ref() else {
        return Err(RegistrationError::Other("no `ngrok:` section".into()));
    };
    let api = ApiClient::new(ApiSettings::from_config(ngrok, loaded)).map_err(|e| other(&e))?;
    let store = StateStore::open(state_dir(loaded)).map_err(|e| other(&e))?;
    let mut settings = RegistrationSettings::from_config(&ngrok.registration);
    if let Some(d) = loaded
        .config
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.bound_endpoints.as_ref())
    {
        settings.endpoint_selectors = d.selectors.clone();
    }
    let credentials = match Registrar::ensure(&api, &store, &settings).await {
        Ok(c) => c,
        Err(e) => {
            return Err(match e.api_error() {
                Some(api_err @ ApiError::Unauthorized { .. }) => {
                    RegistrationError::KeyRejected(api_err.to_string())
                }
                _ => {
                    RegistrationError::Other(format!("registration with the ngrok API failed: {e}"))
                }
            });
        }
    };
    let identity = Arc::new(
        ClientIdentity::from_credentials(&credentials).map_err(|e: IdentityError| other(&e))?,
    );
    tracing::info!(
        operator = %credentials.operator_id,
        ingress = %credentials.ingress_endpoint,
        valid_until = %credentials.not_after,
        "registered with the ngrok API"
    );
    Ok(Registration {
        api,
        store,
        settings,
        credentials,
        identity,
    })
}

impl Registration {
    pub fn for_build(&self) -> RegisteredIdentity {
        RegisteredIdentity {
            identity: self.identity.clone(),
            ingress_endpoint: self.credentials.ingress_endpoint.clone(),
        }
    }

    /// Renews the certificate before it expires, until `shutdown`.
    pub fn spawn_renewal(&self, shutdown: CancellationToken) {
        tokio::spawn(crate::identity::run_renewal(
            self.api.clone(),
            self.store.clone(),
            self.settings.clone(),
            self.identity.clone(),
            shutdown,
        ));
    }
}
