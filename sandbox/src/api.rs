//! The emulated ngrok API (PROTOCOL.md §3) over HTTPS: `kubernetes_operators` CRUD, the bound
//! endpoints list, ngrok's error JSON and pagination, plus `/sandbox/*` admin routes that tests
//! and demos use to change the sandbox at run time: `POST /sandbox/endpoints` and
//! `DELETE /sandbox/endpoints?url=` (endpoints come and go), `PUT /sandbox/api_faults` (the
//! fault knobs), `PUT /sandbox/api_keys` (the accepted keys; the others are revoked),
//! `GET /sandbox/stats`, and `/sandbox/config_docs/{name}` (documents for bindgate's REST
//! config sources; see `config_docs`).
//!
//! Every request needs `Authorization: Bearer <one of api_keys>` (admin routes too). API routes
//! also need `Ngrok-Version: 2`. Errors are `{"error_code","status_code","msg","details":
//! {"operation_id"}}`; codes follow ngrok's public error catalogue where one fits:
//!
//! | status | code | when |
//! |---|---|---|
//! | 401 | `ERR_NGROK_200` | no `Authorization` header |
//! | 401 | `ERR_NGROK_201` | `Authorization` is not `Bearer <key>` |
//! | 401 | `ERR_NGROK_203` | unknown key (never echoed back) |
//! | 400 | `ERR_NGROK_218` | no `Ngrok-Version` header |
//! | 400 | `ERR_NGROK_217` | `Ngrok-Version` other than `2` |
//! | 400 | `ERR_NGROK_233` | `limit` not an integer in 1..=100 |
//! | 400 | `ERR_NGROK_3411` | body is not the expected JSON (unknown fields included) |
//! | 400 | `ERR_NGROK_215` | a field's value is invalid (length, CSR, selector, feature) |
//! | 404 | `ERR_NGROK_404` | no operator with that id (sandbox's choice: ngrok's code is unconfirmed) |
//! | 404 | — | unknown path or method: `{"status_code":404,"msg":"Not Found","details":{"path"}}` |
//! | 500 | `ERR_NGROK_500` | the `fail_next` fault |
//! | 200 | — | the `garbage_next` fault: a body that is not JSON |
//!
//! The `hang_next` fault answers nothing; `delay` adds a wait before every answer.
//!
//! Lists are newest first (ids sort by creation), `limit` caps a page at `page_limit_max`, and
//! `next_page_uri` carries `before_id` until the last page, where it is `null`. Operators live in
//! memory: a restarted sandbox has none, so clients meet the 404 → re-register path.
//! Only the selector `true` is evaluated; any other is refused at registration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::ca::SandboxCa;
use super::config::{ApiConfig, ApiFaultsConfig, EndpointConfig};
use super::config_docs::{ConfigDocs, MAX_DOC, Served};
use super::endpoints::{BoundEndpoint, EndpointError, EndpointRegistry};

/// Request bodies larger than this are refused (a CSR and metadata fit in a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// The largest `limit` ngrok accepts.
const LIMIT_MAX: u32 = 100;
const FEATURES: [&str; 3] = ["bindings", "ingress", "gateway"];

/// Shared state of the API server.
pub struct Api {
    acceptor: TlsAcceptor,
    /// Replaced at run time through `PUT /sandbox/api_keys` (a key revoked).
    api_keys: ArcSwap<Vec<String>>,
    account_id: String,
    ca: Arc<SandboxCa>,
    registry: Arc<EndpointRegistry>,
    cert_lifetime: Duration,
    page_limit_max: u32,
    base_url: String,
    ingress_endpoint: String,
    operators: Mutex<BTreeMap<String, Operator>>,
    last_id_stamp: AtomicU64,
    registrations: AtomicU64,
    writes: AtomicU64,
    fail_next: AtomicU32,
    garbage_next: AtomicU32,
    hang_next: AtomicU32,
    delay_ms: AtomicU64,
    /// Documents for REST config sources (`/sandbox/config_docs/...`).
    config_docs: ConfigDocs,
}

impl std::fmt::Debug for Api {
    // Keys stay out of Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base_url", &self.base_url)
            .field("ingress_endpoint", &self.ingress_endpoint)
            .finish_non_exhaustive()
    }
}

