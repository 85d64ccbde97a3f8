//! Clusters and how they reach their upstreams: `static` (plain TCP) and `binding_upstream`
//! (mTLS + binding upgrade through an ingress), with retries before any byte went upstream.
//!
//! Clusters are built once per snapshot and shared by the connections accepted under it. An
//! ingress's transport (`transport`: `dial` direct, `pool` warm, `multiplex` HTTP/2) is stateful
//! and outlives snapshots: `transport::Transports` (held by the retained store) hands a rebuilt
//! ingress its predecessor's.

pub mod background;
pub mod binding;
pub mod dial;
pub mod early;
pub mod h2_stream;
pub mod http_pool;
pub mod multiplex;
pub mod pool;
pub mod resolve;
pub mod static_cluster;
pub mod stream;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use binding::{BindingTarget, Ingress, UpgradeRequest};
pub use dial::IngressDialer;
pub use h2_stream::H2Stream;
pub use multiplex::{MultiplexSettings, MultiplexStats, Multiplexer};
pub use pool::{PoolSettings, PoolStats, WarmPool};
pub use static_cluster::StaticEndpoints;
pub use stream::{UpstreamConn, UpstreamStream};
pub use transport::{
    Fingerprint, IngressKey, IngressTransport, TransportSettings, TransportSpec, Transports,
};

use crate::wire::FrameError;

/// Why an upstream could not be reached. Messages carry what a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect {addr}: timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("TLS with ingress {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("binding upgrade with ingress {addr}: {reason}")]
    Upgrade { addr: String, reason: String },
    #[error("ingress {addr} refused {endpoint}: {failure}")]
    Refused {
        addr: String,
        endpoint: String,
        failure: String,
    },
    #[error("the cluster has no endpoints")]
    NoEndpoints,
    #[error("cluster `{cluster}`: {reason}")]
    CircuitOpen {
        cluster: String,
        reason: &'static str,
    },
}

impl UpstreamError {
    pub(crate) fn tls(addr: &str, e: &std::io::Error) -> Self {
        UpstreamError::Tls {
            addr: addr.to_owned(),
            reason: describe_tls(e),
        }
    }

