//! The transport to an ingress, the one interface clusters call: [`IngressTransport::open`]
//! returns an upgraded stream to a bound endpoint, by a direct dial, a warm pool, or an HTTP/2
//! CONNECT stream.
//!
//! Transports are stateful (warm connections, HTTP/2 connections) while snapshots are rebuilt on
//! every reload. So [`Transports`], which the control plane's retained store holds and hands to
//! every build, keeps a registry of `Weak` references keyed by [`IngressKey`]: the ingress's
//! whole security identity (address, SNI, client certificate, trust) plus its transport
//! settings. A rebuild with an unchanged ingress gets the same pool back; a changed identity gets
//! a new one. Entries are weak, so a transport lives exactly as long as some snapshot (or a
//! connection in flight) holds it, and building a snapshot that is then rejected keeps nothing
//! alive.
//!
//! Nothing dials at build time (`validate` builds too): a transport starts when it is activated,
//! which [`Transports::activate`] does on publish (and on the first connect otherwise).
//! Activating a transport for an ingress name retires the one that served that name before (its
//! idle connections close, it stops refilling), so a certificate change never leaves old-identity
//! connections waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;

use super::binding::UpgradeRequest;
use super::dial::IngressDialer;
use super::multiplex::{MultiplexSettings, Multiplexer};
use super::pool::{PoolSettings, WarmPool};
use super::{UpstreamError, UpstreamStream};

/// How connections reach one ingress.
#[derive(Clone, Debug)]
pub enum IngressTransport {
    /// A fresh TCP + TLS dial and upgrade per proxied connection.
    Direct(Arc<DirectTransport>),
    Pool(Arc<WarmPool>),
    Multiplex(Arc<Multiplexer>),
}

/// The `direct` transport: only a dialer.
#[derive(Debug)]
pub struct DirectTransport {
    pub dialer: IngressDialer,
    activated: AtomicBool,
}

impl IngressTransport {
    /// Opens an upgraded byte stream to `endpoint`. Not bounded in time here: the caller bounds
    /// it with the ingress's `connect_timeout`.
    pub async fn open(&self, request: &UpgradeRequest) -> Result<UpstreamStream, UpstreamError> {
        match self {
            IngressTransport::Direct(d) => d.dialer.dial(request).await,
            IngressTransport::Pool(p) => p.open(request).await,
            IngressTransport::Multiplex(m) => m.open(request).await,
        }
    }

    /// Stops its background work: a warm pool closes its idle connections and stops refilling,
    /// a multiplexer lets its connections go once their streams end. Later opens dial directly.
    pub fn retire(&self) {
        match self {
            IngressTransport::Pool(p) => p.retire(),
            IngressTransport::Multiplex(m) => m.retire(),
            IngressTransport::Direct(_) => {}
        }
    }

    /// How this transport dials the ingress.
    pub fn dialer(&self) -> &IngressDialer {
        match self {
            IngressTransport::Direct(d) => &d.dialer,
            IngressTransport::Pool(p) => p.dialer(),
            IngressTransport::Multiplex(m) => m.dialer(),
        }
    }

    /// `direct`, `pool` or `multiplex`.
    pub fn kind(&self) -> &'static str {
        match self {
            IngressTransport::Direct(_) => "direct",
            IngressTransport::Pool(_) => "pool",
            IngressTransport::Multiplex(_) => "multiplex",
        }
    }

    /// State and counters for the admin `/clusters` view.
    pub fn describe(&self) -> serde_json::Value {
        let mut described = match self {
            IngressTransport::Direct(_) => serde_json::json!({ "kind": "direct" }),
            IngressTransport::Pool(p) => p.describe(),
            IngressTransport::Multiplex(m) => m.describe(),
        };
        let (full, resumed) = self.dialer().handshakes.get();
        described["tls_handshakes"] = serde_json::json!({ "full": full, "resumed": resumed });
        described
    }

    fn activated(&self) -> &AtomicBool {
        match self {
            IngressTransport::Direct(d) => &d.activated,
            IngressTransport::Pool(p) => p.activated(),
            IngressTransport::Multiplex(m) => m.activated(),
        }
    }

    /// Whether it was activated (started) already.
    pub fn is_activated(&self) -> bool {
        self.activated().load(Ordering::Relaxed)
    }

    fn downgrade(&self) -> WeakTransport {
        match self {
            IngressTransport::Direct(d) => WeakTransport::Direct(Arc::downgrade(d)),
            IngressTransport::Pool(p) => WeakTransport::Pool(Arc::downgrade(p)),
            IngressTransport::Multiplex(m) => WeakTransport::Multiplex(Arc::downgrade(m)),
        }
    }
}

/// A registry entry: never keeps a transport alive.
#[derive(Clone, Debug)]
enum WeakTransport {
    Direct(Weak<DirectTransport>),
    Pool(Weak<WarmPool>),
    Multiplex(Weak<Multiplexer>),
}

