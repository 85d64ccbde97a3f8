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

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::splice::{SpliceError, splice};
use super::{Cancelled, Pipeline};
use crate::filters::http::{HttpService, LocalAnswer, RequestInfo, answer};
use crate::filters::network::{Conn, ConnOutcome, Outcome};
use crate::http_body::{ProxyBody, RequestBody};
use crate::snapshot::{HttpRoute, HttpRoutes, HttpUpstream, RouteTable, normalize_host};
use crate::telemetry::error_chain;
use crate::upstream::UpstreamError;
use crate::upstream::http_pool::{self, HttpConnectError};

/// How many times a request found its pooled connection closed by the upstream before being
/// written, and was sent again on another one (the request is returned intact by hyper).
const STALE_RETRIES: usize = 2;

/// Serves one admitted connection until the client is done, it idles out, the listener drains
/// (finish the request in flight, then close), or the drain ends.
pub async fn serve(p: Arc<Pipeline>, conn: Conn) -> ConnOutcome {
    let Conn {
        io,
        peer,
        draining,
        force_close,
        ..
    } = conn;
    let (upgrades_tx, mut upgrades_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        pipeline: p.clone(),
        peer,
        upgrades: upgrades_tx,
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(ctx, req).await) }
    });
    let conn = http1_server(p.request_headers_timeout, p.preserve_header_case)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutting_down = false;
    let (mut drain, mut close) = (Cancelled::new(&draining), Cancelled::new(&force_close));
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            _ = &mut drain, if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut close => break None,
        }
    };
    let name = &p.listener;
    match ended {
        None => {
            tracing::debug!(listener = %name, %peer, "closed at the end of the drain");
            return ConnOutcome::new(None, Outcome::Drained);
        }
        Some(Ok(())) => tracing::debug!(listener = %name, %peer, "connection done"),
        Some(Err(e)) => {
            tracing::debug!(listener = %name, %peer, "connection ended: {}", error_chain(&e))
        }
    }
    // The connection was handed over to an upgraded protocol: splice it to the upstream's.
    while let Ok(upgrade) = upgrades_rx.try_recv() {
        tokio::select! {
            _ = upgrade.run(&p, peer) => {}
            _ = force_close.cancelled() => {
                tracing::debug!(listener = %name, %peer, "closed at the end of the drain");
                return ConnOutcome::new(None, Outcome::Drained);
            }
        }
    }
    ConnOutcome::new(None, Outcome::Ok)
}

/// How the listener speaks HTTP/1 to its clients (`crate::fuzzing` serves its inputs with it).
pub(crate) fn http1_server(
    request_headers_timeout: Duration,
    preserve_header_case: bool,
) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Covers both the wait for a new request on a kept-alive connection and a slow head.
        .header_read_timeout(request_headers_timeout)
        .keep_alive(true)
        // A client may shut its write side after the request and still wait for the answer.
        .half_close(true)
        // Records each request's spelling of its header names, for the upstream request.
        .preserve_header_case(preserve_header_case)
        .auto_date_header(false);
    builder
}

/// What every request of one client connection shares (in each request's extensions, for the
/// forwarder at the end of the route's stack).
struct Ctx {
    pipeline: Arc<Pipeline>,
    peer: SocketAddr,
    upgrades: mpsc::UnboundedSender<Upgrade>,
}

/// The router: picks the route, then runs the route's http filters around the forwarder.
async fn route(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let p = ctx.pipeline.clone();
    let start = tokio::time::Instant::now();
    let resp = route_inner(&ctx, req).await;
    p.metrics.request_duration(start.elapsed());
    if let Some(why) = resp.extensions().get::<LocalAnswer>() {
        p.metrics.local_response(resp.status().as_u16());
        if let Some((filter, reason)) = why.0.strip_prefix("rejected:").map(rejection) {
            p.metrics.rejected(filter, reason);
        }
        tracing::debug!(listener = %p.listener, peer = %ctx.peer, status = resp.status().as_u16(), why = why.0, "answered by bindgate");
    }
    resp
}

