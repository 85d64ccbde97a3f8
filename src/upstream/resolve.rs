//! Where an ingress's `host:port` points: resolved once and reused, not looked up per connection.
//!
//! ngrok's forwarder resolves `kubernetes-binding-ingress.ngrok.io` on every dial, so every new
//! connection waits for the system resolver (a round trip to a DNS server where nothing caches).
//! Like Envoy's logical DNS clusters and HAProxy's `resolvers`, bindgate keeps the answer: a
//! lookup at most every [`REFRESH`], a new one at once after every resolved address failed to
//! connect, and the last answer kept when a refresh fails (the ingress may still be there).
//! Addresses are tried in the resolver's order, as a per-dial lookup would.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

/// How long a lookup's answer is used before the next dial looks again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Looks a `host:port` up: the system resolver, or a scripted one in tests.
type Lookup = Box<
    dyn Fn(Arc<str>) -> futures_util::future::BoxFuture<'static, io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

pub struct IngressResolver {
    /// `host:port` as configured.
    address: Arc<str>,
    /// Set when `address` is already an IP address: nothing to look up.
    literal: Option<SocketAddr>,
    cached: ArcSwapOption<Resolved>,
    lookups: AtomicU64,
    lookup: Lookup,
}

impl std::fmt::Debug for IngressResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressResolver")
            .field("address", &self.address)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Instant,
}

impl IngressResolver {
    pub fn new(address: Arc<str>) -> IngressResolver {
        IngressResolver::with_lookup(
            address,
            Box::new(|address| {
                Box::pin(async move {
                    tokio::net::lookup_host(&*address)
                        .await
                        .map(|addrs| addrs.collect())
                })
            }),
        )
    }

    fn with_lookup(address: Arc<str>, lookup: Lookup) -> IngressResolver {
        IngressResolver {
            literal: address.parse().ok(),
            address,
            cached: ArcSwapOption::empty(),
            lookups: AtomicU64::new(0),
            lookup,
        }
    }

    /// Lookups made so far (a literal IP address needs none).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The addresses to try, in order: the cached answer while it is fresh, else a new lookup
    /// (or, when that fails, the stale answer if there is one).
    pub async fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        if let Some(ip) = self.literal {
            return Ok(vec![ip]);
        }
        let cached = self.cached.load_full();
        if let Some(c) = &cached
            && c.at.elapsed() < REFRESH
        {
            return Ok(c.addrs.clone());
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let looked_up = (self.lookup)(self.address.clone()).await;
        match looked_up {
            Ok(addrs) if !addrs.is_empty() => {
                self.cached.store(Some(Arc::new(Resolved {
                    addrs: addrs.clone(),
                    at: Instant::now(),
                })));
                Ok(addrs)
            }
            failed => {
                let err = match failed {
                    Ok(_) => io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                    Err(e) => e,
                };
                match cached {
                    Some(stale) => {
                        tracing::debug!(address = %self.address, "lookup failed ({err}); using the last answer");
                        Ok(stale.addrs.clone())
                    }
                    None => Err(err),
                }
            }
        }
    }

    /// Every address of the answer failed to connect: the next dial looks up again.
    pub fn forget(&self) {
        self.cached.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_until_they_are_old_or_forgotten() {
        let r = IngressResolver::new(Arc::from("localhost:4443"));
        let first = r.addrs().await.unwrap();
        assert!(
            first
                .iter()
                .all(|a| a.port() == 4443 && a.ip().is_loopback()),
            "{first:?}"
        );
        assert_eq!(r.addrs().await.unwrap(), first);
        assert_eq!(r.lookups(), 1);
        tokio::time::advance(REFRESH).await;
        r.addrs().await.unwrap();
        assert_eq!(r.lookups(), 2, "an old answer is looked up again");
        r.forget();
        r.addrs().await.unwrap();
        assert_eq!(r.lookups(), 3, "a forgotten answer is looked up again");
    }

    /// A resolver whose answers are scripted: each lookup takes the next one (`None`: the
    /// lookup fails).
    fn scripted(answers: Vec<Option<Vec<SocketAddr>>>) -> IngressResolver {
        let next = AtomicU64::new(0);
        IngressResolver::with_lookup(
            Arc::from("ingress.test:443"),
            Box::new(move |_| {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let answer = answers.get(i).expect("an unscripted lookup").clone();
                Box::pin(
                    async move { answer.ok_or_else(|| io::Error::other("resolver unreachable")) },
                )
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_answer_and_a_first_failure_is_an_error() {
        let a: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:443".parse().unwrap();
        let r = scripted(vec![
            None,
            Some(vec![a]),
            None,
            Some(vec![]),
            Some(vec![b, a]),
        ]);
        assert!(r.addrs().await.is_err(), "nothing to fall back on yet");
        assert_eq!(r.addrs().await.unwrap(), vec![a]);
        tokio::time::advance(REFRESH).await;
        assert_eq!(
            r.addrs().await.unwrap(),
            vec![a],
            "a failed refresh keeps the answer"
        );
        assert_eq!(r.addrs().await.unwrap(), vec![a], "so does an empty one");
        assert_eq!(
            r.addrs().await.unwrap(),
            vec![b, a],
            "in the resolver's order"
        );
        assert_eq!(r.lookups(), 5);
    }

    #[tokio::test]
    async fn an_ip_address_needs_no_lookup() {
        let r = IngressResolver::new(Arc::from("127.0.0.1:4443"));
        assert_eq!(
            r.addrs().await.unwrap(),
            vec!["127.0.0.1:4443".parse().unwrap()]
        );
        assert_eq!(r.lookups(), 0);
    }
}
