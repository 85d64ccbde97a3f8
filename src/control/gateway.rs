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
        let admin = match admin_address {
            Some(address) => {
                let state = AdminState {
                    snapshot: snapshot.clone(),
                    listeners: listeners.board(),
                    applied: applied.clone(),
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

    /// Stops accepting everywhere and drains open connections (each listener's `drain_timeout`).
    pub async fn shutdown(&mut self) {
        self.listeners.shutdown().await;
    }
}