async fn route_inner(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let p = &ctx.pipeline;
    let RouteTable::Http(table) = &*p.routes else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad_request",
            "not an http listener",
        );
    };
    let (route, req) = match select_route(table, &p.listener, ctx.peer, req) {
        Ok(chosen) => chosen,
        Err(refused) => return refused.answer(&p.listener),
    };
    let mut req = req.map(RequestBody::incoming);
    req.body_mut().idle_timeout(p.idle_timeout);
    req.extensions_mut().insert(RequestInfo {
        peer: ctx.peer,
        listener: p.listener.clone(),
        route: route.name.clone(),
        cluster: route.cluster.clone(),
    });
    req.extensions_mut().insert(ctx.clone());
    let Ok(resp) = route.service.clone().oneshot(req).await;
    resp
}

/// Checks a request head the listener `listener` received from `peer` and picks its route by
/// host and path, or says why bindgate answers it itself. Needs no network and never panics on
/// what hyper parsed (`crate::fuzzing` drives it with arbitrary request heads).
pub fn select_route<'t, B>(
    table: &'t HttpRoutes,
    listener: &str,
    peer: SocketAddr,
    req: Request<B>,
) -> Result<(&'t HttpRoute, Request<B>), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    // One lookup for both checks.
    let mut hosts = req.headers().get_all(HOST).iter();
    let (first, second) = (hosts.next().is_some(), hosts.next().is_some());
    if req.version() == Version::HTTP_11 && !first {
        // RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without Host.
        return Err(Refusal::NoHost);
    }
    if second {
        return Err(Refusal::SeveralHosts);
    }
    check_transfer_coding(&req)?;
    let mut req = req;
    drop_h2c_upgrade(req.headers_mut());
    let req = normalize_target(req).map_err(|why| {
        tracing::debug!(%listener, %peer, "refused request target: {why}");
        Refusal::Target(why)
    })?;
    // RFC 9112 §3.2: 400 for a Host with an invalid value. Routes and the upstream would read
    // `a b` or `evil@shop.default` each their own way.
    let host = request_host(&req).map_err(|()| {
        Refusal::Target("the Host header is not a host name or address with an optional port")
    })?;
    let route = table.find(host.as_deref(), req.uri().path()).ok_or_else(|| {
        tracing::debug!(%listener, %peer, host = host.as_deref().unwrap_or(""), path = req.uri().path(), "no route");
        Refusal::NoRoute
    })?;
    Ok((route, req))
}

/// A request body framed by anything but one `chunked` (RFC 9112 §6.1): hyper reads the
/// chunks, and the upstream gets the body re-chunked, so another coding (`gzip, chunked`)
/// would reach it undone and unnamed. Answered `501` as nginx and Envoy do; `chunked` applied
/// twice is malformed (`400`). (With `Content-Length` beside it, hyper has already let
/// `Transfer-Encoding` win, dropped the length and marked the connection to close after the
/// response, RFC 9112 §6.3.)
fn check_transfer_coding<B>(req: &Request<B>) -> Result<(), Refusal> {
    match framing(req.headers()) {
        Framing::Plain | Framing::Chunked => Ok(()),
        Framing::ChunkedTwice => Err(Refusal::Target("`chunked` applied more than once")),
        Framing::OtherCoding => Err(Refusal::TransferCoding),
    }
}

/// What a message's `Transfer-Encoding` says, to a proxy that knows `chunked` alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No transfer coding.
    Plain,
    Chunked,
    ChunkedTwice,
    /// A coding other than `chunked` (`gzip, chunked`).
    OtherCoding,
}

fn framing(headers: &HeaderMap) -> Framing {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        for coding in connection_options(value.as_bytes()) {
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Framing::OtherCoding;
            }
            chunked += 1;
        }
    }
    match chunked {
        0 => Framing::Plain,
        1 => Framing::Chunked,
        _ => Framing::ChunkedTwice,
    }
}