/// Counters for tests, `GET /sandbox/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApiStats {
    /// Successful `POST /kubernetes_operators`.
    pub registrations: u64,
    /// Write requests (POST, PATCH, DELETE) to `/kubernetes_operators...` that reached a
    /// route (injected faults included), whatever their outcome: a process that must never write can be checked.
    pub operator_writes: u64,
    /// Operators that exist now.
    pub operators: u64,
    /// Endpoints the sandbox serves now.
    pub endpoints: u64,
}

impl Api {
    /// `api_addr` is the bound address; `ingress_addr` the ingress's, for `ingress_endpoint`.
    pub fn new(
        config: &ApiConfig,
        mut tls: rustls::ServerConfig,
        api_addr: SocketAddr,
        ingress_addr: SocketAddr,
        account_id: String,
        ca: Arc<SandboxCa>,
        registry: Arc<EndpointRegistry>,
    ) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let faults = &config.faults;
        Api {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            api_keys: ArcSwap::from_pointee(config.api_keys.clone()),
            account_id,
            ca,
            registry,
            cert_lifetime: config.cert_lifetime.get(),
            page_limit_max: config.page_limit_max,
            base_url: format!("https://{}", super::reachable(api_addr)),
            ingress_endpoint: config
                .ingress_endpoint
                .clone()
                .unwrap_or_else(|| super::reachable(ingress_addr).to_string()),
            operators: Mutex::new(BTreeMap::new()),
            last_id_stamp: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            fail_next: AtomicU32::new(faults.fail_next),
            garbage_next: AtomicU32::new(faults.garbage_next),
            hang_next: AtomicU32::new(faults.hang_next),
            delay_ms: AtomicU64::new(delay_ms(faults)),
            config_docs: ConfigDocs::default(),
        }
    }

    /// `https://host:port`, what clients put in `api_url`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }

    pub async fn stats(&self) -> ApiStats {
        ApiStats {
            registrations: self.registrations(),
            operator_writes: self.writes.load(Ordering::Relaxed),
            operators: self.operators.lock().await.len() as u64,
            endpoints: self.registry.list().len() as u64,
        }
    }

    /// Replaces the API's fault knobs (the `*_next` counts restart from the new values).
    pub fn set_faults(&self, faults: &ApiFaultsConfig) {
        self.fail_next.store(faults.fail_next, Ordering::Relaxed);
        self.garbage_next
            .store(faults.garbage_next, Ordering::Relaxed);
        self.hang_next.store(faults.hang_next, Ordering::Relaxed);
        self.delay_ms.store(delay_ms(faults), Ordering::Relaxed);
    }

    /// Serves one accepted TCP connection: TLS, then HTTP/1.1 with keep-alive.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tls =
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, "api TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "api TLS handshake timed out");
                    return;
                }
            };
        let service = hyper::service::service_fn(move |request| {
            let api = Arc::clone(&self);
            async move { Ok::<_, std::convert::Infallible>(api.handle(request).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await
        {
            debug!(%peer, "api connection failed: {e}");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let op = operation_id();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = match self.route(request).await {
            Ok(response) => response,
            Err(error) => error.into_response(&op),
        };
        debug!(%method, %path, status = response.status().as_u16(), "api request");
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        self.authorize(&request)?;
        let segments: Vec<String> = request
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let query = Query::parse(request.uri().query().unwrap_or(""));
        let method = request.method().clone();
        if segments.first() == Some(&"sandbox") {
            return self.admin(&method, &segments[1..], &query, request).await;
        }
        check_version(&request)?;
        if method != Method::GET && segments.first() == Some(&"kubernetes_operators") {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(garbage) = self.inject_faults().await? {
            return Ok(garbage);
        }
        let path = request.uri().path().to_string();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["kubernetes_operators"]) => {
                let body: OperatorCreate = read_json(request).await?;
                let operator = self.create_operator(body).await?;
                json(StatusCode::CREATED, &operator)
            }
            (&Method::GET, ["kubernetes_operators"]) => {
                let page = Page::from_query(&query, self.page_limit_max)?;
                let operators = self.operators.lock().await;
                let (items, next) = page.take(operators.values().rev(), |o| &o.id);
                let items: Vec<Operator> = items.into_iter().cloned().collect();
                drop(operators);
                let uri = format!("{}/kubernetes_operators", self.base_url);
                json(
                    StatusCode::OK,
                    &OperatorList {
                        next_page_uri: next.map(|before| page.next_uri(&uri, &before)),
                        operators: items,
                        uri,
                    },
                )
            }
            (&Method::GET, ["kubernetes_operators", id]) => {
                let operator = self.operator(id).await?;
                json(StatusCode::OK, &operator)
            }
            (&Method::PATCH, ["kubernetes_operators", id]) => {
                let body: OperatorUpdate = read_json(request).await?;
                let operator = self.update_operator(id, body).await?;
                json(StatusCode::OK, &operator)
            }
            (&Method::DELETE, ["kubernetes_operators", id]) => {
                let operator = self
                    .operators
                    .lock()
                    .await
                    .remove(*id)
                    .ok_or_else(|| ApiError::no_operator(id))?;
                // As with ngrok, deleting an operator invalidates its certificates.
                self.ca.revoke(&operator.serials);
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::GET, ["kubernetes_operators", id, "bound_endpoints"]) => {
                let page = Page::from_query(&query, self.page_limit_max)?;
                let operator = self.operator(id).await?;
                let mut endpoints: Vec<Arc<BoundEndpoint>> =
                    if operator.enabled_features.iter().any(|f| f == "bindings") {
                        self.registry.list().iter().cloned().collect()
                    } else {
                        Vec::new()
                    };
                // Newest first means descending id, as for operators.
                endpoints.sort_by(|a, b| b.id.cmp(&a.id));
                let (items, next) = page.take(endpoints.iter().map(|e| e.as_ref()), |e| &e.id);
                let items: Vec<EndpointJson> =
                    items.into_iter().map(|e| self.endpoint_json(e)).collect();
                let uri = format!(
                    "{}/kubernetes_operators/{id}/bound_endpoints",
                    self.base_url
                );
                json(
                    StatusCode::OK,
                    &EndpointList {
                        next_page_uri: next.map(|before| page.next_uri(&uri, &before)),
                        endpoints: items,
                        uri,
                    },
                )
            }
            _ => Err(ApiError::no_route(&path)),
        }
    }

    /// `/sandbox/...`: runtime control for tests and demos. Bearer auth, no version header.
    async fn admin(
        &self,
        method: &Method,
        segments: &[&str],
        query: &Query,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        match (method, segments) {
            (&Method::POST, ["endpoints"]) => {
                let body: EndpointConfig = read_json(request).await?;
                let endpoint = self.registry.add(&body).map_err(ApiError::from)?;
                json(StatusCode::CREATED, &self.endpoint_json(&endpoint))
            }
            (&Method::DELETE, ["endpoints"]) => {
                let url = query
                    .get("url")
                    .ok_or_else(|| ApiError::invalid("the `url` query parameter is required"))?;
                self.registry.remove(url).map_err(ApiError::from)?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::GET, ["stats"]) => json(StatusCode::OK, &self.stats().await),
            (&Method::PUT, ["api_faults"]) => {
                let faults: ApiFaultsConfig = read_json(request).await?;
                self.set_faults(&faults);
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::PUT, ["api_keys"]) => {
                let body: ApiKeys = read_json(request).await?;
                if body.api_keys.is_empty() {
                    return Err(ApiError::invalid("`api_keys` needs at least one key"));
                }
                self.api_keys.store(Arc::new(body.api_keys));
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::PUT, ["config_docs", name]) => {
                let content_type = request
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = Limited::new(request.into_body(), MAX_DOC)
                    .collect()
                    .await
                    .map_err(|e| ApiError::invalid(format!("reading the body: {e}")))?
                    .to_bytes();
                let etag = self
                    .config_docs
                    .put(name, body.to_vec(), content_type.as_deref());
                let mut r = empty(StatusCode::NO_CONTENT)?;
                if let Ok(v) = HeaderValue::from_str(&etag) {
                    r.headers_mut().insert(ETAG, v);
                }
                Ok(r)
            }
            (&Method::DELETE, ["config_docs", name]) => {
                if self.config_docs.delete(name) {
                    empty(StatusCode::NO_CONTENT)
                } else {
                    Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "ERR_NGROK_404",
                        format!("no config document `{name}`"),
                    ))
                }
            }
            (&Method::GET, ["config_docs", name, "requests"]) => {
                json(StatusCode::OK, &self.config_docs.requests(name))
            }
            (&Method::GET, ["config_docs", name]) => {
                let if_none_match = request
                    .headers()
                    .get(IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok());
                let query = request.uri().query().unwrap_or("");
                match self.config_docs.get(name, query, if_none_match) {
                    Served::Body {
                        body,
                        content_type,
                        etag,
                    } => {
                        let mut r = with_body(StatusCode::OK, body);
                        for (k, v) in [(CONTENT_TYPE, content_type), (ETAG, etag)] {
                            if let Ok(v) = HeaderValue::from_str(&v) {
                                r.headers_mut().insert(k, v);
                            }
                        }
                        Ok(r)
                    }
                    Served::NotModified { etag } => {
                        let mut r = empty(StatusCode::NOT_MODIFIED)?;
                        if let Ok(v) = HeaderValue::from_str(&etag) {
                            r.headers_mut().insert(ETAG, v);
                        }
                        Ok(r)
                    }
                    Served::Missing => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "ERR_NGROK_404",
                        format!("no config document `{name}`"),
                    )),
                }
            }
            _ => Err(ApiError::no_route(request.uri().path())),
        }
    }

    fn authorize(&self, request: &Request<Incoming>) -> Result<(), ApiError> {
        let header = request.headers().get(AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "ERR_NGROK_200",
                "The ngrok API requires that you set the Authorization header for authentication.",
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "ERR_NGROK_201",
                    "The ngrok API requires Bearer authentication via the Authorization header; it could not parse the header in this request.",
                )
            })?;
        let known = self.api_keys.load().iter().any(|k| k == key);
        if !known {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "ERR_NGROK_203",
                "The API authentication you specified is properly formed, but it is invalid.",
            ));
        }
        Ok(())
    }

    /// Applies the fault knobs to one request: waits, hangs, fails, or answers garbage (the
    /// returned response); `None` lets the request through.
    async fn inject_faults(&self) -> Result<Option<Response<Full<Bytes>>>, ApiError> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if take_one(&self.hang_next) {
            // Dropped with the connection when the client gives up.
            std::future::pending::<()>().await;
        }
        if take_one(&self.fail_next) {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_NGROK_500",
                "sandbox fault: fail_next",
            ));
        }
        if take_one(&self.garbage_next) {
            return Ok(Some(with_body(
                StatusCode::OK,
                b"{\"endpoints\": [{\"id\": \"ep_1\", <html>502 Bad Gateway</html>".to_vec(),
            )));
        }
        Ok(None)
    }

    async fn operator(&self, id: &str) -> Result<Operator, ApiError> {
        self.operators
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::no_operator(id))
    }

    async fn create_operator(&self, body: OperatorCreate) -> Result<Operator, ApiError> {
        let features = validate_features(body.enabled_features.unwrap_or_default())?;
        validate_text(&body.description, &body.metadata)?;
        let binding = match (features.iter().any(|f| f == "bindings"), body.binding) {
            (true, Some(binding)) => {
                let csr = binding.csr.as_deref().ok_or_else(|| {
                    ApiError::invalid(
                        "binding.csr is required when the bindings feature is enabled",
                    )
                })?;
                Some(self.binding(binding.endpoint_selectors, csr)?)
            }
            (true, None) => {
                return Err(ApiError::invalid(
                    "binding is required when the bindings feature is enabled",
                ));
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "binding needs `bindings` in enabled_features",
                ));
            }
            (false, None) => None,
        };
        let now = rfc3339(OffsetDateTime::now_utc());
        let id = self.next_operator_id();
        let deployment = body.deployment.unwrap_or_default();
        let operator = Operator {
            uri: format!("{}/kubernetes_operators/{id}", self.base_url),
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            description: body.description.unwrap_or_default(),
            metadata: body.metadata.unwrap_or_default(),
            enabled_features: features,
            region: body.region.unwrap_or_else(|| "global".to_string()),
            deployment: Deployment {
                name: deployment.name.unwrap_or_default(),
                namespace: deployment.namespace.unwrap_or_default(),
                version: deployment.version.unwrap_or_default(),
                cluster_name: deployment.cluster_name.unwrap_or_default(),
            },
            serials: binding.iter().map(|b| b.serial.clone()).collect(),
            binding,
        };
        self.operators.lock().await.insert(id, operator.clone());
        self.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(operator)
    }

    async fn update_operator(&self, id: &str, body: OperatorUpdate) -> Result<Operator, ApiError> {
        validate_text(&body.description, &body.metadata)?;
        let features = body.enabled_features.map(validate_features).transpose()?;
        // Sign before taking the lock: a CSR is untrusted input and signing is the slow part.
        let new_binding = match &body.binding {
            Some(BindingRequest {
                csr: Some(csr),
                endpoint_selectors,
                ..
            }) => Some(self.binding(endpoint_selectors.clone(), csr)?),
            _ => None,
        };
        let mut operators = self.operators.lock().await;
        let operator = operators
            .get_mut(id)
            .ok_or_else(|| ApiError::no_operator(id))?;
        let mut next = operator.clone();
        if let Some(description) = body.description {
            next.description = description;
        }
        if let Some(metadata) = body.metadata {
            next.metadata = metadata;
        }
        if let Some(features) = features {
            next.enabled_features = features;
        }
        if let Some(region) = body.region {
            next.region = region;
        }
        if let Some(deployment) = body.deployment {
            if let Some(name) = deployment.name {
                next.deployment.name = name;
            }
            if let Some(version) = deployment.version {
                next.deployment.version = version;
            }
            if let Some(cluster_name) = deployment.cluster_name {
                next.deployment.cluster_name = cluster_name;
            }
        }
        match (new_binding, body.binding) {
            (Some(binding), _) => {
                // The previous certificate stays valid until it expires, so a renewing client
                // can switch over without a gap.
                next.serials.push(binding.serial.clone());
                next.binding = Some(binding);
            }
            (None, Some(update)) => {
                // Selectors alone may change; the certificate stays.
                let binding = next.binding.as_mut().ok_or_else(|| {
                    ApiError::invalid("binding.csr is required to enable bindings")
                })?;
                if let Some(selectors) = update.endpoint_selectors {
                    binding.endpoint_selectors = validate_selectors(selectors)?;
                }
            }
            (None, None) => {}
        }
        let bindings_enabled = next.enabled_features.iter().any(|f| f == "bindings");
        if bindings_enabled && next.binding.is_none() {
            return Err(ApiError::invalid(
                "binding.csr is required when the bindings feature is enabled",
            ));
        }
        next.updated_at = rfc3339(OffsetDateTime::now_utc());
        *operator = next.clone();
        Ok(next)
    }

    fn binding(&self, selectors: Option<Vec<String>>, csr: &str) -> Result<Binding, ApiError> {
        let endpoint_selectors =
            validate_selectors(selectors.unwrap_or_else(|| vec!["true".to_string()]))?;
        let signed = self
            .ca
            .sign_csr(csr, &self.account_id, self.cert_lifetime)
            .map_err(|e| ApiError::invalid(format!("binding.csr: {e}")))?;
        Ok(Binding {
            endpoint_selectors,
            ingress_endpoint: self.ingress_endpoint.clone(),
            cert: BindingCert {
                cert: signed.cert_pem,
                not_before: rfc3339(signed.not_before),
                not_after: rfc3339(signed.not_after),
            },
            serial: signed.serial,
        })
    }

    /// `k8sop_` + 16 hex digits of strictly increasing microseconds: ids sort by creation, as
    /// ngrok's do, which is what `before_id` pagination relies on.
    fn next_operator_id(&self) -> String {
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000)
            .unwrap_or_default();
        let mut stamp = now;
        let _ = self
            .last_id_stamp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                stamp = now.max(last.saturating_add(1));
                Some(stamp)
            });
        format!("k8sop_{stamp:016x}")
    }

    fn endpoint_json(&self, endpoint: &BoundEndpoint) -> EndpointJson {
        let url = endpoint.url.to_string();
        let created_at = rfc3339(endpoint.created_at);
        EndpointJson {
            id: endpoint.id.clone(),
            region: "global".to_string(),
            created_at: created_at.clone(),
            updated_at: created_at,
            public_url: url.clone(),
            url,
            proto: endpoint.url.scheme.as_str().to_string(),
            scheme: endpoint.url.scheme.as_str().to_string(),
            hostport: endpoint.url.hostport(),
            host: endpoint.url.host.clone(),
            port: endpoint.url.port,
            kind: "kubernetes".to_string(),
            bindings: vec!["kubernetes".to_string()],
            uri: format!("{}/endpoints/{}", self.base_url, endpoint.id),
            target: endpoint.target.to_string(),
        }
    }
}

