//! `ngrok:` how to reach the ngrok API and how this host registers with it.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::HumanDuration;
use crate::secret::Secret;

/// The ngrok API: provisioning (registration, client certificate) and discovery.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NgrokConfig {
    /// Base URL of the ngrok API (the sandbox and tests point it elsewhere). Plain `http://` is
    /// accepted only for loopback addresses, so the API key never crosses a network in clear.
    #[serde(default = "default_api_url", deserialize_with = "deserialize_api_url")]
    pub api_url: String,
    /// ngrok API key, sent as a bearer token. Write it as `${NGROK_API_KEY}`; it is shown as
    /// `<redacted>` in dumps and never logged.
    pub api_key: Secret,
    /// Extra CA certificate(s) (PEM file or directory) trusted for the API's TLS, in addition to
    /// the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ca: Option<PathBuf>,
    /// Bound on one API request (connect, send, receive); failed requests are retried with
    /// backoff.
    #[serde(default = "default_api_timeout")]
    pub api_timeout: HumanDuration,
    /// How this host registers as a Kubernetes operator to obtain its client certificate
    /// (also what `bindgate identity issue` uses to write a shared identity).
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// Instead of registering: read the operator id and client certificate (`operator_id`,
    /// `tls.crt`, `tls.key`, optionally `ingress_endpoint`) from this directory, as written by
    /// `bindgate identity issue`. It may be read-only (a Kubernetes Secret mount); rotations are
    /// followed without dropping connections, and nothing is ever written to the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_dir: Option<PathBuf>,
}

/// Registration of this host with the ngrok API (as ngrok's Kubernetes operator does).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Description of the operator registration shown in the ngrok dashboard (at most 255
    /// bytes).
    #[serde(
        default = "default_description",
        deserialize_with = "deserialize_description"
    )]
    pub description: String,
    /// Key algorithm for the client certificate. `ecdsa_p256` is cheaper per handshake.
    #[serde(default)]
    pub key_type: KeyType,
    /// Renew the client certificate when less than this much validity remains.
    #[serde(default = "default_renew_before")]
    pub renew_before: HumanDuration,
    /// CEL selectors over `endpoint.*` choosing which Kubernetes-bound endpoints this
    /// registration is bound to (`"true"` selects all).
    #[serde(default = "default_endpoint_selectors")]
    pub endpoint_selectors: Vec<String>,
    /// `deployment.name` of the registration; with the namespace and this host's node id it is
    /// how a restarted bindgate finds its existing registration instead of creating another.
    #[serde(default = "default_deployment_name")]
    pub deployment_name: String,
    /// `deployment.namespace` of the registration. Default: derived from the host name, or
    /// `default` when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_namespace: Option<String>,
    /// Labels the operator as a member of this fleet (in its `metadata`, with a heartbeat
    /// written every `heartbeat_interval`), so that members which stop without deregistering
    /// are reaped by their peers (`reap_after`). Adoption, renewal and reaping never touch an
    /// operator outside the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Delete this host's operator on a clean stop (SIGTERM/SIGINT): for ephemeral hosts.
    #[serde(default)]
    pub deregister_on_shutdown: bool,
    /// With `fleet`: delete fleet members not written (heartbeat) for this long, measured in the
    /// API's clock (`updated_at`), on start and at every heartbeat after (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reap_after: Option<HumanDuration>,
    /// With `fleet`: how often the heartbeat in the operator's metadata is written (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<HumanDuration>,
}

/// Default `reap_after` of a fleet member.
pub const DEFAULT_REAP_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
/// Default `heartbeat_interval` of a fleet member.
pub const DEFAULT_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            description: default_description(),
            key_type: KeyType::default(),
            renew_before: default_renew_before(),
            endpoint_selectors: default_endpoint_selectors(),
            deployment_name: default_deployment_name(),
            deployment_namespace: None,
            fleet: None,
            deregister_on_shutdown: false,
            reap_after: None,
            heartbeat_interval: None,
        }
    }
}

/// Key algorithm of the client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// ECDSA over P-256 with SHA-256 (what ngrok's operator uses).
    #[default]
    EcdsaP256,
    /// ECDSA over P-384 with SHA-384 (what ngrokd uses; about 3x the handshake CPU).
    EcdsaP384,
}

impl KeyType {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa_p256",
            KeyType::EcdsaP384 => "ecdsa_p384",
        }
    }
}

/// ngrok's limit on an operator's description.
pub const MAX_DESCRIPTION_BYTES: usize = 255;

fn default_api_url() -> String {
    "https://api.ngrok.com".into()
}

fn default_api_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_description() -> String {
    "bindgate".into()
}

fn default_renew_before() -> HumanDuration {
    HumanDuration::from_secs(30 * 86_400)
}

fn default_endpoint_selectors() -> Vec<String> {
    vec!["true".into()]
}

