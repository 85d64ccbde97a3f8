//! The bodies of the `fuzz/` targets, one function per target taking the fuzzer's bytes, so the
//! cargo-fuzz targets (one line each) and the stable replay test (`tests/fuzz_replay.rs`, which
//! runs every committed corpus and regression input through [`TARGETS`]) run the same code.
//!
//! Each function drives the proxy's own parsing of one kind of hostile input, needs no network
//! and must never panic, whatever the bytes; the `assert!`s here are invariants, so a broken
//! one is a crash the fuzzer reports. Not an API: hidden from the docs, free to change.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

use crate::config::{self, LoadedConfig};
use crate::filters::http::RequestInfo;
use crate::http_body::{ProxyBody, RequestBody};
use crate::ngrok_api::{self, Endpoint, EndpointPage, Operator, OperatorPage, Page};
use crate::snapshot::{self, RouteTable};
use crate::upstream::dial;
use crate::upstream::early::EarlyUpgrade;
use crate::wire::{ConnRequest, ConnResponse, decode_frame};

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// As in `fuzz/Cargo.toml`, `fuzz/corpus/<name>/` and `fuzz/regressions/<name>-*`.
    pub name: &'static str,
    /// The target's body.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decode",
        run: frame_decode,
    },
    Target {
        name: "config_parse",
        run: config_parse,
    },
    Target {
        name: "client_hello",
        run: client_hello,
    },
    Target {
        name: "conn_response",
        run: conn_response,
    },
    Target {
        name: "api_models",
        run: api_models,
    },
    Target {
        name: "http_head",
        run: http_head,
    },
    Target {
        name: "source_document",
        run: source_document,
    },
];

/// Bytes from a peer → one framed `ConnRequest` / `ConnResponse` (`wire::decode_frame`).
pub fn frame_decode(data: &[u8]) {
    let _ = decode_frame::<ConnRequest>(data);
    let _ = decode_frame::<ConnResponse>(data);
}

/// Config text → what `bindgate validate` does with it: variable expansion, strict YAML with
/// line/column errors (`config::parse`), then the full snapshot build (clusters, ingresses,
/// routes, every listener's network filters, every route's http filters and every cluster's
/// connect stack through the filter registries), then the error report or the chains
/// `/config_dump` shows. Variables are unset (defaults apply) and relative paths resolve in a
/// directory that does not exist.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, "fuzz.yaml", "/nonexistent".into(), |_| None) {
        Ok(loaded) => match snapshot::build(&loaded, 0) {
            Ok(snapshot) => {
                let _ = snapshot.chains().to_string();
            }
            Err(errors) => {
                let _ = errors.to_string();
            }
        },
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
}

/// The config file that a [`source_document`] is built with: a listener and a cluster of its own,
/// so a document can collide with them or refer to them.
const SOURCE_BASE_CONFIG: &str = r#"
version: 1
static_resources:
  listeners:
    - { name: base, address: "127.0.0.1:0", routes: [ { cluster: base } ] }
  clusters:
    - { name: base, type: static, endpoints: [ "127.0.0.1:9" ] }
"#;

/// What a config source serves → what the gateway does with one answer: the first byte chooses
/// the kind (a REST answer as JSON, as YAML, or a file of a `path` source), the rest is the
/// text. It is parsed (`config::parse_rest_document`, `config::parse_resource_file`); when it
/// parses, it is built with [`SOURCE_BASE_CONFIG`] as the answer of one source
/// (`control::sources`' build check, the same as before an answer is put in force); then the
/// error report and the `error_detail` reported back to a REST server. Invariants: every error
/// names the document; the reported detail is at most 512 bytes; and a REST answer that builds
/// names no file for an `access_log` (a config server must not make this host write files).
pub fn source_document(data: &[u8]) {
    use crate::config::{SourceResources, parse_resource_file, parse_rest_document};
    use crate::control::sources;
    const URL: &str = "https://config.fuzz/resources";
    const FILE: &str = "/etc/bindgate/conf.d/fuzz.yaml";
    static BASE: OnceLock<LoadedConfig> = OnceLock::new();
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let (name, parsed) = match kind % 3 {
        0 => (URL, parse_rest_document(text, URL, false)),
        1 => (URL, parse_rest_document(text, URL, true)),
        _ => (
            FILE,
            parse_resource_file(text, FILE).map(|d| (String::new(), d)),
        ),
    };
    let why = match parsed {
        Err(errors) => {
            for e in &errors {
                assert_eq!(
                    e.file.as_deref(),
                    Some(name),
                    "an error without its document"
                );
            }
            sources::source_errors("fuzz", errors)
        }
        Ok((version_info, doc)) => {
            let remote = doc.is_remote();
            assert_eq!(remote, name == URL);
            let files = remote.then(|| access_log_files(&doc.resources));
            let base = BASE.get_or_init(|| {
                match config::parse(
                    SOURCE_BASE_CONFIG,
                    "base.yaml",
                    "/nonexistent".into(),
                    |_| None,
                ) {
                    Ok(loaded) => loaded,
                    Err(e) => unreachable!("a fixed, valid config: {e}"),
                }
            });
            let source = Arc::new(SourceResources {
                source: "fuzz".into(),
                version_info,
                docs: vec![doc],
            });
            match sources::build_check(base, &[source]) {
                Ok(()) => {
                    assert_eq!(
                        files.unwrap_or_default(),
                        0,
                        "a REST answer that names a file to log to was accepted"
                    );
                    return;
                }
                Err(errors) => errors.to_string(),
            }
        }
    };
    let detail = sources::error_detail(&why);
    assert!(
        detail.len() <= 512,
        "a reported error detail over 512 bytes"
    );
}