/// `PUT /sandbox/api_keys`: the keys accepted from now on (the others are revoked).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeys {
    api_keys: Vec<String>,
}

/// Decrements `count` unless it is 0; true when it did.
fn take_one(count: &AtomicU32) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

fn delay_ms(faults: &ApiFaultsConfig) -> u64 {
    faults
        .delay
        .map(|d| u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn check_version(request: &Request<Incoming>) -> Result<(), ApiError> {
    match request
        .headers()
        .get("ngrok-version")
        .map(HeaderValue::as_bytes)
    {
        Some(b"2") => Ok(()),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_NGROK_218",
            "Your request has not specified an API version. Include the version you wish to use in the Ngrok-Version header. Supported versions: 2.",
        )),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_NGROK_217",
            format!(
                "The provided API version `{}` is invalid or unsupported. Supported versions: 2.",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

fn validate_features(features: Vec<String>) -> Result<Vec<String>, ApiError> {
    for feature in &features {
        if !FEATURES.contains(&feature.as_str()) {
            return Err(ApiError::invalid(format!(
                "enabled_features: `{feature}` is not one of bindings, ingress, gateway"
            )));
        }
    }
    Ok(features)
}

fn validate_text(description: &Option<String>, metadata: &Option<String>) -> Result<(), ApiError> {
    if description.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(ApiError::invalid("description: at most 255 bytes"));
    }
    if metadata.as_ref().is_some_and(|m| m.len() > 4096) {
        return Err(ApiError::invalid("metadata: at most 4096 bytes"));
    }
    Ok(())
}

fn validate_selectors(selectors: Vec<String>) -> Result<Vec<String>, ApiError> {
    if selectors.is_empty() {
        return Err(ApiError::invalid(
            "binding.endpoint_selectors: at least one selector",
        ));
    }
    if let Some(other) = selectors.iter().find(|s| s.trim() != "true") {
        return Err(ApiError::invalid(format!(
            "binding.endpoint_selectors: the sandbox evaluates only `true`, not `{other}`"
        )));
    }
    Ok(selectors)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn operation_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("op_{hex}")
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_json(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(e.to_string()))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_NGROK_500",
            format!("encoding the answer: {e}"),
        )
    })?;
    Ok(with_body(status, body))
}

