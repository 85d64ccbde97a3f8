//! Registration: make this host one ngrok Kubernetes operator and hold its client certificate.
//!
//! Ghost registrations cost the user (each is a resource in their account, and deleting one
//! invalidates its certificate), so [`Registrar::ensure`] creates a new operator only when it
//! has no saved one and finds none of its own to adopt; and an API failure other than 404 on
//! the saved one is returned, never papered over with a new registration.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::certificate::{self, CertInfo};
use super::store::{SavedOperator, StateStore, StoreError};
use crate::config::{KeyType, RegistrationConfig};
use crate::ngrok_api::{
    ApiClient, ApiError, BindingCreate, BindingUpdate, DeploymentCreate, DeploymentUpdate,
    Operator, OperatorCreate, OperatorUpdate, RetryPolicy,
};
use crate::secret::Secret;

/// Where the binding ingress is when the API does not say.
pub const DEFAULT_INGRESS_ENDPOINT: &str = "kubernetes-binding-ingress.ngrok.io:443";
/// `deployment.version` sent to the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// With a usable saved identity, how long start-up waits for the API to confirm the saved
/// operator (one try) before serving with it. An API that drops packets would otherwise hold
/// the start, and every saved endpoint, for `api_timeout` times 4 tries; discovery and renewal
/// keep asking in the background.
pub const SAVED_IDENTITY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("state directory: {0}")]
    Store(#[from] StoreError),
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: ApiError,
    },
    #[error("certificate from the API for operator {operator_id}: {reason}")]
    IssuedCertificate { operator_id: String, reason: String },
    #[error("{0}")]
    Key(String),
    #[error("not registered with ngrok yet: no {0}")]
    NotRegistered(std::path::PathBuf),
}

impl IdentityError {
    /// The API error underneath, if this is one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            IdentityError::Api { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn api_failed(action: impl Into<String>) -> impl FnOnce(ApiError) -> IdentityError {
    let action = action.into();
    move |source| IdentityError::Api { action, source }
}

/// The registration parameters, resolved from the `ngrok.registration` config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationSettings {
    pub description: String,
    pub key_type: KeyType,
    pub renew_before: Duration,
    pub endpoint_selectors: Vec<String>,
    pub deployment_name: String,
    pub deployment_namespace: String,
    /// Recorded in `operator.json` for people reading it; not sent.
    pub api_url: Option<String>,
    /// `registration.fleet`: written in the metadata with a heartbeat; only operators of the
    /// same fleet (or none, when `None`) are adopted.
    pub fleet: Option<String>,
    pub deregister_on_shutdown: bool,
    pub reap_after: Duration,
    pub heartbeat_interval: Duration,
}

impl RegistrationSettings {
    pub fn from_config(cfg: &RegistrationConfig) -> RegistrationSettings {
        RegistrationSettings {
            description: cfg.description.clone(),
            key_type: cfg.key_type,
            renew_before: cfg.renew_before.get(),
            endpoint_selectors: cfg.endpoint_selectors.clone(),
            deployment_name: cfg.deployment_name.clone(),
            deployment_namespace: cfg
                .deployment_namespace
                .clone()
                .unwrap_or_else(default_namespace),
            api_url: None,
            fleet: cfg.fleet.clone(),
            deregister_on_shutdown: cfg.deregister_on_shutdown,
            reap_after: cfg
                .reap_after
                .map(|d| d.get())
                .unwrap_or(crate::config::ngrok::DEFAULT_REAP_AFTER),
            heartbeat_interval: cfg
                .heartbeat_interval
                .map(|d| d.get())
                .unwrap_or(crate::config::ngrok::DEFAULT_HEARTBEAT_INTERVAL),
        }
    }
}

/// The host's short name as a DNS label (`gw-1` for `GW-1.example.com`), or `default`.
pub fn default_namespace() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    namespace_from_hostname(&host)
}

fn namespace_from_hostname(host: &str) -> String {
    let short = host.trim().split('.').next().unwrap_or("");
    let label: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "default".to_owned()
    } else {
        label.to_owned()
    }
}

