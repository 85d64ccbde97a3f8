//! The composition root of a running proxy: the one `ArcSwap<Snapshot>` the data path reads,
//! the listener manager that reconciles sockets to it, and the admin server that shows it.
//! The control plane (`plane`) owns a `Gateway` and hands it every snapshot it builds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::admin::{self, AdminServer, AdminState};
use crate::control::StatusView;
use crate::listener::{ListenerManager, ListenerStatus};
use crate::snapshot::Snapshot;

pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: ListenerManager,
    applied: Arc<AtomicBool>,
    /// Set at the start of [`Gateway::shutdown`]; `/ready` answers 503 from then on.
    stopping: Arc<AtomicBool>,
    admin: Option<AdminServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin server: bind {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Gateway {
    /// Starts the admin server (if configured) and binds the first snapshot's listeners.
    pub async fn start(first: Snapshot, control: StatusView) -> Result<Gateway, StartError> {
        let admin_address = first.admin;
        let any_host = first
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.allow_non_loopback);
        let snapshot = Arc::new(ArcSwap::from_pointee(first));
        let listeners = ListenerManager::new(snapshot.clone());
        let applied = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let admin = match admin_address {
            Some(address) => {
                let state = AdminState {
                    snapshot: snapshot.clone(),
                    listeners: listeners.board(),
                    applied: applied.clone(),
                    stopping: stopping.clone(),
                    control,
                    any_host,
                };
                Some(
                    admin::start(address, state)
                        .map_err(|source| StartError::Admin { address, source })?,
                )
            }
            None => None,
        };
        let mut gw = Gateway {
            snapshot,
            listeners,
            applied,
            stopping,
            admin,
        };
        let first = gw.snapshot.load_full();
        first.activate_transports();
        gw.listeners.reconcile(&first).await;
        gw.applied.store(true, Ordering::Release);
        Ok(gw)
    }

    /// Publishes `next` (connections in flight keep the snapshot they started with) and
    /// reconciles listeners to it.
    pub async fn apply(&mut self, next: Snapshot) {
        let next = Arc::new(next);
        let previous = self.snapshot.swap(next.clone());
        // Freeing a large snapshot takes milliseconds: not on the control loop.
        tokio::task::spawn_blocking(move || drop(previous));
        next.activate_transports();
        self.listeners.reconcile(&next).await;
    }

    pub fn admin_address(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.address)
    }

    pub fn board(&self) -> crate::listener::StatusBoard {
        self.listeners.board()
    }

    pub fn listener_status(&self) -> Vec<ListenerStatus> {
        self.listeners.board().load()
    }

    /// Tries again to bind the current snapshot's listeners that failed.
    pub async fn retry_failed_listeners(&mut self) {
        let current = self.snapshot.load_full();
        self.listeners.reconcile(&current).await;
    }

    pub fn all_bound(&self) -> bool {
        self.listeners.all_bound()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Stops accepting everywhere, drains open connections (each listener's `drain_timeout`),
    /// then retires the ingress transports: warm pools close their idle connections and stop
    /// refilling, instead of dialing an ingress that may be going away too (the demo's sandbox
    /// stops right after the proxy).
    pub async fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.listeners.shutdown().await;
        self.snapshot.load().retire_transports();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bindgate_sandbox::{Sandbox, SandboxConfig};

    use crate::control::ControlPlane;
    use crate::upstream::{ClusterTarget, IngressTransport};

    /// At shutdown the warm pool stops with the listeners: before, it kept refilling until the
    /// process exited, so the demo (whose sandbox stops right after the proxy) could log a
    /// failed refill as a warning on Ctrl-C.
    #[tokio::test]
    async fn shutdown_retires_the_warm_pool() {
        crate::identity::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::start(
            SandboxConfig::from_yaml(&format!(
                "state_dir: {}\naccount_id: ac_gw\nendpoints:\n  - {{ url: 'tcp://echo.gw:7000', target: echo }}\n",
                dir.path().join("sandbox").display()
            ))
            .unwrap(),
        )
        .await
        .unwrap();
        let (cert, key) = sandbox.ca().issue_client_cert("ac_gw").unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let yaml = format!(
            "\
version: 1
ingresses:
  - name: sandbox
    address: {ingress}
    server_name: localhost
    ca: {ca}
    system_roots: false
    client_cert: {cert}
    client_key: {key}
    transport: pool
static_resources:
  listeners:
    - name: echo
      address: 127.0.0.1:0
      protocol: tcp
      routes:
        - cluster: echo
  clusters:
    - name: echo
      type: binding_upstream
      endpoint: tcp://echo.gw:7000
      ingress: sandbox
",
            ingress = sandbox.ingress_addr(),
            ca = sandbox.ca_pem_path().display(),
            cert = cert_path.display(),
            key = key_path.display(),
        );
        let parsed =
            crate::config::parse(&yaml, "gateway-test.yaml", dir.path().to_owned(), |_| None);
        let loaded = crate::snapshot::check(parsed).unwrap();
        let mut plane = ControlPlane::start(None, yaml, loaded, Vec::new(), None)
            .await
            .unwrap();
        let snapshot = plane.gateway().current();
        let ClusterTarget::Binding(target) = &*snapshot.clusters["echo"].target else {
            panic!("`echo` is a binding_upstream cluster");
        };
        let IngressTransport::Pool(pool) = &target.ingress.transport else {
            panic!("the ingress has `transport: pool`");
        };
        pool.wait_until(|s| s.idle >= 1).await;
        assert!(!pool.is_retired());

        plane.shutdown().await;
        assert!(pool.is_retired(), "the pool still refills after shutdown");
        // Its idle connections are closed too, while the ingress is still there to see it.
        pool.wait_until(|s| s.idle == 0).await;
        sandbox.shutdown().await;
    }
}
