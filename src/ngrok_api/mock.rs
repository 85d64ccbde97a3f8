//! A small in-test ngrok API (hyper on 127.0.0.1:0): operator CRUD with real CSR signing by an
//! in-test CA, paginated lists, ngrok's error JSON, request recording and scripted failures.
//! Strict where bindgate could get the protocol wrong: bearer key, `Ngrok-Version: 2`, JSON
//! content type on bodies, CSR signature and empty subject.
// Test-only: the mock's state lock is taken and released inside one synchronous block, never
// across an await, so a std mutex is the simplest correct tool.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::net::TcpListener;

use super::{Endpoint, Operator, OperatorBinding, OperatorCert, OperatorDeployment};

pub(crate) const MOCK_KEY: &str = "test-api-key-0123456789";
pub(crate) const MOCK_INGRESS: &str = "ingress.mock.test";

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    pub ngrok_version: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

pub(crate) struct MockState {
    pub requests: Vec<Recorded>,
    pub operators: BTreeMap<String, Operator>,
    pub endpoints: Vec<Endpoint>,
    pub page_size: usize,
    /// Canned answers `(status, body)` served, in order, before normal routing.
    pub script: VecDeque<(u16, String)>,
    /// Validity of issued certs relative to now: (not_before, not_after).
    pub validity: (TimeDuration, TimeDuration),
    /// Make `next_page_uri` point at the same page forever (loop guard test).
    pub loop_pages: bool,
    next_id: u64,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA that signs operator certs (PEM), for tests that verify them.
    #[allow(dead_code)]
    pub ca_pem: String,
    base: String,
}

impl MockState {
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.target.split('?').next() == Some(path))
            .count()
    }

    /// Adds an operator directly (as if created by an earlier run), with a signed cert for `csr`.
    pub fn insert_operator(&mut self, mut op: Operator) -> String {
        self.next_id += 1;
        let id = format!("k8sop_{:04}", self.next_id);
        op.id = id.clone();
        op.uri = format!("{}kubernetes_operators/{id}", self.base);
        self.operators.insert(id.clone(), op);
        id
    }

    fn sign(&self, csr_pem: &str) -> Result<OperatorCert, String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("bad CSR: {e}"))?;
        if csr.params.distinguished_name.iter().next().is_some() {
            return Err("CSR subject must be empty".into());
        }
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        csr.params.not_before = now + self.validity.0;
        csr.params.not_after = now + self.validity.1;
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(
            "acct-mock.bindings.ngrok.test"
                .try_into()
                .map_err(|e| format!("{e}"))?,
        )];
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| format!("signing: {e}"))?;
        let rfc = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Ok(OperatorCert {
            cert: cert.pem(),
            not_before: rfc(csr.params.not_before),
            not_after: rfc(csr.params.not_after),
        })
    }
}

pub(crate) struct MockApi {
    pub state: Arc<Mutex<MockState>>,
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mock ngrok CA");
    let cert = params.self_signed(&key).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

impl MockApi {
    /// Plain http on 127.0.0.1:0.
    pub async fn start() -> MockApi {
        Self::start_inner(None).await
    }

    /// https on 127.0.0.1:0 with a server cert from the mock CA; returns the CA PEM too.
    pub async fn start_tls() -> (MockApi, String) {
        crate::identity::install_crypto_provider();
        let (issuer, ca_pem) = new_ca();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::start_inner(Some(acceptor)).await, ca_pem)
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let (issuer, ca_pem) = new_ca();
        let state = Arc::new(Mutex::new(MockState {
            requests: Vec::new(),
            operators: BTreeMap::new(),
            endpoints: Vec::new(),
            page_size: 100,
            script: VecDeque::new(),
            validity: (TimeDuration::minutes(-5), TimeDuration::days(90)),
            loop_pages: false,
            next_id: 0,
            issuer,
            ca_pem,
            base: format!("{url}/"),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                });
            }
        });
        MockApi { state, url, task }
    }

    pub fn state(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap()
    }

    /// API settings pointing at this mock with the right key and a short timeout.
    pub fn settings(&self) -> super::ApiSettings {
        super::ApiSettings {
            api_url: self.url.clone(),
            api_key: crate::secret::Secret::new(MOCK_KEY),
            api_ca: None,
            timeout: std::time::Duration::from_secs(10),
        }
    }

    /// A client for this mock with millisecond backoff.
    pub fn client(&self) -> super::ApiClient {
        super::ApiClient::new(self.settings())
            .unwrap()
            .with_retry(super::RetryPolicy {
                attempts: 4,
                base_backoff: std::time::Duration::from_millis(1),
                max_backoff: std::time::Duration::from_millis(5),
                jitter: true,
            })
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    raw(status, body.to_string())
}