/// How many `access_log`s in `resources` name a file (a `path` other than `-`), found in their
/// serialized form, whatever filter list holds them.
fn access_log_files(resources: &config::ResourceSet) -> usize {
    fn walk(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let here = k == "access_log"
                        && v.get("path").and_then(serde_json::Value::as_str) != Some("-");
                    usize::from(here) + walk(v)
                })
                .sum(),
            serde_json::Value::Array(items) => items.iter().map(walk).sum(),
            _ => 0,
        }
    }
    match serde_json::to_value(resources) {
        Ok(v) => walk(&v),
        Err(e) => unreachable!("resources always serialize: {e}"),
    }
}

/// Bytes from a client → the SNI of a TLS ClientHello (`proxy::sni::parse`).
pub fn client_hello(data: &[u8]) {
    let _ = crate::proxy::sni::parse(data);
}

/// Bytes from a binding ingress after our `ConnRequest` → its `ConnResponse`, read the two ways
/// the proxy reads it: `upstream::dial::read_answer` (the upgrade waits for the answer) and
/// `upstream::early::EarlyUpgrade` (early data: the answer is taken off the stream on the first
/// read). The first byte of `data` chooses how the stream hands the rest out (read sizes,
/// `Pending`s, whether the client's early write fails). Both must agree with
/// `wire::decode_frame` on the same bytes, and must leave exactly the bytes after the frame to
/// the pipe.
pub fn conn_response(data: &[u8]) {
    let Some((&shape, wire)) = data.split_first() else {
        return;
    };
    let expected = match decode_frame::<ConnResponse>(wire) {
        Ok((response, rest)) => response.failure().is_none().then_some(rest),
        Err(_) => None,
    };

    let mut stream = ScriptedStream::new(wire, shape);
    let answered = drive(dial::read_answer(
        &mut stream,
        "fuzz",
        "ingress.fuzz:443",
        &"tcp://svc.ns:80",
    ));
    match expected {
        Some(rest) => {
            assert!(
                answered.is_ok(),
                "read_answer refused what decode_frame accepts"
            );
            assert_eq!(stream.unread(), rest, "read_answer read past its frame");
        }
        None => assert!(answered.is_err(), "read_answer accepted a bad answer"),
    }

    let mut early = EarlyUpgrade::new(
        ScriptedStream::new(wire, shape),
        Arc::from("fuzz"),
        Arc::from("ingress.fuzz:443"),
        "tcp://svc.ns:80".into(),
        crate::upstream::early::AnswerDeadline::none(),
    );
    // The client's first bytes go out before the answer is read (a failed write may read it).
    let _ = drive(early.write_all(b"GET / HTTP/1.1\r\nHost: svc.ns\r\n\r\n"));
    let mut piped = Vec::new();
    let read = drive(early.read_to_end(&mut piped));
    match expected {
        Some(rest) => {
            assert!(
                read.is_ok(),
                "EarlyUpgrade refused what decode_frame accepts"
            );
            assert!(early.accepted());
            assert_eq!(piped, rest, "EarlyUpgrade lost or invented pipe bytes");
        }
        None => {
            assert!(read.is_err(), "EarlyUpgrade accepted a bad answer");
            assert!(!early.accepted());
        }
    }
}

