//! The tls pipeline (passthrough): read the ClientHello, route by its server name, connect the
//! cluster, replay the bytes read, then splice. TLS is never terminated here: the client's
//! handshake is with the upstream, which presents its own certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::sni::read_client_hello;
use super::splice::{SpliceError, splice};
use crate::snapshot::{ListenerSpec, RouteTable};

/// How long a client has to send its whole ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one admitted connection until it ends, fails, idles out, or `force_close` fires.
pub async fn serve(
    listener: Arc<ListenerSpec>,
    mut client: TcpStream,
    peer: SocketAddr,
    force_close: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let RouteTable::Tls(routes) = &listener.routes else {
        return;
    };
    let name = &listener.name;
    let work = async {
        let (hello, server_name) = match read_client_hello(&mut client, CLIENT_HELLO_TIMEOUT).await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(listener = %name, %peer, "closing: {e}");
                return;
            }
        };
        let sni = server_name.as_deref().unwrap_or("");
        let Some(cluster) = routes.find(server_name.as_deref()) else {
            tracing::debug!(listener = %name, %peer, sni, "closing: no route for this server name and no default route");
            return;
        };
        let mut upstream = match cluster.connect().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(listener = %name, cluster = %cluster.name, %peer, sni, "upstream unreachable, closing client: {e}");
                return;
            }
        };
        if let Err(e) = upstream.write_all(&hello).await {
            tracing::debug!(listener = %name, cluster = %cluster.name, %peer, "closing: replaying the ClientHello upstream: {e}");
            return;
        }
        match splice(client, upstream, listener.idle_timeout).await {
            Ok(stats) => tracing::debug!(
                listener = %name, cluster = %cluster.name, %peer, sni,
                sent = stats.downstream_to_upstream + hello.len() as u64,
                received = stats.upstream_to_downstream, "connection done"
            ),
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %name, %peer, "closed after {d:?} idle")
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %name, cluster = %cluster.name, %peer, "connection ended: {e}")
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = force_close.cancelled() => {
            tracing::debug!(listener = %name, %peer, "closed at the end of the drain");
        }
    }
}
