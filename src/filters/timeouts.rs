//! Every timeout on the data path, in one place: what bounds what, its default, and the layer
//! or code that enforces it. Defaults that are not config fields live here as constants.
//!
//! | timeout | bounds | default | enforced by |
//! |---|---|---|---|
//! | header read | an http request head, and the wait for the next request on a kept-alive connection | the listener's `request_headers_timeout` (10s) | hyper's `header_read_timeout` in `proxy::http` |
//! | request body idle | a request body that stops sending | the listener's `idle_timeout` | [`crate::http_body::RequestBody`] |
//! | response body idle | an upstream response body that stops sending | the listener's `idle_timeout` | [`crate::http_body::ProxyBody`] |
//! | request | from the end of the request to the response head | `request_timeout` / the `timeout` filter ([`DEFAULT_REQUEST_TIMEOUT`]) | [`crate::filters::http::TimeoutLayer`] |
//! | connect | one connect attempt: TCP, and for a binding ingress TLS and the upgrade, a pooled connection's upgrade, or a CONNECT stream | a static cluster's `connect_timeout` ([`DEFAULT_STATIC_CONNECT`]), else the ingress's `connect_timeout` (5s) | [`crate::filters::connect::ConnectTimeoutLayer`] |
//! | ConnResponse after early data | the ingress's answer read behind the client's first bytes | the connection's `idle_timeout` (the answer is the first read) | `proxy::splice`'s idle timer |
//! | idle connection | tcp, tls and upgraded connections with no byte moving either way | the listener's `idle_timeout` | `proxy::splice` |
//! | ClientHello | the first bytes of a tls listener's connection | [`CLIENT_HELLO`] | `proxy::tls` |
//! | rejection answer | writing the `503` to an http client a network filter turned away | [`REJECT_WRITE`] | `filters::network::Conn::reject` |
//! | drain | open connections of a removed listener, or at shutdown | the listener's `drain_timeout` (30s) | `listener::ListenerManager` |

use std::time::Duration;

/// How long an http route waits for response headers when no `timeout` filter or
/// `request_timeout` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A static cluster's connect timeout when it sets no `connect_timeout`.
pub const DEFAULT_STATIC_CONNECT: Duration = Duration::from_secs(5);

/// How long a tls listener's client has to send its whole ClientHello.
pub const CLIENT_HELLO: Duration = Duration::from_secs(10);

/// How long an http client may take to read the `503` of a network filter's rejection.
pub const REJECT_WRITE: Duration = Duration::from_secs(1);
