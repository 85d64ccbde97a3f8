//! Warm pool unit tests against a small in-process binding ingress that reports, per accepted
//! connection, whether it served a `ConnRequest` or was closed while idle.

use std::net::SocketAddr;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::identity::ClientIdentity;
use crate::secret::Secret;
use crate::upstream::IngressTransport;
use crate::upstream::transport::{Fingerprint, TransportSettings, TransportSpec, Transports};
use crate::wire::{self, ConnRequest, ConnResponse};

/// What the test ingress saw on accepted connection number `.0` (1-based, accept order).
#[derive(Debug)]
enum Seen {
    /// Handshaked (resumed or not); sending on the channel closes it (close_notify + FIN) while
    /// idle.
    Accepted(usize, oneshot::Sender<()>, bool),
    Served(usize),
    /// The client closed it before any request (a retired or dropped pool).
    LeftIdle(usize),
}

struct TestIngress {
    addr: SocketAddr,
    roots: RootCertStore,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// While `false`, served connections read their `ConnRequest` but hold the answer.
    answers: watch::Sender<bool>,
}

impl TestIngress {
    async fn start() -> TestIngress {
        crate::identity::install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let answers = watch::Sender::new(true);
        let open = answers.subscribe();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                tokio::spawn(serve(n, tls, tx.clone(), open.clone()));
            }
        });
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .unwrap();
        TestIngress {
            addr,
            roots,
            ca,
            seen,
            answers,
        }
    }

    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        )
    }

    /// A client cert (PEM) and key signed by the test CA (the ingress does not ask for it; the
    /// pool only compares identities).
    fn client_cert(&self, name: &str) -> (String, Secret) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert.pem(), Secret::new(key.serialize_pem()))
    }

    fn dialer(&self, tls: Arc<rustls::ClientConfig>) -> IngressDialer {
        IngressDialer::new(
            "test",
            self.addr.to_string().as_str(),
            ServerName::try_from("localhost").unwrap(),
            tls,
            Duration::from_secs(5),
            true,
        )
    }

    async fn next(&mut self) -> Seen {
        self.seen.recv().await.expect("test ingress stopped")
    }

    /// The number of the next accepted connection, its close handle, and whether its TLS
    /// session was resumed (other events are skipped).
    async fn accepted(&mut self) -> (usize, oneshot::Sender<()>, bool) {
        loop {
            if let Seen::Accepted(n, close, resumed) = self.next().await {
                return (n, close, resumed);
            }
        }
    }

    /// Events until `want` `Served`/`LeftIdle` events arrived, accept events skipped.
    async fn outcomes(&mut self, want: usize) -> Vec<Seen> {
        let mut out = Vec::new();
        while out.len() < want {
            match self.next().await {
                Seen::Accepted(..) => {}
                other => out.push(other),
            }
        }
        out
    }
}

/// One connection of the test ingress: wait for a `ConnRequest` (answer and echo) or a close.
async fn serve(
    n: usize,
    mut tls: TlsStream,
    seen: mpsc::UnboundedSender<Seen>,
    mut answers: watch::Receiver<bool>,
) {
    let (close, closed) = oneshot::channel();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let _ = seen.send(Seen::Accepted(n, close, resumed));
    // A dropped close handle means "leave it open".
    let request = tokio::select! {
        Ok(()) = closed => {
            let _ = tls.shutdown().await;
            return;
        }
        r = wire::read_frame::<_, ConnRequest>(&mut tls) => r,
    };
    if request.is_err() {
        let _ = seen.send(Seen::LeftIdle(n));
        return;
    }
    if answers.wait_for(|open| *open).await.is_err() {
        return;
    }
    let response = ConnResponse {
        endpoint_id: format!("ep_{n}"),
        proto: "tcp".into(),
        ..Default::default()
    };
    if wire::write_frame(&mut tls, &response).await.is_err() {
        return;
    }
    let _ = seen.send(Seen::Served(n));
    let mut buf = vec![0u8; 4096];
    while let Ok(read) = tls.read(&mut buf).await {
        if read == 0 || tls.write_all(&buf[..read]).await.is_err() {
            break;
        }
    }
    let _ = tls.shutdown().await;
}