/// An upstream response framed by more than `chunked` would reach the client re-chunked with
/// its coding gone (its bytes still gzipped, say, and nothing saying so): a `502` instead, and
/// the upstream connection is not reused.
fn check_response_framing(resp: &Response<Incoming>) -> Result<(), std::io::Error> {
    match framing(resp.headers()) {
        Framing::Plain | Framing::Chunked => Ok(()),
        Framing::ChunkedTwice | Framing::OtherCoding => Err(std::io::Error::other(
            "the response's transfer coding is not `chunked` alone",
        )),
    }
}

/// Removes `h2c` from `Upgrade` (and `Upgrade` when nothing else is asked), as Envoy does: a
/// cleartext HTTP/2 upgrade passed through would leave the client talking HTTP/2 straight to
/// the upstream on a spliced connection, past this listener's routes and http filters ("h2c
/// smuggling"). The request is then served as the HTTP/1.1 request it also is.
fn drop_h2c_upgrade(headers: &mut HeaderMap) {
    let h2c = |t: &[u8]| t.eq_ignore_ascii_case(b"h2c");
    if !headers
        .get_all(UPGRADE)
        .iter()
        .any(|v| connection_options(v.as_bytes()).any(h2c))
    {
        return;
    }
    let others: Vec<Vec<u8>> = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| connection_options(v.as_bytes()))
        .filter(|t| !h2c(t))
        .map(<[u8]>::to_vec)
        .collect();
    headers.remove(UPGRADE);
    if !others.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&others.join(&b", "[..])) {
            headers.insert(UPGRADE, v);
        }
    }
}

/// Why a request gets no route: bindgate answers it itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `405`: an http listener is not a forward proxy.
    Connect,
    /// `400`: an HTTP/1.1 request without `Host`.
    NoHost,
    /// `400`: more than one `Host`.
    SeveralHosts,
    /// `400`: a request target that cannot be normalised (see [`super::http_path`]), or a
    /// malformed framing.
    Target(&'static str),
    /// `501`: a transfer coding other than `chunked`.
    TransferCoding,
    /// `404`: no route matches the host and path.
    NoRoute,
}

impl Refusal {
    /// The answer the listener `listener` writes.
    pub fn answer(self, listener: &str) -> Response<ProxyBody> {
        match self {
            Refusal::Connect => answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                format!("bindgate: listener `{listener}` does not serve CONNECT\n"),
            ),
            Refusal::NoHost => answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bindgate: an HTTP/1.1 request needs a Host header\n",
            ),
            Refusal::SeveralHosts => answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bindgate: more than one Host header\n",
            ),
            Refusal::Target(why) => answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bindgate: {why}\n"),
            ),
            Refusal::TransferCoding => answer(
                StatusCode::NOT_IMPLEMENTED,
                "bad_request",
                "bindgate: only the `chunked` transfer coding is supported\n",
            ),
            Refusal::NoRoute => answer(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("bindgate: no route on listener `{listener}` for this host and path\n"),
            ),
        }
    }
}

/// The http filter that answered a request itself, and why (bounded label values).
fn rejection(filter: &str) -> (&'static str, &'static str) {
    match filter {
        "local_rate_limit" => ("local_rate_limit", "request rate exceeded"),
        "max_request_body" => ("max_request_body", "request body too large"),
        _ => ("other", "rejected"),
    }
}

/// The leaf of a route's http stack: forwards the request to the route's cluster.
pub fn forwarder(upstream: HttpUpstream, idle_timeout: Duration) -> HttpService {
    HttpService::new(tower::service_fn(move |req: Request<RequestBody>| {
        let upstream = upstream.clone();
        async move {
            let Some(ctx) = req.extensions().get::<Arc<Ctx>>().cloned() else {
                return Ok::<_, Infallible>(answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad_request",
                    "bindgate: request outside a connection\n",
                ));
            };
            Ok(if is_upgrade(&req) {
                forward_upgrade(&ctx, &upstream, idle_timeout, req).await
            } else {
                forward(&ctx, &upstream, idle_timeout, req).await
            })
        }
    }))
}