/// A response body from the ngrok API → every model the client decodes from a 2xx answer
/// (`Operator` from create/get/update, the `Operator` and `Endpoint` list pages with their
/// `next_page_uri` resolved as pagination does), then what bindgate makes of them: discovery's
/// bound URLs (`control::discovery::normalize`), the operator's ingress address, metadata and
/// certificate (`identity::registration`, `identity::certificate`); and, as the body of an
/// error status, ngrok's error JSON or text (`ngrok_api::status_error`).
pub fn api_models(data: &[u8]) {
    const KEY: &str = "fuzz-api-key";
    let Ok(base) = ngrok_api::parse_base("https://api.ngrok.com") else {
        unreachable!("a fixed, valid API URL");
    };
    if let Ok(op) = ngrok_api::decode::<Operator>(data, "operator") {
        operator_facts(&op);
    }
    if let Ok(page) = ngrok_api::decode::<OperatorPage>(data, "list page") {
        let (operators, next) = page.into_parts();
        if let Some(next) = next.filter(|n| !n.is_empty()) {
            let _ = ngrok_api::follow(&base, &next);
        }
        operators.iter().for_each(operator_facts);
    }
    if let Ok(page) = ngrok_api::decode::<EndpointPage>(data, "list page") {
        let (endpoints, next) = page.into_parts();
        if let Some(next) = next.filter(|n| !n.is_empty()) {
            let _ = ngrok_api::follow(&base, &next);
        }
        let _ = crate::control::discovery::normalize(&endpoints);
    }
    if let Ok(endpoint) = ngrok_api::decode::<Endpoint>(data, "endpoint") {
        let _ = crate::control::discovery::normalize(std::slice::from_ref(&endpoint));
    }
    for status in [400, 401, 404, 429, 500, 503] {
        let Ok(status) = http::StatusCode::from_u16(status) else {
            continue;
        };
        let e = ngrok_api::status_error(status, data, KEY);
        let text = e.to_string();
        assert!(!text.contains(KEY), "the API key reached an error message");
        let _ = (e.is_not_found(), e.is_unauthorized(), e.error_code());
    }
}

/// What registration reads from an operator the API returned.
fn operator_facts(op: &Operator) {
    use crate::identity::{Registrar, certificate, registration};
    let _ = registration::metadata_node_id(&op.metadata);
    let _ = registration::ingress_of(op);
    if let Some(cert) = op.binding.as_ref().and_then(|b| b.cert.as_ref()) {
        if let Ok(info) = certificate::inspect(&cert.cert) {
            let _ = info.renew_at(Duration::from_secs(30 * 24 * 3600));
        }
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let _ = Registrar::renewal_due(&cert.cert, Duration::from_secs(3600), now);
    }
}

/// The http listener's configuration for [`http_head`]: routes by exact host, host suffix and
/// path, a default route, and the request-side http filters (rate limit, header mutation, body
/// limit, timeout). The clusters are static and never dialled.
const HTTP_HEAD_CONFIG: &str = r#"
version: 1
static_resources:
  listeners:
    - name: web
      address: 127.0.0.1:8080
      protocol: http
      routes:
        - match: { host: shop.default, path_prefix: /api/ }
          name: api
          cluster: api
          filters:
            - local_rate_limit: { requests_per_second: 1, burst: 2, per_source_ip: true }
            - header_mutation:
                request: { set: { x-gateway: gw-1 }, remove: [ x-debug ] }
                response: { set: { x-served-by: bindgate } }
            - max_request_body: { bytes: 64 }
            - timeout: { request: 30s }
        - match: { host: shop.default }
          cluster: shop
        - match: { host: "*.internal" }
          cluster: shop
          filters:
            - max_request_body: { bytes: 0 }
        - cluster: shop
      idle_timeout: 5s
  clusters:
    - { name: api, type: static, endpoints: [ "127.0.0.1:9" ] }
    - { name: shop, type: static, endpoints: [ "127.0.0.1:9" ] }
"#;

/// Bytes from a client of an http listener → hyper's HTTP/1 server, configured as the listener
/// configures it (`proxy::http::http1_server`), over an in-memory stream, with a service that
/// does bindgate's request handling short of the network: checks and route selection
/// (`proxy::http::select_route`), the forwarder's head handling (upgrade detection, hop-by-hop
/// removal, replayable head), then the route's http filter chain, whose forwarder, outside a
/// client connection, answers `500` itself. Every request of a kept-alive connection is served.
///
/// Uses a runtime of its own: not to be called from inside one.
pub fn http_head(data: &[u8]) {
    static LOADED: OnceLock<LoadedConfig> = OnceLock::new();
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        config::parse(HTTP_HEAD_CONFIG, "http_head.yaml", "/".into(), |_| None)
            .unwrap_or_else(|e| panic!("the http_head config: {e}"))
    });
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"))
    });
    runtime.block_on(async {
        // Built per input, so a rate limit's bucket starts full every time.
        let snapshot = snapshot::build(loaded, 0).unwrap_or_else(|e| panic!("{e}"));
        let Some(listener) = snapshot.listener("web") else {
            unreachable!("the config has it");
        };
        let served = serve_offline(listener.routes.clone(), listener.idle_timeout, data);
        if tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .is_err()
        {
            panic!("http_head: the connection did not end within 10 s of its input");
        }
    });
}

