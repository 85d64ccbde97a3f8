//! The sandbox's emulated ngrok API over real HTTPS: auth and version headers, the operator
//! lifecycle, pagination, bound endpoints, runtime endpoint changes and API faults. The client
//! here is hyper + tokio-rustls, one connection per request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bindgate_sandbox::endpoints::{EndpointUrl, endpoint_id};
use bindgate_sandbox::{Sandbox, SandboxConfig};
use bindgate_wire::{self as wire, ConnRequest, ConnResponse};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

const KEY: &str = "sandbox-key-1";
/// Guards against hangs only; no assertion depends on it.
const GUARD: Duration = Duration::from_secs(20);

struct Fixture {
    sandbox: Sandbox,
    /// Holds the state directory for the test's life.
    _dir: tempfile::TempDir,
    api: ApiClient,
}

impl Fixture {
    async fn start(api_extra: &str, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {}\napi:\n  api_keys: [{KEY}, other-key]\n  cert_lifetime: 1h\n{api_extra}{extra}",
            dir.path().join("state").display()
        );
        let sandbox = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
            .await
            .unwrap();
        let api = ApiClient::new(&sandbox);
        Fixture {
            sandbox,
            _dir: dir,
            api,
        }
    }
}

const ENDPOINTS: &str = "endpoints:
  - { url: 'tcp://echo.demo:7000', target: echo }
  - { url: 'http://web.demo', target: http }
  - { url: 'tls://secure.demo', target: echo }
";

