//! The raw mTLS echo port: the binding ingress's TLS (≥ 1.2, the sandbox CA's server
//! certificate) and its client-certificate check (a certificate chaining to the sandbox CA,
//! naming the sandbox's account as first DNS SAN, not revoked), then every byte echoed back, with
//! no binding upgrade. Generic TLS proxies (HAProxy, stunnel) cannot speak the upgrade, so this
//! is where benchmarks send them to make the same mTLS hop bindgate makes to the ingress.
//!
//! A client the check refuses is disconnected before anything is echoed. This module owns the
//! per-connection state machine only, not the listener's accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::ca::SandboxCa;
use super::ingress::ClientIdentity;

/// Everything a connection needs, shared by all of them.
pub struct RawEcho {
    acceptor: TlsAcceptor,
    ca: Arc<SandboxCa>,
    account_id: String,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for RawEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEcho")
            .field("account_id", &self.account_id)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl RawEcho {
    /// `tls` must require client certificates from `ca`, as the ingress's does.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        ca: Arc<SandboxCa>,
        account_id: String,
        handshake_timeout: Duration,
    ) -> Self {
        RawEcho {
            acceptor: TlsAcceptor::from(tls),
            ca,
            account_id,
            handshake_timeout,
        }
    }

    /// Serves one accepted TCP connection to its end. Never panics on peer input.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tls = match timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, "raw echo TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, "raw echo TLS handshake timed out");
                return;
            }
        };
        let identity = ClientIdentity::of(&tls);
        if let Err(why) = self.admit(identity.as_ref()) {
            debug!(%peer, "raw echo refusing client: {why}");
            // No echo: the client's bytes are never read. Dropping the stream closes it.
            return;
        }
        let (mut reader, mut writer) = tokio::io::split(tls);
        let echoed = async {
            let n = tokio::io::copy(&mut reader, &mut writer).await?;
            // The client's end of stream: send close_notify and shut down the TCP write side.
            writer.shutdown().await?;
            Ok::<_, std::io::Error>(n)
        };
        match echoed.await {
            Ok(n) => debug!(%peer, bytes = n, "raw echo connection done"),
            Err(e) => debug!(%peer, "raw echo connection failed: {e}"),
        }
    }

    /// The ingress's identity check, without its answer frame: the account and revocation.
    fn admit(&self, identity: Option<&ClientIdentity>) -> Result<(), String> {
        let Some(identity) = identity else {
            return Err("no readable client certificate".to_owned());
        };
        if self.ca.is_revoked(identity.serial()) {
            return Err("the client certificate was revoked".to_owned());
        }
        match identity.account() {
            Some(account) if account == self.account_id => Ok(()),
            other => Err(format!(
                "the client certificate names account `{}`, not `{}`",
                other.unwrap_or("(none)"),
                self.account_id
            )),
        }
    }
}
