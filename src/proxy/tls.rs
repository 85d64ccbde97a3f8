//! The tls pipeline (passthrough): read the ClientHello, route by its server name, connect the
//! cluster, replay the bytes read, then splice. TLS is never terminated here: the client's
//! handshake is with the upstream, which presents its own certificate.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::Pipeline;
use super::sni::read_client_hello;
use super::splice::{SpliceError, splice};
use crate::filters::network::{Conn, ConnOutcome, Outcome};
use crate::snapshot::RouteTable;

/// How long a client has to send its whole ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = crate::filters::timeouts::CLIENT_HELLO;

/// Serves one admitted connection until it ends, fails, idles out, or the drain ends.
pub async fn serve(p: &Pipeline, conn: Conn) -> ConnOutcome {
    let Conn {
        mut io,
        peer,
        force_close,
        ..
    } = conn;
    let RouteTable::Tls(routes) = &*p.routes else {
        return ConnOutcome::new(None, Outcome::NoRoute);
    };
    let name = &p.listener;
    let mut routed: Option<Arc<str>> = None;
    let work = async {
        let (hello, server_name) = match read_client_hello(&mut io, CLIENT_HELLO_TIMEOUT).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(listener = %name, %peer, "closing: {e}");
                return Outcome::ClientError;
            }
        };
        let sni = server_name.as_deref().unwrap_or("");
        let Some(cluster) = routes.find(server_name.as_deref()) else {
            tracing::debug!(listener = %name, %peer, sni, "closing: no route for this server name and no default route");
            return Outcome::NoRoute;
        };
        routed = Some(Arc::from(cluster.name.as_str()));
        let mut upstream = match cluster.connect().await {
            Ok(u) => u,
            Err(e) => {
                cluster.metrics.connect_failed();
                tracing::warn!(listener = %name, cluster = %cluster.name, %peer, sni, "upstream unreachable, closing client: {e}");
                return Outcome::UpstreamError;
            }
        };
        if let Err(e) = upstream.write_all(&hello).await {
            tracing::debug!(listener = %name, cluster = %cluster.name, %peer, "closing: replaying the ClientHello upstream: {e}");
            return Outcome::UpstreamError;
        }
        match splice(io, upstream, p.idle_timeout).await {
            Ok(stats) => {
                tracing::debug!(
                    listener = %name, cluster = %cluster.name, %peer, sni,
                    sent = stats.downstream_to_upstream + hello.len() as u64,
                    received = stats.upstream_to_downstream, "connection done"
                );
                Outcome::Ok
            }
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %name, %peer, "closed after {d:?} idle");
                Outcome::Timeout
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %name, cluster = %cluster.name, %peer, "connection ended: {e}");
                Outcome::Ok
            }
        }
    };
    let outcome = tokio::select! {
        o = work => o,
        _ = super::Cancelled::new(&force_close) => {
            tracing::debug!(listener = %name, %peer, "closed at the end of the drain");
            Outcome::Drained
        }
    };
    ConnOutcome::new(routed, outcome)
}
