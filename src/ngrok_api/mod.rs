//! The ngrok API client (PROTOCOL.md §3): Kubernetes operator registrations and their bound
//! endpoints, with ngrok's headers, error JSON, pagination and bounded retries.
//!
//! Owns nothing but HTTP. It must not log or return the API key: the key lives in a [`Secret`]
//! and in a header marked sensitive, and server text is scrubbed of it before it reaches an
//! error.

mod error;
mod models;
mod retry;

#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::ApiError;
pub use models::{
    BindingCreate, BindingUpdate, DeploymentCreate, DeploymentUpdate, Endpoint, Operator,
    OperatorBinding, OperatorCert, OperatorCreate, OperatorDeployment, OperatorUpdate,
};
pub use retry::RetryPolicy;

use crate::config::{LoadedConfig, NgrokConfig};
use crate::secret::Secret;
use models::ErrorBody;
pub(crate) use models::{EndpointPage, OperatorPage, Page};
use retry::{Attempt, with_retries};

/// ngrok's API version header value this client speaks.
pub const NGROK_VERSION: &str = "2";
/// Page size asked for in list calls (ngrok's maximum).
pub const PAGE_LIMIT: u32 = 100;
/// A list longer than this many pages is treated as a server fault, not followed forever.
pub const MAX_PAGES: usize = 1000;
/// The largest answer read (a page of 100 endpoints is about 50 KB); a larger one is a server
/// fault, read no further, and counted as a failed attempt.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Where the API is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub api_url: String,
    pub api_key: Secret,
    /// Extra CA (PEM file or directory) trusted for the API's TLS, on top of the system roots.
    pub api_ca: Option<PathBuf>,
    /// Bound on one request, connect to last byte.
    pub timeout: Duration,
}

impl ApiSettings {
    /// Settings from the `ngrok:` section; `api_ca` is resolved against the config's directory.
    pub fn from_config(ngrok: &NgrokConfig, loaded: &LoadedConfig) -> ApiSettings {
        ApiSettings {
            api_url: ngrok.api_url.clone(),
            api_key: ngrok.api_key.clone(),
            api_ca: ngrok.api_ca.as_deref().map(|p| loaded.resolve(p)),
            timeout: ngrok.api_timeout.get(),
        }
    }
}