fn raw(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn ngrok_error(status: u16, code: &str, msg: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error_code": code, "status_code": status, "msg": msg,
               "details": {"operation_id": "op_mock_1"}}),
    )
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(state: &Mutex<MockState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let authorization = header(&req, "authorization");
    let ngrok_version = header(&req, "ngrok-version");
    let content_type = header(&req, "content-type");
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let mut st = state.lock().unwrap();
    st.requests.push(Recorded {
        method: method.clone(),
        target: target.clone(),
        authorization: authorization.clone(),
        ngrok_version: ngrok_version.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {MOCK_KEY}")) {
        return ngrok_error(
            401,
            "ERR_NGROK_205",
            "The API key you specified is invalid.",
        );
    }
    if ngrok_version.as_deref() != Some("2") {
        return ngrok_error(400, "ERR_NGROK_206", "Missing or bad Ngrok-Version header.");
    }
    if let Some((status, body)) = st.script.pop_front() {
        return raw(status, body);
    }
    if !body.is_empty() && content_type.as_deref() != Some("application/json") {
        return ngrok_error(
            415,
            "ERR_NGROK_219",
            "Content-Type must be application/json.",
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["kubernetes_operators"]) => create(&mut st, &body),
        ("GET", ["kubernetes_operators"]) => {
            let items: Vec<Value> = st
                .operators
                .values()
                .map(|o| serde_json::to_value(o).unwrap())
                .collect();
            page(&st, "operators", path, query, items)
        }
        ("GET", ["kubernetes_operators", id]) => match st.operators.get(*id) {
            Some(op) => reply(200, serde_json::to_value(op).unwrap()),
            None => not_found(id),
        },
        ("PATCH", ["kubernetes_operators", id]) => update(&mut st, id, &body),
        ("DELETE", ["kubernetes_operators", id]) => match st.operators.remove(*id) {
            Some(_) => Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            None => not_found(id),
        },
        ("GET", ["kubernetes_operators", id, "bound_endpoints"]) => {
            if !st.operators.contains_key(*id) {
                return not_found(id);
            }
            let items: Vec<Value> = st
                .endpoints
                .iter()
                .map(|e| serde_json::to_value(e).unwrap())
                .collect();
            page(&st, "endpoints", path, query, items)
        }
        _ => ngrok_error(404, "ERR_NGROK_404", "no such route"),
    }
}

fn not_found(id: &str) -> Response<Full<Bytes>> {
    ngrok_error(
        404,
        "ERR_NGROK_15010",
        &format!("The kubernetes operator {id} was not found."),
    )
}

/// Offset pagination with an absolute `next_page_uri`, as ngrok sends.
fn page(
    st: &MockState,
    key: &str,
    path: &str,
    query: &str,
    items: Vec<Value>,
) -> Response<Full<Bytes>> {
    let mut offset = 0usize;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("offset=") {
            offset = v.parse().unwrap_or(0);
        }
        if let Some(v) = pair.strip_prefix("limit=") {
            if v.parse::<usize>().map_or(true, |l| l == 0 || l > 100) {
                return ngrok_error(400, "ERR_NGROK_233", "page size out of range");
            }
        }
    }
    let end = (offset + st.page_size).min(items.len());
    let chunk = items.get(offset..end).unwrap_or(&[]).to_vec();
    let base = st.base.trim_end_matches('/');
    let next = if st.loop_pages {
        Value::String(format!("{base}{path}?limit=100&offset={offset}"))
    } else if end < items.len() {
        Value::String(format!("{base}{path}?limit=100&offset={end}"))
    } else {
        Value::Null
    };
    reply(
        200,
        json!({ key: chunk, "uri": format!("{base}{path}"), "next_page_uri": next }),
    )
}

fn create(st: &mut MockState, body: &str) -> Response<Full<Bytes>> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return ngrok_error(400, "ERR_NGROK_200", "bad JSON");
    };
    let desc = v["description"].as_str().unwrap_or_default();
    if desc.len() > 255 {
        return ngrok_error(400, "ERR_NGROK_201", "description too long");
    }
    let cert = match v["binding"]["csr"].as_str() {
        Some(csr) => match st.sign(csr) {
            Ok(c) => Some(c),
            Err(e) => return ngrok_error(400, "ERR_NGROK_202", &e),
        },
        None => None,
    };
    let d = &v["deployment"];
    let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
    let op = Operator {
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        description: desc.to_owned(),
        metadata: s(&v["metadata"]),
        enabled_features: serde_json::from_value(v["enabled_features"].clone()).unwrap_or_default(),
        region: s(&v["region"]),
        deployment: Some(OperatorDeployment {
            name: s(&d["name"]),
            namespace: s(&d["namespace"]),
            version: s(&d["version"]),
            cluster_name: s(&d["cluster_name"]),
        }),
        binding: Some(OperatorBinding {
            endpoint_selectors: serde_json::from_value(v["binding"]["endpoint_selectors"].clone())
                .unwrap_or_default(),
            ingress_endpoint: MOCK_INGRESS.into(),
            cert,
        }),
        ..Default::default()
    };
    let id = st.insert_operator(op);
    reply(200, serde_json::to_value(&st.operators[&id]).unwrap())
}

fn update(st: &mut MockState, id: &str, body: &str) -> Response<Full<Bytes>> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return ngrok_error(400, "ERR_NGROK_200", "bad JSON");
    };
    if !v["deployment"]["namespace"].is_null() {
        return ngrok_error(400, "ERR_NGROK_203", "deployment.namespace cannot change");
    }
    let cert = match v["binding"]["csr"].as_str() {
        Some(csr) => match st.sign(csr) {
            Ok(c) => Some(c),
            Err(e) => return ngrok_error(400, "ERR_NGROK_202", &e),
        },
        None => None,
    };
    let Some(op) = st.operators.get_mut(id) else {
        return not_found(id);
    };
    if let Some(d) = v["description"].as_str() {
        op.description = d.to_owned();
    }
    if let Some(m) = v["metadata"].as_str() {
        op.metadata = m.to_owned();
    }
    let binding = op.binding.get_or_insert_with(Default::default);
    if let Ok(sel) =
        serde_json::from_value::<Vec<String>>(v["binding"]["endpoint_selectors"].clone())
    {
        binding.endpoint_selectors = sel;
    }
    if cert.is_some() {
        binding.cert = cert;
    }
    op.updated_at = "2026-01-02T00:00:00Z".into();
    reply(200, serde_json::to_value(&*op).unwrap())
}
