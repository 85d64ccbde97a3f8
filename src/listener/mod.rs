//! The listener manager: binds the snapshot's listeners, runs their accept loops, and drains the
//! ones that go away. An unchanged listener (same name, address, protocol) keeps its socket across
//! snapshots; a listener that fails to bind is reported and does not hold back the others.
//!
//! Routing is not decided here: each accepted connection loads the current snapshot once and
//! keeps it for its whole life.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tower::ServiceExt;

use crate::config::Protocol;
use crate::filters::network::{ClientIo, Conn, Outcome};
use crate::snapshot::{ListenerSpec, Snapshot};

/// What the admin `/listeners` view shows for one listener.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    /// As configured (may have port 0).
    pub address: SocketAddr,
    /// What the OS actually bound.
    pub bound_address: Option<SocketAddr>,
    pub state: ListenerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerState {
    Active,
    Failed,
    Draining,
}

/// Shared, lock-free view of every listener's status.
pub type StatusBoard = Arc<ListenerBoard>;

/// Every listener's status, in two parts written by different tasks: the configured listeners
/// (by the reconcile) and the removed ones still draining (by the reconcile that removes them,
/// and by their drain task when they close). A reader puts the two together, so no copy of
/// the draining rows exists that a drain finishing concurrently could miss (one built from
/// them just before they changed would list a closed listener until the next reconcile).
#[derive(Debug, Default)]
pub struct ListenerBoard {
    configured: ArcSwap<Vec<ListenerStatus>>,
    draining: ArcSwap<Vec<ListenerStatus>>,
}

impl ListenerBoard {
    /// The configured listeners, in the configuration's order, then the draining ones.
    pub fn load(&self) -> Vec<ListenerStatus> {
        let configured = self.configured.load();
        let draining = self.draining.load();
        let mut all = Vec::with_capacity(configured.len() + draining.len());
        all.extend(configured.iter().cloned());
        all.extend(draining.iter().cloned());
        all
    }
}

struct Running {
    address: SocketAddr,
    protocol: Protocol,
    bound: SocketAddr,
    /// The `drain_timeout` of the listener's latest spec: what a removal drains for (the new
    /// snapshot no longer has the listener).
    drain_timeout: Duration,
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    connections: TaskTracker,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, waits up to `drain` for open connections, then closes the rest.
    async fn drain(mut self, name: String, drain: Duration) {
        self.stop_accepting.cancel();
        if let Some(task) = self.accept_task.take() {
            let _ = task.await; // the socket is closed once the accept loop has returned
        }
        self.connections.close();
        let open = self.connections.len();
        tracing::info!(listener = %name, address = %self.bound, open, "stopped accepting; draining for up to {drain:?}");
        if tokio::time::timeout(drain, self.connections.wait())
            .await
            .is_err()
        {
            tracing::info!(listener = %name, "drain_timeout ({drain:?}) reached; closing remaining connections");
            self.force_close.cancel();
            self.connections.wait().await;
        }
        tracing::info!(listener = %name, address = %self.bound, "listener closed");
    }
}

pub struct ListenerManager {
    snapshot: Arc<ArcSwap<Snapshot>>,
    running: BTreeMap<String, Running>,
    failed: BTreeMap<String, (SocketAddr, String)>,
    board: StatusBoard,
    drains: TaskTracker,
}