impl WeakTransport {
    fn upgrade(&self) -> Option<IngressTransport> {
        match self {
            WeakTransport::Direct(w) => w.upgrade().map(IngressTransport::Direct),
            WeakTransport::Pool(w) => w.upgrade().map(IngressTransport::Pool),
            WeakTransport::Multiplex(w) => w.upgrade().map(IngressTransport::Multiplex),
        }
    }

    fn is_alive(&self) -> bool {
        match self {
            WeakTransport::Direct(w) => w.strong_count() > 0,
            WeakTransport::Pool(w) => w.strong_count() > 0,
            WeakTransport::Multiplex(w) => w.strong_count() > 0,
        }
    }

    /// Alive and not retired: fit to be handed to a new snapshot.
    fn reusable(&self) -> Option<IngressTransport> {
        self.upgrade().filter(|t| match t {
            IngressTransport::Direct(_) => true,
            IngressTransport::Pool(p) => !p.is_retired(),
            IngressTransport::Multiplex(m) => !m.is_retired(),
        })
    }

    fn same(&self, other: &WeakTransport) -> bool {
        match (self, other) {
            (WeakTransport::Direct(a), WeakTransport::Direct(b)) => a.ptr_eq(b),
            (WeakTransport::Pool(a), WeakTransport::Pool(b)) => a.ptr_eq(b),
            (WeakTransport::Multiplex(a), WeakTransport::Multiplex(b)) => a.ptr_eq(b),
            _ => false,
        }
    }

    fn retire(&self) {
        if let Some(t) = self.upgrade() {
            t.retire();
        }
    }
}

/// The transports of one control plane: by identity and settings, and which one serves each
/// ingress name (see the module docs). Held in the retained store, handed to every build.
#[derive(Default)]
pub struct Transports {
    registry: ArcSwap<HashMap<IngressKey, WeakTransport>>,
    active: ArcSwap<HashMap<Arc<str>, WeakTransport>>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("registered", &self.registry.load().len())
            .finish_non_exhaustive()
    }
}

/// Transport settings, validated (see `config::ingress` for their meaning).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransportSettings {
    Direct,
    Pool(PoolSettings),
    /// The pool settings apply when the multiplexer falls back to a warm pool.
    Multiplex(MultiplexSettings, PoolSettings),
}

/// What `transport_for` needs: how to dial, what is trusted, and the settings.
#[derive(Debug)]
pub struct TransportSpec {
    pub dialer: IngressDialer,
    /// Fingerprint of the trust roots the dialer's TLS config was built with.
    pub trust: Fingerprint,
    pub settings: TransportSettings,
}

/// Everything that makes two ingresses' connections interchangeable: the same peer, the same
/// security identity on both sides (Pingora's rule), and the same transport settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IngressKey {
    pub address: Arc<str>,
    pub server_name: String,
    /// The client certificate chain presented now.
    pub identity: Fingerprint,
    pub trust: Fingerprint,
    pub connect_timeout: Duration,
    pub early_data: bool,
    pub session_resumption: bool,
    pub settings: TransportSettings,
}

impl IngressKey {
    pub fn of(spec: &TransportSpec) -> IngressKey {
        let d = &spec.dialer;
        IngressKey {
            address: d.address.clone(),
            server_name: d.server_name.to_str().into_owned(),
            identity: Fingerprint::of_identity(d),
            trust: spec.trust,
            connect_timeout: d.connect_timeout,
            early_data: d.early_data,
            session_resumption: d.session_resumption,
            settings: spec.settings.clone(),
        }
    }
}

impl Transports {
    /// The transport for `spec`: the live one with the same [`IngressKey`] if there is one (a
    /// reload that did not change the ingress keeps its warm connections), else a new, not yet
    /// started one.
    pub fn transport_for(&self, spec: TransportSpec) -> IngressTransport {
        let key = IngressKey::of(&spec);
        if let Some(existing) = self
            .registry
            .load()
            .get(&key)
            .and_then(WeakTransport::reusable)
        {
            return existing;
        }
        let fresh = match spec.settings {
            TransportSettings::Direct => IngressTransport::Direct(Arc::new(DirectTransport {
                dialer: spec.dialer,
                activated: AtomicBool::new(false),
            })),
            TransportSettings::Pool(pool) => {
                IngressTransport::Pool(Arc::new(WarmPool::new(spec.dialer, pool)))
            }
            TransportSettings::Multiplex(mux, pool) => {
                IngressTransport::Multiplex(Arc::new(Multiplexer::new(spec.dialer, mux, pool)))
            }
        };
        // Two builds racing for the same key must end up sharing one transport.
        let mut winner = None;
        self.registry.rcu(|map| {
            winner = map.get(&key).and_then(WeakTransport::reusable);
            let mut next = HashMap::clone(map);
            next.retain(|_, t| t.is_alive());
            if winner.is_none() {
                next.insert(key.clone(), fresh.downgrade());
            }
            next
        });
        winner.unwrap_or(fresh)
    }