/// The request as routes see it and the upstream gets it (see [`super::http_path`]): an
/// absolute-form target (`GET http://a/x`) becomes origin-form with `Host` set to its authority
/// (RFC 9112 §3.2.2: the target's authority wins over any `Host` sent), and the path is
/// normalised.
fn normalize_target<B>(mut req: Request<B>) -> Result<Request<B>, &'static str> {
    let uri = req.uri();
    if uri.path() == "*" && uri.authority().is_none() {
        return Ok(req); // `OPTIONS *`: no path to normalise
    }
    let authority = match (uri.scheme_str(), uri.authority()) {
        (None, None) => None,
        // RFC 9110 §4.2.4: userinfo in an `http` URI is an error (it would become the Host).
        (Some("http"), Some(a)) if a.as_str().contains('@') => {
            return Err("userinfo (`user@`) in the request target");
        }
        (Some("http"), Some(a)) => Some(a.clone()),
        _ => return Err("an absolute-form target must be an `http://` URL"),
    };
    let path = match super::http_path::normalize(uri.path())? {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(p) => Some(p),
    };
    if let Some(authority) = authority {
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| "an invalid authority in the target")?;
        req.headers_mut().insert(HOST, host);
    } else if path.is_none() {
        return Ok(req);
    }
    let path = path.unwrap_or_else(|| req.uri().path().to_owned());
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    *req.uri_mut() = http::Uri::try_from(target).map_err(|_| "an invalid request target")?;
    Ok(req)
}

/// The host the request is for: the target's authority (absolute form), else the Host header;
/// `Err` when the Host header is not `host[:port]` ([`is_valid_authority`]).
fn request_host<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, ()> {
    if let Some(authority) = req.uri().authority() {
        return Ok(Some(Cow::Owned(normalize_host(authority.host()))));
    }
    let Some(value) = req.headers().get(HOST) else {
        return Ok(None);
    };
    if !is_valid_authority(value.as_bytes()) {
        return Err(());
    }
    // Valid bytes are ASCII.
    let raw = value.to_str().map_err(|_| ())?;
    Ok(Some(if is_normal_host(raw) {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(normalize_host(raw))
    }))
}

/// Whether a Host value (or a target's authority) is `host [":" port]` as RFC 3986 writes it:
/// a reg-name or IPv4 address (unreserved characters, sub-delims, `%XX`), or an IP literal in
/// brackets, then an optional port of digits. Empty is valid (a target without authority).
fn is_valid_authority(v: &[u8]) -> bool {
    let (host, port) = if let Some(literal) = v.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &literal[..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| is_unreserved_or_sub_delim(b) || b == b':')
        {
            return false;
        }
        match &literal[end + 1..] {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if is_unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// RFC 3986's unreserved characters and sub-delims, one table lookup per byte.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

fn is_unreserved_or_sub_delim(b: u8) -> bool {
    HOST_BYTE[usize::from(b)]
}

/// Already what [`normalize_host`] makes of it (the common case, no allocation): no upper case,
/// no port, no trailing dot, not an IPv6 literal.
fn is_normal_host(raw: &str) -> bool {
    !raw.is_empty()
        && !raw.ends_with('.')
        && !raw
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b == b':' || b == b'[')
}

pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| connection_options(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The comma-separated options of one `Connection` value, trimmed, the empty ones left out.
/// Bytes, not text: a token that is not ASCII names no field and no option.
fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes what belongs to one hop (RFC 9110 §7.6.1): `Connection`, the fields it names, and
/// the fields defined as hop-by-hop. `Host` is never removed, whatever `Connection` says.
///
/// It runs twice per proxied request (on the request and on the response), in one pass over
/// the fields that neither hashes nor allocates unless a `Connection` option names a field
/// the message has: the options are compared with the names as bytes, and the map is searched
/// only for what goes.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut named: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let Some(i) = hop_by_hop_index(name) else {
            continue;
        };
        present[i] = true;
        if i != 0 {
            continue;
        }
        // `Connection`: the usual options (`keep-alive`, `close`) name no field of the message.
        for option in connection_options(value.as_bytes()) {
            if option.eq_ignore_ascii_case(HOST.as_str().as_bytes()) || is_hop_by_hop(option) {
                continue; // never removed, or removed below in any case
            }
            if let Some(field) = headers
                .keys()
                .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(option))
            {
                named.push(field.clone());
            }
        }
    }
    for n in named {
        headers.remove(n);
    }
    for (name, there) in HOP_BY_HOP.iter().zip(present) {
        if there {
            headers.remove(name);
        }
    }
}