fn tls_client(ca: &Path, identity: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(std::fs::read(ca).unwrap()).unwrap() {
        roots.add(block.into_contents().into()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(bindgate_sandbox::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match identity {
        Some((cert_pem, key_pem)) => {
            let certs = pem::parse_many(cert_pem)
                .unwrap()
                .into_iter()
                .map(|b| rustls::pki_types::CertificateDer::from(b.into_contents()))
                .collect();
            let key = bindgate_sandbox::tls::parse_private_key(key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

struct ApiClient {
    base: String,
    addr: SocketAddr,
    connector: TlsConnector,
}

impl ApiClient {
    fn new(sandbox: &Sandbox) -> Self {
        let base = sandbox.api_url().unwrap();
        ApiClient {
            addr: base.trim_start_matches("https://").parse().unwrap(),
            base,
            connector: tls_client(&sandbox.ca_pem_path(), None),
        }
    }

    /// An authorised API call; `target` is a path or a full URL this API returned.
    async fn call(&self, method: Method, target: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(
            method,
            target,
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("ngrok-version", "2"),
            ],
            body.map(|b| b.to_string()),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.send_raw(method, target, headers, body).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    /// The answer's status and body bytes, parsed as nothing.
    async fn call_raw(&self, method: Method, target: &str) -> (StatusCode, Bytes) {
        let auth = format!("Bearer {KEY}");
        let headers = [("authorization", auth.as_str()), ("ngrok-version", "2")];
        self.send_raw(method, target, &headers, None).await
    }

    async fn send_raw(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, Bytes) {
        let path = match target.strip_prefix(&self.base) {
            Some(path) => path.to_string(),
            None => {
                assert!(target.starts_with('/'), "{target} is not on {}", self.base);
                target.to_string()
            }
        };
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        // The certificate carries the bound IP, so the URL's IP verifies as is.
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        let tls = self.connector.connect(name, tcp).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = timeout(GUARD, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes)
    }
}

/// A P-256 key and a CSR with an empty subject, as ngrok's operator makes them.
fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key.serialize_pem())
}

fn create_body(csr: &str) -> Value {
    json!({
        "description": "bindgate gw-1",
        "metadata": "{\"owner\":\"bindgate\"}",
        "enabled_features": ["bindings"],
        "region": "global",
        "deployment": { "name": "gw-1", "namespace": "hosts", "version": "0.1.0", "cluster_name": "none" },
        "binding": { "endpoint_selectors": ["true"], "csr": csr },
    })
}

fn assert_ngrok_error(body: &Value, status: StatusCode, code: &str) {
    assert_eq!(body["error_code"], code, "{body}");
    assert_eq!(body["status_code"], status.as_u16(), "{body}");
    assert!(
        body["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let op = body["details"]["operation_id"].as_str().unwrap_or_default();
    assert!(op.starts_with("op_") && op.len() > 3, "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(4), "{body}");
}

fn dns_sans(cert_pem: &str) -> Vec<String> {
    let block = pem::parse(cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

fn rfc3339(text: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        text.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Upgrades through the ingress with the given client identity; returns the answer and the
/// stream.
async fn upgrade(
    sandbox: &Sandbox,
    connector: &TlsConnector,
    host: &str,
    port: i64,
) -> (ConnResponse, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(sandbox.ingress_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = ConnRequest {
        host: host.into(),
        port,
        pod_identity: None,
    };
    wire::write_frame(&mut tls, &request).await.unwrap();
    let response = timeout(GUARD, wire::read_frame(&mut tls))
        .await
        .unwrap()
        .unwrap();
    (response, tls)
}

#[tokio::test]
async fn authentication_failures_answer_ngrok_error_json() {
    let f = Fixture::start("", "").await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("ngrok-version", "2")], "ERR_NGROK_200"),
        (
            &[("authorization", "Basic abc"), ("ngrok-version", "2")],
            "ERR_NGROK_201",
        ),
        (
            &[("authorization", "Bearer "), ("ngrok-version", "2")],
            "ERR_NGROK_201",
        ),
        (
            &[
                ("authorization", "Bearer wrong-key"),
                ("ngrok-version", "2"),
            ],
            "ERR_NGROK_203",
        ),
    ];
    for (headers, code) in cases {
        let (status, body) = f
            .api
            .send(Method::GET, "/kubernetes_operators", headers, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
        assert_ngrok_error(&body, StatusCode::UNAUTHORIZED, code);
        assert!(
            !body.to_string().contains("wrong-key"),
            "the key is never echoed: {body}"
        );
    }
    // Admin routes need the key as well.
    let (status, _) = f.api.send(Method::GET, "/sandbox/stats", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Any configured key works.
    let (status, _) = f
        .api
        .send(
            Method::GET,
            "/kubernetes_operators",
            &[
                ("authorization", "Bearer other-key"),
                ("ngrok-version", "2"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_ngrok_version_header_is_required() {
    let f = Fixture::start("", "").await;
    let auth = format!("Bearer {KEY}");
    let (status, body) = f
        .api
        .send(
            Method::GET,
            "/kubernetes_operators",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_ngrok_error(&body, StatusCode::BAD_REQUEST, "ERR_NGROK_218");
    let (status, body) = f
        .api
        .send(
            Method::GET,
            "/kubernetes_operators",
            &[("authorization", &auth), ("ngrok-version", "1")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_ngrok_error(&body, StatusCode::BAD_REQUEST, "ERR_NGROK_217");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_registered_operator_certificate_opens_the_ingress() {
    let f = Fixture::start("", ENDPOINTS).await;
    let (csr, key) = csr();
    let (status, operator) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{operator}");
    let id = operator["id"].as_str().unwrap();
    assert!(id.starts_with("k8sop_"), "{id}");
    assert_eq!(
        operator["uri"],
        format!("{}/kubernetes_operators/{id}", f.api.base)
    );
    assert_eq!(operator["description"], "bindgate gw-1");
    assert_eq!(operator["metadata"], "{\"owner\":\"bindgate\"}");
    assert_eq!(operator["enabled_features"], json!(["bindings"]));
    assert_eq!(operator["region"], "global");
    assert_eq!(
        operator["deployment"],
        json!({ "name": "gw-1", "namespace": "hosts", "version": "0.1.0", "cluster_name": "none" })
    );
    assert_eq!(operator["created_at"], operator["updated_at"]);
    rfc3339(&operator["created_at"]);
    let binding = &operator["binding"];
    assert_eq!(binding["endpoint_selectors"], json!(["true"]));
    assert_eq!(
        binding["ingress_endpoint"],
        f.sandbox.ingress_addr().to_string()
    );
    let cert = binding["cert"]["cert"].as_str().unwrap();
    assert_eq!(dns_sans(cert), ["ac_sandbox"]);
    let lifetime = rfc3339(&binding["cert"]["not_after"]) - rfc3339(&binding["cert"]["not_before"]);
    assert_eq!(lifetime, time::Duration::hours(1));
    assert_eq!(f.sandbox.registrations(), 1);

    // The signed certificate with the CSR's key is an identity the ingress accepts.
    let connector = tls_client(&f.sandbox.ca_pem_path(), Some((cert, &key)));
    let (response, mut tls) = upgrade(&f.sandbox, &connector, "echo.demo", 7000).await;
    assert_eq!(response.failure(), None);
    tls.write_all(b"bound").await.unwrap();
    let mut echoed = [0u8; 5];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"bound");

    // GET returns the same object.
    let (status, fetched) = f
        .api
        .call(Method::GET, &format!("/kubernetes_operators/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, operator);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn patch_renews_the_certificate_and_delete_removes_the_operator() {
    let f = Fixture::start("", "").await;
    let (csr1, _) = csr();
    let (_, created) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr1)),
        )
        .await;
    let path = format!("/kubernetes_operators/{}", created["id"].as_str().unwrap());

    let (csr2, key2) = csr();
    let (status, patched) = f
        .api
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "description": "renewed", "deployment": { "version": "0.2.0" }, "binding": { "csr": csr2 } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["id"], created["id"]);
    assert_eq!(patched["description"], "renewed");
    assert_eq!(patched["deployment"]["version"], "0.2.0");
    assert_eq!(patched["deployment"]["namespace"], "hosts");
    assert_eq!(patched["created_at"], created["created_at"]);
    let new_cert = patched["binding"]["cert"]["cert"].as_str().unwrap();
    assert_ne!(
        new_cert,
        created["binding"]["cert"]["cert"].as_str().unwrap()
    );
    // The renewed certificate carries the new key.
    let block = pem::parse(new_cert).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    let key2 = rcgen::KeyPair::from_pem(&key2).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key2.public_key_raw()
    );
    assert_eq!(f.sandbox.registrations(), 1, "PATCH is not a registration");
    // Both are writes (reads are not): a process that must never write can be checked.
    let (_, _) = f.api.call(Method::GET, &path, None).await;
    let (_, stats) = f.api.call(Method::GET, "/sandbox/stats", None).await;
    assert_eq!(stats["operator_writes"], 2, "{stats}");

    // The update form has no deployment.namespace: a strict server refuses it.
    let (status, body) = f
        .api
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "deployment": { "namespace": "x" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_ngrok_error(&body, StatusCode::BAD_REQUEST, "ERR_NGROK_3411");

    let (status, body) = f.api.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = f.api.call(method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_ngrok_error(&body, StatusCode::NOT_FOUND, "ERR_NGROK_404");
    }
    let (status, body) = f
        .api
        .call(Method::PATCH, &path, Some(json!({ "description": "x" })))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ngrok_error(&body, StatusCode::NOT_FOUND, "ERR_NGROK_404");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn deleting_an_operator_invalidates_its_certificates_at_the_ingress() {
    let f = Fixture::start("", ENDPOINTS).await;
    let (csr1, key1) = csr();
    let (_, op) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr1)),
        )
        .await;
    let path = format!("/kubernetes_operators/{}", op["id"].as_str().unwrap());
    let first = tls_client(
        &f.sandbox.ca_pem_path(),
        Some((op["binding"]["cert"]["cert"].as_str().unwrap(), &key1)),
    );
    let (csr2, key2) = csr();
    let (_, renewed) = f
        .api
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "binding": { "csr": csr2 } })),
        )
        .await;
    let second = tls_client(
        &f.sandbox.ca_pem_path(),
        Some((renewed["binding"]["cert"]["cert"].as_str().unwrap(), &key2)),
    );
    // Renewal leaves the previous certificate valid: clients switch over without a gap.
    for client in [&first, &second] {
        let (response, _) = upgrade(&f.sandbox, client, "echo.demo", 7000).await;
        assert_eq!(response.failure(), None);
    }
    let (status, _) = f.api.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for client in [&first, &second] {
        let (response, _) = upgrade(&f.sandbox, client, "echo.demo", 7000).await;
        assert_eq!(
            response,
            ConnResponse::error(
                "ERR_NGROK_15010",
                "the kubernetes operator this client certificate was issued to no longer exists"
            )
        );
    }
    // A static client certificate belongs to no operator and keeps working.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = f.sandbox.issue_client_cert(dir.path()).unwrap();
    let static_client = tls_client(
        &f.sandbox.ca_pem_path(),
        Some((
            &std::fs::read_to_string(cert).unwrap(),
            &std::fs::read_to_string(key).unwrap(),
        )),
    );
    let (response, _) = upgrade(&f.sandbox, &static_client, "echo.demo", 7000).await;
    assert_eq!(response.failure(), None);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_advertised_ingress_endpoint_can_be_overridden() {
    let f = Fixture::start(
        "  ingress_endpoint: kubernetes-binding-ingress.sandbox.local:443\n",
        "",
    )
    .await;
    let (csr, _) = csr();
    let (_, op) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr)),
        )
        .await;
    assert_eq!(
        op["binding"]["ingress_endpoint"],
        "kubernetes-binding-ingress.sandbox.local:443"
    );
    f.sandbox.shutdown().await;
}

/// Follows `next_page_uri` from `first` to the end; returns every item's id and the page sizes.
async fn walk(api: &ApiClient, first: &str, items: &str) -> (Vec<String>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(target) = next {
        let (status, page) = api.call(Method::GET, &target, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let list = page[items].as_array().unwrap();
        sizes.push(list.len());
        ids.extend(list.iter().map(|o| o["id"].as_str().unwrap().to_string()));
        let uri = page["uri"].as_str().unwrap();
        assert_eq!(
            uri,
            format!("{}{}", api.base, first.split('?').next().unwrap())
        );
        next = page["next_page_uri"].as_str().map(str::to_string);
        assert!(sizes.len() < 20, "pagination does not end");
    }
    (ids, sizes)
}

#[tokio::test]
async fn operators_paginate_newest_first_until_next_page_uri_is_null() {
    let f = Fixture::start("", "").await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let (csr, _) = csr();
        let (status, op) = f
            .api
            .call(
                Method::POST,
                "/kubernetes_operators",
                Some(create_body(&csr)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        created.push(op["id"].as_str().unwrap().to_string());
    }
    let (ids, sizes) = walk(&f.api, "/kubernetes_operators?limit=2", "operators").await;
    assert_eq!(sizes, [2, 2, 1]);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids, newest_first);
    // One page holds everything: no cursor.
    let (_, page) = f.api.call(Method::GET, "/kubernetes_operators", None).await;
    assert_eq!(page["operators"].as_array().unwrap().len(), 5);
    assert_eq!(page["next_page_uri"], Value::Null);
    for bad in ["0", "101", "ten"] {
        let (status, body) = f
            .api
            .call(
                Method::GET,
                &format!("/kubernetes_operators?limit={bad}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_ngrok_error(&body, StatusCode::BAD_REQUEST, "ERR_NGROK_233");
    }
    assert_eq!(f.sandbox.registrations(), 5);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn bound_endpoints_list_the_configured_endpoints_in_pages() {
    // page_limit_max 2: a client asking for 100 still gets pages of 2 and must follow them.
    let f = Fixture::start("  page_limit_max: 2\n", ENDPOINTS).await;
    let (csr, _) = csr();
    let (_, op) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr)),
        )
        .await;
    let list = format!(
        "/kubernetes_operators/{}/bound_endpoints",
        op["id"].as_str().unwrap()
    );
    let (ids, sizes) = walk(&f.api, &format!("{list}?limit=100"), "endpoints").await;
    assert_eq!(sizes, [2, 1]);
    let mut expected: Vec<String> = [
        "tcp://echo.demo:7000",
        "http://web.demo:80",
        "tls://secure.demo:443",
    ]
    .iter()
    .map(|u| endpoint_id(&u.parse::<EndpointUrl>().unwrap()))
    .collect();
    expected.sort();
    expected.reverse();
    assert_eq!(ids, expected);

    let (_, page) = f
        .api
        .call(Method::GET, &format!("{list}?limit=100"), None)
        .await;
    let web = page["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            f.api
                .call(Method::GET, page["next_page_uri"].as_str().unwrap(), None)
                .await
                .1["endpoints"]
                .as_array()
                .unwrap(),
        )
        .find(|e| e["url"] == "http://web.demo:80")
        .cloned()
        .unwrap();
    let id = endpoint_id(&"http://web.demo:80".parse::<EndpointUrl>().unwrap());
    let created = web["created_at"].clone();
    rfc3339(&created);
    assert_eq!(
        web,
        json!({
            "id": id,
            "region": "global",
            "created_at": created,
            "updated_at": created,
            "url": "http://web.demo:80",
            "public_url": "http://web.demo:80",
            "proto": "http",
            "scheme": "http",
            "hostport": "web.demo:80",
            "host": "web.demo",
            "port": 80,
            "type": "kubernetes",
            "bindings": ["kubernetes"],
            "uri": format!("{}/endpoints/{id}", f.api.base),
            "sandbox_target": "http",
        })
    );
    let (status, body) = f
        .api
        .call(
            Method::GET,
            "/kubernetes_operators/k8sop_missing/bound_endpoints",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ngrok_error(&body, StatusCode::NOT_FOUND, "ERR_NGROK_404");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn endpoints_added_and_removed_at_run_time_reach_the_api_and_the_ingress() {
    let f = Fixture::start("", "").await;
    let (csr, key) = csr();
    let (_, op) = f
        .api
        .call(
            Method::POST,
            "/kubernetes_operators",
            Some(create_body(&csr)),
        )
        .await;
    let list = format!(
        "/kubernetes_operators/{}/bound_endpoints",
        op["id"].as_str().unwrap()
    );
    let connector = tls_client(
        &f.sandbox.ca_pem_path(),
        Some((op["binding"]["cert"]["cert"].as_str().unwrap(), &key)),
    );
    let urls = |page: &Value| -> Vec<String> {
        page["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap().to_string())
            .collect()
    };

    // Over the admin route.
    let (status, added) = f
        .api
        .call(
            Method::POST,
            "/sandbox/endpoints",
            Some(json!({ "url": "tcp://late.demo:9000", "target": "echo" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["url"], "tcp://late.demo:9000");
    let (_, page) = f.api.call(Method::GET, &list, None).await;
    assert_eq!(urls(&page), ["tcp://late.demo:9000"]);
    let (response, _) = upgrade(&f.sandbox, &connector, "late.demo", 9000).await;
    assert_eq!(response.failure(), None);
    let (status, body) = f
        .api
        .call(
            Method::POST,
            "/sandbox/endpoints",
            Some(json!({ "url": "tcp://late.demo:9000", "target": "http" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = f
        .api
        .call(
            Method::POST,
            "/sandbox/endpoints",
            Some(json!({ "url": "tcp://nohost:9000", "target": "echo" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_ngrok_error(&body, StatusCode::BAD_REQUEST, "ERR_NGROK_215");
    let (status, _) = f
        .api
        .call(
            Method::DELETE,
            "/sandbox/endpoints?url=tcp%3A%2F%2Flate.demo%3A9000",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f
        .api
        .call(
            Method::DELETE,
            "/sandbox/endpoints?url=tcp%3A%2F%2Flate.demo%3A9000",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (response, _) = upgrade(&f.sandbox, &connector, "late.demo", 9000).await;
    assert_eq!(response.error_code, "ERR_NGROK_3200");

    // Through the library.
    f.sandbox.add_endpoint("http://lib.demo", "http").unwrap();
    let (_, page) = f.api.call(Method::GET, &list, None).await;
    assert_eq!(urls(&page), ["http://lib.demo:80"]);
    f.sandbox.remove_endpoint("http://lib.demo:80").unwrap();
    let (_, page) = f.api.call(Method::GET, &list, None).await;
    assert!(urls(&page).is_empty());

    let (status, stats) = f.api.call(Method::GET, "/sandbox/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats,
        json!({ "registrations": 1, "operator_writes": 1, "operators": 1, "endpoints": 0 })
    );
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn api_faults_fail_the_next_requests_and_delay_answers() {
    let f = Fixture::start("  faults: { fail_next: 2 }\n", "").await;
    for _ in 0..2 {
        let (status, body) = f.api.call(Method::GET, "/kubernetes_operators", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_ngrok_error(&body, StatusCode::INTERNAL_SERVER_ERROR, "ERR_NGROK_500");
    }
    let (status, _) = f.api.call(Method::GET, "/kubernetes_operators", None).await;
    assert_eq!(status, StatusCode::OK);

    // Faults changed at run time; admin routes are never faulted.
    let (status, _) = f
        .api
        .call(
            Method::PUT,
            "/sandbox/api_faults",
            Some(json!({ "fail_next": 1, "delay": "300ms" })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f.api.call(Method::GET, "/sandbox/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    let started = tokio::time::Instant::now();
    let (status, _) = f.api.call(Method::GET, "/kubernetes_operators", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // A lower bound only: the fault guarantees at least this delay.
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (status, _) = f.api.call(Method::GET, "/kubernetes_operators", None).await;
    assert_eq!(status, StatusCode::OK);
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn api_faults_answer_garbage_or_nothing_for_the_next_requests() {
    let f = Fixture::start("  faults: { garbage_next: 1, hang_next: 1 }\n", "").await;
    // The hang comes first: this request gets no answer at all.
    let hung = tokio::time::timeout(
        Duration::from_millis(500),
        f.api.call_raw(Method::GET, "/kubernetes_operators"),
    )
    .await;
    assert!(hung.is_err(), "a hung request was answered: {hung:?}");
    let (status, body) = f.api.call_raw(Method::GET, "/kubernetes_operators").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).is_err(),
        "garbage must not parse: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = f.api.call_raw(Method::GET, "/kubernetes_operators").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice::<serde_json::Value>(&body).expect("JSON again");
    f.sandbox.shutdown().await;
}

#[tokio::test]
async fn invalid_registrations_are_refused_without_counting() {
    let f = Fixture::start("", "").await;
    let (csr, _) = csr();
    let mut long_description = create_body(&csr);
    long_description["description"] = json!("x".repeat(256));
    let mut other_selector = create_body(&csr);
    other_selector["binding"]["endpoint_selectors"] = json!(["endpoint.host == 'a.b'"]);
    let mut bad_csr = create_body(&csr);
    bad_csr["binding"]["csr"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    let mut no_binding = create_body(&csr);
    no_binding.as_object_mut().unwrap().remove("binding");
    let mut unknown_feature = create_body(&csr);
    unknown_feature["enabled_features"] = json!(["bindings", "teleport"]);
    let mut unknown_field = create_body(&csr);
    unknown_field["bindings"] = json!({});
    let cases = [
        (long_description.to_string(), "ERR_NGROK_215"),
        (other_selector.to_string(), "ERR_NGROK_215"),
        (bad_csr.to_string(), "ERR_NGROK_215"),
        (no_binding.to_string(), "ERR_NGROK_215"),
        (unknown_feature.to_string(), "ERR_NGROK_215"),
        (unknown_field.to_string(), "ERR_NGROK_3411"),
        ("{not json".to_string(), "ERR_NGROK_3411"),
    ];
    let auth = format!("Bearer {KEY}");
    for (body, code) in cases {
        let (status, answer) = f
            .api
            .send(
                Method::POST,
                "/kubernetes_operators",
                &[("authorization", &auth), ("ngrok-version", "2")],
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_ngrok_error(&answer, StatusCode::BAD_REQUEST, code);
    }
    assert_eq!(f.sandbox.registrations(), 0);
    // An unknown path answers ngrok's bare 404.
    let (status, body) = f.api.call(Method::GET, "/tunnels", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({ "status_code": 404, "msg": "Not Found", "details": { "path": "/tunnels" } })
    );
    f.sandbox.shutdown().await;
}