fn empty(status: StatusCode) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

fn with_body(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error answer, rendered as ngrok's error JSON.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    /// `None` for an unknown route, which ngrok answers without a code.
    code: Option<&'static str>,
    msg: String,
    path: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Some(code),
            msg: msg.into(),
            path: None,
        }
    }

    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ERR_NGROK_215", msg)
    }

    fn bad_json(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ERR_NGROK_3411",
            format!("Failed to parse JSON body: {}", msg.into()),
        )
    }

    fn no_operator(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ERR_NGROK_404",
            format!("Resource not found: kubernetes operator `{id}`"),
        )
    }

    fn no_route(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: None,
            msg: "Not Found".to_string(),
            path: Some(path.to_string()),
        }
    }

    fn into_response(self, operation_id: &str) -> Response<Full<Bytes>> {
        let status_code = self.status.as_u16();
        let body = match self.code {
            Some(error_code) => serde_json::to_vec(&ErrorBody {
                error_code,
                status_code,
                msg: &self.msg,
                details: ErrorDetails { operation_id },
            }),
            None => serde_json::to_vec(&RouteErrorBody {
                status_code,
                msg: &self.msg,
                details: RouteErrorDetails {
                    path: self.path.as_deref().unwrap_or_default(),
                },
            }),
        };
        with_body(self.status, body.unwrap_or_default())
    }
}