impl ListenerManager {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        ListenerManager {
            snapshot,
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            board: Arc::default(),
            drains: TaskTracker::new(),
        }
    }

    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// True when every listener of the current snapshot is bound.
    pub fn all_bound(&self) -> bool {
        self.failed.is_empty()
    }

    /// Brings the running sockets in line with `snap` (which must already be published).
    pub async fn reconcile(&mut self, snap: &Snapshot) {
        let wanted: BTreeMap<&str, &Arc<ListenerSpec>> = snap
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| match wanted.get(name.as_str()) {
                Some(spec) => spec.address != r.address || spec.protocol != r.protocol,
                None => true,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(mut r) = self.running.remove(&name) {
                let drain = r.drain_timeout;
                tracing::info!(listener = %name, address = %r.bound, "listener removed from the configuration");
                self.mark_draining(&name, r.address, r.bound);
                // Stop accepting and wait until the socket is closed, so that a replacement on
                // the same address can bind it; open connections drain in the background.
                r.stop_accepting.cancel();
                if let Some(task) = r.accept_task.take() {
                    let _ = task.await;
                }
                let board = self.board.clone();
                let bound = r.bound;
                self.drains.spawn(async move {
                    r.drain(name.clone(), drain).await;
                    // Gone from the views once closed. By name and socket: a listener of the
                    // same name removed again meanwhile is another row, still draining.
                    board.draining.rcu(|list| {
                        list.iter()
                            .filter(|s| !(s.name == name && s.bound_address == Some(bound)))
                            .cloned()
                            .collect::<Vec<_>>()
                    });
                });
            }
        }
        self.failed
            .retain(|name, _| wanted.contains_key(name.as_str()));
        let mut bound = Vec::new();
        for spec in &snap.listeners {
            if let Some(r) = self.running.get_mut(&spec.name) {
                r.drain_timeout = spec.drain_timeout;
                continue;
            }
            match self.start(spec).await {
                Ok(running) => {
                    bound.push((spec.name.clone(), running.bound, spec.protocol));
                    self.failed.remove(&spec.name);
                    self.running.insert(spec.name.clone(), running);
                }
                Err(e) => {
                    let msg = format!("bind {}: {e}", spec.address);
                    // Retried every few seconds: say it once, and again only if the cause changes.
                    if self.failed.get(&spec.name).map(|(_, m)| m) != Some(&msg) {
                        tracing::error!(listener = %spec.name, "listener failed: {msg}");
                    }
                    self.failed.insert(spec.name.clone(), (spec.address, msg));
                }
            }
        }
        self.publish(snap);
        // Logged once the status board shows it, so a reader of the log can rely on /listeners.
        for (name, address, protocol) in bound {
            tracing::info!(listener = %name, %address, ?protocol, "listener bound");
        }
    }

    fn mark_draining(&self, name: &str, address: SocketAddr, bound: SocketAddr) {
        let status = ListenerStatus {
            name: name.to_owned(),
            address,
            bound_address: Some(bound),
            state: ListenerState::Draining,
            error: None,
        };
        self.board.draining.rcu(|list| {
            let mut v: Vec<ListenerStatus> = list.iter().cloned().collect();
            v.push(status.clone());
            v
        });
        // Listed as draining from now on, not also as configured until the reconcile ends.
        self.board.configured.rcu(|list| {
            list.iter()
                .filter(|s| s.name != name)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    fn publish(&self, snap: &Snapshot) {
        let board: Vec<ListenerStatus> = snap
            .listeners
            .iter()
            .map(
                |spec| match (self.running.get(&spec.name), self.failed.get(&spec.name)) {
                    (Some(r), _) => ListenerStatus {
                        name: spec.name.clone(),
                        address: spec.address,
                        bound_address: Some(r.bound),
                        state: ListenerState::Active,
                        error: None,
                    },
                    (None, Some((_, e))) => ListenerStatus {
                        name: spec.name.clone(),
                        address: spec.address,
                        bound_address: None,
                        state: ListenerState::Failed,
                        error: Some(e.clone()),
                    },
                    (None, None) => ListenerStatus {
                        name: spec.name.clone(),
                        address: spec.address,
                        bound_address: None,
                        state: ListenerState::Failed,
                        error: Some("not started".into()),
                    },
                },
            )
            .collect();
        crate::telemetry::set_listeners_failed(self.failed.len());
        self.board.configured.store(Arc::new(board));
    }

    async fn start(&self, spec: &Arc<ListenerSpec>) -> std::io::Result<Running> {
        let listener = bind(spec.address)?;
        let bound = listener.local_addr()?;
        let mut running = Running {
            address: spec.address,
            protocol: spec.protocol,
            bound,
            drain_timeout: spec.drain_timeout,
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            connections: TaskTracker::new(),
            accept_task: None,
        };
        running.accept_task = Some(tokio::spawn(accept_loop(
            spec.name.clone(),
            listener,
            self.snapshot.clone(),
            running.stop_accepting.clone(),
            running.force_close.clone(),
            running.connections.clone(),
        )));
        Ok(running)
    }

    /// Stops every listener, drains them in parallel (each up to its `drain_timeout`), and
    /// returns once all connections are closed.
    pub async fn shutdown(&mut self) {
        for (name, r) in std::mem::take(&mut self.running) {
            let drain = r.drain_timeout;
            self.drains.spawn(r.drain(name, drain));
        }
        self.drains.close();
        self.drains.wait().await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // Lets a restarted bindgate rebind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Proxied bytes go out as they come. Linux copies the option to each accepted socket, which
    // saves a system call per connection; elsewhere `accept_loop` sets it on each.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    snapshot: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    force_close: CancellationToken,
    connections: TaskTracker,
) {
    let listener_name: Arc<str> = Arc::from(name.as_str());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        #[cfg(not(target_os = "linux"))]
        let _ = socket.set_nodelay(true);
        let snap = snapshot.load_full();
        let Some(spec) = snap.listener(&name).cloned() else {
            continue;
        };
        let admitted = snap.connection_cap.clone().try_acquire_owned().ok();
        if admitted.is_none() {
            global_cap_reached(snap.max_connections);
        }
        let conn = Conn {
            io: ClientIo::new(socket),
            peer,
            listener: listener_name.clone(),
            protocol: spec.protocol,
            draining: stop.clone(),
            force_close: force_close.clone(),
        };
        connections.spawn(async move {
            let Some(_permit) = admitted else {
                // Counted before the client hears of it: whoever reads the refusal and then
                // the counter sees it counted.
                spec.metrics
                    .refused("limits", "global max_connections reached");
                conn.reject("limits", "global max_connections reached", None)
                    .await;
                return;
            };
            let _held = snap;
            let Ok(done) = spec.network.clone().oneshot(conn).await;
            if let Outcome::Rejected { filter, reason } = done.outcome {
                spec.metrics.refused(filter, reason);
            }
        });
    }
}

/// File descriptors kept out of the global connection cap's default: the admin server's 64
/// connections, config and state files, the API client, upstream pools' spares.
const FD_RESERVE: u64 = 128;

/// Raises the soft open-file limit to the hard one (as Go's runtime and HAProxy do), so the
/// default caps follow what the operator allowed; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("could not raise the open-file limit: {e}");
            soft_fd_limit()
        }
    }
}

