//! Micro-benchmarks of the control path with 10,000 discovered bound endpoints:
//!
//! - `snapshot/build_with/10000_endpoints`: compile config + 10,000 placements into a snapshot,
//!   as the API poller does on its first poll (no previous snapshot);
//! - `snapshot/rebuild_with_previous/10000_endpoints`: the same with the snapshot in force as
//!   `previous`, so admission state is carried over by name (every later poll);
//! - `snapshot/build_and_swap/10000_endpoints`: rebuild, then publish with `ArcSwap::store`
//!   (the old snapshot is dropped there, as in `control`);
//! - `snapshot/listener_lookup/*`: `Snapshot::listener` by name, done once per accepted
//!   connection.
//!
//! Before criterion starts it prints the wall-clock time of a few build+swap rounds against the
//! 100 ms target, so one plain run answers "is a reload of 10,000 endpoints fast enough".
//! The ingress is a static one whose CA and client certificate are generated with rcgen into a
//! temporary directory (`system_roots: false`, so the host's CA bundle is not part of the timing).
//!
//! Run with `cargo bench --bench snapshot` (add `-- --quick` for a shorter run).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bindgate::config::{self, LoadedConfig};
use bindgate::host::Placement;
use bindgate::retained::Retained;
use bindgate::snapshot::{self, BoundUrl, BuildInput, Snapshot};
use criterion::{Criterion, criterion_group};

/// mimalloc, the allocator the `bindgate` binary uses (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENDPOINTS: usize = 10_000;
const FIRST_PORT: u16 = 20_000;
/// The control path's budget for rebuilding and publishing 10,000 endpoints.
const BUILD_AND_SWAP_TARGET: Duration = Duration::from_millis(100);

/// Writes `ca.pem`, `tls.crt` and `tls.key` (an rcgen CA and a client certificate it signed).
fn write_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("generate client key");
    let cert = CertificateParams::new(vec!["ac_bench".to_owned()])
        .expect("client params")
        .signed_by(&key, &issuer)
        .expect("sign client cert");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write tls.crt");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write tls.key");
}

/// A config with one static listener and cluster, and discovery through the same ingress.
fn config_text(dir: &Path) -> String {
    let last = FIRST_PORT as usize + ENDPOINTS - 1;
    format!(
        "\
version: 1
ingresses:
  - name: bench
    address: 127.0.0.1:4443
    server_name: localhost
    ca: {dir}/ca.pem
    system_roots: false
    client_cert: {dir}/tls.crt
    client_key: {dir}/tls.key
static_resources:
  listeners:
    - name: orders
      address: 127.0.0.1:0
      routes: [ {{ cluster: orders }} ]
  clusters:
    - name: orders
      type: binding_upstream
      endpoint: tcp://orders.default:5432
      ingress: bench
dynamic_resources:
  bound_endpoints:
    ingress: bench
    expose: {{ mode: port_range, ports: {FIRST_PORT}-{last} }}
",
        dir = dir.display()
    )
}

/// 10,000 discovered endpoints, each on its own local port.
fn placements() -> Vec<Placement> {
    (0..ENDPOINTS)
        .map(|i| {
            let url = BoundUrl::parse(&format!("tcp://svc-{i}.bench:7000"), None)
                .expect("a valid endpoint URL");
            Placement {
                listener: url.to_string(),
                url,
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), FIRST_PORT + i as u16),
                protocol: bindgate::config::Protocol::Tcp,
            }
        })
        .collect()
}

struct Fixture {
    /// Holds the certificate files for as long as builds read them.
    _dir: tempfile::TempDir,
    loaded: LoadedConfig,
    discovered: Vec<Placement>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        write_certs(dir.path());
        let loaded = config::parse(
            &config_text(dir.path()),
            "bench.yaml",
            dir.path().to_owned(),
            |_| None,
        )
        .expect("the bench config parses");
        Fixture {
            _dir: dir,
            loaded,
            discovered: placements(),
        }
    }

    /// `retained`: the state store of the control plane (shared by rebuilds), or a fresh one.
    fn build(&self, retained: &Retained, version: u64) -> Snapshot {
        snapshot::build_with(BuildInput {
            loaded: &self.loaded,
            discovered: &self.discovered,
            retained,
            registered: None,
            sources: &[],
            version,
            offline: false,
        })
        .unwrap_or_else(|e| panic!("the bench config builds: {e}"))
    }
}

/// Rebuilds against the snapshot in force and publishes the result, as the control loop does.
fn build_and_swap(fixture: &Fixture, current: &ArcSwap<Snapshot>) {
    let previous = current.load_full();
    let next = fixture.build(&Retained::new(), previous.version + 1);
    drop(previous);
    current.store(Arc::new(next));
}

/// Prints the wall-clock time of a few build+swap rounds against the target.
#[allow(clippy::disallowed_types)] // wall-clock time of a real rebuild is what is reported
fn report_build_and_swap() {
    use std::time::Instant;
    let fixture = Fixture::new();
    let current = ArcSwap::from_pointee(fixture.build(&Retained::new(), 1));
    assert_eq!(current.load().listeners.len(), ENDPOINTS + 1);
    let mut rounds: Vec<Duration> = (0..10)
        .map(|_| {
            let start = Instant::now();
            build_and_swap(&fixture, &current);
            start.elapsed()
        })
        .collect();
    rounds.sort();
    let median = rounds[rounds.len() / 2];
    let verdict = if median < BUILD_AND_SWAP_TARGET {
        "within"
    } else {
        "OVER"
    };
    println!(
        "build+swap of {ENDPOINTS} endpoints: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} rounds ({verdict} the {} ms target)",
        ms(median),
        ms(rounds[0]),
        ms(rounds[rounds.len() - 1]),
        rounds.len(),
        BUILD_AND_SWAP_TARGET.as_millis()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn build(c: &mut Criterion) {
    let fixture = Fixture::new();
    let mut g = c.benchmark_group("snapshot");
    // One build takes milliseconds: fewer, longer samples keep a run to seconds.
    g.sample_size(20);
    g.bench_function("build_with/10000_endpoints", |b| {
        b.iter(|| fixture.build(&Retained::new(), 1))
    });
    let retained = Retained::new();
    let _previous = fixture.build(&retained, 1);
    g.bench_function("rebuild_with_previous/10000_endpoints", |b| {
        b.iter(|| fixture.build(&retained, 2))
    });
    let current = ArcSwap::from_pointee(fixture.build(&Retained::new(), 1));
    g.bench_function("build_and_swap/10000_endpoints", |b| {
        b.iter(|| build_and_swap(&fixture, &current))
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let fixture = Fixture::new();
    let snap = fixture.build(&Retained::new(), 1);
    let discovered = format!("tcp://svc-{}.bench:7000", ENDPOINTS / 2);
    assert!(snap.listener(&discovered).is_some());
    let mut g = c.benchmark_group("snapshot/listener_lookup");
    g.bench_function("static", |b| {
        b.iter(|| snap.listener(black_box("orders")).is_some())
    });
    g.bench_function("discovered_of_10000", |b| {
        b.iter(|| snap.listener(black_box(&discovered)).is_some())
    });
    g.bench_function("missing", |b| {
        b.iter(|| snap.listener(black_box("no-such-listener")).is_some())
    });
    g.finish();
}

criterion_group!(benches, build, lookup);

fn main() {
    report_build_and_swap();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