/// The numbers of the next `n` connections closed idle by the client, sorted.
async fn left_idle(ingress: &mut TestIngress, n: usize) -> Vec<usize> {
    let mut left: Vec<usize> = ingress
        .outcomes(n)
        .await
        .into_iter()
        .map(|s| match s {
            Seen::LeftIdle(k) => k,
            other => panic!("expected an idle close, got {other:?}"),
        })
        .collect();
    left.sort_unstable();
    left
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

fn endpoint() -> UpgradeRequest {
    UpgradeRequest::new(crate::bound_url::BoundUrl::parse("tcp://echo.test:7000", None).unwrap())
        .unwrap()
}

fn settings(min_idle: usize, max_idle: usize) -> PoolSettings {
    PoolSettings {
        min_idle,
        max_idle,
        max_age: Duration::from_secs(300),
    }
}

/// Opens through `pool` and checks the stream echoes.
async fn open_and_echo(pool: &WarmPool, text: &[u8]) {
    let request = endpoint();
    let mut stream = pool.open(&request).await.unwrap();
    stream.write_all(text).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, text);
}

#[tokio::test]
async fn a_connection_the_ingress_closed_while_idle_is_never_handed_out() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(1, 1));
    pool.start();
    let (first, close, _) = ingress.accepted().await;
    pool.wait_until(|s| s.idle == 1).await;

    close.send(()).unwrap();
    let stats = pool.wait_until(|s| s.closed_idle == 1).await;
    assert_eq!(stats.idle, 0);

    open_and_echo(&pool, b"hello").await;
    let outcomes = ingress.outcomes(1).await;
    match outcomes.as_slice() {
        [Seen::Served(n)] => assert_ne!(*n, first, "the closed connection was not used"),
        other => panic!("{other:?}"),
    }
    let stats = pool.stats();
    assert_eq!((stats.closed_idle, stats.redials), (1, 0));
    assert_eq!(stats.hits + stats.misses, 1);
}

#[tokio::test]
async fn a_pooled_connection_serves_one_upgrade() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(1, 1));
    pool.start();
    let (first, _close, _) = ingress.accepted().await;
    pool.wait_until(|s| s.idle == 1).await;

    open_and_echo(&pool, b"pooled").await;
    match ingress.outcomes(1).await.as_slice() {
        [Seen::Served(n)] => assert_eq!(*n, first),
        other => panic!("{other:?}"),
    }
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses, stats.redials), (1, 0, 0));
    // The pool refills behind the checkout.
    pool.wait_until(|s| s.idle == 1 && s.dialed == 2).await;
}

/// The refill behind a checkout starts once the upgrade request is written, not once it is
/// answered: the ingress here holds its answer until it has accepted the refill.
#[tokio::test]
async fn the_refill_starts_before_the_upgrade_is_answered() {
    let mut ingress = TestIngress::start().await;
    let dialer = IngressDialer::new(
        "test",
        ingress.addr.to_string().as_str(),
        ServerName::try_from("localhost").unwrap(),
        ingress.client_tls(),
        Duration::from_secs(5),
        false,
    );
    let pool = Arc::new(WarmPool::new(dialer, settings(1, 1)));
    pool.start();
    let (first, _close, _) = ingress.accepted().await;
    pool.wait_until(|s| s.idle == 1).await;
    ingress.answers.send_replace(false);

    let opening = tokio::spawn({
        let pool = pool.clone();
        async move { pool.open(&endpoint()).await.map(|_| ()) }
    });
    // Well within the driver's 10 s decay tick, its only other wake-up here.
    let (refill, _keep, _) = tokio::time::timeout(Duration::from_secs(5), ingress.accepted())
        .await
        .expect("no refill while the upgrade waited for its answer");
    assert_eq!(refill, first + 1);
    assert!(!opening.is_finished());
    ingress.answers.send_replace(true);
    opening.await.unwrap().unwrap();
    assert_eq!(pool.stats().hits, 1);
}