/// ngrok's error JSON, fields in ngrok's order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: &'static str,
    status_code: u16,
    msg: &'a str,
    details: ErrorDetails<'a>,
}

#[derive(Serialize)]
struct ErrorDetails<'a> {
    operation_id: &'a str,
}

/// What ngrok answers for a path or method it does not route: no `error_code`.
#[derive(Serialize)]
struct RouteErrorBody<'a> {
    status_code: u16,
    msg: &'a str,
    details: RouteErrorDetails<'a>,
}

#[derive(Serialize)]
struct RouteErrorDetails<'a> {
    path: &'a str,
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "ERR_NGROK_404", e.to_string())
            }
            EndpointError::Duplicate { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ERR_NGROK_409", e.to_string())
            }
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

/// Decoded query parameters (`application/x-www-form-urlencoded`).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `%XX` and `+` decoding; malformed escapes are kept literally rather than rejected.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One page of a list: `limit` (what the client asked, echoed into `next_page_uri`), the
/// effective size, and the `before_id` cursor.
#[derive(Debug)]
struct Page {
    requested_limit: Option<u32>,
    size: usize,
    before_id: Option<String>,
}

impl Page {
    fn from_query(query: &Query, page_limit_max: u32) -> Result<Self, ApiError> {
        let requested_limit = match query.get("limit") {
            None => None,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=LIMIT_MAX).contains(&n) => Some(n),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "ERR_NGROK_233",
                        format!(
                            "The page size `{text}` is out of range: it must be between 1 and {LIMIT_MAX}."
                        ),
                    ));
                }
            },
        };
        // The server may serve smaller pages than asked (page_limit_max), as any API may.
        let size = requested_limit
            .unwrap_or(page_limit_max)
            .min(page_limit_max) as usize;
        Ok(Page {
            requested_limit,
            size,
            before_id: query.get("before_id").map(str::to_string),
        })
    }

    /// Items (newest first) older than `before_id`, at most `size`, and the cursor for the next
    /// page when more remain.
    fn take<'a, T: 'a>(
        &self,
        newest_first: impl Iterator<Item = &'a T>,
        id: impl Fn(&T) -> &String,
    ) -> (Vec<&'a T>, Option<String>) {
        let mut remaining = newest_first
            .filter(|item| {
                self.before_id
                    .as_ref()
                    .is_none_or(|before| id(item) < before)
            })
            .peekable();
        let mut items = Vec::new();
        while items.len() < self.size {
            match remaining.next() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        let next = match (remaining.peek(), items.last()) {
            (Some(_), Some(last)) => Some(id(last).clone()),
            _ => None,
        };
        (items, next)
    }

    fn next_uri(&self, list_uri: &str, before_id: &str) -> String {
        match self.requested_limit {
            Some(limit) => format!("{list_uri}?before_id={before_id}&limit={limit}"),
            None => format!("{list_uri}?before_id={before_id}"),
        }
    }
}