/// The fields defined as hop-by-hop; `Connection` first.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Where a field name is in [`HOP_BY_HOP`], if it is there. A match on the name's text (a
/// `HeaderName` is lower case): a length test rules out most fields, where comparing with each
/// of the six names cost about a hundred instructions per field.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    hop_by_hop_position(name.as_str().as_bytes())
}

/// [`hop_by_hop_index`] of a lower-case name.
fn hop_by_hop_position(lower: &[u8]) -> Option<usize> {
    match lower {
        b"connection" => Some(0),
        b"te" => Some(1),
        b"transfer-encoding" => Some(2),
        b"upgrade" => Some(3),
        b"keep-alive" => Some(4),
        b"proxy-connection" => Some(5),
        _ => None,
    }
}

/// Whether a `Connection` option names a field of [`HOP_BY_HOP`], in any case. The option is
/// lowercased on the stack (no name there is longer than 17 bytes) and matched once, rather
/// than compared without case with each name in turn.
fn is_hop_by_hop(option: &[u8]) -> bool {
    let mut lower = [0u8; 17];
    let Some(buf) = lower.get_mut(..option.len()) else {
        return false;
    };
    buf.copy_from_slice(option);
    buf.make_ascii_lowercase();
    hop_by_hop_position(buf).is_some()
}

/// The request as it goes upstream: hop-by-hop fields removed, spoken as HTTP/1.1, bindgate's
/// own extensions dropped.
pub(crate) fn prepare_request(req: &mut Request<RequestBody>) {
    strip_hop_by_hop(req.headers_mut());
    *req.version_mut() = Version::HTTP_11;
}

async fn forward(
    ctx: &Ctx,
    upstream: &HttpUpstream,
    idle_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Response<ProxyBody> {
    let cluster = &upstream.cluster;
    let body = req.body().state();
    // Sent on as HTTP/1.1, an HTTP/1.0 request without Host needs one (RFC 9112 §3.2; an
    // HTTP/1.1 one without it never gets this far).
    if req.version() == Version::HTTP_10 && !req.headers().contains_key(HOST) {
        if let Some(host) = cluster.target.host_header() {
            req.headers_mut().insert(HOST, host);
        }
    }
    prepare_request(&mut req);
    // An idempotent request without a body can be sent again even after it reached the
    // upstream (a connection that broke before its answer).
    let mut resend = replayable_head(&req);
    let mut fresh = false;
    let mut stale = 0;
    loop {
        let checkout = match upstream.pool.checkout(cluster, fresh).await {
            Ok(c) => c,
            Err(e) => return ctx.no_connection(&cluster.name, &e),
        };
        let mut sender = checkout.sender;
        // Whether this request's body has gone out whole, asked when its response has ended.
        let empty = hyper::body::Body::is_end_stream(req.body());
        let sending = req.body().state();
        match sender.try_send_request(req).await {
            Ok(resp) => {
                if let Err(e) = check_response_framing(&resp) {
                    return ctx.bad_gateway(&cluster.name, &e);
                }
                let pool = upstream.pool.clone();
                let give_back: crate::http_body::GiveBack = Box::new(move || {
                    pool.give_back(sender, empty || sending.complete.load(Ordering::Relaxed))
                });
                return upstream_response(resp, Some(give_back), idle_timeout);
            }
            Err(mut e) => match (e.take_message(), resend.take()) {
                (Some(back), kept) if checkout.reused && stale < STALE_RETRIES => {
                    tracing::debug!(listener = %ctx.pipeline.listener, cluster = %cluster.name, "pooled connection was closed by the upstream; sending on another");
                    req = back;
                    resend = kept;
                    stale += 1;
                    fresh = stale == STALE_RETRIES;
                }
                (None, Some(head)) => {
                    tracing::debug!(listener = %ctx.pipeline.listener, cluster = %cluster.name, "idempotent request failed before its answer, sending it once more: {}", error_chain(&e.into_error()));
                    cluster.metrics.retry();
                    req = Request::from_parts(head, RequestBody::empty());
                    fresh = true;
                }
                _ if body.stalled.load(Ordering::Relaxed) => {
                    tracing::debug!(listener = %ctx.pipeline.listener, cluster = %cluster.name, peer = %ctx.peer, "the client's request body stalled, answering 408");
                    return answer(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        "bindgate: the request body stopped arriving\n",
                    );
                }
                _ if body.client_error.load(Ordering::Relaxed) => {
                    tracing::debug!(listener = %ctx.pipeline.listener, cluster = %cluster.name, peer = %ctx.peer, "the client's request body could not be read, answering 400: {}", error_chain(&e.into_error()));
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "bindgate: the request body could not be read\n",
                    );
                }
                _ if body.too_large.load(Ordering::Relaxed) => {
                    return answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "rejected:max_request_body",
                        "bindgate: the request body is too large\n",
                    );
                }
                _ => return ctx.bad_gateway(&cluster.name, &e.into_error()),
            },
        }
    }
}