/// Refilled on another runtime (the low-priority refill thread in the proxy), a pooled
/// connection is served by the runtime that takes it even while the refill runtime is stuck:
/// it was moved to the serving runtime's reactor when it was parked. A refill into an empty
/// pool runs on the serving runtime.
#[tokio::test]
async fn a_connection_refilled_elsewhere_is_served_without_the_refill_runtime() {
    let mut ingress = TestIngress::start().await;
    let refills = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = refills.handle().clone();
    let (get_stuck, stuck_when_told) = oneshot::channel::<()>();
    let (stuck, is_stuck) = oneshot::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        refills.block_on(async move {
            let _ = stuck_when_told.await;
            let _ = stuck.send(());
            // Blocks the runtime's only thread: no I/O, timer or task of it runs until released.
            let _ = released.recv();
        });
    });

    // The first refill finds the pool empty and runs here; the second runs on `refills`.
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(2, 2));
    pool.start_with(Some(handle));
    ingress.accepted().await;
    ingress.accepted().await;
    let stats = pool.wait_until(|s| s.idle == 2).await;
    assert_eq!((stats.dialed, stats.dialed_in_background), (2, 1));
    get_stuck.send(()).unwrap();
    is_stuck.await.unwrap();

    for text in [&b"first"[..], b"second"] {
        tokio::time::timeout(Duration::from_secs(10), open_and_echo(&pool, text))
            .await
            .expect("a pooled connection was served while the refill runtime was stuck");
    }
    assert!(matches!(
        ingress.outcomes(2).await.as_slice(),
        [Seen::Served(_), Seen::Served(_)]
    ));
    assert_eq!(pool.stats().hits, 2);
    release.send(()).unwrap();
    thread.join().unwrap();
}

#[tokio::test]
async fn refills_resume_the_tls_session() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(1, 1));
    pool.start();
    let (_, _close1, resumed) = ingress.accepted().await;
    assert!(!resumed, "the first handshake is a full one");
    pool.wait_until(|s| s.idle == 1).await;
    open_and_echo(&pool, b"take it").await;
    // The refill resumes with the ticket the idle connection received while it waited.
    let (_, _close2, resumed) = ingress.accepted().await;
    assert!(resumed, "the refill resumed the session");
}

#[tokio::test]
async fn an_idle_connection_older_than_max_age_is_discarded() {
    let ingress = TestIngress::start().await;
    let max_age = Duration::from_secs(60);
    let pool = WarmPool::new(
        ingress.dialer(ingress.client_tls()),
        PoolSettings {
            min_idle: 1,
            max_idle: 1,
            max_age,
        },
    );
    pool.start();
    pool.wait_until(|s| s.idle == 1).await;

    // Paused, the clock only moves when everything waits: here, to the connection's deadline.
    tokio::time::pause();
    let paused_at = Instant::now();
    let stats = pool.wait_until(|s| s.aged == 1).await;
    assert!(
        paused_at.elapsed() >= max_age - Duration::from_secs(1),
        "discarded after {:?}",
        paused_at.elapsed()
    );
    assert_eq!(stats.closed_idle, 0);
}

#[tokio::test]
async fn a_burst_larger_than_the_pool_dials_directly() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(2, 8));
    pool.start();
    pool.wait_until(|s| s.idle == 2).await;

    let request = endpoint();
    let opens = (0..5).map(|_| pool.open(&request));
    let streams = futures_util::future::join_all(opens).await;
    assert_eq!(streams.iter().filter(|s| s.is_ok()).count(), 5);
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses), (2, 3), "{stats:?}");
    assert_eq!(stats.target, 5, "each miss raises the target");
    assert_eq!(ingress.outcomes(5).await.len(), 5);
}

#[tokio::test]
async fn retiring_closes_idle_connections_and_later_opens_dial_directly() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(2, 2));
    pool.start();
    pool.wait_until(|s| s.idle == 2).await;

    pool.retire();
    assert_eq!(left_idle(&mut ingress, 2).await, [1, 2]);
    assert_eq!(pool.stats().idle, 0);

    open_and_echo(&pool, b"direct").await;
    let stats = pool.stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 0),
        "no checkout once retired"
    );
}

#[tokio::test]
async fn dropping_the_pool_stops_its_driver_and_closes_idle_connections() {
    let mut ingress = TestIngress::start().await;
    let pool = WarmPool::new(ingress.dialer(ingress.client_tls()), settings(2, 2));
    pool.start();
    pool.wait_until(|s| s.idle == 2).await;
    let mut events = pool.subscribe();
    drop(pool);
    assert_eq!(left_idle(&mut ingress, 2).await, [1, 2]);
    // The driver and watchers hold the last references to the event channel; once they are
    // gone it reports closed.
    while events.changed().await.is_ok() {}
}

