//! The control loop: every source of configuration feeds one task that rebuilds the snapshot,
//! publishes it only when its inputs changed, and keeps the last good one when a build fails.
//!
//! Sources: the config file (its directory is watched, so rename-saves are seen; the content is
//! compared, so unrelated events cost one read), SIGHUP (forced reload), and discovery.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{ControlEvent, Gateway, discovery, registration::Registration};
use crate::config::{self, Config, LoadedConfig};
use crate::host::{Allocations, Exposure, HostsFile, Placement, hosts_file, place};
use crate::retained::Retained;
use crate::snapshot::{self, BoundUrl, BuildInput, RegisteredIdentity};
use crate::telemetry;

use super::endpoint_cache::EndpointCache;
use super::sources::{InitialSource, SourceAnswer, Sources};
use super::start_only::StartOnly;
pub use crate::admin::{ControlStatus, DiscoveryState, DiscoveryStatus, StatusView};
use crate::config::SourceResources;

pub struct ControlPlane {
    gateway: Gateway,
    /// State that outlives snapshots, handed to every build (see `crate::retained`).
    retained: Retained,
    /// The config file; `None` for an embedded config (the demo), which is never reloaded.
    path: Option<PathBuf>,
    applied_notify: Arc<Notify>,
    last_text: String,
    loaded: LoadedConfig,
    /// The settings read at start-up, as started (a reload keeps them; see `start_only`).
    start_only: StartOnly,
    discovered: BTreeSet<BoundUrl>,
    allocations: Allocations,
    /// Placement errors already logged (logged again only when they change).
    place_errors: BTreeSet<String>,
    /// The `expose.hosts_file` writer (remembers which failure it already reported).
    hosts_file: HostsFile,
    registered: Option<RegisteredIdentity>,
    /// The inputs of the snapshot in force: the file, the placements, each source's resources.
    applied: (Arc<Config>, Vec<Placement>, Vec<Arc<SourceResources>>),
    /// The config sources: their resources in force, their tasks and their status.
    sources: Sources,
    status: StatusView,
    events: mpsc::Receiver<ControlEvent>,
    events_tx: mpsc::Sender<ControlEvent>,
    file_changed: Arc<Notify>,
    poll_interval: watch::Sender<Duration>,
    shutdown: CancellationToken,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The discovered set saved in `state_dir` (with discovery and a registration).
    cache: Option<EndpointCache>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Fatal(String),
    #[error(transparent)]
    Start(#[from] super::StartError),
}

impl ControlPlane {
    /// Builds and applies the first snapshot from `loaded` (already validated by the caller
    /// through `snapshot::build`), starts the file watch and, with `registration`, discovery
    /// and the identity's upkeep (renewal, or following the identity directory).
    /// `initial`: the config sources as read and checked at start-up
    /// ([`super::sources::initial`]).
    pub async fn start(
        path: Option<PathBuf>,
        text: String,
        loaded: LoadedConfig,
        initial: Vec<InitialSource>,
        registration: Option<Registration>,
    ) -> Result<ControlPlane, ControlError> {
        // Port allocations persist only where discovery runs (a static config writes nothing).
        let store = match discovery_interval(&loaded.config) {
            Some(_) => {
                match crate::identity::StateStore::open(super::registration::state_dir(&loaded)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!("port allocations will not persist: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let cache = match (&store, &registration) {
            (Some(store), Some(reg)) => {
                Some(EndpointCache::new(store.clone(), reg.operator_id.clone()))
            }
            _ => None,
        };
        let allocations = Allocations::load(store);
        let registered = registration.as_ref().map(Registration::for_build);
        let retained = Retained::new();
        let (events_tx, events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let sources = Sources::start(&loaded, initial, events_tx.clone(), shutdown.clone());
        let in_force = sources.in_force(&loaded);
        let first = snapshot::build_with(BuildInput {
            loaded: &loaded,
            discovered: &[],
            retained: &retained,
            registered: registered.as_ref(),
            sources: &in_force,
            version: 1,
            offline: false,
        })
        .map_err(|e| ControlError::Fatal(e.to_string()))?;
        let status: StatusView = Arc::new(ArcSwap::from_pointee(ControlStatus {
            version: 1,
            applied_updates: 1,
            discovery: ready_when(&loaded.config).map(|ready_when| DiscoveryStatus {
                state: DiscoveryState::Waiting,
                ready_when,
                cached_endpoints: None,
                last_success: None,
                last_error: None,
            }),
            config_sources: sources.statuses(),
            ..Default::default()
        }));
        telemetry::set_snapshot_version(1);
        telemetry::config_applied();
        let gateway = Gateway::start(first, status.clone()).await?;
        retained.commit();
        let poll = discovery_interval(&loaded.config).unwrap_or(Duration::from_secs(10));
        let (poll_interval, poll_rx) = watch::channel(poll);
        let mut plane = ControlPlane {
            gateway,
            retained,
            path,
            applied_notify: Arc::new(Notify::new()),
            last_text: text,
            applied: (Arc::new(loaded.config.clone()), Vec::new(), in_force),
            start_only: StartOnly::of(&loaded.config),
            sources,
            loaded,
            discovered: BTreeSet::new(),
            allocations,
            place_errors: BTreeSet::new(),
            hosts_file: HostsFile::default(),
            registered,
            status,
            events,
            events_tx,
            file_changed: Arc::new(Notify::new()),
            poll_interval,
            shutdown,
            _watcher: None,
            cache,
        };
        plane._watcher = plane.watch_file();
        // The set an earlier run saved serves until the first poll answers.
        if let Some(saved) = plane.cache.as_mut().and_then(EndpointCache::load) {
            tracing::info!(
                endpoints = saved.len(),
                "exposing the bound endpoints saved by the last run until the API answers"
            );
            telemetry::set_discovered_endpoints(saved.len());
            plane.discovered = saved;
            plane.rebuild().await;
            let n = plane.discovered.len();
            plane.update_discovery(|d| {
                d.state = DiscoveryState::Cached;
                d.cached_endpoints = Some(n);
            });
        }
        if let Some(reg) = registration {
            reg.spawn_upkeep(plane.shutdown.clone());
            if discovery_interval(&plane.loaded.config).is_some() {
                tokio::spawn(discovery::poll(
                    reg.api.clone(),
                    reg.operator_id.clone(),
                    poll_rx,
                    plane.events_tx.clone(),
                    plane.shutdown.clone(),
                ));
            }
        }
        Ok(plane)
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Notified after each applied update (a permit is kept if nobody waits yet).
    pub fn on_applied(&self) -> Arc<Notify> {
        self.applied_notify.clone()
    }

    /// Watches the config file's directory; events wake the loop, which compares content.
    fn watch_file(&self) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let dir = crate::fs_watch::parent_dir(self.path.as_ref()?);
        let notify = self.file_changed.clone();
        let watcher = crate::fs_watch::content_watcher(move |_| notify.notify_one());
        match watcher {
            Ok(mut w) => {
                for d in crate::fs_watch::dirs_for(&dir) {
                    if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(
                            "cannot watch {} for config changes ({e}); SIGHUP still reloads",
                            d.display()
                        );
                        if d == dir {
                            return None;
                        }
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!("cannot watch for config changes ({e}); SIGHUP still reloads");
                None
            }
        }
    }

    /// Runs until a fatal error (e.g. the API key was rejected). Cancel-safe: the caller selects
    /// it against a shutdown signal.
    /// `hangup`: SIGHUP, installed by the caller before start-up work; `early`: set when one came
    /// before that, so it is applied now that the first config is in force.
    pub async fn run(
        &mut self,
        mut hangup: tokio::signal::unix::Signal,
        early: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), ControlError> {
        if early.swap(false, std::sync::atomic::Ordering::AcqRel) {
            tracing::info!("SIGHUP during start-up: reloading the configuration");
            self.reload(true).await;
        }
        // Listeners that failed to bind (port in use, ...) are retried until they bind.
        let mut retry_binds = tokio::time::interval(Duration::from_secs(5));
        retry_binds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = retry_binds.tick(), if !self.gateway.all_bound() => {
                    self.gateway.retry_failed_listeners().await;
                }
                _ = self.file_changed.notified() => {
                    // Let an editor finish writing before reading.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.reload(false).await;
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.reload(true).await;
                }
                event = self.events.recv() => match event {
                    Some(ControlEvent::Discovered(set)) => {
                        telemetry::set_discovered_endpoints(set.len());
                        let now = time::OffsetDateTime::now_utc();
                        telemetry::discovery_succeeded(now.unix_timestamp());
                        self.update_discovery(|d| {
                            d.state = DiscoveryState::Current;
                            d.last_success = Some(crate::identity::registration::rfc3339(now));
                            d.last_error = None;
                        });
                        if let Some(cache) = self.cache.as_mut() {
                            cache.save(&set);
                        }
                        if set != self.discovered {
                            log_discovery_change(&self.discovered, &set);
                            self.discovered = set;
                            self.rebuild().await;
                        } else {
                            self.retry_hosts_file();
                        }
                    }
                    Some(ControlEvent::DiscoveryFailed(why)) => {
                        self.update_discovery(|d| {
                            if d.state == DiscoveryState::Current {
                                d.state = DiscoveryState::Failing;
                            }
                            d.last_error = Some(why);
                        });
                    }
                    Some(ControlEvent::DiscoveryStopped(why)) => {
                        telemetry::discovery_stopped();
                        self.update_discovery(|d| {
                            d.state = DiscoveryState::Stopped;
                            d.last_error = Some(why);
                        });
                    }
                    Some(ControlEvent::SourceAnswer(answer)) => self.source_answer(*answer).await,
                    Some(ControlEvent::SourceFailed { source, generation, why }) => {
                        if self.sources.fetch_failed(&source, generation, why) {
                            self.publish_sources();
                        }
                    }
                    None => return Ok(()),
                }
            }
        }
    }

    /// Re-reads the file; when it changed (or `force`), parses it and rebuilds. A file that
    /// does not parse or validate is rejected and the running snapshot stays.
    async fn reload(&mut self, force: bool) {
        let Some(path) = self.path.clone() else {
            tracing::info!("the configuration is embedded; nothing to reload");
            return;
        };
        // Never more than the bound (a file replaced by something huge is refused, not read).
        let text = match config::read_document(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    // Refused like any bad file (once per content), not dropped silently.
                    let at = e.utf8_error().valid_up_to();
                    let seen = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    if seen != self.last_text || force {
                        self.last_text = seen;
                        self.reject(format!(
                            "{}: not valid UTF-8 (at byte {at}); a config file is UTF-8 text",
                            path.display()
                        ));
                    }
                    return;
                }
            },
            // A watch event while the file is being replaced: the next event reads it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !force => return,
            Err(e) => {
                self.reject(format!("{}: cannot read the file: {e}", path.display()));
                return;
            }
        };
        if text == self.last_text && !force {
            return;
        }
        self.last_text = text.clone();
        let source = path.display().to_string();
        match config::parse(&text, &source, self.loaded.base_dir.clone(), |k| {
            std::env::var(k).ok()
        }) {
            Ok(mut loaded) => {
                let pending = self.start_only.changes(&loaded.config);
                if !pending.is_empty() {
                    // The file's own values are what the next start reads: they must build.
                    let sources = self.sources.in_force(&loaded);
                    if let Err(errors) = super::sources::build_check(&loaded, &sources) {
                        self.reject(errors.to_string());
                        return;
                    }
                    self.start_only.restore(&mut loaded.config);
                }
                if let Some(d) = discovery_interval(&loaded.config) {
                    self.poll_interval.send_replace(d);
                }
                let previous = std::mem::replace(&mut self.loaded, loaded);
                if self.rebuild_forced(force).await {
                    // Sources the file no longer declares stop; new ones start.
                    self.sources.reconcile(&self.loaded);
                    self.publish_sources();
                    self.set_restart_pending(pending);
                } else {
                    self.loaded = previous;
                }
            }
            Err(errors) => self.reject(errors.to_string()),
        }
    }

    async fn rebuild(&mut self) {
        self.rebuild_forced(false).await;
    }

    /// Builds from the current inputs and applies the result if they changed (or `force`).
    /// Returns false when the build was rejected.
    async fn rebuild_forced(&mut self, force: bool) -> bool {
        match self.apply_inputs(force).await {
            Ok(()) => true,
            Err(errors) => {
                self.reject(errors.to_string());
                false
            }
        }
    }

    /// Builds the file, the placed endpoints and the sources in force into a snapshot and
    /// applies it when they changed (or `force`); a build that fails leaves everything as it was.
    async fn apply_inputs(&mut self, force: bool) -> Result<(), crate::config::ConfigErrors> {
        let placements = self.place();
        let sources = self.sources.in_force(&self.loaded);
        let same_sources = self.applied.2.len() == sources.len()
            && self
                .applied
                .2
                .iter()
                .zip(&sources)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let unchanged =
            *self.applied.0 == self.loaded.config && self.applied.1 == placements && same_sources;
        if unchanged && !force {
            tracing::debug!("rebuild produced identical inputs; not swapping");
            self.retry_hosts_file();
            return Ok(());
        }
        let version = self.gateway.current().version + 1;
        let next = snapshot::build_with(BuildInput {
            loaded: &self.loaded,
            discovered: &placements,
            retained: &self.retained,
            registered: self.registered.as_ref(),
            sources: &sources,
            version,
            offline: false,
        })?;
        let names = hosts_file::entries(&next.discovered);
        self.gateway.apply(next).await;
        self.retained.commit();
        self.allocations.save();
        if let Some(path) = self.hosts_file_path() {
            self.hosts_file.sync(&path, &names);
        }
        self.applied = (Arc::new(self.loaded.config.clone()), placements, sources);
        telemetry::config_applied();
        telemetry::set_snapshot_version(version);
        let mut s = (**self.status.load()).clone();
        s.version = version;
        s.applied_updates += 1;
        s.discovered_endpoints = self.discovered.len();
        if let (Some(d), Some(ready_when)) = (s.discovery.as_mut(), ready_when(&self.loaded.config))
        {
            d.ready_when = ready_when;
        }
        self.status.store(Arc::new(s));
        tracing::info!(version, "configuration applied");
        self.applied_notify.notify_one();
        Ok(())
    }

    /// Tries a source's answer in a full build with everything else in force: applied and
    /// ACKed when it builds, else NACKed with the source's previous resources kept.
    async fn source_answer(&mut self, answer: SourceAnswer) {
        let SourceAnswer {
            source,
            generation,
            version_info,
            docs,
        } = answer;
        if !self.sources.is_current(&source, generation) {
            return; // from a source a reload removed or restarted
        }
        match docs {
            Err(errors) => {
                let why = super::sources::source_errors(&source, errors);
                self.sources.nacked(&source, generation, version_info, why);
            }
            Ok(docs) => {
                let candidate = Arc::new(SourceResources {
                    source: source.clone(),
                    version_info: version_info.clone(),
                    docs,
                });
                let Some(previous) = self.sources.try_accept(generation, candidate) else {
                    return;
                };
                match self.apply_inputs(false).await {
                    Ok(()) => self.sources.acked(&source, generation),
                    Err(errors) => {
                        self.sources.revert(&source, generation, previous);
                        self.sources
                            .nacked(&source, generation, version_info, errors.to_string());
                    }
                }
            }
        }
        self.publish_sources();
        // Waiters on `on_applied` also learn of a refused source answer.
        self.applied_notify.notify_one();
    }

    /// Publishes every source's status to the admin API.
    fn publish_sources(&self) {
        let mut s = (**self.status.load()).clone();
        s.config_sources = self.sources.statuses();
        self.status.store(Arc::new(s));
    }

    /// Publishes which start-up settings the file in force changed, and warns once per change.
    fn set_restart_pending(&self, pending: Vec<&'static str>) {
        let mut s = (**self.status.load()).clone();
        if s.restart_pending == pending {
            return;
        }
        if !pending.is_empty() {
            tracing::warn!(
                "the config file changes {}: read at start-up only, the values started with stay in force until a restart; the rest of the file is applied",
                pending
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        telemetry::set_restart_pending(pending.len());
        s.restart_pending = pending;
        self.status.store(Arc::new(s));
    }

    /// Changes the discovery part of the status the admin API shows.
    fn update_discovery(&self, change: impl FnOnce(&mut DiscoveryStatus)) {
        let mut s = (**self.status.load()).clone();
        if let Some(d) = s.discovery.as_mut() {
            change(d);
            self.status.store(Arc::new(s));
        }
    }

    fn reject(&self, why: String) {
        telemetry::config_rejected();
        let mut s = (**self.status.load()).clone();
        s.rejected_updates += 1;
        s.last_rejection = Some(why.clone());
        // Published before the log line, so whoever reads the log sees the status too.
        self.status.store(Arc::new(s));
        tracing::error!(
            "configuration update rejected; the running configuration stays in force:\n{why}"
        );
    }

    /// Places discovered endpoints on local addresses (persisting new allocations).
    fn place(&mut self) -> Vec<Placement> {
        let cfg = &self.loaded.config;
        let Some(d) = cfg
            .dynamic_resources
            .as_ref()
            .and_then(|d| d.bound_endpoints.as_ref())
        else {
            return Vec::new();
        };
        let Ok(exposure) = Exposure::from_config(&d.expose) else {
            return Vec::new(); // the build reports these config errors
        };
        let taken = cfg
            .static_resources
            .listeners
            .iter()
            .filter_map(|l| l.address.parse().ok())
            .collect();
        let (placed, errors) = place(
            &self.discovered,
            &exposure,
            &d.expose.overrides,
            &taken,
            &mut self.allocations,
        );
        let errors: BTreeSet<String> = errors.into_iter().collect();
        for e in errors.difference(&self.place_errors) {
            tracing::warn!("bound endpoint not exposed: {e}");
        }
        self.place_errors = errors;
        placed
    }

    /// A hosts-file write that failed is tried again on every later discovery poll and rebuild,
    /// not only when something changes: fixing the file's permissions takes effect.
    fn retry_hosts_file(&mut self) {
        if !self.hosts_file.failing() {
            return;
        }
        if let Some(path) = self.hosts_file_path() {
            let names = hosts_file::entries(&self.gateway.current().discovered);
            self.hosts_file.sync(&path, &names);
        }
    }

    /// `expose.hosts_file`, resolved against the config file's directory.
    fn hosts_file_path(&self) -> Option<PathBuf> {
        let file = self
            .loaded
            .config
            .dynamic_resources
            .as_ref()?
            .bound_endpoints
            .as_ref()?
            .expose
            .hosts_file
            .as_ref()?;
        Some(self.loaded.resolve(file))
    }

    /// Stops discovery and renewal, then drains every listener.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        self.gateway.shutdown().await;
    }
}

/// `dynamic_resources.bound_endpoints`, when the config discovers endpoints.
fn bound_endpoints(cfg: &Config) -> Option<&crate::config::BoundEndpoints> {
    cfg.dynamic_resources.as_ref()?.bound_endpoints.as_ref()
}

fn ready_when(cfg: &Config) -> Option<crate::config::ReadyWhen> {
    bound_endpoints(cfg).map(|b| b.ready_when)
}

fn discovery_interval(cfg: &Config) -> Option<Duration> {
    bound_endpoints(cfg).map(|b| b.poll_interval.get())
}

fn log_discovery_change(old: &BTreeSet<BoundUrl>, new: &BTreeSet<BoundUrl>) {
    for added in new.difference(old) {
        tracing::info!(endpoint = %added, "bound endpoint added");
    }
    for removed in old.difference(new) {
        tracing::info!(endpoint = %removed, "bound endpoint removed");
    }
}
