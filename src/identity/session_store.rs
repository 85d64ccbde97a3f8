//! `TicketStore`: the TLS session cache of connections to an ingress.
//!
//! rustls's `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server, and a ticket is
//! used once. A warm pool refills up to 32 connections at once, and a server may send as few as one
//! ticket per handshake (Go's servers do), so with 8 tickets most of a burst's refills find none
//! and pay a full handshake: both certificate checks and signatures on each side. This store keeps
//! up to [`TICKETS_PER_SERVER`] tickets per server name, enough for every refill in flight, and
//! otherwise behaves like rustls's (newest ticket first, oldest dropped when full).

// rustls calls the store synchronously, inside a handshake step; the lock is held for a map
// lookup and never across an await (rustls's own cache uses a std mutex the same way).
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;

/// TLS 1.3 tickets kept per server name: twice the most refills a pool runs at once.
pub const TICKETS_PER_SERVER: usize = 64;

/// Server names remembered. A config talks to one server name per ingress; more only appear
/// when a dialer's name changes, and then the oldest entry is dropped.
const SERVERS: usize = 16;

#[derive(Debug, Default)]
pub struct TicketStore {
    servers: Mutex<Servers>,
}

#[derive(Debug, Default)]
struct Servers {
    by_name: HashMap<ServerName<'static>, ServerData>,
    /// Insertion order, for eviction.
    order: VecDeque<ServerName<'static>>,
}

#[derive(Debug, Default)]
struct ServerData {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl Servers {
    fn entry(&mut self, name: ServerName<'static>) -> &mut ServerData {
        if !self.by_name.contains_key(&name) {
            if self.order.len() >= SERVERS
                && let Some(oldest) = self.order.pop_front()
            {
                self.by_name.remove(&oldest);
            }
            self.order.push_back(name.clone());
        }
        self.by_name.entry(name).or_default()
    }
}

impl TicketStore {
    pub fn new() -> TicketStore {
        TicketStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Servers) -> T) -> T {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters (the worst is a lost ticket), so a poisoned lock is used as is.
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut servers)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|s| s.entry(server_name).kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|s| s.by_name.get(server_name).and_then(|d| d.kx_hint))
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(|s| s.entry(server_name).tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(|s| s.by_name.get(server_name).and_then(|d| d.tls12.clone()))
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(|s| {
            if let Some(d) = s.by_name.get_mut(server_name) {
                d.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with(|s| {
            let tickets = &mut s.entry(server_name).tls13;
            if tickets.len() >= TICKETS_PER_SERVER {
                tickets.pop_front();
            }
            tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(|s| {
            s.by_name
                .get_mut(server_name)
                .and_then(|d| d.tls13.pop_back())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::{ClientSessionMemoryCache, Resumption};
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A TLS server that sends one ticket per handshake (as Go's servers do), then "ok" and
    /// close; and a client config trusting it that keeps sessions in `store`.
    async fn server_and_client(
        store: Arc<dyn ClientSessionStore>,
    ) -> (std::net::SocketAddr, tokio_rustls::TlsConnector) {
        crate::identity::install_crypto_provider();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ingress.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.send_tls13_tickets = 1;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    tls.write_all(b"ok").await.unwrap();
                    tls.shutdown().await.unwrap();
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::store(store);
        (addr, tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    /// `n` handshakes at once, each reading to the end (which takes in the server's ticket);
    /// returns how many resumed a session.
    async fn burst(
        addr: std::net::SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        n: usize,
    ) -> usize {
        let dials = (0..n).map(|_| async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("ingress.test").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"ok");
            usize::from(resumed)
        });
        futures_util::future::join_all(dials)
            .await
            .into_iter()
            .sum()
    }

    #[tokio::test]
    async fn a_burst_resumes_as_many_sessions_as_the_previous_burst_left_tickets() {
        let (addr, connector) = server_and_client(Arc::new(TicketStore::new())).await;
        assert_eq!(
            burst(addr, &connector, 20).await,
            0,
            "nothing to resume yet"
        );
        assert_eq!(burst(addr, &connector, 20).await, 20);
        // rustls's own cache keeps 8 tickets per server: the same bursts resume only 8.
        let (addr, connector) =
            server_and_client(Arc::new(ClientSessionMemoryCache::new(256))).await;
        assert_eq!(burst(addr, &connector, 20).await, 0);
        assert_eq!(burst(addr, &connector, 20).await, 8);
    }

    #[test]
    fn server_names_beyond_the_limit_evict_the_oldest() {
        let store = TicketStore::new();
        for i in 0..=SERVERS {
            let name = ServerName::try_from(format!("s{i}.test")).unwrap();
            store.set_kx_hint(name, NamedGroup::X25519);
        }
        let first = ServerName::try_from("s0.test").unwrap();
        let last = ServerName::try_from(format!("s{SERVERS}.test")).unwrap();
        assert_eq!(store.kx_hint(&first), None);
        assert_eq!(store.kx_hint(&last), Some(NamedGroup::X25519));
    }
}
