//! Micro-benchmarks of the filter chains alone, around leaf services that do nothing:
//!
//! - `filters/network/{empty,five_filters}`: one accepted connection through a listener's
//!   network chain (`filters::network::build_chain`): no filters, then `connection_limit`,
//!   `local_rate_limit`, `source_ip`, a per-client `local_rate_limit` and `access_log` (to a file
//!   in a temporary directory), and those four without the `access_log` (what formatting and
//!   queueing one line costs). The connection is a real loopback TCP pair made in the untimed
//!   setup; the leaf hands it back untouched, so closing it is not timed either.
//! - `filters/http/{empty,five_filters}`: one request through a route's http chain
//!   (`filters::http::build_chain`): only the default `timeout`, then `local_rate_limit`,
//!   `header_mutation`, `max_request_body`, `fault` at 0% and `timeout`. The leaf answers an
//!   empty 200 without reading the body.
//!
//! Limits are set far above what a run reaches, so every call takes the admitted path (the one
//! every served connection and request pays). Each call is driven by `block_on` on a
//! current-thread runtime, the same in both variants: compare the two, not the absolute numbers.
//!
//! Run with `cargo bench --bench filters` (add `-- --quick` for a shorter run).

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bindgate::config::{HumanDuration, Protocol};
use bindgate::filters::access_log::AccessLogConfig;
use bindgate::filters::http::{
    Fault, FaultAbort, HeaderMutation, HeaderOps, HttpFilterConfig, HttpRateLimit, HttpService,
    MaxRequestBody, RequestInfo, RequestTimeout, build_chain as build_http_chain,
};
use bindgate::filters::network::{
    ClientIo, Conn, ConnOutcome, ConnService, ConnectionLimit, NetworkAccessLog,
    NetworkFilterConfig, NetworkRateLimit, Outcome, SourceIp, build_chain as build_network_chain,
};
use bindgate::http_body::{ProxyBody, RequestBody};
use bindgate::retained::Retained;
use criterion::{BatchSize, Criterion, criterion_group};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connections alive at once in one batch (two sockets each): well under the usual fd limit.
const CONNS_PER_BATCH: u64 = 64;
/// A limit no run reaches.
const UNREACHED: u32 = 1_000_000_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// Network

/// The five network filters: admission, rate, source address, per-client rate, access log.
fn network_filters(log: &Path) -> Vec<NetworkFilterConfig> {
    vec![
        NetworkFilterConfig::connection_limit(ConnectionLimit {
            max_connections: UNREACHED,
        }),
        NetworkFilterConfig::local_rate_limit(NetworkRateLimit {
            connections_per_second: UNREACHED,
            burst: Some(UNREACHED),
            per_source_ip: false,
        }),
        NetworkFilterConfig::source_ip(SourceIp {
            allow: vec!["127.0.0.0/8".into()],
            deny: vec!["10.9.0.0/16".into()],
        }),
        NetworkFilterConfig::local_rate_limit(NetworkRateLimit {
            connections_per_second: UNREACHED,
            burst: Some(UNREACHED),
            per_source_ip: true,
        }),
        NetworkFilterConfig::access_log(NetworkAccessLog(AccessLogConfig {
            path: log.display().to_string(),
        })),
    ]
}

/// A leaf that hands every connection back (through `done`) and answers `ok`, so the socket is
/// closed outside the timed loop.
fn network_leaf(done: mpsc::UnboundedSender<Conn>) -> ConnService {
    ConnService::new(tower::service_fn(move |conn: Conn| {
        let _ = done.send(conn);
        std::future::ready(Ok::<_, Infallible>(ConnOutcome::new(None, Outcome::Ok)))
    }))
}

/// Accepts loopback connections for the setup of each iteration.
struct Pairs {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Pairs {
    async fn new() -> Pairs {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        Pairs { listener, addr }
    }

