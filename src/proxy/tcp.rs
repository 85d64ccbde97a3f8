//! The tcp pipeline: one accepted connection → its listener's cluster → splice.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::splice::{SpliceError, splice};
use crate::snapshot::{ListenerSpec, RouteTable};

/// Serves one admitted connection until it ends, fails, idles out, or `force_close` fires.
pub async fn serve(
    listener: Arc<ListenerSpec>,
    client: TcpStream,
    peer: SocketAddr,
    force_close: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let RouteTable::Tcp(cluster) = &listener.routes else {
        return;
    };
    let work = async {
        let upstream = match cluster.connect().await {
            Ok(u) => u,
            Err(e) => {
                crate::telemetry::upstream_connect_failed();
                tracing::warn!(listener = %listener.name, cluster = %cluster.name, %peer, "upstream unreachable, closing client: {e}");
                return;
            }
        };
        match splice(client, upstream, listener.idle_timeout).await {
            Ok(stats) => tracing::debug!(
                listener = %listener.name, cluster = %cluster.name, %peer,
                sent = stats.downstream_to_upstream, received = stats.upstream_to_downstream, "connection done"
            ),
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %listener.name, %peer, "closed after {d:?} idle")
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %listener.name, cluster = %cluster.name, %peer, "connection ended: {e}")
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = force_close.cancelled() => {
            tracing::debug!(listener = %listener.name, %peer, "closed at the end of the drain");
        }
    }
}
