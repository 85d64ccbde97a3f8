//! `ClientIdentity`: the hot-swappable client certificate presented to the binding ingress.
//!
//! rustls asks the resolver for a certificate at each handshake, so after [`ClientIdentity::replace`]
//! new connections present the new certificate while established ones keep the session they
//! have. Pools that want to recycle idle connections after a swap watch [`ClientIdentity::subscribe`].
//!
//! TLS session resumption would defeat the swap: a resumed session keeps the identity of the
//! session it resumes (no certificate is sent), so the configs built here use a session cache
//! that is emptied when the identity changes.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionStore, ResolvesClientCert, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::sync::watch;

use super::certificate::{self, CertInfo};
use super::registration::{Credentials, IdentityError};
use super::session_store::TicketStore;
use crate::secret::Secret;

pub struct ClientIdentity {
    current: ArcSwap<CertifiedKey>,
    /// Bumped on every replace.
    generation: watch::Sender<u64>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// An identity from a PEM chain and its key; refuses a key that does not match.
    pub fn new(cert_pem: &str, key: &Secret) -> Result<ClientIdentity, IdentityError> {
        let ck = certificate::certified_key(cert_pem, key).map_err(IdentityError::Key)?;
        Ok(ClientIdentity {
            current: ArcSwap::from_pointee(ck),
            generation: watch::Sender::new(0),
        })
    }

    pub fn from_credentials(creds: &Credentials) -> Result<ClientIdentity, IdentityError> {
        Self::new(&creds.cert_pem, &creds.key)
    }

    /// Swaps in a new certificate and key for handshakes from now on. On error the current
    /// identity stays.
    pub fn replace(&self, cert_pem: &str, key: &Secret) -> Result<(), IdentityError> {
        let ck = certificate::certified_key(cert_pem, key).map_err(IdentityError::Key)?;
        self.current.store(Arc::new(ck));
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The certificate and key presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Public facts of the current leaf certificate.
    pub fn certificate_info(&self) -> Result<CertInfo, String> {
        let ck = self.current.load();
        let leaf = ck.cert.first().ok_or("empty certificate chain")?;
        certificate::inspect_der(leaf)
    }

    /// Notified (with a new generation number) after each replace.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A TLS 1.2+ client config (aws-lc-rs) trusting `roots` and presenting this identity,
    /// with session resumption limited to sessions made with the current identity.
    pub fn client_config(
        self: &Arc<Self>,
        roots: RootCertStore,
    ) -> Result<ClientConfig, rustls::Error> {
        let provider = Arc::new(crate::identity::crypto_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.clone());
        config.resumption = Resumption::store(Arc::new(IdentitySessionStore {
            generation: self.subscribe(),
            inner: ArcSwap::from_pointee((0, Arc::new(TicketStore::new()))),
        }));
        Ok(config)
    }
}

/// A [`TicketStore`], replaced by an empty one whenever the identity's
/// generation changes. (A handshake begun with the old certificate that completes after the
/// swap can still store its ticket; that session carries the old, still valid, certificate.)
#[derive(Debug)]
struct IdentitySessionStore {
    generation: watch::Receiver<u64>,
    inner: ArcSwap<(u64, Arc<TicketStore>)>,
}

impl IdentitySessionStore {
    fn cache(&self) -> Arc<TicketStore> {
        let now = *self.generation.borrow();
        let current = self.inner.load();
        if current.0 == now {
            return current.1.clone();
        }
        // The identity changed: start an empty cache (once, whoever gets here first).
        let replaced = self.inner.rcu(|cur| {
            if cur.0 == now {
                cur.clone()
            } else {
                Arc::new((now, Arc::new(TicketStore::new())))
            }
        });
        drop(replaced);
        self.inner.load().1.clone()
    }
}

impl ClientSessionStore for IdentitySessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache().set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.cache().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.cache().take_tls13_ticket(server_name)
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            der: cert.der().clone(),
        }
    }

    /// A client cert (PEM) and key (PEM) signed by `ca`, named `name`.
    fn client_cert(ca: &Ca, name: &str) -> (String, Secret) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), Secret::new(key.serialize_pem()))
    }

    /// Accepts one TLS connection requiring a client cert; returns the client's leaf SANs as
    /// the server saw them, and whether the session was resumed.
    async fn server_once(
        listener: &tokio::net::TcpListener,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> (Vec<String>, bool) {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let conn = tls.get_ref().1;
        let peer = conn.peer_certificates().unwrap()[0].clone();
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        tls.write_all(b"ok").await.unwrap();
        tls.shutdown().await.unwrap();
        (certificate::inspect_der(&peer).unwrap().sans, resumed)
    }

    #[tokio::test]
    async fn new_handshakes_present_the_replaced_certificate() {
        crate::identity::install_crypto_provider();
        let ca = ca();
        // Server: requires a client cert from `ca`.
        let mut client_roots = RootCertStore::empty();
        client_roots.add(ca.der.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(client_roots.clone()))
            .build()
            .unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["ingress.test".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca.issuer)
            .unwrap();
        let server_config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let (cert1, key1) = client_cert(&ca, "first.client.test");
        let identity = Arc::new(ClientIdentity::new(&cert1, &key1).unwrap());
        let mut generation = identity.subscribe();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(
            identity.client_config(client_roots).unwrap(),
        ));
        let name = ServerName::try_from("ingress.test").unwrap();

        let dial = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"ok");
            tls
        };

        let (seen, _first) = tokio::join!(server_once(&listener, &acceptor), dial());
        assert_eq!(seen, (vec!["DNS:first.client.test".to_owned()], false));
        // Resumption works while the identity is unchanged.
        let (seen, _resumed) = tokio::join!(server_once(&listener, &acceptor), dial());
        assert_eq!(seen, (vec!["DNS:first.client.test".to_owned()], true));

        let (cert2, key2) = client_cert(&ca, "second.client.test");
        identity.replace(&cert2, &key2).unwrap();
        generation.changed().await.unwrap();
        assert_eq!(*generation.borrow(), 1);

        // A full handshake with the new certificate, not a resumption of the old identity.
        let (seen, _second) = tokio::join!(server_once(&listener, &acceptor), dial());
        assert_eq!(seen, (vec!["DNS:second.client.test".to_owned()], false));
        assert_eq!(
            identity.certificate_info().unwrap().sans,
            vec!["DNS:second.client.test"]
        );
    }

    #[test]
    fn a_mismatched_replacement_keeps_the_current_identity() {
        let ca = ca();
        let (cert1, key1) = client_cert(&ca, "one.test");
        let (cert2, _) = client_cert(&ca, "two.test");
        let identity = ClientIdentity::new(&cert1, &key1).unwrap();
        let err = identity.replace(&cert2, &key1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the private key does not match the certificate"
        );
        assert_eq!(
            identity.certificate_info().unwrap().sans,
            vec!["DNS:one.test"]
        );
        assert!(!format!("{identity:?}").contains("PRIVATE"));
    }
}
