//! The http pipeline: one accepted connection served as HTTP/1.1 (hyper, keep-alive); each
//! request routed by host and path to a cluster and forwarded over a pooled upstream HTTP/1.1
//! connection (see `http_pool`).
//!
//! The request and response pass through unchanged (method, target, `Host`, header case, body)
//! except for hop-by-hop headers (RFC 9110 §7.6.1), which belong to each hop; the upstream
//! request is sent as HTTP/1.1, the proxy's own version. Answers bindgate makes itself are short
//! `text/plain`: `404` no route, `502` upstream unreachable or failed, `504` no response within
//! `request_timeout`. An `Upgrade` request (WebSocket) gets a dedicated upstream connection and,
//! on `101`, the two upgraded streams are spliced until both sides are done or idle.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::http_pool::{self, HttpConnectError, HttpPool};
use super::splice::{SpliceError, splice};
use crate::snapshot::{HttpUpstream, ListenerSpec, RouteTable, normalize_host};
use crate::upstream::UpstreamError;

/// How many times a request found its pooled connection closed by the upstream before being
/// written, and was sent again on another one (the request is returned intact by hyper).
const STALE_RETRIES: usize = 2;

/// Serves one admitted connection until the client is done, it idles out, the listener drains
/// (`draining`: finish the request in flight, then close), or `force_close` fires.
pub async fn serve(
    listener: Arc<ListenerSpec>,
    client: TcpStream,
    peer: SocketAddr,
    draining: CancellationToken,
    force_close: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let (upgrades_tx, mut upgrades_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        listener: listener.clone(),
        peer,
        upgrades: upgrades_tx,
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Covers both the wait for a new request on a kept-alive connection and a slow head.
        .header_read_timeout(listener.idle_timeout)
        .keep_alive(true)
        // A client may shut its write side after the request and still wait for the answer.
        .half_close(true)
        .preserve_header_case(true)
        .auto_date_header(false);
    let conn = builder
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutting_down = false;
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            _ = draining.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = force_close.cancelled() => break None,
        }
    };
    match ended {
        None => {
            tracing::debug!(listener = %listener.name, %peer, "closed at the end of the drain");
            return;
        }
        Some(Ok(())) => tracing::debug!(listener = %listener.name, %peer, "connection done"),
        Some(Err(e)) => {
            tracing::debug!(listener = %listener.name, %peer, "connection ended: {}", chain(&e))
        }
    }
    // The connection was handed over to an upgraded protocol: splice it to the upstream's.
    while let Ok(upgrade) = upgrades_rx.try_recv() {
        tokio::select! {
            _ = upgrade.run(&listener, peer) => {}
            _ = force_close.cancelled() => {
                tracing::debug!(listener = %listener.name, %peer, "closed at the end of the drain");
            }
        }
    }
}

/// What every request of one client connection shares.
struct Ctx {
    listener: Arc<ListenerSpec>,
    peer: SocketAddr,
    upgrades: mpsc::UnboundedSender<Upgrade>,
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<ProxyBody> {
    let name = &ctx.listener.name;
    let RouteTable::Http(table) = &ctx.listener.routes else {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not an http listener".into(),
        );
    };
    if req.method() == Method::CONNECT {
        return local(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("bindgate: listener `{name}` does not serve CONNECT\n"),
        );
    }
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        return local(
            StatusCode::BAD_REQUEST,
            "bindgate: more than one Host header\n".into(),
        );
    }
    let host = request_host(&req);
    let Some(upstream) = table.find(host.as_deref(), req.uri().path()) else {
        tracing::debug!(listener = %name, peer = %ctx.peer, host = host.as_deref().unwrap_or(""), path = req.uri().path(), "no route");
        return local(
            StatusCode::NOT_FOUND,
            format!("bindgate: no route on listener `{name}` for this host and path\n"),
        );
    };
    if is_upgrade(&req) {
        forward_upgrade(ctx, upstream, table.request_timeout, req).await
    } else {
        forward(ctx, upstream, table.request_timeout, req).await
    }
}

/// The host the request is for: the target's authority (absolute form), else the Host header.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(normalize_host(authority.host()));
    }
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(normalize_host)
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes what belongs to one hop (RFC 9110 §7.6.1): `Connection`, the fields it names, and
/// the fields defined as hop-by-hop. `Host` is never removed, whatever `Connection` says.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| *n != HOST)
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [CONNECTION, TE, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        headers.remove(n);
    }
}

/// The request as it goes upstream: hop-by-hop fields removed, spoken as HTTP/1.1.
fn prepare_request(req: &mut Request<RequestBody>) {
    strip_hop_by_hop(req.headers_mut());
    *req.version_mut() = Version::HTTP_11;
}

