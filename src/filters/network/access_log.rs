//! Network `access_log`: one JSON line per connection, written when it ends: `time` (RFC 3339,
//! when it ended), `listener`, `cluster`, `peer`, `duration_ms`, `bytes_received` (from the
//! client), `bytes_sent` (to the client), `outcome` (`ok`, `rejected:<filter>`, `no_route`,
//! `upstream_error`, `timeout`, `client_error`, `drained`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{Conn, ConnOutcome, ConnService, NetworkFilter};
use crate::filters::access_log::{AccessLogConfig, AccessLogWriter, now_rfc3339};
use crate::filters::{BuildCtx, CheckCtx, FilterIssue};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct NetworkAccessLog(pub AccessLogConfig);

impl NetworkFilter for NetworkAccessLog {
    fn check(&self, ctx: &CheckCtx<'_>) -> Vec<FilterIssue> {
        self.0.check(ctx.base_dir)
    }

    fn layer(&self, inner: ConnService, ctx: &BuildCtx<'_>) -> ConnService {
        ConnService::new(
            NetworkAccessLogLayer {
                writer: self.0.writer(ctx),
            }
            .layer(inner),
        )
    }
}

#[derive(Clone)]
pub struct NetworkAccessLogLayer {
    pub writer: Arc<AccessLogWriter>,
}

crate::filters::around_layer!(NetworkAccessLogLayer => NetworkAccessLogService, Conn, ConnOutcome);

impl NetworkAccessLogLayer {
    fn around<S>(&self, next: S, conn: Conn) -> BoxFuture<'static, Result<ConnOutcome, Infallible>>
    where
        S: Service<Conn, Response = ConnOutcome, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let inner = next;
        let writer = self.writer.clone();
        Box::pin(async move {
            let start = Instant::now();
            let bytes = conn.io.bytes();
            let (listener, peer) = (conn.listener.clone(), conn.peer);
            let Ok(done) = inner.oneshot(conn).await;
            writer.write(&serde_json::json!({
                "time": now_rfc3339(),
                "listener": &*listener,
                "cluster": done.cluster.as_deref(),
                "peer": peer.to_string(),
                "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
                "bytes_received": bytes.received.load(Ordering::Relaxed),
                "bytes_sent": bytes.sent.load(Ordering::Relaxed),
                "outcome": done.outcome.to_string(),
            }));
            Ok(done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::filters::access_log::Target;
    use crate::filters::network::Outcome;
    use crate::filters::network::testing::conn_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn one_line_per_connection_with_exact_byte_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let writer = Arc::new(AccessLogWriter::new(Target::File(path.clone())));
        // A leaf that reads 5 bytes and answers 3.
        let leaf = tower::service_fn(|mut c: Conn| async move {
            let mut buf = [0u8; 5];
            c.io.read_exact(&mut buf).await.unwrap();
            c.io.write_all(b"abc").await.unwrap();
            Ok::<_, Infallible>(ConnOutcome::new(Some(Arc::from("echo")), Outcome::Ok))
        });
        let svc = NetworkAccessLogLayer {
            writer: writer.clone(),
        }
        .layer(leaf);
        let (c, mut k) = conn_pair(Protocol::Tcp).await;
        let peer = c.peer;
        k.write_all(b"hello").await.unwrap();
        svc.oneshot(c).await.unwrap();
        let mut got = [0u8; 3];
        k.read_exact(&mut got).await.unwrap();
        writer.flush_for_test(1);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["listener"], "test");
        assert_eq!(line["cluster"], "echo");
        assert_eq!(line["peer"], peer.to_string());
        assert_eq!(line["bytes_received"], 5);
        assert_eq!(line["bytes_sent"], 3);
        assert_eq!(line["outcome"], "ok");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
}