fn default_deployment_name() -> String {
    "bindgate".into()
}

fn deserialize_description<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() > MAX_DESCRIPTION_BYTES {
        return Err(serde::de::Error::custom(format!(
            "description is {} bytes; ngrok allows at most {MAX_DESCRIPTION_BYTES}",
            s.len()
        )));
    }
    Ok(s)
}

fn deserialize_api_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !(s.starts_with("https://") || s.starts_with("http://")) {
        return Err(serde::de::Error::custom(format!(
            "invalid API URL `{s}`: expected `https://host[:port][/path]`"
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use crate::config::{KeyType, parse};
    use std::path::PathBuf;

    fn load(text: &str) -> Result<crate::config::LoadedConfig, crate::config::ConfigErrors> {
        parse(text, "t.yaml", PathBuf::from("/tmp"), |k| {
            (k == "NGROK_API_KEY").then(|| "key-from-env".to_owned())
        })
    }

    #[test]
    fn defaults_and_redaction() {
        let cfg = load("version: 1\nngrok:\n  api_key: ${NGROK_API_KEY}\n")
            .unwrap()
            .config;
        let ngrok = cfg.ngrok.clone().unwrap();
        assert_eq!(ngrok.api_url, "https://api.ngrok.com");
        assert_eq!(ngrok.api_key.expose(), "key-from-env");
        assert_eq!(ngrok.api_ca, None);
        let r = &ngrok.registration;
        assert_eq!(r.description, "bindgate");
        assert_eq!(r.key_type, KeyType::EcdsaP256);
        assert_eq!(r.renew_before.get().as_secs(), 30 * 86_400);
        assert_eq!(r.endpoint_selectors, vec!["true".to_owned()]);
        assert_eq!(r.deployment_name, "bindgate");
        assert_eq!(r.deployment_namespace, None);
        let dumped = serde_json::to_string(&cfg).unwrap();
        assert!(!dumped.contains("key-from-env"), "{dumped}");
        assert!(dumped.contains("\"api_key\":\"<redacted>\""), "{dumped}");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("key-from-env"), "{debug}");
    }

    #[test]
    fn full_section_parses() {
        let cfg = load(
            "version: 1\nngrok:\n  api_url: http://127.0.0.1:4040\n  api_key: k\n  api_ca: /etc/ca.pem\n  api_timeout: 5s\n  registration:\n    description: \"bindgate gw-1\"\n    key_type: ecdsa_p384\n    renew_before: 10d\n    endpoint_selectors: [\"endpoint.host == 'a'\"]\n    deployment_name: gw\n    deployment_namespace: edge\n",
        )
        .unwrap()
        .config;
        let ngrok = cfg.ngrok.unwrap();
        assert_eq!(ngrok.api_url, "http://127.0.0.1:4040");
        assert_eq!(ngrok.api_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(ngrok.api_timeout.get().as_secs(), 5);
        let r = ngrok.registration;
        assert_eq!(r.description, "bindgate gw-1");
        assert_eq!(r.key_type, KeyType::EcdsaP384);
        assert_eq!(r.renew_before.get().as_secs(), 10 * 86_400);
        assert_eq!(
            r.endpoint_selectors,
            vec!["endpoint.host == 'a'".to_owned()]
        );
        assert_eq!(r.deployment_name, "gw");
        assert_eq!(r.deployment_namespace.as_deref(), Some("edge"));
    }

    #[test]
    fn long_description_is_located() {
        let long = "x".repeat(256);
        let err = load(&format!(
            "version: 1\nngrok:\n  api_key: k\n  registration:\n    description: {long}\n"
        ))
        .unwrap_err();
        let e = &err.errors[0];
        assert_eq!(e.path, "ngrok.registration.description");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.message
                .contains("description is 256 bytes; ngrok allows at most 255"),
            "{e}"
        );
        assert!(
            load(&format!(
                "version: 1\nngrok:\n  api_key: k\n  registration:\n    description: {}\n",
                "x".repeat(255)
            ))
            .is_ok()
        );
    }

    #[test]
    fn unknown_key_type_and_field_are_errors() {
        let err = load("version: 1\nngrok:\n  api_key: k\n  registration:\n    key_type: rsa\n")
            .unwrap_err();
        assert_eq!(err.errors[0].path, "ngrok.registration.key_type");
        assert!(err.errors[0].message.contains("rsa"), "{}", err.errors[0]);
        let err = load("version: 1\nngrok:\n  api_key: k\n  apikey: x\n").unwrap_err();
        assert!(
            err.errors[0].message.contains("unknown field `apikey`"),
            "{}",
            err.errors[0]
        );
        let err = load("version: 1\nngrok:\n  api_key: k\n  api_url: ftp://x\n").unwrap_err();
        assert_eq!(err.errors[0].path, "ngrok.api_url");
    }
}