/// A client for one API base URL and key. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Always ends with `/`, so relative paths join under it.
    base: Url,
    auth: HeaderValue,
    key: Secret,
    timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds a client. Fails on a malformed URL, plain `http://` to a non-loopback host, an
    /// unusable `api_ca`, or a key that cannot be an HTTP header value.
    pub fn new(settings: ApiSettings) -> Result<ApiClient, ApiError> {
        let base = parse_base(&settings.api_url)?;
        if settings.api_key.is_empty() {
            return Err(ApiError::Invalid("the API key is empty".into()));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", settings.api_key.expose()))
            .map_err(|_| {
                ApiError::Invalid(
                    "the API key contains characters that cannot be sent in an HTTP header".into(),
                )
            })?;
        auth.set_sensitive(true);

        let roots = crate::identity::load_trust_roots(settings.api_ca.as_deref(), true)
            .map_err(|e| ApiError::Invalid(format!("api_ca: {e}")))?;
        let provider = Arc::new(crate::identity::crypto_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::Invalid(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut headers = HeaderMap::new();
        headers.insert("ngrok-version", HeaderValue::from_static(NGROK_VERSION));
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .default_headers(headers)
            .user_agent(concat!("bindgate/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // The API does not redirect; refusing keeps the bearer key on the configured host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Invalid(format!("HTTP client setup: {e}")))?;
        Ok(ApiClient {
            http,
            base,
            auth,
            key: settings.api_key,
            timeout: settings.timeout,
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy (tests shorten the backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> ApiClient {
        self.retry = retry;
        self
    }

    /// The API base URL (for messages).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `POST /kubernetes_operators`. Not retried after the request may have reached the server
    /// (a retry could create a second registration); connection failures, 429 and 503 are.
    pub async fn create_operator(&self, create: &OperatorCreate) -> Result<Operator, ApiError> {
        let url = self.url("kubernetes_operators")?;
        let body = self
            .send(Method::POST, url, Some(json(create)?), false)
            .await?;
        decode(&body, "operator")
    }

    /// `GET /kubernetes_operators/{id}`.
    pub async fn get_operator(&self, id: &str) -> Result<Operator, ApiError> {
        let url = self.operator_url(id)?;
        let body = self.send(Method::GET, url, None, true).await?;
        decode(&body, "operator")
    }

    /// `PATCH /kubernetes_operators/{id}`; a new `binding.csr` renews the certificate.
    pub async fn update_operator(
        &self,
        id: &str,
        update: &OperatorUpdate,
    ) -> Result<Operator, ApiError> {
        let url = self.operator_url(id)?;
        let body = self
            .send(Method::PATCH, url, Some(json(update)?), true)
            .await?;
        decode(&body, "operator")
    }

    /// `DELETE /kubernetes_operators/{id}`. This invalidates the operator's certificate.
    pub async fn delete_operator(&self, id: &str) -> Result<(), ApiError> {
        let url = self.operator_url(id)?;
        self.send(Method::DELETE, url, None, true).await?;
        Ok(())
    }

    /// Every operator on the account (all pages).
    pub async fn list_operators(&self) -> Result<Vec<Operator>, ApiError> {
        let url = self.url("kubernetes_operators")?;
        self.list_all::<OperatorPage>(url).await
    }

    /// Every endpoint bound to `operator_id` (all pages), after the server applied the
    /// operator's `endpoint_selectors`.
    pub async fn list_bound_endpoints(&self, operator_id: &str) -> Result<Vec<Endpoint>, ApiError> {
        let mut url = self.operator_url(operator_id)?;
        url.path_segments_mut()
            .map_err(|_| ApiError::Invalid("the API URL cannot have a path".into()))?
            .push("bound_endpoints");
        self.list_all::<EndpointPage>(url).await
    }

    async fn list_all<P: Page>(&self, mut url: Url) -> Result<Vec<P::Item>, ApiError> {
        url.query_pairs_mut()
            .append_pair("limit", &PAGE_LIMIT.to_string());
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            if !seen.insert(url.to_string()) {
                return Err(ApiError::Decode(format!(
                    "pagination loops: next_page_uri repeats {url}"
                )));
            }
            let body = self.send(Method::GET, url.clone(), None, true).await?;
            let page: P = decode(&body, "list page")?;
            let (mut batch, next) = page.into_parts();
            items.append(&mut batch);
            match next.filter(|n| !n.is_empty()) {
                None => return Ok(items),
                Some(next) => url = self.follow(&next)?,
            }
        }
        Err(ApiError::Decode(format!(
            "the list did not end after {MAX_PAGES} pages"
        )))
    }

    /// Resolves a `next_page_uri`. Only URLs on the configured API origin are followed: the
    /// request carries the API key.
    fn follow(&self, next: &str) -> Result<Url, ApiError> {
        follow(&self.base, next)
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        self.base
            .join(path)
            .map_err(|e| ApiError::Invalid(format!("URL for `{path}`: {e}")))
    }

    fn operator_url(&self, id: &str) -> Result<Url, ApiError> {
        if id.is_empty() {
            return Err(ApiError::Invalid("empty operator id".into()));
        }
        let mut url = self.url("kubernetes_operators")?;
        url.path_segments_mut()
            .map_err(|_| ApiError::Invalid("the API URL cannot have a path".into()))?
            .push(id);
        Ok(url)
    }

    /// One logical call with retries; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotent: bool,
    ) -> Result<bytes::Bytes, ApiError> {
        with_retries(&self.retry, || {
            self.attempt(method.clone(), url.clone(), body.clone(), idempotent)
        })
        .await
    }

    async fn attempt(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotent: bool,
    ) -> Attempt<bytes::Bytes> {
        let mut req = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return self.transport_failure(&e, idempotent),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match read_capped(resp).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                let err = ApiError::Decode(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                ));
                return if idempotent {
                    Attempt::Retry(err, None)
                } else {
                    Attempt::Fatal(err)
                };
            }
            Err(e) => return self.transport_failure(&e, idempotent),
        };
        if status.is_success() {
            return Attempt::Done(bytes);
        }
        let err = self.status_error(status, &bytes);
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
            || (status.is_server_error() && idempotent);
        if retryable {
            Attempt::Retry(err, retry_after)
        } else {
            Attempt::Fatal(err)
        }
    }

    fn transport_failure(&self, e: &reqwest::Error, idempotent: bool) -> Attempt<bytes::Bytes> {
        if e.is_timeout() {
            let err = ApiError::Timeout(self.timeout);
            return if idempotent {
                Attempt::Retry(err, None)
            } else {
                Attempt::Fatal(err)
            };
        }
        let err = ApiError::Transport(self.scrub(&crate::telemetry::error_chain(e)));
        // A refused or failed connection never delivered the request: always safe to retry.
        if e.is_connect() || idempotent {
            Attempt::Retry(err, None)
        } else {
            Attempt::Fatal(err)
        }
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> ApiError {
        status_error(status, body, self.key.expose())
    }

    /// Removes the API key from text that came from the network or a library.
    fn scrub(&self, text: &str) -> String {
        scrub(text, self.key.expose())
    }
}

/// The body of `resp`, or `None` once it is over [`MAX_ANSWER_BYTES`] (by its length, else as it
/// arrives: no more than the bound is ever held).
async fn read_capped(mut resp: reqwest::Response) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// Resolves a `next_page_uri` against `base`. Only URLs on the API origin are followed: the
/// request carries the API key.
pub(crate) fn follow(base: &Url, next: &str) -> Result<Url, ApiError> {
    let url = base
        .join(next)
        .map_err(|e| ApiError::Decode(format!("bad next_page_uri `{next}`: {e}")))?;
    if url.origin() != base.origin() {
        return Err(ApiError::Decode(format!(
            "next_page_uri `{next}` leaves the API origin {}; not sending the API key there",
            base.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

/// The error for a non-2xx answer: ngrok's error JSON when the body is one, else the start of
/// the body as text; `key` is scrubbed from what the server wrote.
pub(crate) fn status_error(status: StatusCode, body: &[u8], key: &str) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (error_code, msg, operation_id) = match parsed {
        Some(b) => (b.error_code, b.msg, b.details.operation_id),
        None => (String::new(), snippet(body), String::new()),
    };
    let msg = one_line(&scrub(&msg, key));
    let error_code = one_line(&error_code);
    let operation_id = one_line(&operation_id);
    match status.as_u16() {
        s @ (401 | 403) => ApiError::Unauthorized {
            status: s,
            error_code,
            msg,
        },
        404 => ApiError::NotFound { error_code, msg },
        s => ApiError::Api {
            status: s,
            error_code,
            msg,
            operation_id,
        },
    }
}

/// Server text as one printable line, for a log line: line breaks and tabs become one space
/// (ngrok's messages end in `\r\n\r\nERR_NGROK_…`), other control characters are escaped.
fn one_line(text: &str) -> String {
    let spaced = text
        .split(['\r', '\n', '\t'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::with_capacity(spaced.len());
    // Writing into a String cannot fail.
    let _ = crate::config::write_printable(&mut out, &spaced);
    out
}

/// Removes the API key from text that came from the network or a library.
fn scrub(text: &str, key: &str) -> String {
    if key.is_empty() {
        text.to_owned()
    } else {
        text.replace(key, crate::secret::REDACTED)
    }
}

pub(crate) fn parse_base(api_url: &str) -> Result<Url, ApiError> {
    let mut base =
        Url::parse(api_url).map_err(|e| ApiError::Invalid(format!("API URL `{api_url}`: {e}")))?;
    match base.scheme() {
        "https" => {}
        "http" => {
            if !is_loopback(base.host_str().unwrap_or("")) {
                return Err(ApiError::Invalid(format!(
                    "API URL `{api_url}`: plain http is allowed only to a loopback address; the API key must not cross a network unencrypted"
                )));
            }
        }
        other => {
            return Err(ApiError::Invalid(format!(
                "API URL `{api_url}`: unsupported scheme `{other}`"
            )));
        }
    }
    if base.cannot_be_a_base() || base.host_str().is_none() {
        return Err(ApiError::Invalid(format!("API URL `{api_url}`: no host")));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(ApiError::Invalid(format!(
            "API URL `{api_url}`: must not have a query or fragment"
        )));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Invalid(format!("request body: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Decode(format!("{what}: {e}")))
}

/// The start of a non-JSON error body, as text.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