fn soft_fd_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

/// The global connection cap when `limits.max_connections` is not set: each proxied client
/// connection holds about two descriptors (client and upstream), so half of the open-file
/// limit after a reserve, and at least 16.
pub fn default_global_max_connections() -> u32 {
    (soft_fd_limit().saturating_sub(FD_RESERVE) / 2).clamp(16, u64::from(u32::MAX)) as u32
}

/// Says, at most once every 10 s, that the global cap turned connections away.
fn global_cap_reached(max: u32) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            max_connections = max,
            "global connection cap reached: new connections are turned away (limits.max_connections)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(listeners: &str) -> Snapshot {
        let text = format!(
            "version: 1
static_resources:
  listeners:
{listeners}  clusters:
    - {{ name: c, type: static, endpoints: [ \"127.0.0.1:1\" ] }}
"
        );
        let loaded = crate::config::parse(&text, "t.yaml", "/".into(), |_| None).unwrap();
        crate::snapshot::build(&loaded, 1).unwrap()
    }

    /// Accepted sockets carry TCP_NODELAY from the listener (the proxies no longer set it).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    const KEPT: &str =
        "    - { name: kept, address: \"127.0.0.1:0\", routes: [ { cluster: c } ] }\n";
    const GONE: &str =
        "    - { name: gone, address: \"127.0.0.1:0\", routes: [ { cluster: c } ] }\n";

    /// A removed listener with no connection drains at once, on another worker, while the
    /// reconcile that removed it publishes the new table: its row must not come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_that_drained_during_the_reconcile_is_not_listed_again() {
        for round in 0..300 {
            let both = snapshot(&format!("{KEPT}{GONE}"));
            let one = snapshot(KEPT);
            let mut manager = ListenerManager::new(Arc::new(ArcSwap::from_pointee(snapshot(
                &format!("{KEPT}{GONE}"),
            ))));
            manager.reconcile(&both).await;
            manager.reconcile(&one).await;
            manager.drains.close();
            manager.drains.wait().await;
            let names: Vec<(String, ListenerState)> = manager
                .board()
                .load()
                .into_iter()
                .map(|s| (s.name, s.state))
                .collect();
            assert_eq!(
                names,
                [("kept".to_owned(), ListenerState::Active)],
                "round {round}"
            );
            manager.shutdown().await;
        }
    }
}
