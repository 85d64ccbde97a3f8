//! `binding_upstream`: reaching an ngrok bound endpoint through a binding ingress.
//! TCP connect → mTLS (SNI = ingress host) → framed ConnRequest → framed ConnResponse → raw pipe,
//! or a CONNECT stream on a multiplexed HTTP/2 connection; the ingress's transport decides.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::dial::IngressDialer;
use super::transport::{
    Fingerprint, IngressTransport, TransportSettings, TransportSpec, Transports,
};
use super::{UpstreamError, UpstreamStream};
use crate::bound_url::BoundUrl;
use crate::wire::ConnRequest;

/// One binding ingress: where it is, how long an open may take, and the transport
/// (direct dial, warm pool, or HTTP/2 multiplexer, which holds the TLS identity and trust) that
/// carries connections to it.
pub struct Ingress {
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub connect_timeout: Duration,
    /// Shared with earlier snapshots' ingresses of the same identity and settings (see
    /// `upstream::transport`), so a reload keeps warm connections.
    pub transport: IngressTransport,
    /// The control plane's transports: activation retires the predecessor.
    transports: Arc<Transports>,
    /// Static `client_cert` / `client_key` files, followed from activation on.
    watched: Option<Arc<crate::identity::WatchedIdentity>>,
}

impl Ingress {
    /// An ingress and its transport: the live one of an earlier build with the same identity
    /// and settings, or a new one (started only when a snapshot using it is published).
    /// `trust` fingerprints the roots the dialer's TLS config was built with.
    pub fn new(
        dialer: IngressDialer,
        trust: Fingerprint,
        settings: TransportSettings,
        transports: Arc<Transports>,
    ) -> Ingress {
        let (name, address) = (dialer.name.to_string(), dialer.address.to_string());
        let connect_timeout = dialer.connect_timeout;
        let transport = transports.transport_for(TransportSpec {
            dialer,
            trust,
            settings,
        });
        Ingress {
            name,
            address,
            connect_timeout,
            transport,
            transports,
            watched: None,
        }
    }

    /// Files whose rotation this ingress follows once activated.
    pub fn with_watched(
        mut self,
        watched: Option<Arc<crate::identity::WatchedIdentity>>,
    ) -> Ingress {
        self.watched = watched;
        self
    }

    /// Makes this ingress's transport the one serving its name (starts it, retires the one it
    /// replaces). Idempotent.
    pub fn activate(&self) {
        self.transports.activate(&self.transport, &self.name);
        if let Some(w) = &self.watched {
            w.watch();
        }
    }
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("transport", &self.transport.kind())
            .finish_non_exhaustive()
    }
}

/// One endpoint's binding upgrade, prepared once when its cluster is built rather than on every
/// connection: the framed `ConnRequest` the `direct` and `pool` transports send, and the
/// authority of the CONNECT stream the `multiplex` transport opens.
#[derive(Debug)]
pub struct UpgradeRequest {
    /// The URL as text, for logs, errors and early upgrades' deferred answers.
    pub name: Arc<str>,
    /// The `ConnRequest`, length prefix included.
    frame: Bytes,
    /// `host:port`: a CONNECT request's URI. Cloning it shares its bytes.
    authority: http::Uri,
}

impl UpgradeRequest {
    /// Fails only for a URL no ingress could be asked for: a `host:port` that is not a URI
    /// authority, or a request over the frame's 64 KiB. A parsed [`BoundUrl`] is neither.
    pub fn new(url: BoundUrl) -> Result<UpgradeRequest, String> {
        let frame = crate::wire::encode_frame(&ConnRequest {
            host: url.host.clone(),
            port: i64::from(url.port),
            pod_identity: None,
        })
        .map_err(|e| format!("`{url}`: {e}"))?;
        let authority =
            http::Uri::from_maybe_shared(Bytes::from(format!("{}:{}", url.host, url.port)))
                .map_err(|e| format!("`{url}` is not a valid CONNECT authority: {e}"))?;
        Ok(UpgradeRequest {
            name: url.to_string().into(),
            frame: frame.into(),
            authority,
        })
    }

    /// The framed `ConnRequest`.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The `CONNECT host:port` request that opens a multiplexed stream to the endpoint.
    pub fn connect(&self) -> http::Request<()> {
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() = self.authority.clone();
        req
    }
}

impl std::fmt::Display for UpgradeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// A bound endpoint reached through an ingress.
#[derive(Debug)]
pub struct BindingTarget {
    pub request: UpgradeRequest,
    pub ingress: Arc<Ingress>,
}

impl BindingTarget {
    /// The endpoint's `host:port` (`web.default:80`).
    pub fn authority(&self) -> &str {
        self.request
            .authority
            .authority()
            .map_or("", http::uri::Authority::as_str)
    }

    /// See [`UpgradeRequest::new`] for how this fails.
    pub fn new(url: BoundUrl, ingress: Arc<Ingress>) -> Result<BindingTarget, String> {
        Ok(BindingTarget {
            request: UpgradeRequest::new(url)?,
            ingress,
        })
    }

    /// Opens an upgraded stream to the endpoint through the ingress's transport. The connect
    /// stack's timeout layer bounds the whole of it (a dial, a pooled connection's upgrade, or
    /// a CONNECT stream) by the ingress's `connect_timeout`.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        // Published snapshots activate their transports; a snapshot used before that (or
        // never published) starts its transport on first use.
        if !self.ingress.transport.is_activated() {
            self.ingress.activate();
        }
        self.ingress.transport.open(&self.request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_request_is_the_protocol_frame_and_connect_authority() {
        let url = BoundUrl::parse("http://svc.ns", None).unwrap();
        let request = UpgradeRequest::new(url).unwrap();
        // PROTOCOL.md §1's vector for `ConnRequest{host:"svc.ns", port:80}`.
        assert_eq!(
            request.frame(),
            [
                0x0a, 0x00, 0x0a, 0x06, b's', b'v', b'c', b'.', b'n', b's', 0x10, 0x50
            ]
        );
        let connect = request.connect();
        assert_eq!(connect.method(), http::Method::CONNECT);
        assert_eq!(connect.uri().to_string(), "svc.ns:80");
        assert_eq!(
            connect.uri().authority().map(|a| a.as_str()),
            Some("svc.ns:80")
        );
        assert_eq!(&*request.name, "http://svc.ns:80");
        assert_eq!(request.to_string(), "http://svc.ns:80");
    }
}
