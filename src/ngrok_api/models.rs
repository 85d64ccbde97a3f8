//! The API's JSON objects (PROTOCOL.md §3). Reads are lenient (unknown fields ignored, missing
//! ones defaulted) because ngrok adds fields; writes send only what we mean to set.

use serde::{Deserialize, Deserializer, Serialize};

/// A `kubernetes_operators` resource: one registration, here one bindgate host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Operator {
    pub id: String,
    pub uri: String,
    pub created_at: String,
    pub updated_at: String,
    pub description: String,
    /// Free-form string; JSON by convention (bindgate writes `{"bindgate":{"node_id":..}}`).
    pub metadata: String,
    #[serde(deserialize_with = "null_as_default")]
    pub enabled_features: Vec<String>,
    pub region: String,
    pub deployment: Option<OperatorDeployment>,
    pub binding: Option<OperatorBinding>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct OperatorDeployment {
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub cluster_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct OperatorBinding {
    #[serde(deserialize_with = "null_as_default")]
    pub endpoint_selectors: Vec<String>,
    pub ingress_endpoint: String,
    pub cert: Option<OperatorCert>,
}

/// The client certificate ngrok issued for the binding CSR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct OperatorCert {
    /// PEM; the leaf first.
    pub cert: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
}

/// Body of `POST /kubernetes_operators`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperatorCreate {
    pub description: String,
    pub metadata: String,
    pub enabled_features: Vec<String>,
    pub region: String,
    pub deployment: DeploymentCreate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingCreate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeploymentCreate {
    pub name: String,
    pub namespace: String,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingCreate {
    pub endpoint_selectors: Vec<String>,
    /// PEM certificate signing request (public data: it holds the public key only).
    pub csr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_endpoint: Option<String>,
}

/// Body of `PATCH /kubernetes_operators/{id}`: only the fields that are set are changed.
/// A new `binding.csr` renews the certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperatorUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled_features: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentUpdate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingUpdate>,
}

/// `deployment` in an update: the namespace cannot change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeploymentUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BindingUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_selectors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_endpoint: Option<String>,
}

/// An endpoint as listed by `bound_endpoints`. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Endpoint {
    pub id: Option<String>,
    pub region: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub url: Option<String>,
    /// Deprecated twin of `url`.
    pub public_url: Option<String>,
    pub proto: Option<String>,
    pub scheme: Option<String>,
    pub hostport: Option<String>,
    pub host: Option<String>,
    pub port: Option<u64>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub metadata: Option<String>,
    pub description: Option<String>,
    pub bindings: Option<Vec<String>>,
    pub name: Option<String>,
    pub uri: Option<String>,
    pub upstream_url: Option<String>,
    pub traffic_policy: Option<String>,
    pub pooling_enabled: Option<bool>,
}

/// One page of a list response.
pub(crate) trait Page: serde::de::DeserializeOwned {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, Option<String>);
}

#[derive(Deserialize)]
pub(crate) struct OperatorPage {
    #[serde(default, deserialize_with = "null_as_default")]
    operators: Vec<Operator>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

impl Page for OperatorPage {
    type Item = Operator;
    fn into_parts(self) -> (Vec<Operator>, Option<String>) {
        (self.operators, self.next_page_uri)
    }
}

#[derive(Deserialize)]
pub(crate) struct EndpointPage {
    #[serde(default, deserialize_with = "null_as_default")]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

impl Page for EndpointPage {
    type Item = Endpoint;
    fn into_parts(self) -> (Vec<Endpoint>, Option<String>) {
        (self.endpoints, self.next_page_uri)
    }
}

/// ngrok's error body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody {
    pub error_code: String,
    pub msg: String,
    pub details: ErrorDetails,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorDetails {
    pub operation_id: String,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_reads_leniently() {
        let op: Operator = serde_json::from_str(
            r#"{"id":"k8sop_1","uri":"u","description":"d","metadata":"{}","enabled_features":null,
               "region":"global","new_field":{"x":1},
               "deployment":{"name":"bindgate","namespace":"ns","version":"0.1.0","cluster_name":""},
               "binding":{"endpoint_selectors":["true"],"ingress_endpoint":"ing:443",
                          "cert":{"cert":"PEM","not_before":"2026-01-01T00:00:00Z","not_after":"2026-04-01T00:00:00Z"}}}"#,
        )
        .unwrap();
        assert_eq!(op.id, "k8sop_1");
        assert_eq!(op.enabled_features, Vec::<String>::new());
        assert_eq!(op.deployment.as_ref().unwrap().namespace, "ns");
        let binding = op.binding.unwrap();
        assert_eq!(binding.ingress_endpoint, "ing:443");
        assert_eq!(binding.cert.unwrap().not_after, "2026-04-01T00:00:00Z");
    }

    #[test]
    fn endpoint_type_field_and_unknowns() {
        let ep: Endpoint = serde_json::from_str(
            r#"{"id":"ep_1","url":"http://svc.ns","type":"cloud","port":80,"principal":{"id":"x"}}"#,
        )
        .unwrap();
        assert_eq!(ep.kind.as_deref(), Some("cloud"));
        assert_eq!(ep.port, Some(80));
        assert_eq!(ep.proto, None);
    }

    #[test]
    fn update_sends_only_what_is_set() {
        let u = OperatorUpdate {
            binding: Some(BindingUpdate {
                csr: Some("CSR".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"binding":{"csr":"CSR"}}"#
        );
    }
}