    /// Makes `transport` the one serving ingress `name`: starts its background work (warming)
    /// and retires the transport that served `name` before, unless it is this one or still
    /// serves another ingress name. Idempotent; called when a snapshot is published.
    pub fn activate(&self, transport: &IngressTransport, name: &str) {
        transport.activated().store(true, Ordering::Relaxed);
        match transport {
            IngressTransport::Direct(_) => {}
            IngressTransport::Pool(p) => p.start(),
            IngressTransport::Multiplex(m) => m.start(),
        }
        let mine = transport.downgrade();
        let name: Arc<str> = Arc::from(name);
        let previous = self.active.rcu(|active| {
            let mut next = HashMap::clone(active);
            next.retain(|_, t| t.is_alive());
            next.insert(name.clone(), mine.clone());
            next
        });
        let Some(before) = previous.get(&name) else {
            return;
        };
        if before.same(&mine) {
            return;
        }
        let still_serving = self
            .active
            .load()
            .iter()
            .any(|(other, t)| *other != name && t.same(before));
        if !still_serving {
            before.retire();
        }
    }
}

/// A SHA-256 digest identifying certificates or trust roots without keeping them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// Of the trust anchors (subject, key, name constraints of each, in order).
    pub fn of_roots(roots: &RootCertStore) -> Fingerprint {
        Fingerprint::of_parts(roots.roots.iter().flat_map(|anchor| {
            [
                anchor.subject.as_ref(),
                anchor.subject_public_key_info.as_ref(),
                anchor
                    .name_constraints
                    .as_ref()
                    .map_or(&[][..], |n| n.as_ref()),
            ]
        }))
    }

    /// Of the certificate chain the dialer's client config presents now (empty if none).
    pub fn of_identity(dialer: &IngressDialer) -> Fingerprint {
        match dialer.current_identity() {
            Some(key) => Fingerprint::of_parts(key.cert.iter().map(|c| c.as_ref())),
            None => Fingerprint::of_parts(std::iter::empty()),
        }
    }

    /// Each part is length-prefixed, so different splits of the same bytes differ.
    fn of_parts<'a>(parts: impl Iterator<Item = &'a [u8]>) -> Fingerprint {
        let mut ctx = sha256().start();
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let digest = ctx.finish();
        let mut out = [0u8; 32];
        let bytes = digest.as_ref();
        let n = bytes.len().min(32);
        out[..n].copy_from_slice(&bytes[..n]);
        Fingerprint(out)
    }
}

/// SHA-256 from the crypto provider bindgate already uses (no extra dependency).
fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
        rustls::SupportedCipherSuite::Tls12(suite) => suite.common.hash_provider,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use crate::upstream::ClusterTarget;

    /// A CA and two client certificates in `dir`: ca.pem, a.crt/a.key, b.crt/b.key.
    fn write_certs(dir: &std::path::Path) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for name in ["a", "b"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![format!("ac_{name}")])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
    }

    fn snapshot(
        dir: &std::path::Path,
        cert: &str,
        transport: &str,
        retained: &crate::retained::Retained,
    ) -> Snapshot {
        let text = format!(
            "\
version: 1
ingresses:
  - name: reload-test
    address: 127.0.0.1:4443
    server_name: localhost
    system_roots: false
    ca: ca.pem
    client_cert: {cert}.crt
    client_key: {cert}.key
    transport: {transport}
static_resources:
  listeners:
    - name: l
      address: 127.0.0.1:0
      routes: [ {{ cluster: c }} ]
  clusters:
    - name: c
      type: binding_upstream
      endpoint: tcp://svc.ns:80
      ingress: reload-test
"
        );
        let loaded = crate::config::parse(&text, "test", dir.to_owned(), |_| None).unwrap();
        crate::snapshot::build_with(crate::snapshot::BuildInput {
            loaded: &loaded,
            discovered: &[],
            retained,
            registered: None,
            sources: &[],
            version: 1,
            offline: false,
        })
        .unwrap()
    }

    fn transport(s: &Snapshot) -> IngressTransport {
        match &*s.clusters["c"].target {
            ClusterTarget::Binding(b) => b.ingress.transport.clone(),
            ClusterTarget::Static(_) => panic!("not a binding cluster"),
        }
    }

    fn same(a: &IngressTransport, b: &IngressTransport) -> bool {
        a.downgrade().same(&b.downgrade())
    }

    #[test]
    fn a_rebuild_keeps_the_transport_unless_identity_or_settings_change() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let retained = crate::retained::Retained::new();
        let first = snapshot(dir.path(), "a", "pool", &retained);
        let reloaded = snapshot(dir.path(), "a", "pool", &retained);
        assert!(same(&transport(&first), &transport(&reloaded)));
        assert_eq!(transport(&first).kind(), "pool");

        let other_cert = snapshot(dir.path(), "b", "pool", &retained);
        assert!(!same(&transport(&first), &transport(&other_cert)));
        let other_transport = snapshot(dir.path(), "a", "multiplex", &retained);
        assert!(!same(&transport(&first), &transport(&other_transport)));

        // Weak entries: once no snapshot holds it, the next build gets a fresh one.
        let weak = transport(&first).downgrade();
        drop((first, reloaded));
        assert!(!weak.is_alive());
        let rebuilt = snapshot(dir.path(), "a", "pool", &retained);
        assert!(!weak.same(&transport(&rebuilt).downgrade()));
    }
}