async fn serve_offline(routes: Arc<RouteTable>, idle_timeout: Duration, data: &[u8]) {
    let peer: SocketAddr = ([192, 0, 2, 1], 50000).into();
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let routes = routes.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle_offline(&routes, peer, idle_timeout, req).await,
            )
        }
    });
    let conn = crate::proxy::http::http1_server(idle_timeout, true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service)
        .with_upgrades();
    let send = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = client.read_to_end(&mut answers).await;
    };
    let _ = tokio::join!(conn, send);
}

async fn handle_offline(
    routes: &RouteTable,
    peer: SocketAddr,
    idle_timeout: Duration,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    use crate::proxy::http;
    let RouteTable::Http(routes) = routes else {
        unreachable!("the http_head listener is an http listener");
    };
    let (route, req) = match http::select_route(routes, "web", peer, req) {
        Ok(chosen) => chosen,
        Err(refused) => return refused.answer("web"),
    };
    let mut head = Request::new(RequestBody::empty());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    let _ = http::is_upgrade(&head);
    http::prepare_request(&mut head);
    let _ = http::replayable_head(&head);

    let mut req = req.map(RequestBody::incoming);
    req.body_mut().idle_timeout(idle_timeout);
    req.extensions_mut().insert(RequestInfo {
        peer,
        listener: Arc::from("web"),
        route: route.name.clone(),
        cluster: Arc::from(route.upstream.cluster.name.as_str()),
    });
    let Ok(resp) = route.service.clone().oneshot(req).await;
    resp
}

/// Polls `f` to completion on this thread. Only for futures over [`ScriptedStream`], which never
/// waits on anything outside itself: one still pending after many polls is a hang, reported as
/// a crash.
fn drive<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a future over in-memory bytes never finished");
}

/// An ingress's side of the stream, in memory: hands `data` out in reads of a size chosen by
/// `shape` (1 to 16 bytes), optionally answering `Pending` before every read (waking at once);
/// writes are swallowed, or fail when `shape` says so.
struct ScriptedStream<'a> {
    data: &'a [u8],
    read_size: usize,
    stalls: bool,
    stalled: bool,
    fail_writes: bool,
}

impl<'a> ScriptedStream<'a> {
    fn new(data: &'a [u8], shape: u8) -> Self {
        ScriptedStream {
            data,
            read_size: usize::from(shape & 0x0f) + 1,
            stalls: shape & 0x10 != 0,
            stalled: false,
            fail_writes: shape & 0x20 != 0,
        }
    }

    fn unread(&self) -> &'a [u8] {
        self.data
    }
}

impl AsyncRead for ScriptedStream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stalls && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let n = self.read_size.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedStream<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(if self.fail_writes {
            Err(io::ErrorKind::BrokenPipe.into())
        } else {
            Ok(buf.len())
        })
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invariant of [`source_document`] sees a file-writing `access_log` wherever it is, and
    /// the build refuses such a REST answer (were it accepted, the target would panic).
    #[test]
    fn a_rest_answer_logging_to_a_file_is_seen_and_refused() {
        let listener = |filters: &str, route_filters: &str| {
            format!(
                r#"{{"version_info": "1", "resources": {{"listeners": [{{"name": "l", "address": "127.0.0.1:0",
  "protocol": "http", "filters": [{filters}], "routes": [{{"cluster": "base", "filters": [{route_filters}]}}]}}]}}}}"#
            )
        };
        let count = |text: &str| {
            let (_, doc) = config::parse_rest_document(text, "u", false).unwrap();
            access_log_files(&doc.resources)
        };
        let log = |path: &str| format!(r#"{{"access_log": {{"path": "{path}"}}}}"#);
        assert_eq!(count(&listener("", "")), 0);
        assert_eq!(count(&listener(&log("-"), &log("-"))), 0);
        assert_eq!(count(&listener(&log("/tmp/a.log"), "")), 1);
        assert_eq!(count(&listener(&log("a.log"), &log("/tmp/b"))), 2);
        for text in [
            listener(&log("/tmp/a.log"), ""),
            listener("", &log("/tmp/b")),
        ] {
            let mut data = vec![0u8];
            data.extend_from_slice(text.as_bytes());
            source_document(&data); // refused, so no panic
        }
        // The same from a `path` source's file is accepted (local files may name files).
        let mut data = vec![2u8];
        data.extend_from_slice(
            br#"{"listeners": [{"name": "l", "address": "127.0.0.1:0", "filters": [{"access_log": {"path": "/tmp/a.log"}}], "routes": [{"cluster": "base"}]}]}"#,
        );
        source_document(&data);
    }
}