/// The head of a request that may be sent again: an idempotent method (RFC 9110 §9.2.2) and no
/// body. Extensions are not carried (bindgate's own, for this hop only).
pub(crate) fn replayable_head(req: &Request<RequestBody>) -> Option<http::request::Parts> {
    use hyper::body::Body as _;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(head.into_parts().0)
}

async fn forward_upgrade(
    ctx: &Ctx,
    upstream: &HttpUpstream,
    idle_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Response<ProxyBody> {
    let cluster = &upstream.cluster;
    let downstream = hyper::upgrade::on(&mut req);
    let protocols: Vec<HeaderValue> = req.headers().get_all(UPGRADE).iter().cloned().collect();
    prepare_request(&mut req);
    for p in protocols {
        req.headers_mut().append(UPGRADE, p);
    }
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    // A dedicated connection: once upgraded it is no longer HTTP and never returns to a pool.
    let preserve = upstream.pool.preserve_header_case();
    let mut sender = match http_pool::open(cluster, true, preserve).await {
        Ok(s) => s,
        Err(e) => return ctx.no_connection(&cluster.name, &e),
    };
    let mut resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => return ctx.bad_gateway(&cluster.name, &e),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        if let Err(e) = check_response_framing(&resp) {
            return ctx.bad_gateway(&cluster.name, &e);
        }
        return upstream_response(resp, None, idle_timeout);
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
    resp.map(|body| ProxyBody::upstream(body, None, None))
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
    async fn run(self, p: &Pipeline, peer: SocketAddr) {
        let (down, up) = tokio::join!(self.downstream, self.upstream);
        let (down, up) = match (down, up) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(listener = %p.listener, cluster = %self.cluster, %peer, "upgrade abandoned: {}", error_chain(&e));
                return;
            }
        };
        match splice(TokioIo::new(down), TokioIo::new(up), p.idle_timeout).await {
            Ok(stats) => tracing::debug!(
                listener = %p.listener, cluster = %self.cluster, %peer,
                sent = stats.downstream_to_upstream, received = stats.upstream_to_downstream, "upgraded connection done"
            ),
            Err(SpliceError::Idle(d)) => {
                tracing::debug!(listener = %p.listener, %peer, "upgraded connection closed after {d:?} idle")
            }
            Err(SpliceError::Io(e)) => {
                tracing::debug!(listener = %p.listener, cluster = %self.cluster, %peer, "upgraded connection ended: {e}")
            }
        }
    }
}