async fn forward(
    ctx: &Ctx,
    upstream: &HttpUpstream,
    timeout: Duration,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let cluster = &upstream.cluster;
    let (mut req, mut body_sent) = RequestBody::wrap(req);
    prepare_request(&mut req);
    let mut fresh = false;
    let mut stale = 0;
    loop {
        let checkout = match upstream.pool.checkout(cluster, fresh).await {
            Ok(c) => c,
            Err(e) => return ctx.no_connection(&cluster.name, &e),
        };
        let mut sender = checkout.sender;
        let sent = response_within(sender.try_send_request(req), &mut body_sent, timeout).await;
        match sent {
            Some(Ok(resp)) => {
                return upstream_response(resp, Some((sender, upstream.pool.clone())));
            }
            Some(Err(mut e)) => match e.take_message() {
                Some(back) if checkout.reused && stale < STALE_RETRIES => {
                    tracing::debug!(listener = %ctx.listener.name, cluster = %cluster.name, "pooled connection was closed by the upstream; sending on another");
                    req = back;
                    stale += 1;
                    fresh = stale == STALE_RETRIES;
                }
                _ => return ctx.bad_gateway(&cluster.name, &e.into_error()),
            },
            None => return ctx.gateway_timeout(&cluster.name, timeout),
        }
    }
}

/// Waits for `response`, allowing it `timeout` from the moment the request body has been
/// forwarded whole (a long upload is not a slow upstream). `None`: timed out.
async fn response_within<F: Future>(
    response: F,
    body_sent: &mut BodySent,
    timeout: Duration,
) -> Option<F::Output> {
    tokio::pin!(response);
    tokio::select! {
        r = &mut response => return Some(r),
        _ = body_sent.wait() => {}
    }
    tokio::time::timeout(timeout, response).await.ok()
}

async fn forward_upgrade(
    ctx: &Ctx,
    upstream: &HttpUpstream,
    timeout: Duration,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let cluster = &upstream.cluster;
    let downstream = hyper::upgrade::on(&mut req);
    let protocols: Vec<HeaderValue> = req.headers().get_all(UPGRADE).iter().cloned().collect();
    let (mut req, mut body_sent) = RequestBody::wrap(req);
    prepare_request(&mut req);
    for p in protocols {
        req.headers_mut().append(UPGRADE, p);
    }
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    // A dedicated connection: once upgraded it is no longer HTTP and never returns to a pool.
    let mut sender = match http_pool::open(cluster, true).await {
        Ok(s) => s,
        Err(e) => return ctx.no_connection(&cluster.name, &e),
    };
    let sent = response_within(sender.send_request(req), &mut body_sent, timeout).await;
    let mut resp = match sent {
        Some(Ok(resp)) => resp,
        Some(Err(e)) => return ctx.bad_gateway(&cluster.name, &e),
        None => return ctx.gateway_timeout(&cluster.name, timeout),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return upstream_response(resp, None);
    }
    let upgrade = Upgrade {
        downstream,
        upstream: hyper::upgrade::on(&mut resp),
        cluster: cluster.name.clone(),
        _sender: sender,
    };
    // The connection's task runs it once the 101 has been written (see `serve`).
    let _ = ctx.upgrades.send(upgrade);
    // Passed as is: its `Connection` and `Upgrade` fields are what this hop agreed on.
    resp.map(|body| ProxyBody::upstream(body, None))
}

/// An upgraded request waiting for both of its sides to be handed over.
struct Upgrade {
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    cluster: String,
    /// Keeps the upstream connection's request channel open until the handover.
    _sender: SendRequest<RequestBody>,
}

impl Upgrade {
    async fn run(self, listener: &ListenerSpec, peer: SocketAddr) {
        let (down, up) = tokio::join!(self.downstream, self.upstream);
        let (down, up) = match (down, up) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(listener = %listener.name, cluster = %self.cluster, %peer, "upgrade abandoned: {}", chain(&e));
                return;
            }
        };
        match splice(TokioIo::new(down), TokioIo::new(up), listener.idle_timeout).await {
            Ok(stats) => tracing::debug!(
                listener = %listener.name, cluster = %self.cluster, %peer,
                sent = stats.downstream_to_upstream, received = stats.upstream_to_downstream, "upgraded connection done"
            ),
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %listener.name, %peer, "upgraded connection closed after {d:?} idle")
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %listener.name, cluster = %self.cluster, %peer, "upgraded connection ended: {e}")
            }
        }
    }
}