/// What a bindgate host needs to dial the binding ingress.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub operator_id: String,
    /// `host:port` (`:443` added when the API gave no port).
    pub ingress_endpoint: String,
    /// Client certificate chain (PEM), leaf first.
    pub cert_pem: String,
    /// The certificate's private key (PEM).
    pub key: Secret,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Credentials {
    /// Whether the certificate should be renewed at `now`.
    pub fn renewal_due(&self, renew_before: Duration, now: OffsetDateTime) -> bool {
        Registrar::renewal_due(&self.cert_pem, renew_before, now)
    }
}

/// What `deregister` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deregistered {
    pub operator_id: String,
    /// The API had no such operator any more.
    pub already_gone: bool,
    pub removed_files: Vec<std::path::PathBuf>,
}

/// Registration, adoption and renewal of this host's operator.
pub struct Registrar;

impl Registrar {
    /// Credentials fit to dial the ingress, registering only when there is nothing to reuse:
    /// a saved operator (GET; 404 → register again; other errors are returned) with its saved
    /// certificate and key when they are usable, else an operator of this host found in the
    /// account (adopted with a new CSR), else a new registration.
    pub async fn ensure(
        api: &ApiClient,
        store: &StateStore,
        settings: &RegistrationSettings,
    ) -> Result<Credentials, IdentityError> {
        let node_id = store.node_id()?;
        if let Some(saved) = store.load_operator()? {
            let id = saved.operator_id.clone();
            let fallback = Self::offline(store, settings, &saved);
            let lookup = if fallback.is_some() {
                let once = api.clone().with_retry(RetryPolicy {
                    attempts: 1,
                    ..RetryPolicy::default()
                });
                tokio::time::timeout(SAVED_IDENTITY_WAIT, once.get_operator(&id))
                    .await
                    .unwrap_or(Err(ApiError::Timeout(SAVED_IDENTITY_WAIT)))
            } else {
                api.get_operator(&id).await
            };
            match lookup {
                Ok(op) => return Self::resume(api, store, settings, &node_id, op).await,
                Err(e) if e.is_not_found() => {
                    tracing::warn!(
                        operator_id = %id,
                        "the saved ngrok operator no longer exists; registering again"
                    );
                }
                Err(e) => {
                    // Down, slow, or refusing the key: a saved identity still dials the
                    // ingress, so start with it; discovery and renewal retry in the background.
                    if let Some(creds) = fallback {
                        tracing::warn!(
                            operator_id = %id,
                            valid_until = %rfc3339(creds.not_after),
                            "the ngrok API could not be asked ({e}); starting with the saved client certificate"
                        );
                        return Ok(creds);
                    }
                    return Err(api_failed(format!("look up saved operator {id}"))(e));
                }
            }
        }

        let operators = api.list_operators().await.map_err(api_failed(
            "list operators to find this host's registration",
        ))?;
        let mut mine: Vec<&Operator> = operators
            .iter()
            .filter(|op| is_ours(op, settings, &node_id))
            .collect();
        // Newest first; RFC 3339 timestamps in one format sort as text.
        mine.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        if let Some(op) = mine.first() {
            if mine.len() > 1 {
                let others: Vec<&str> = mine[1..].iter().map(|o| o.id.as_str()).collect();
                tracing::warn!(
                    adopted = %op.id,
                    others = ?others,
                    "several ngrok operators belong to this host; delete the others if unused"
                );
            }
            tracing::info!(operator_id = %op.id, "adopting this host's existing ngrok operator");
            return Self::reissue(api, store, settings, &node_id, &op.id).await;
        }

        let key = certificate::new_key(settings.key_type).map_err(IdentityError::Key)?;
        let csr = certificate::csr_for(&key).map_err(IdentityError::Key)?;
        let create = OperatorCreate {
            description: settings.description.clone(),
            metadata: metadata_for(settings, &node_id),
            enabled_features: vec!["bindings".into()],
            region: "global".into(),
            deployment: DeploymentCreate {
                name: settings.deployment_name.clone(),
                namespace: settings.deployment_namespace.clone(),
                version: VERSION.into(),
                cluster_name: String::new(),
            },
            binding: Some(BindingCreate {
                endpoint_selectors: settings.endpoint_selectors.clone(),
                csr,
                ingress_endpoint: None,
            }),
        };
        let op = api
            .create_operator(&create)
            .await
            .map_err(api_failed("register with ngrok"))?;
        tracing::info!(operator_id = %op.id, "registered with ngrok as a new operator");
        Self::finish(store, settings, op, Secret::new(key.serialize_pem()))
    }