    /// A copy for a second caller (errors hold `io::Error`, which is not `Clone`): several
    /// streams waiting on one failed HTTP/2 dial each get it.
    pub fn duplicate(&self) -> Self {
        match self {
            UpstreamError::Connect { addr, source } => UpstreamError::Connect {
                addr: addr.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            UpstreamError::Timeout { addr, after } => UpstreamError::Timeout {
                addr: addr.clone(),
                after: *after,
            },
            UpstreamError::Tls { addr, reason } => UpstreamError::Tls {
                addr: addr.clone(),
                reason: reason.clone(),
            },
            UpstreamError::Upgrade { addr, reason } => UpstreamError::Upgrade {
                addr: addr.clone(),
                reason: reason.clone(),
            },
            UpstreamError::Refused {
                addr,
                endpoint,
                failure,
            } => UpstreamError::Refused {
                addr: addr.clone(),
                endpoint: endpoint.clone(),
                failure: failure.clone(),
            },
            UpstreamError::NoEndpoints => UpstreamError::NoEndpoints,
            UpstreamError::CircuitOpen { cluster, reason } => UpstreamError::CircuitOpen {
                cluster: cluster.clone(),
                reason,
            },
        }
    }

    pub(crate) fn upgrade(addr: &str, e: FrameError) -> Self {
        let reason = match e {
            FrameError::Io(io) if rustls_error(&io).is_some() => describe_tls(&io),
            FrameError::Closed => "the ingress closed the connection before answering".to_owned(),
            other => other.to_string(),
        };
        UpstreamError::Upgrade {
            addr: addr.to_owned(),
            reason,
        }
    }
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Turns rustls failures into advice: which side distrusts which certificate.
fn describe_tls(e: &std::io::Error) -> String {
    use rustls::{AlertDescription as A, Error as R};
    match rustls_error(e) {
        Some(R::InvalidCertificate(why)) => format!(
            "the ingress's certificate is not trusted ({why:?}); set the ingress's `ca:` to the CA that signed it"
        ),
        Some(R::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::AccessDenied),
        )) => format!("the ingress rejected our client certificate (TLS alert {alert:?})"),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// Where a cluster sends connections.
#[derive(Debug)]
pub enum ClusterTarget {
    Static(StaticEndpoints),
    Binding(BindingTarget),
}

impl ClusterTarget {
    /// The `Host` an HTTP/1.1 request to this cluster carries when the client's request had
    /// none (HTTP/1.0): the bound endpoint's `host:port`, or a static cluster's first endpoint,
    /// as nginx sends its `$proxy_host`.
    pub fn host_header(&self) -> Option<http::HeaderValue> {
        let authority = match self {
            ClusterTarget::Binding(b) => b.authority(),
            ClusterTarget::Static(s) => s.addresses.first()?.as_str(),
        };
        http::HeaderValue::from_str(authority).ok()
    }
}

/// What a cluster's connect stack is asked for: one upstream connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectRequest;

/// A cluster's connect stack (see `filters::connect`): retry, circuit breaker and connect
/// timeout around its transport.
pub type ConnectService =
    tower::util::BoxCloneSyncService<ConnectRequest, UpstreamConn, UpstreamError>;

/// Something of the connect stack that `/clusters` shows (the circuit breaker).
pub trait ConnectView: Send + Sync {
    fn describe(&self) -> serde_json::Value;
}

/// Renders a connect stack's layers for views (built per cluster per snapshot, called rarely).
pub type ChainView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A cluster as the data path sees it.
pub struct Cluster {
    pub name: String,
    pub target: Arc<ClusterTarget>,
    /// The connect stack in force, outermost first (for `/config_dump`), rendered on demand.
    pub connect_chain: ChainView,
    pub metrics: Arc<crate::telemetry::ClusterMetrics>,
    connect: ConnectService,
    view: Option<Arc<dyn ConnectView>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster whose connects go through `connect` (built around [`Cluster::transport`]).
    pub fn new(
        name: String,
        target: Arc<ClusterTarget>,
        connect: ConnectService,
        view: Option<Arc<dyn ConnectView>>,
        metrics: Arc<crate::telemetry::ClusterMetrics>,
    ) -> Self {
        Cluster {
            name,
            target,
            connect_chain: Arc::new(|| serde_json::Value::Null),
            metrics,
            connect,
            view,
        }
    }

    /// The leaf of a connect stack: one attempt through the cluster's transport.
    pub fn transport(target: Arc<ClusterTarget>) -> ConnectService {
        ConnectService::new(tower::service_fn(move |_: ConnectRequest| {
            let target = target.clone();
            async move {
                match &*target {
                    ClusterTarget::Static(s) => s.connect().await,
                    ClusterTarget::Binding(b) => b.connect().await,
                }
                .map(UpstreamConn::new)
            }
        }))
    }

    /// Records the connect stack's layers (outermost first) for views.
    pub fn with_chain(mut self, chain: ChainView) -> Self {
        self.connect_chain = chain;
        self
    }

    /// One upstream connection, through the connect stack. Nothing has been sent upstream when
    /// it returns.
    pub async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        use tower::ServiceExt;
        let start = tokio::time::Instant::now();
        let conn = self.connect.clone().oneshot(ConnectRequest).await?;
        self.metrics.connect_duration(start.elapsed());
        Ok(conn)
    }

    /// What the cluster points at, to key state carried across builds (its http pool).
    pub fn identity(&self) -> String {
        match &*self.target {
            ClusterTarget::Static(s) => format!("static:{}", s.addresses.join(",")),
            ClusterTarget::Binding(b) => {
                format!(
                    "binding:{}@{}={}",
                    b.request, b.ingress.name, b.ingress.address
                )
            }
        }
    }

    /// A one-line description for the admin `/clusters` view.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = match &*self.target {
            ClusterTarget::Static(s) => serde_json::json!({
                "name": self.name, "type": "static", "endpoints": s.addresses,
            }),
            ClusterTarget::Binding(b) => serde_json::json!({
                "name": self.name, "type": "binding_upstream", "endpoint": &*b.request.name,
                "ingress": b.ingress.name, "ingress_address": b.ingress.address,
                "transport": b.ingress.transport.describe(),
            }),
        };
        if let (Some(view), Some(obj)) = (&self.view, v.as_object_mut()) {
            obj.insert("circuit_breaker".into(), view.describe());
        }
        v
    }
}
