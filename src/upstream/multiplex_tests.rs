//! Multiplexer unit tests against the in-process sandbox (which serves CONNECT over h2).

use bindgate_sandbox::{Sandbox, SandboxConfig};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::ClientIdentity;
use crate::secret::Secret;

struct Fixture {
    sandbox: Sandbox,
    _dir: tempfile::TempDir,
    identity: Arc<ClientIdentity>,
    dialer: IngressDialer,
}

impl Fixture {
    async fn start(ingress_yaml: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {}\naccount_id: ac_mux\n{ingress_yaml}endpoints:\n  - {{ url: 'tcp://echo.mux:7000', target: echo }}\n",
            dir.path().join("state").display()
        );
        let sandbox = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
            .await
            .unwrap();
        let (cert, key) = sandbox.ca().issue_client_cert("ac_mux").unwrap();
        let identity = Arc::new(ClientIdentity::new(&cert, &Secret::new(key)).unwrap());
        let roots = crate::identity::load_trust_roots(Some(&sandbox.ca_pem_path()), false).unwrap();
        let tls = Arc::new(identity.client_config(roots).unwrap());
        let dialer = IngressDialer::new(
            "sandbox",
            sandbox.ingress_addr().to_string().as_str(),
            ServerName::try_from("localhost").unwrap(),
            tls,
            Duration::from_secs(5),
            true,
        );
        Fixture {
            sandbox,
            _dir: dir,
            identity,
            dialer,
        }
    }

    fn multiplexer(&self, connections: usize, fallback: MultiplexFallback) -> Multiplexer {
        self.multiplexer_with(MultiplexSettings {
            connections,
            max_streams: 100,
            max_connections: 128,
            fallback,
        })
    }

    fn multiplexer_with(&self, settings: MultiplexSettings) -> Multiplexer {
        Multiplexer::new(
            self.dialer.clone(),
            settings,
            PoolSettings {
                min_idle: 1,
                max_idle: 1,
                max_age: Duration::from_secs(300),
            },
        )
    }

    /// A new certificate for the same account, swapped into the identity.
    fn renew(&self) {
        let (cert, key) = self.sandbox.ca().issue_client_cert("ac_mux").unwrap();
        self.identity.replace(&cert, &Secret::new(key)).unwrap();
    }
}

fn endpoint(url: &str) -> UpgradeRequest {
    UpgradeRequest::new(crate::bound_url::BoundUrl::parse(url, None).unwrap()).unwrap()
}

async fn open(mux: &Multiplexer) -> UpstreamStream {
    let request = endpoint("tcp://echo.mux:7000");
    mux.open(&request).await.unwrap()
}

async fn echo(mut stream: UpstreamStream, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, text);
}

/// A busy connection's driver lets the stream tasks woken with it run first, so their frames
/// share one write: woken before another task, it is polled after it. An idle one is polled at
/// once.
#[tokio::test]
async fn a_woken_busy_driver_is_polled_after_the_tasks_woken_with_it() {
    for busy in [true, false] {
        let (driver_at, stream_at) = wake_driver_then_stream(busy).await;
        assert_eq!(
            stream_at < driver_at,
            busy,
            "busy: {busy}; the driver ran at {driver_at}, the stream task at {stream_at}"
        );
    }
}

/// When a driver (`Coalesced`, `busy` or not) and another task, woken in that order, ran.
async fn wake_driver_then_stream(busy: bool) -> (usize, usize) {
    let clock = Arc::new(AtomicUsize::new(0));
    let (driver_wake, stream_wake) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let inner = Box::pin({
        let (clock, wake) = (clock.clone(), driver_wake.clone());
        async move {
            wake.notified().await;
            clock.fetch_add(1, Ordering::SeqCst)
        }
    });
    let driver = tokio::spawn(Coalesced::new(inner, move || busy));
    let stream = tokio::spawn({
        let (clock, wake) = (clock.clone(), stream_wake.clone());
        async move {
            wake.notified().await;
            clock.fetch_add(1, Ordering::SeqCst)
        }
    });
    // Both park on their `Notify` first, so that the notifications below wake them as a
    // stream's frames would wake a driver.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    driver_wake.notify_one();
    stream_wake.notify_one();
    (driver.await.unwrap(), stream.await.unwrap())
}