    /// A connection as the accept loop hands it to the chain, and its client side. Both close
    /// with a reset (linger 0), so a long run leaves no TIME_WAIT behind to exhaust ports.
    async fn next(&self) -> (Conn, TcpStream) {
        let (client, accepted) =
            tokio::join!(TcpStream::connect(self.addr), self.listener.accept());
        let client = client.expect("connect");
        let (server, peer) = accepted.expect("accept");
        for s in [&client, &server] {
            socket2::SockRef::from(s)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
        }
        let conn = Conn {
            io: ClientIo::new(server),
            peer,
            listener: Arc::from("bench"),
            protocol: Protocol::Tcp,
            draining: CancellationToken::new(),
            force_close: CancellationToken::new(),
        };
        (conn, client)
    }
}

fn network_chain(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let retained = Retained::new();
    let pairs = rt.block_on(Pairs::new());
    let (done, mut handed_back) = mpsc::unbounded_channel();
    let five = network_filters(&dir.path().join("access.log"));
    let chains = [
        ("empty", Vec::new()),
        ("five_filters", five.clone()),
        // The same without the access log: what formatting and queueing a line costs.
        ("four_without_access_log", five[..4].to_vec()),
    ];
    let mut g = c.benchmark_group("filters/network");
    for (name, filters) in &chains {
        let svc = build_network_chain(
            filters,
            network_leaf(done.clone()),
            "bench",
            Protocol::Tcp,
            &retained,
            dir.path(),
        );
        g.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    // Close the connections of the previous batch here, untimed.
                    while handed_back.try_recv().is_ok() {}
                    rt.block_on(pairs.next())
                },
                |(conn, client)| {
                    let done = rt.block_on(svc.clone().oneshot(conn));
                    assert!(matches!(&done, Ok(o) if o.outcome == Outcome::Ok));
                    (done, client)
                },
                BatchSize::NumIterations(CONNS_PER_BATCH),
            )
        });
    }
    g.finish();
    while handed_back.try_recv().is_ok() {}
}

// ---------------------------------------------------------------------------------------------
// Http

/// The five http filters: rate, header rewrite, body limit, fault at 0%, timeout.
fn http_filters() -> Vec<HttpFilterConfig> {
    let ops = |set: &[(&str, &str)], remove: &[&str]| HeaderOps {
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        remove: remove.iter().map(|h| (*h).to_owned()).collect(),
    };
    vec![
        HttpFilterConfig::local_rate_limit(HttpRateLimit {
            requests_per_second: UNREACHED,
            burst: Some(UNREACHED),
            per_source_ip: false,
        }),
        HttpFilterConfig::header_mutation(HeaderMutation {
            request: Some(ops(&[("x-gateway", "gw-1")], &["x-debug"])),
            response: Some(ops(&[("x-served-by", "bindgate")], &[])),
        }),
        HttpFilterConfig::max_request_body(MaxRequestBody { bytes: 1 << 20 }),
        HttpFilterConfig::fault(Fault {
            abort: Some(FaultAbort {
                status: 503,
                percent: 0.0,
            }),
            delay: None,
        }),
        HttpFilterConfig::timeout(RequestTimeout {
            request: HumanDuration::from_secs(30),
        }),
    ]
}

/// A leaf that answers an empty 200 at once.
fn http_leaf() -> HttpService {
    HttpService::new(tower::service_fn(|_req: http::Request<RequestBody>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new(ProxyBody::local(
            bytes::Bytes::new(),
        ))))
    }))
}

/// A request as the router hands it to a route's chain.
fn request(info: &RequestInfo) -> http::Request<RequestBody> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/api/orders")
        .header("host", "shop.default")
        .header("content-length", "5")
        .header("x-debug", "1")
        .body(RequestBody::full("hello"))
        .expect("a request");
    req.extensions_mut().insert(info.clone());
    req
}

fn http_chain(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let retained = Retained::new();
    let info = RequestInfo {
        peer: "127.0.0.1:40000".parse().expect("an address"),
        listener: Arc::from("web"),
        route: Arc::from("api"),
        cluster: Arc::from("api"),
    };
    let chains = [("empty", Vec::new()), ("five_filters", http_filters())];
    let mut g = c.benchmark_group("filters/http");
    for (name, filters) in &chains {
        let svc = build_http_chain(
            filters,
            http_leaf(),
            Duration::from_secs(60),
            "web/api",
            &retained,
            dir.path(),
        );
        g.bench_function(*name, |b| {
            b.iter_batched(
                || request(&info),
                |req| {
                    let resp = rt.block_on(svc.clone().oneshot(req));
                    assert!(matches!(&resp, Ok(r) if r.status() == 200));
                    black_box(resp)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, network_chain, http_chain);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