    /// Forces a new key and certificate for the saved operator.
    pub async fn renew(
        api: &ApiClient,
        store: &StateStore,
        settings: &RegistrationSettings,
    ) -> Result<Credentials, IdentityError> {
        let saved = store
            .load_operator()?
            .ok_or_else(|| IdentityError::NotRegistered(store.operator_path()))?;
        let node_id = store.node_id()?;
        Self::reissue(api, store, settings, &node_id, &saved.operator_id).await
    }

    /// Renews when `current` is due (see [`CertInfo::renew_at`]) or unparsable.
    pub async fn renew_if_due(
        api: &ApiClient,
        store: &StateStore,
        settings: &RegistrationSettings,
        current: &Credentials,
    ) -> Result<Option<Credentials>, IdentityError> {
        if !current.renewal_due(settings.renew_before, OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        Self::renew(api, store, settings).await.map(Some)
    }

    /// Whether a certificate should be renewed at `now`: less than `renew_before` (at most
    /// half its lifetime) remains, or it cannot be parsed.
    pub fn renewal_due(cert_pem: &str, renew_before: Duration, now: OffsetDateTime) -> bool {
        match certificate::inspect(cert_pem) {
            Ok(info) => now >= info.renew_at(renew_before),
            Err(_) => true,
        }
    }

    /// The saved credentials, without calling the API. `None` when not registered.
    pub fn saved(
        store: &StateStore,
    ) -> Result<Option<(SavedOperator, Option<CertInfo>)>, IdentityError> {
        let Some(saved) = store.load_operator()? else {
            return Ok(None);
        };
        let info = match store.load_credentials()? {
            Some((cert, _key)) => certificate::inspect(&cert).ok(),
            None => None,
        };
        Ok(Some((saved, info)))
    }

    /// Deletes the saved operator from the API (which invalidates its certificate) and removes
    /// the local registration files.
    pub async fn deregister(
        api: &ApiClient,
        store: &StateStore,
    ) -> Result<Deregistered, IdentityError> {
        let saved = store
            .load_operator()?
            .ok_or_else(|| IdentityError::NotRegistered(store.operator_path()))?;
        let id = saved.operator_id;
        let already_gone = match api.delete_operator(&id).await {
            Ok(()) => false,
            Err(e) if e.is_not_found() => true,
            Err(e) => return Err(api_failed(format!("delete operator {id}"))(e)),
        };
        let removed_files = store.remove_registration()?;
        Ok(Deregistered {
            operator_id: id,
            already_gone,
            removed_files,
        })
    }

    /// The saved credentials, when they can dial the ingress without the API: key and
    /// certificate match, the certificate has not expired, and they were issued by the API
    /// configured now.
    fn offline(
        store: &StateStore,
        settings: &RegistrationSettings,
        saved: &SavedOperator,
    ) -> Option<Credentials> {
        if saved.api_url.is_some() && saved.api_url != settings.api_url {
            return None;
        }
        let (cert_pem, key) = store.load_credentials().ok()??;
        certificate::certified_key(&cert_pem, &key).ok()?;
        let info = certificate::inspect(&cert_pem).ok()?;
        if OffsetDateTime::now_utc() >= info.not_after || saved.ingress_endpoint.is_empty() {
            return None;
        }
        Some(Credentials {
            operator_id: saved.operator_id.clone(),
            ingress_endpoint: saved.ingress_endpoint.clone(),
            cert_pem,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// The saved operator exists: reuse the saved certificate when usable, else get a new one.
    async fn resume(
        api: &ApiClient,
        store: &StateStore,
        settings: &RegistrationSettings,
        node_id: &str,
        op: Operator,
    ) -> Result<Credentials, IdentityError> {
        if let Some(other) = metadata_node_id(&op.metadata).filter(|n| n != node_id) {
            // Likely a copied state directory: two hosts sharing one registration would take
            // turns replacing each other's certificate.
            tracing::warn!(
                operator_id = %op.id,
                registered_by = %other,
                this_node = %node_id,
                "the saved ngrok operator was registered by another node; was the state directory copied?"
            );
        }
        let Some((cert_pem, key)) = store.load_credentials()? else {
            tracing::info!(operator_id = %op.id, "no saved client certificate; requesting one");
            return Self::reissue(api, store, settings, node_id, &op.id).await;
        };
        let usable = certificate::certified_key(&cert_pem, &key).and_then(|_| {
            let info = certificate::inspect(&cert_pem)?;
            if OffsetDateTime::now_utc() >= info.not_after {
                return Err(format!("it expired at {}", rfc3339(info.not_after)));
            }
            Ok(info)
        });
        let info = match usable {
            Ok(info) => info,
            Err(reason) => {
                tracing::warn!(operator_id = %op.id, "the saved client certificate is unusable ({reason}); requesting a new one");
                return Self::reissue(api, store, settings, node_id, &op.id).await;
            }
        };
        let op = if needs_sync(&op, settings, node_id) {
            tracing::info!(operator_id = %op.id, "updating the ngrok operator to match the config");
            let update = update_for(settings, node_id, None);
            api.update_operator(&op.id, &update)
                .await
                .map_err(api_failed(format!("update operator {}", op.id)))?
        } else {
            op
        };
        let ingress_endpoint = ingress_of(&op);
        let saved = SavedOperator {
            operator_id: op.id.clone(),
            ingress_endpoint: ingress_endpoint.clone(),
            not_after: Some(rfc3339(info.not_after)),
            api_url: settings.api_url.clone(),
        };
        if store.load_operator()?.as_ref() != Some(&saved) {
            store.save_operator(&saved)?;
        }
        Ok(Credentials {
            operator_id: op.id,
            ingress_endpoint,
            cert_pem,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// A new key and CSR for operator `id` via PATCH (also bringing its settings up to date).
    async fn reissue(
        api: &ApiClient,
        store: &StateStore,
        settings: &RegistrationSettings,
        node_id: &str,
        id: &str,
    ) -> Result<Credentials, IdentityError> {
        let key = certificate::new_key(settings.key_type).map_err(IdentityError::Key)?;
        let csr = certificate::csr_for(&key).map_err(IdentityError::Key)?;
        let op = api
            .update_operator(id, &update_for(settings, node_id, Some(csr)))
            .await
            .map_err(api_failed(format!(
                "request a new certificate for operator {id}"
            )))?;
        Self::finish(store, settings, op, Secret::new(key.serialize_pem()))
    }

    /// Checks the issued certificate against our key, then stores key, cert and operator.
    fn finish(
        store: &StateStore,
        settings: &RegistrationSettings,
        op: Operator,
        key: Secret,
    ) -> Result<Credentials, IdentityError> {
        let bad = |reason: String| IdentityError::IssuedCertificate {
            operator_id: op.id.clone(),
            reason,
        };
        let cert_pem = op
            .binding
            .as_ref()
            .and_then(|b| b.cert.as_ref())
            .map(|c| c.cert.clone())
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| bad("the answer holds no certificate".into()))?;
        certificate::certified_key(&cert_pem, &key).map_err(bad)?;
        let info = certificate::inspect(&cert_pem).map_err(bad)?;
        let ingress_endpoint = ingress_of(&op);
        store.save_credentials(&cert_pem, &key)?;
        store.save_operator(&SavedOperator {
            operator_id: op.id.clone(),
            ingress_endpoint: ingress_endpoint.clone(),
            not_after: Some(rfc3339(info.not_after)),
            api_url: settings.api_url.clone(),
        })?;
        Ok(Credentials {
            operator_id: op.id,
            ingress_endpoint,
            cert_pem,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// The operator's `metadata`: JSON naming this host.
pub fn metadata(node_id: &str) -> String {
    serde_json::json!({"bindgate": {"node_id": node_id, "version": VERSION}}).to_string()
}

/// The operator's `metadata` for these settings: with a `fleet`, also the fleet's name and a
/// heartbeat (now).
pub fn metadata_for(settings: &RegistrationSettings, node_id: &str) -> String {
    match &settings.fleet {
        None => metadata(node_id),
        Some(fleet) => serde_json::json!({"bindgate": {
            "node_id": node_id,
            "version": VERSION,
            "fleet": fleet,
            "heartbeat": rfc3339(OffsetDateTime::now_utc()),
        }})
        .to_string(),
    }
}

/// The metadata without its heartbeat, to compare what the config decides.
fn without_heartbeat(metadata: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(metadata).ok()?;
    if let Some(b) = v.get_mut("bindgate").and_then(|b| b.as_object_mut()) {
        b.remove("heartbeat");
    }
    Some(v)
}

/// The fleet an operator's metadata names, if any.
pub fn metadata_fleet(metadata: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(metadata).ok()?;
    v.get("bindgate")?.get("fleet")?.as_str().map(str::to_owned)
}

pub(crate) fn metadata_node_id(metadata: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(metadata).ok()?;
    v.get("bindgate")?
        .get("node_id")?
        .as_str()
        .map(str::to_owned)
}

fn is_ours(op: &Operator, settings: &RegistrationSettings, node_id: &str) -> bool {
    let Some(d) = &op.deployment else {
        return false;
    };
    d.name == settings.deployment_name
        && d.namespace == settings.deployment_namespace
        && metadata_node_id(&op.metadata).as_deref() == Some(node_id)
        && metadata_fleet(&op.metadata) == settings.fleet
}

/// Whether the operator's mutable settings differ from what the config says.
fn needs_sync(op: &Operator, settings: &RegistrationSettings, node_id: &str) -> bool {
    let selectors = op
        .binding
        .as_ref()
        .map(|b| b.endpoint_selectors.as_slice())
        .unwrap_or_default();
    let version = op.deployment.as_ref().map(|d| d.version.as_str());
    op.description != settings.description
        || selectors != settings.endpoint_selectors.as_slice()
        || without_heartbeat(&op.metadata) != without_heartbeat(&metadata_for(settings, node_id))
        || version != Some(VERSION)
}

fn update_for(
    settings: &RegistrationSettings,
    node_id: &str,
    csr: Option<String>,
) -> OperatorUpdate {
    OperatorUpdate {
        description: Some(settings.description.clone()),
        metadata: Some(metadata_for(settings, node_id)),
        deployment: Some(DeploymentUpdate {
            name: Some(settings.deployment_name.clone()),
            version: Some(VERSION.into()),
            cluster_name: None,
        }),
        binding: Some(BindingUpdate {
            endpoint_selectors: Some(settings.endpoint_selectors.clone()),
            csr,
            ingress_endpoint: None,
        }),
        ..Default::default()
    }
}

pub(crate) fn ingress_of(op: &Operator) -> String {
    let raw = op
        .binding
        .as_ref()
        .map(|b| b.ingress_endpoint.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_INGRESS_ENDPOINT);
    with_default_port(raw)
}

/// `host` → `host:443`; `host:port`, `[v6]:port` unchanged; `[v6]` → `[v6]:443`.
pub fn with_default_port(addr: &str) -> String {
    let has_port = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':'))
    } else {
        matches!(addr.rsplit_once(':'), Some((host, port)) if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    };
    if has_port {
        addr.to_owned()
    } else {
        format!("{addr}:443")
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_gets_a_default_port() {
        assert_eq!(with_default_port("ing.ngrok.io"), "ing.ngrok.io:443");
        assert_eq!(with_default_port("ing.ngrok.io:8443"), "ing.ngrok.io:8443");
        assert_eq!(with_default_port("[::1]"), "[::1]:443");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
        assert_eq!(with_default_port("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn namespace_comes_from_the_short_hostname() {
        assert_eq!(namespace_from_hostname("GW_1.example.com\n"), "gw-1");
        assert_eq!(namespace_from_hostname("-edge-"), "edge");
        assert_eq!(namespace_from_hostname(""), "default");
        assert_eq!(namespace_from_hostname(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn metadata_names_the_node() {
        let m = metadata("abc");
        assert_eq!(metadata_node_id(&m).as_deref(), Some("abc"));
        assert_eq!(metadata_node_id("not json"), None);
        assert_eq!(metadata_node_id(r#"{"bindgate":{}}"#), None);
    }
}