#[tokio::test]
async fn a_hot_swapped_identity_never_gets_a_connection_dialed_with_the_old_one() {
    let ingress = TestIngress::start().await;
    let (cert, key) = ingress.client_cert("ac_one");
    let identity = Arc::new(ClientIdentity::new(&cert, &key).unwrap());
    let tls = Arc::new(identity.client_config(ingress.roots.clone()).unwrap());
    let pool = WarmPool::new(ingress.dialer(tls), settings(1, 1));
    pool.start();
    pool.wait_until(|s| s.idle == 1).await;

    let (cert, key) = ingress.client_cert("ac_two");
    identity.replace(&cert, &key).unwrap();
    open_and_echo(&pool, b"new identity").await;
    let stats = pool.stats();
    assert_eq!(
        (stats.stale_identity, stats.hits, stats.misses),
        (1, 0, 1),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn refills_back_off_while_the_ingress_is_down() {
    crate::identity::install_crypto_provider();
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    );
    let dialer = IngressDialer::new(
        "down",
        addr.to_string().as_str(),
        ServerName::try_from("localhost").unwrap(),
        tls,
        Duration::from_secs(5),
        true,
    );
    let pool = WarmPool::new(dialer, settings(1, 1));
    pool.start();
    pool.wait_until(|s| s.dial_failures == 1).await;
    let first = Instant::now();
    pool.wait_until(|s| s.dial_failures == 4).await;
    // Backoffs after failures 1, 2, 3 are at least half of 200ms, 400ms, 800ms.
    assert!(
        first.elapsed() >= Duration::from_millis(700),
        "{:?}",
        first.elapsed()
    );
}

fn spec(ingress: &TestIngress, tls: Arc<rustls::ClientConfig>) -> TransportSpec {
    TransportSpec {
        dialer: ingress.dialer(tls),
        trust: Fingerprint::of_roots(&ingress.roots),
        settings: TransportSettings::Pool(settings(1, 1)),
    }
}

fn client_tls_with_cert(
    ingress: &TestIngress,
    cert: &str,
    key: &Secret,
) -> Arc<rustls::ClientConfig> {
    let chain = crate::identity::certificate::cert_chain(cert).unwrap();
    let key = crate::identity::parse_private_key(key.expose().as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(ingress.roots.clone())
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

fn pool_of(t: &IngressTransport) -> &Arc<WarmPool> {
    match t {
        IngressTransport::Pool(p) => p,
        other => panic!("not a pool: {other:?}"),
    }
}

#[tokio::test]
async fn rebuilds_share_a_pool_and_an_identity_change_retires_it() {
    let ingress = TestIngress::start().await;
    let (cert, key) = ingress.client_cert("ac_one");
    // Two builds of the same ingress: separate configs, same identity → the same pool.
    let transports = Transports::default();
    let transport_for = |s| transports.transport_for(s);
    let a = transport_for(spec(&ingress, client_tls_with_cert(&ingress, &cert, &key)));
    let again = transport_for(spec(&ingress, client_tls_with_cert(&ingress, &cert, &key)));
    assert!(Arc::ptr_eq(pool_of(&a), pool_of(&again)));

    let (other_cert, other_key) = ingress.client_cert("ac_two");
    let b = transport_for(spec(
        &ingress,
        client_tls_with_cert(&ingress, &other_cert, &other_key),
    ));
    assert!(!Arc::ptr_eq(pool_of(&a), pool_of(&b)));

    let name = "pool-test-identity-change";
    transports.activate(&a, name);
    pool_of(&a).wait_until(|s| s.idle == 1).await;
    transports.activate(&b, name);
    assert!(pool_of(&a).is_retired());
    assert!(!pool_of(&b).is_retired());
    pool_of(&a).wait_until(|s| s.idle == 0).await;
    pool_of(&b).wait_until(|s| s.idle == 1).await;

    // A retired pool is never handed to a later build.
    let c = transport_for(spec(&ingress, client_tls_with_cert(&ingress, &cert, &key)));
    assert!(!Arc::ptr_eq(pool_of(&a), pool_of(&c)));
}

#[test]
fn refill_concurrency_is_max_idle_within_bounds() {
    assert_eq!(concurrent_dials(&settings(2, 32)), 32, "the default pool");
    assert_eq!(concurrent_dials(&settings(2, 12)), 12);
    assert_eq!(concurrent_dials(&settings(1, 1)), 4, "at least 4");
    assert_eq!(concurrent_dials(&settings(2, 500)), 32, "at most 32");
}
