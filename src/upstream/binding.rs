//! `binding_upstream`: reaching an ngrok bound endpoint through a binding ingress.
//! TCP connect → mTLS (SNI = ingress host) → framed ConnRequest → framed ConnResponse → raw pipe.
//!
//! The dial is the `direct` transport: one fresh connection per proxied connection.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{UpstreamError, UpstreamStream};
use crate::snapshot::BoundUrl;
use crate::wire::{self, ConnRequest, ConnResponse};

/// One binding ingress: where it is and the TLS identity and trust used with it.
pub struct Ingress {
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("server_name", &self.server_name)
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
    /// Dials the ingress and performs the binding upgrade; the whole of it is bounded by the
    /// ingress's `connect_timeout`.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let ingress = &self.ingress;
        match tokio::time::timeout(ingress.connect_timeout, self.dial()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: ingress.address.clone(),
                after: ingress.connect_timeout,
            }),
        }
    }

    async fn dial(&self) -> Result<UpstreamStream, UpstreamError> {
        let ingress = &self.ingress;
        let addr = &ingress.address;
        let tcp =
            TcpStream::connect(addr.as_str())
                .await
                .map_err(|source| UpstreamError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(ingress.tls.clone())
            .connect(ingress.server_name.clone(), tcp)
            .await
            .map_err(|e| UpstreamError::tls(addr, &e))?;
        let request = ConnRequest {
            host: self.url.host.clone(),
            port: i64::from(self.url.port),
            pod_identity: None,
        };
        wire::write_frame(&mut tls, &request)
            .await
            .map_err(|e| UpstreamError::upgrade(addr, e))?;
        // TLS 1.3 reports a rejected client certificate here, on the first read.
        let response: ConnResponse = wire::read_frame(&mut tls)
            .await
            .map_err(|e| UpstreamError::upgrade(addr, e))?;
        for notice in &response.notices {
            tracing::warn!(ingress = %ingress.name, endpoint = %self.url, "ingress notice: {}", notice.message);
        }
        if let Some(failure) = response.failure() {
            return Err(UpstreamError::Refused {
                addr: addr.clone(),
                endpoint: self.url.to_string(),
                failure,
            });
        }
        tracing::debug!(ingress = %ingress.name, endpoint = %self.url, endpoint_id = %response.endpoint_id, "binding upgrade done");
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}