impl Ctx {
    /// No upstream connection: 503 when the upstream is not there to be reached (the ingress
    /// refused the bound endpoint, e.g. `ERR_NGROK_3200` while it is offline, or the cluster
    /// has no endpoints), as Envoy and HAProxy answer when no upstream is available; 502 when
    /// reaching it failed.
    fn no_connection(&self, cluster: &str, e: &HttpConnectError) -> Response<ProxyBody> {
        let reason = match e {
            HttpConnectError::Upstream(UpstreamError::Refused { failure, .. }) => failure.as_str(),
            HttpConnectError::Upstream(UpstreamError::NoEndpoints) => "no endpoints",
            _ => return self.bad_gateway(cluster, e),
        };
        tracing::warn!(listener = %self.listener.name, %cluster, peer = %self.peer, "upstream unavailable, answering 503: {}", chain(e));
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("bindgate: cluster `{cluster}` is unavailable: {reason}\n"),
        )
    }

    fn bad_gateway(&self, cluster: &str, e: &dyn std::error::Error) -> Response<ProxyBody> {
        tracing::warn!(listener = %self.listener.name, %cluster, peer = %self.peer, "upstream failed, answering 502: {}", chain(e));
        local(
            StatusCode::BAD_GATEWAY,
            format!("bindgate: cluster `{cluster}` is unreachable or failed\n"),
        )
    }

    fn gateway_timeout(&self, cluster: &str, after: Duration) -> Response<ProxyBody> {
        tracing::warn!(listener = %self.listener.name, %cluster, peer = %self.peer, "no response within {after:?}, answering 504");
        local(
            StatusCode::GATEWAY_TIMEOUT,
            format!("bindgate: cluster `{cluster}` did not answer within {after:?}\n"),
        )
    }
}

/// An error and its causes on one line (hyper's `Display` omits the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn upstream_response(
    resp: Response<Incoming>,
    back_to: Option<(SendRequest<RequestBody>, Arc<HttpPool>)>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ProxyBody::upstream(body, back_to))
}

/// A response bindgate writes itself.
fn local(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Some(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The client's request body on its way upstream; tells when it has been read whole.
pub struct RequestBody {
    body: Incoming,
    sent: Option<oneshot::Sender<()>>,
}

/// The other end of [`RequestBody`]'s signal.
struct BodySent {
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl RequestBody {
    fn wrap(req: Request<Incoming>) -> (Request<RequestBody>, BodySent) {
        let (tx, rx) = oneshot::channel();
        let done = req.body().is_end_stream();
        let req = req.map(|body| RequestBody {
            body,
            sent: Some(tx),
        });
        (req, BodySent { rx, done })
    }

    fn signal(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl BodySent {
    /// Returns once the body was read whole, failed, or was dropped (cancel-safe).
    async fn wait(&mut self) {
        if !self.done {
            let _ = (&mut self.rx).await;
            self.done = true;
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if !this.body.is_end_stream() => {}
            Poll::Ready(_) => this.signal(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body: the upstream's (streamed), or one bindgate wrote.
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

/// An upstream response body that hands its connection back to the pool once read to the end.
pub struct UpstreamBody {
    body: Incoming,
    ended: bool,
    back_to: Option<(SendRequest<RequestBody>, Arc<HttpPool>)>,
}

impl ProxyBody {
    fn upstream(
        body: Incoming,
        back_to: Option<(SendRequest<RequestBody>, Arc<HttpPool>)>,
    ) -> Self {
        ProxyBody::Upstream(UpstreamBody {
            body,
            ended: false,
            back_to,
        })
    }
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.ended = true;
        if let Some((sender, pool)) = self.back_to.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for UpstreamBody {
    /// Dropped after the whole body was read (hyper stops polling a body of known length once
    /// it is complete): the connection can serve again. Dropped earlier: it is not reusable,
    /// and dropping its sender closes it.
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ProxyBody::Upstream(u) => {
                let polled = Pin::new(&mut u.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => u.finish(),
                    Poll::Ready(Some(Ok(_))) if u.body.is_end_stream() => u.finish(),
                    Poll::Ready(Some(Err(_))) => u.back_to = None,
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(text) => text.is_none(),
            ProxyBody::Upstream(u) => u.ended || u.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(Some(text)) => SizeHint::with_exact(text.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(u) => u.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_the_rest_kept() {
        let mut h = headers(&[
            ("host", "shop.default"),
            ("connection", "keep-alive, X-Trace, host"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<(&str, &str)> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("host", "shop.default"),
                ("x-kept", "yes"),
                ("authorization", "Bearer t")
            ]
        );
    }

    #[test]
    fn connection_tokens_are_split_and_trimmed() {
        let h = headers(&[
            ("connection", " Upgrade ,, keep-alive"),
            ("connection", "close"),
        ]);
        let tokens: Vec<&str> = connection_tokens(&h).collect();
        assert_eq!(tokens, ["Upgrade", "keep-alive", "close"]);
    }
}
