//! `connection_limit`: caps the connections a listener has open at once. A connection over the
//! cap is turned away at accept, before any upstream work; the slot frees when a connection ends.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::{Conn, ConnOutcome, ConnService, NetworkFilter};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimit {
    /// Connections open at once; more are turned away (tcp/tls: closed; http: `503`).
    pub max_connections: u32,
}

impl NetworkFilter for ConnectionLimit {
    fn check(&self, _ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        if self.max_connections == 0 {
            return vec![("max_connections".into(), "must be at least 1".into())];
        }
        Vec::new()
    }

    fn layer(&self, inner: ConnService, ctx: &BuildCtx<'_>) -> ConnService {
        let n = self.max_connections as usize;
        let open = ctx.state("network/connection_limit", self, || Semaphore::new(n));
        ConnService::new(ConnectionLimitLayer { open }.layer(inner))
    }
}

/// Holds one permit of `open` for the life of each admitted connection.
#[derive(Clone)]
pub struct ConnectionLimitLayer {
    pub open: Arc<Semaphore>,
}

crate::filters::around_layer!(ConnectionLimitLayer => ConnectionLimitService, Conn, ConnOutcome);

impl ConnectionLimitLayer {
    fn around<S>(&self, next: S, conn: Conn) -> BoxFuture<'static, Result<ConnOutcome, Infallible>>
    where
        S: Service<Conn, Response = ConnOutcome, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let permit = self.open.clone().try_acquire_owned();
        let inner = next;
        Box::pin(async move {
            match permit {
                Ok(permit) => {
                    let outcome = inner.oneshot(conn).await;
                    drop(permit);
                    outcome
                }
                Err(_) => Ok(conn
                    .reject("connection_limit", "max_connections reached", None)
                    .await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::filters::network::Outcome;
    use crate::filters::network::testing::{conn_pair, counting_leaf};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn over_the_cap_is_rejected_until_a_slot_frees() {
        let open = Arc::new(Semaphore::new(1));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        // A leaf that holds its connection until the gate opens.
        let leaf = tower::service_fn(move |_c: Conn| {
            let mut gate = gate_rx.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(ConnOutcome::new(None, Outcome::Ok))
            }
        });
        let svc = ConnectionLimitLayer { open: open.clone() }.layer(leaf);
        let (c1, _k1) = conn_pair(Protocol::Tcp).await;
        let first = tokio::spawn(svc.clone().oneshot(c1));
        tokio::task::yield_now().await;
        while open.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        let (c2, mut k2) = conn_pair(Protocol::Tcp).await;
        let second = svc.clone().oneshot(c2).await.unwrap();
        assert_eq!(
            second.outcome,
            Outcome::Rejected {
                filter: "connection_limit",
                reason: "max_connections reached"
            }
        );
        let mut buf = Vec::new();
        assert_eq!(
            k2.read_to_end(&mut buf).await.unwrap(),
            0,
            "closed, no bytes"
        );
        gate_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap().outcome, Outcome::Ok);
        assert_eq!(open.available_permits(), 1);
        let (c3, _k3) = conn_pair(Protocol::Tcp).await;
        let (leaf, reached) = counting_leaf();
        let svc = ConnectionLimitLayer { open }.layer(leaf);
        assert_eq!(svc.oneshot(c3).await.unwrap().outcome, Outcome::Ok);
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_http_listener_answers_503_with_retry_after() {
        let open = Arc::new(Semaphore::new(0));
        let (leaf, reached) = counting_leaf();
        let svc = ConnectionLimitLayer { open }.layer(leaf);
        let (c, mut k) = conn_pair(Protocol::Http).await;
        svc.oneshot(c).await.unwrap();
        let mut text = String::new();
        k.read_to_string(&mut text).await.unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