#[tokio::test]
async fn streams_share_the_persistent_connections() {
    let f = Fixture::start("").await;
    let mux = f.multiplexer(2, MultiplexFallback::Fail);
    let streams: Vec<_> = futures_util::future::join_all((0..10).map(|_| open(&mux))).await;
    assert!(streams.iter().all(|s| matches!(s, UpstreamStream::H2(_))));
    let stats = mux.stats();
    assert_eq!((stats.active_streams, stats.streams_opened), (10, 10));
    assert_eq!(stats.connections_opened, 2);
    for (i, s) in streams.into_iter().enumerate() {
        echo(s, format!("stream {i}").as_bytes()).await;
    }
    assert_eq!(
        mux.stats().active_streams,
        0,
        "places are freed as streams end"
    );
}

#[tokio::test]
async fn extra_connections_stop_at_max_connections_and_openers_wait_for_a_free_stream() {
    let f = Fixture::start("").await;
    let mux = f.multiplexer_with(MultiplexSettings {
        connections: 1,
        max_streams: 2,
        max_connections: 2,
        fallback: MultiplexFallback::Fail,
    });
    let mut streams: Vec<_> = futures_util::future::join_all((0..4).map(|_| open(&mux))).await;
    assert_eq!(mux.stats().connections_opened, 2);
    // Both connections are full and no third may open: the fifth waits for a free stream.
    let fifth = open(&mux);
    tokio::pin!(fifth);
    let freed = streams.pop().unwrap();
    let fifth = tokio::select! {
        s = &mut fifth => s,
        () = echo(freed, b"frees a stream") => fifth.await,
    };
    echo(fifth, b"fifth").await;
    assert_eq!(mux.stats().connections_opened, 2);
    for s in streams {
        echo(s, b"rest").await;
    }
}

#[tokio::test]
async fn a_refusal_is_refused_with_the_ngrok_code() {
    let f = Fixture::start("").await;
    let mux = f.multiplexer(1, MultiplexFallback::Fail);
    let request = endpoint("tcp://ghost.mux:1");
    match mux.open(&request).await {
        Err(UpstreamError::Refused {
            endpoint, failure, ..
        }) => {
            assert_eq!(endpoint, "tcp://ghost.mux:1");
            assert!(failure.starts_with("[ERR_NGROK_3200] "), "{failure}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened a stream to a missing endpoint"),
    }
    assert_eq!(mux.stats().streams_refused, 1);
}

#[tokio::test]
async fn a_renewed_client_certificate_drains_connections_dialed_with_the_old_one() {
    let f = Fixture::start("").await;
    let mux = f.multiplexer(1, MultiplexFallback::Fail);
    let old = open(&mux).await;
    f.renew();
    let new = open(&mux).await;
    let stats = mux.stats();
    assert_eq!(
        (stats.connections_opened, stats.drained),
        (2, 1),
        "{stats:?}"
    );
    // The stream on the drained connection is not cut.
    echo(old, b"old identity").await;
    echo(new, b"new identity").await;
}

#[tokio::test]
async fn retiring_lets_open_streams_finish_and_later_opens_dial_directly() {
    let f = Fixture::start("").await;
    let mux = f.multiplexer(1, MultiplexFallback::Fail);
    let open_stream = open(&mux).await;
    mux.retire();
    echo(open_stream, b"finishes after retire").await;
    let direct = open(&mux).await;
    assert!(matches!(direct, UpstreamStream::Tls(_)), "a plain upgrade");
    echo(direct, b"direct").await;
    assert_eq!(mux.stats().streams_opened, 1);
}

#[tokio::test]
async fn without_h2_the_fallback_decides() {
    let f = Fixture::start("ingress: { h2: false }\n").await;
    let pooled = f.multiplexer(1, MultiplexFallback::Pool);
    let stream = open(&pooled).await;
    assert!(matches!(stream, UpstreamStream::Tls(_)));
    echo(stream, b"via the pool").await;
    assert!(pooled.stats().h2_refused);
    let pool = pooled.fallback_pool().expect("a fallback pool");
    assert_eq!(pool.stats().hits + pool.stats().misses, 1);

    let strict = f.multiplexer(1, MultiplexFallback::Fail);
    let request = endpoint("tcp://echo.mux:7000");
    match strict.open(&request).await {
        Err(UpstreamError::Upgrade { reason, .. }) => {
            assert!(reason.contains("does not speak HTTP/2"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened without HTTP/2 and without fallback"),
    }
    assert!(strict.fallback_pool().is_none());
}