// ---- JSON shapes -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorCreate {
    description: Option<String>,
    metadata: Option<String>,
    enabled_features: Option<Vec<String>>,
    region: Option<String>,
    deployment: Option<DeploymentCreate>,
    binding: Option<BindingRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorUpdate {
    description: Option<String>,
    metadata: Option<String>,
    enabled_features: Option<Vec<String>>,
    region: Option<String>,
    deployment: Option<DeploymentUpdate>,
    binding: Option<BindingRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentCreate {
    name: Option<String>,
    namespace: Option<String>,
    version: Option<String>,
    cluster_name: Option<String>,
}

/// The update form has no `namespace` (PROTOCOL.md §3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentUpdate {
    name: Option<String>,
    version: Option<String>,
    cluster_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingRequest {
    endpoint_selectors: Option<Vec<String>>,
    csr: Option<String>,
    /// Accepted for compatibility; the sandbox always answers with its own ingress.
    #[allow(dead_code)]
    ingress_endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Operator {
    id: String,
    uri: String,
    created_at: String,
    updated_at: String,
    description: String,
    metadata: String,
    enabled_features: Vec<String>,
    region: String,
    deployment: Deployment,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<Binding>,
    /// Every certificate issued to this operator; revoked when it is deleted.
    #[serde(skip)]
    serials: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize)]
struct Deployment {
    name: String,
    namespace: String,
    version: String,
    cluster_name: String,
}

#[derive(Debug, Clone, Serialize)]
struct Binding {
    endpoint_selectors: Vec<String>,
    ingress_endpoint: String,
    cert: BindingCert,
    #[serde(skip)]
    serial: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
struct BindingCert {
    cert: String,
    not_before: String,
    not_after: String,
}

#[derive(Debug, Serialize)]
struct OperatorList {
    operators: Vec<Operator>,
    uri: String,
    next_page_uri: Option<String>,
}

#[derive(Debug, Serialize)]
struct EndpointJson {
    id: String,
    region: String,
    created_at: String,
    updated_at: String,
    url: String,
    public_url: String,
    proto: String,
    scheme: String,
    hostport: String,
    host: String,
    port: u16,
    #[serde(rename = "type")]
    kind: String,
    bindings: Vec<String>,
    uri: String,
    /// Not an ngrok field: where the sandbox sends this endpoint's connections.
    #[serde(rename = "sandbox_target")]
    target: String,
}

#[derive(Debug, Serialize)]
struct EndpointList {
    endpoints: Vec<EndpointJson>,
    uri: String,
    next_page_uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_garbage() {
        assert_eq!(percent_decode("tcp%3A%2F%2Fa.b%3A1"), "tcp://a.b:1");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%G1x"), "%G1x");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn query_parameters_parse() {
        let q = Query::parse("limit=2&before_id=k8sop_1&url=http%3A%2F%2Fa.b&flag");
        assert_eq!(q.get("limit"), Some("2"));
        assert_eq!(q.get("before_id"), Some("k8sop_1"));
        assert_eq!(q.get("url"), Some("http://a.b"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn pages_walk_newest_first_and_end_with_no_cursor() {
        let ids: Vec<String> = ["a5", "a4", "a3", "a2", "a1"].map(String::from).to_vec();
        let page = Page::from_query(&Query::parse("limit=2"), 100).unwrap();
        let (items, next) = page.take(ids.iter(), |s| s);
        assert_eq!(items, ["a5", "a4"]);
        assert_eq!(next.as_deref(), Some("a4"));
        let page = Page::from_query(&Query::parse("limit=2&before_id=a4"), 100).unwrap();
        let (items, next) = page.take(ids.iter(), |s| s);
        assert_eq!(items, ["a3", "a2"]);
        assert_eq!(next.as_deref(), Some("a2"));
        let page = Page::from_query(&Query::parse("limit=2&before_id=a2"), 100).unwrap();
        let (items, next) = page.take(ids.iter(), |s| s);
        assert_eq!(items, ["a1"]);
        assert_eq!(next, None);
        // Exactly a full last page: no cursor either.
        let page = Page::from_query(&Query::parse("limit=5"), 100).unwrap();
        assert_eq!(page.take(ids.iter(), |s| s).1, None);
        // The server's cap wins over a larger limit.
        let page = Page::from_query(&Query::parse("limit=100"), 2).unwrap();
        assert_eq!(page.take(ids.iter(), |s| s).0.len(), 2);
        assert_eq!(
            page.next_uri("https://x/l", "a4"),
            "https://x/l?before_id=a4&limit=100"
        );
    }

    #[test]
    fn limits_outside_1_to_100_are_refused() {
        for bad in ["0", "101", "-1", "x", ""] {
            let err = Page::from_query(&Query::parse(&format!("limit={bad}")), 100).unwrap_err();
            assert_eq!(err.code, Some("ERR_NGROK_233"), "{bad}");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn selectors_other_than_true_are_refused() {
        assert!(validate_selectors(vec!["true".into()]).is_ok());
        assert!(validate_selectors(vec![]).is_err());
        assert!(validate_selectors(vec!["endpoint.host == 'x'".into()]).is_err());
    }
}