impl Ctx {
    /// No upstream connection: 503 when the upstream is not there to be reached (the ingress
    /// refused the bound endpoint, e.g. `ERR_NGROK_3200` while it is offline, the cluster has
    /// no endpoints, or its circuit breaker is open), as Envoy and HAProxy answer when no
    /// upstream is available; 502 when reaching it failed; 504 when the connect timed out.
    fn no_connection(&self, cluster: &str, e: &HttpConnectError) -> Response<ProxyBody> {
        let reason = match e {
            HttpConnectError::Upstream(UpstreamError::Refused { failure, .. }) => failure.clone(),
            HttpConnectError::Upstream(UpstreamError::NoEndpoints) => "no endpoints".to_owned(),
            HttpConnectError::Upstream(UpstreamError::CircuitOpen { reason, .. }) => {
                (*reason).to_owned()
            }
            HttpConnectError::Upstream(UpstreamError::Timeout { after, .. }) => {
                tracing::warn!(listener = %self.pipeline.listener, %cluster, peer = %self.peer, "upstream connect timed out, answering 504: {}", error_chain(e));
                return answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "bindgate: cluster `{cluster}` could not be reached within {after:?}\n"
                    ),
                );
            }
            _ => return self.bad_gateway(cluster, e),
        };
        tracing::warn!(listener = %self.pipeline.listener, %cluster, peer = %self.peer, "upstream unavailable, answering 503: {}", error_chain(e));
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            format!("bindgate: cluster `{cluster}` is unavailable: {reason}\n"),
        )
    }

    fn bad_gateway(&self, cluster: &str, e: &dyn std::error::Error) -> Response<ProxyBody> {
        tracing::warn!(listener = %self.pipeline.listener, %cluster, peer = %self.peer, "upstream failed, answering 502: {}", error_chain(e));
        answer(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("bindgate: cluster `{cluster}` is unreachable or failed\n"),
        )
    }
}

