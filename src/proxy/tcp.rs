//! The tcp pipeline: one accepted connection → its listener's cluster → splice.

use std::sync::Arc;

use super::Pipeline;
use super::splice::{SpliceError, splice};
use crate::filters::network::{Conn, ConnOutcome, Outcome};
use crate::snapshot::RouteTable;

/// Serves one admitted connection until it ends, fails, idles out, or the drain ends.
pub async fn serve(p: &Pipeline, conn: Conn) -> ConnOutcome {
    let Conn {
        io,
        peer,
        force_close,
        ..
    } = conn;
    let RouteTable::Tcp(cluster) = &*p.routes else {
        return ConnOutcome::new(None, Outcome::NoRoute);
    };
    let name: Arc<str> = Arc::from(cluster.name.as_str());
    let work = async {
        let upstream = match cluster.connect().await {
            Ok(u) => u,
            Err(e) => {
                cluster.metrics.connect_failed();
                tracing::warn!(listener = %p.listener, cluster = %cluster.name, %peer, "upstream unreachable, closing client: {e}");
                return Outcome::UpstreamError;
            }
        };
        match splice(io, upstream, p.idle_timeout).await {
            Ok(stats) => {
                tracing::debug!(
                    listener = %p.listener, cluster = %cluster.name, %peer,
                    sent = stats.downstream_to_upstream, received = stats.upstream_to_downstream, "connection done"
                );
                Outcome::Ok
            }
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %p.listener, %peer, "closed after {d:?} idle");
                Outcome::Timeout
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %p.listener, cluster = %cluster.name, %peer, "connection ended: {e}");
                Outcome::Ok
            }
        }
    };
    let outcome = tokio::select! {
        o = work => o,
        _ = super::Cancelled::new(&force_close) => {
            tracing::debug!(listener = %p.listener, %peer, "closed at the end of the drain");
            Outcome::Drained
        }
    };
    ConnOutcome::new(Some(name), outcome)
}
