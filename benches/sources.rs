//! A REST config source's update path, end to end, for a 10,000-resource document (5,000
//! listeners, each routing to its own one of 5,000 clusters):
//!
//! - `sources/fetch_to_swap/10000_resources`: GET over loopback HTTP with bindgate's own REST
//!   client, parse the JSON document, build the snapshot with it (the state store of the
//!   snapshot in force reused, as the control loop does), publish with `ArcSwap::swap` (the
//!   replaced snapshot is freed on another thread, as the gateway does);
//! - `sources/parse/10000_resources`: the parse alone;
//! - `sources/build/10000_resources`: the build alone.
//!
//! Binding the listeners is not part of it: the listener manager reconciles sockets after the
//! swap, and an unchanged listener keeps its socket. The server is a minimal HTTP/1.1 responder
//! on a loopback port in this process (keep-alive, fixed body).
//!
//! Before criterion starts it prints the wall-clock time of a few fetch-to-swap rounds against
//! the 100 ms target. Run with `cargo bench --bench sources` (add `-- --quick` for a shorter run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bindgate::config::{self, LoadedConfig, RestSourceConfig, SourceResources};
use bindgate::control::sources::{Fetched, RestFetcher};
use bindgate::retained::Retained;
use bindgate::snapshot::{self, BuildInput, Snapshot};
use criterion::{Criterion, criterion_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// mimalloc, the allocator the `bindgate` binary uses (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LISTENERS: usize = 5_000;
/// The update path's budget, fetch to swap.
const TARGET: Duration = Duration::from_millis(100);

/// The document: `LISTENERS` tcp listeners and as many static clusters.
fn document() -> String {
    let listeners: Vec<serde_json::Value> = (0..LISTENERS)
        .map(|i| {
            serde_json::json!({
                "name": format!("svc-{i}"),
                "address": "127.0.0.1:0",
                "routes": [{"cluster": format!("svc-{i}")}],
            })
        })
        .collect();
    let clusters: Vec<serde_json::Value> = (0..LISTENERS)
        .map(|i| {
            serde_json::json!({
                "name": format!("svc-{i}"),
                "type": "static",
                "endpoints": [format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)],
            })
        })
        .collect();
    serde_json::to_string(&serde_json::json!({
        "version_info": "1",
        "resources": {"listeners": listeners, "clusters": clusters},
    }))
    .expect("the document serializes")
}

/// Serves `body` to every GET on a loopback port (HTTP/1.1, keep-alive).
async fn serve(body: Arc<String>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if s.write_all(reply.as_bytes()).await.is_err()
                            || s.write_all(body.as_bytes()).await.is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    loaded: LoadedConfig,
    fetcher: std::cell::RefCell<RestFetcher>,
    url: String,
    text: String,
    retained: Retained,
    current: ArcSwap<Snapshot>,
    /// Replaced snapshots are freed on another thread, as the gateway frees them off the
    /// control loop.
    dropper: std::sync::mpsc::Sender<Arc<Snapshot>>,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let text = document();
        let addr = rt.block_on(serve(Arc::new(text.clone())));
        let url = format!("http://{addr}/resources");
        let loaded = config::parse("version: 1\n", "bench.yaml", std::env::temp_dir(), |_| None)
            .expect("the bench config parses");
        let rest = RestSourceConfig {
            url: url.clone(),
            poll_interval: config::HumanDuration::from_secs(30),
            headers: Default::default(),
            ca: None,
            timeout: config::HumanDuration::from_secs(10),
            report_status: false,
        };
        let fetcher = RestFetcher::new(&rest, None).expect("client");
        let retained = Retained::new();
        let first = build(&loaded, &retained, parse(&text), 1);
        assert_eq!(first.listeners.len(), LISTENERS);
        assert_eq!(first.clusters.len(), LISTENERS);
        retained.commit();
        let (dropper, freed) = std::sync::mpsc::channel::<Arc<Snapshot>>();
        std::thread::spawn(move || {
            for old in freed {
                drop(old)
            }
        });
        Fixture {
            rt,
            loaded,
            fetcher: std::cell::RefCell::new(fetcher),
            url,
            text,
            retained,
            current: ArcSwap::from_pointee(first),
            dropper,
        }
    }

    /// Fetch, parse, build against the snapshot in force, swap.
    fn fetch_to_swap(&self) {
        let fetched = self
            .rt
            .block_on(self.fetcher.borrow_mut().fetch(&self.url))
            .expect("the fetch succeeds");
        let Fetched::Body { text, .. } = fetched else {
            panic!("the bench server never answers 304");
        };
        let version = self.current.load().version + 1;
        let next = build(&self.loaded, &self.retained, parse(&text), version);
        self.retained.commit();
        let previous = self.current.swap(Arc::new(next));
        let _ = self.dropper.send(previous);
    }
}

fn parse(text: &str) -> Arc<SourceResources> {
    let (version_info, doc) =
        config::parse_rest_document(text, "http://bench/resources", false).expect("parses");
    Arc::new(SourceResources {
        source: "central".into(),
        version_info,
        docs: vec![doc],
    })
}

fn build(
    loaded: &LoadedConfig,
    retained: &Retained,
    source: Arc<SourceResources>,
    version: u64,
) -> Snapshot {
    snapshot::build_with(BuildInput {
        loaded,
        discovered: &[],
        retained,
        registered: None,
        sources: &[source],
        version,
        offline: false,
    })
    .unwrap_or_else(|e| panic!("the document builds: {e}"))
}

/// Prints the wall-clock time of a few rounds against the target.
#[allow(clippy::disallowed_types)] // wall-clock time of the real update path is what is reported
fn report(fixture: &Fixture) {
    use std::time::Instant;
    let mut rounds: Vec<Duration> = (0..10)
        .map(|_| {
            let start = Instant::now();
            fixture.fetch_to_swap();
            start.elapsed()
        })
        .collect();
    rounds.sort();
    let median = rounds[rounds.len() / 2];
    let verdict = if median < TARGET { "within" } else { "OVER" };
    println!(
        "fetch to swap of {} resources ({} KiB of JSON): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} rounds ({verdict} the {} ms target)",
        2 * LISTENERS,
        fixture.text.len() / 1024,
        ms(median),
        ms(rounds[0]),
        ms(rounds[rounds.len() - 1]),
        rounds.len(),
        TARGET.as_millis()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench(c: &mut Criterion) {
    let fixture = Fixture::new();
    report(&fixture);
    let mut g = c.benchmark_group("sources");
    g.sample_size(20);
    g.bench_function("fetch_to_swap/10000_resources", |b| {
        b.iter(|| fixture.fetch_to_swap())
    });
    g.bench_function("parse/10000_resources", |b| b.iter(|| parse(&fixture.text)));
    let source = parse(&fixture.text);
    g.bench_function("build/10000_resources", |b| {
        b.iter(|| build(&fixture.loaded, &fixture.retained, source.clone(), 2))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
