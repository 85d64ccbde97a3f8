//! Per-connection pipelines, the leaves of each listener's network filter stack: tcp (one fixed
//! cluster, splice), tls (routed by the ClientHello's SNI, passed through), http (routed per
//! request, each route's http filters around forwarding over pooled upstream connections).

pub mod http;
pub mod http_path;
pub mod sni;
pub mod splice;
pub mod tcp;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::Protocol;
use crate::filters::network::{Conn, ConnService};
use crate::snapshot::RouteTable;

/// What a listener's pipeline needs, fixed for a snapshot.
#[derive(Debug)]
pub struct Pipeline {
    pub listener: Arc<str>,
    pub protocol: Protocol,
    pub routes: Arc<RouteTable>,
    /// tcp, tls and upgraded connections: closed when no byte moved for this long. http: the
    /// idle limit of request and response bodies.
    pub idle_timeout: Duration,
    /// http: the time to send a request head, or to start the next one on a kept-alive
    /// connection.
    pub request_headers_timeout: Duration,
    /// http: header names go on in the case they came in (else in lower case).
    pub preserve_header_case: bool,
    pub metrics: Arc<crate::telemetry::ListenerMetrics>,
}

/// The leaf of a listener's network stack: the protocol's pipeline.
pub fn pipeline(p: Arc<Pipeline>) -> ConnService {
    ConnService::new(tower::service_fn(move |conn: Conn| {
        let p = p.clone();
        async move {
            // Counted here, past the filters: only admitted connections.
            p.metrics.accepted();
            let _active = p.metrics.open();
            let bytes = conn.io.bytes();
            let done = match p.protocol {
                Protocol::Tcp => tcp::serve(&p, conn).await,
                Protocol::Tls => tls::serve(&p, conn).await,
                Protocol::Http => http::serve(p.clone(), conn).await,
            };
            p.metrics.bytes(
                bytes.received.load(Ordering::Relaxed),
                bytes.sent.load(Ordering::Relaxed),
            );
            Ok::<_, Infallible>(done)
        }
    }))
}