fn upstream_response(
    resp: Response<Incoming>,
    give_back: Option<crate::http_body::GiveBack>,
    idle_timeout: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, give_back, Some(idle_timeout)),
    )
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
    fn hosts_taken_as_they_are_are_the_normalized_ones() {
        for raw in [
            "shop.default",
            "Shop.Default",
            "shop.default:8080",
            "shop.default.",
            "[::1]:80",
            "[::1]",
            "",
        ] {
            let mut req = Request::new(());
            req.headers_mut()
                .insert(HOST, HeaderValue::from_str(raw).unwrap());
            assert_eq!(
                request_host(&req).unwrap().as_deref(),
                Some(normalize_host(raw).as_str()),
                "{raw}"
            );
        }
        let mut req = Request::new(());
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("a:b"));
        assert_eq!(request_host(&req), Err(()), "a port that is not digits");
    }

    #[test]
    fn messages_without_hop_by_hop_fields_are_left_as_they_are() {
        let mut h = headers(&[("host", "a"), ("x-kept", "1"), ("content-length", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut h = headers(&[
            ("connection", "Keep-Alive, X-A"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, headers(&[("x-b", "2")]));
    }

    #[test]
    fn tokens_naming_no_field_of_the_message_remove_nothing_else() {
        let mut h = headers(&[
            ("Connection", "close, X-Absent, TE"),
            ("x-present", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("content-length", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, headers(&[("x-present", "1"), ("content-length", "2")]));
    }

    #[test]
    fn the_name_match_and_the_hop_by_hop_table_agree() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            "host",
            "connections",
            "t",
            "tes",
            "upgrade-insecure-requests",
            "x-connection",
            "keep-alives",
            "content-length",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
    }

    #[test]
    fn connection_options_name_hop_by_hop_fields_in_any_case() {
        for option in [
            "Connection",
            "TE",
            "Transfer-Encoding",
            "UPGRADE",
            "keep-alive",
            "Proxy-Connection",
        ] {
            assert!(is_hop_by_hop(option.as_bytes()), "{option}");
        }
        // Every name of the table, however long: the stack buffer must hold the longest.
        for name in &HOP_BY_HOP {
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop(upper.as_bytes()), "{upper}");
        }
        for option in [
            "",
            "close",
            "x-a",
            "keep-alive ",
            "transfer-encodings",
            "proxy-connection-and-more-than-17-bytes",
        ] {
            assert!(!is_hop_by_hop(option.as_bytes()), "{option}");
        }
    }

    /// One listener `web` with a route for `shop.default` and one for any other host.
    fn web_routes() -> Arc<RouteTable> {
        const CONFIG: &str = r#"
version: 1
static_resources:
  listeners:
    - name: web
      address: 127.0.0.1:0
      protocol: http
      routes:
        - match: { host: shop.default }
          name: shop
          cluster: shop
        - name: other
          cluster: shop
  clusters:
    - name: shop
      type: static
      endpoints: [ "127.0.0.1:9" ]
"#;
        let loaded = crate::config::parse(CONFIG, "web.yaml", "/".into(), |_| None).unwrap();
        let snapshot = crate::snapshot::build(&loaded, 0).unwrap();
        snapshot.listener("web").unwrap().routes.clone()
    }

    #[tokio::test]
    async fn host_fields_are_counted_for_the_version_that_needs_one() {
        let routes = web_routes();
        let RouteTable::Http(table) = &*routes else {
            panic!("an http listener");
        };
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let request = |version: Version, hosts: &[&str]| {
            let mut req = Request::new(());
            *req.version_mut() = version;
            *req.uri_mut() = http::Uri::from_static("/cart");
            for h in hosts {
                req.headers_mut()
                    .append(HOST, HeaderValue::from_str(h).unwrap());
            }
            req
        };
        let chosen = |version, hosts: &[&str]| {
            select_route(table, "web", peer, request(version, hosts))
                .map(|(route, _)| route.name.to_string())
        };
        assert_eq!(
            chosen(Version::HTTP_11, &["shop.default"]),
            Ok("shop".into())
        );
        assert_eq!(chosen(Version::HTTP_11, &[]), Err(Refusal::NoHost));
        // HTTP/1.0 needs no Host: routed as a request for no host in particular.
        assert_eq!(chosen(Version::HTTP_10, &[]), Ok("other".into()));
        assert_eq!(
            chosen(Version::HTTP_10, &["shop.default"]),
            Ok("shop".into())
        );
        for bad in [
            "a b",
            "evil@shop.default",
            "shop.default/x",
            "shop.default:8o",
            "[::1",
            "[::1]x",
            "[]",
            "shop%zz",
            "shop\\x",
            "shop?x",
        ] {
            assert!(
                matches!(chosen(Version::HTTP_11, &[bad]), Err(Refusal::Target(_))),
                "{bad}"
            );
        }
        for good in [
            "shop.default:8080",
            "SHOP.default.",
            "127.0.0.1:80",
            "[::1]:80",
            "[::1]",
            "sh%6Fp.default",
            "",
            "a:",
        ] {
            assert!(chosen(Version::HTTP_11, &[good]).is_ok(), "{good}");
        }
        for version in [Version::HTTP_10, Version::HTTP_11] {
            assert_eq!(
                chosen(version, &["shop.default", "shop.default"]),
                Err(Refusal::SeveralHosts)
            );
            assert_eq!(
                chosen(version, &["shop.default", "other.default"]),
                Err(Refusal::SeveralHosts)
            );
        }
    }

    #[test]
    fn connection_options_are_split_and_trimmed() {
        let options: Vec<&[u8]> = connection_options(b" Upgrade ,, keep-alive\t,close").collect();
        assert_eq!(options, [&b"Upgrade"[..], b"keep-alive", b"close"]);
    }

    #[test]
    fn options_in_several_connection_fields_all_count() {
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("x-a", "1"),
            ("connection", "X-A, Host"),
            ("host", "shop.default"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, headers(&[("host", "shop.default")]));
        let mut req = Request::new(());
        *req.headers_mut() = headers(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
        ]);
        assert!(is_upgrade(&req));
        req.headers_mut().remove(CONNECTION);
        assert!(!is_upgrade(&req));
    }
}
