//! `binding_upstream`: reaching an ngrok bound endpoint through a binding ingress.
//! TCP connect → mTLS (SNI = ingress host) → framed ConnRequest → framed ConnResponse → raw pipe,
//! or a CONNECT stream on a multiplexed HTTP/2 connection; the ingress's transport decides.

use std::sync::Arc;
use std::time::Duration;

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

/// A bound endpoint reached through an ingress.
#[derive(Debug)]
pub struct BindingTarget {
    pub url: BoundUrl,
    pub ingress: Arc<Ingress>,
}

impl BindingTarget {
    /// Opens an upgraded stream to the endpoint through the ingress's transport. The connect
    /// stack's timeout layer bounds the whole of it (a dial, a pooled connection's upgrade, or
    /// a CONNECT stream) by the ingress's `connect_timeout`.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let request = ConnRequest {
            host: self.url.host.clone(),
            port: i64::from(self.url.port),
            pod_identity: None,
        };
        // Published snapshots activate their transports; a snapshot used before that (or
        // never published) starts its transport on first use.
        if !self.ingress.transport.is_activated() {
            self.ingress.activate();
        }
        self.ingress.transport.open(&self.url, &request).await
    }
}
