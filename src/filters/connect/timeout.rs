//! The connect timeout of each attempt: TCP (and for a binding ingress, TLS and the upgrade,
//! or a pooled connection's upgrade, or a CONNECT stream) within the cluster's
//! `connect_timeout` (static) or its ingress's (binding_upstream). tower's `Timeout`, with its
//! elapsed error turned into [`UpstreamError::Timeout`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tower::Layer;
use tower::timeout::Timeout;

use crate::upstream::{ConnectRequest, UpstreamConn, UpstreamError};

#[derive(Clone, Debug)]
pub struct ConnectTimeoutLayer {
    after: Duration,
    addr: Arc<str>,
}

impl ConnectTimeoutLayer {
    pub fn new(after: Duration, addr: String) -> Self {
        ConnectTimeoutLayer {
            after,
            addr: addr.into(),
        }
    }
}

impl<S> Layer<S> for ConnectTimeoutLayer {
    type Service = ConnectTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConnectTimeout {
            inner: Timeout::new(inner, self.after),
            after: self.after,
            addr: self.addr.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ConnectTimeout<S> {
    inner: Timeout<S>,
    after: Duration,
    // Shared: the stack is cloned for each connection.
    addr: Arc<str>,
}

impl<S> tower::Service<ConnectRequest> for ConnectTimeout<S>
where
    S: tower::Service<ConnectRequest, Response = UpstreamConn, Error = UpstreamError>,
    S::Future: Send + 'static,
{
    type Response = UpstreamConn;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<UpstreamConn, UpstreamError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamError>> {
        let after = self.after;
        self.inner
            .poll_ready(cx)
            .map_err(|e| unbox(e, &self.addr, after))
    }

    fn call(&mut self, req: ConnectRequest) -> Self::Future {
        let f = self.inner.call(req);
        let (after, addr) = (self.after, self.addr.clone());
        Box::pin(async move { f.await.map_err(|e| unbox(e, &addr, after)) })
    }
}

fn unbox(e: tower::BoxError, addr: &str, after: Duration) -> UpstreamError {
    match e.downcast::<UpstreamError>() {
        Ok(e) => *e,
        Err(_) => UpstreamError::Timeout {
            addr: addr.to_owned(),
            after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_hanging_connect_times_out_with_the_address() {
        let hang = tower::service_fn(|_r: ConnectRequest| async {
            std::future::pending::<Result<UpstreamConn, UpstreamError>>().await
        });
        let svc =
            ConnectTimeoutLayer::new(Duration::from_secs(2), "10.0.0.1:80".into()).layer(hang);
        let start = tokio::time::Instant::now();
        let e = svc.oneshot(ConnectRequest).await.err().unwrap();
        assert!(
            matches!(e, UpstreamError::Timeout { ref addr, after } if addr == "10.0.0.1:80" && after == Duration::from_secs(2)),
            "{e}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn inner_errors_pass_unchanged() {
        let (fail, _) = super::super::testing::scripted(1);
        let svc = ConnectTimeoutLayer::new(Duration::from_secs(2), "x".into()).layer(fail);
        let e = svc.oneshot(ConnectRequest).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    }
}
