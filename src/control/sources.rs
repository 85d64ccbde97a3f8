//! Config sources at run time: a watched directory and a polled REST API feed the control loop
//! with whole answers; the loop tries each answer in a full build and ACKs or NACKs it on its
//! own, so a bad update from one source keeps that source's last good resources and touches
//! nobody else's.
//!
//! Fetching and parsing happen in one task per source; building, applying and the per-source
//! status happen in the control loop (`plane.rs`), which owns the one [`Sources`].

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ControlEvent;
use crate::admin::{ConfigSourceStatus, SourceCounts, SourceState};
use crate::config::{
    ConfigError, ConfigErrors, ConfigSourceConfig, LoadedConfig, ResourceDoc, RestSourceConfig,
    SourceResources, parse_resource_file, parse_rest_document, shown_url,
};
use crate::telemetry;

/// The largest REST answer read; a larger one is a failed fetch.
pub use crate::config::MAX_DOCUMENT_BYTES;
/// A `path` source is also re-read this often, in case a change event was missed.
const PATH_RECHECK: Duration = Duration::from_secs(30);
/// First retry after a failed REST fetch; doubles up to the poll interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One answer of a source: its version and documents, or why they do not parse.
#[derive(Debug)]
pub struct SourceAnswer {
    pub source: String,
    /// Which start of the source sent it (answers of a source since removed are ignored).
    pub generation: u64,
    pub version_info: String,
    pub docs: Result<Vec<ResourceDoc>, Vec<ConfigError>>,
}

/// What the next REST poll reports back (with `report_status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub version_info: Option<String>,
    pub error_detail: Option<String>,
}

/// Where one source stood after the start-up read.
#[derive(Debug)]
pub struct InitialSource {
    pub accepted: Option<Arc<SourceResources>>,
    /// `Some(version, why)` when its first answer was refused.
    pub rejected: Option<(String, String)>,
    /// Why the directory could not be read.
    pub failed: Option<String>,
    /// The content a `path` source had at start (its task sends an answer only when the
    /// directory differs from it); `None` for REST sources, which answer later.
    pub fingerprint: Option<u64>,
}

/// Reads every `path` source and keeps those whose resources build with the config file and the
/// sources kept before them (in config order). Fails when the config file itself does not build
/// with what was kept: that is the start-up check `run` shares with `validate`.
pub fn initial(loaded: &LoadedConfig) -> Result<Vec<InitialSource>, ConfigErrors> {
    let configs = configs_of(loaded);
    let mut kept: Vec<Arc<SourceResources>> = Vec::new();
    let mut out = Vec::with_capacity(configs.len());
    for cfg in configs {
        let mut state = InitialSource {
            accepted: None,
            rejected: None,
            failed: None,
            fingerprint: None,
        };
        if let Some(dir) = &cfg.path {
            match read_dir(&loaded.resolve(dir)) {
                Err(why) => state.failed = Some(why),
                Ok(read) => {
                    state.fingerprint = Some(read.fingerprint);
                    let version = read.version_info();
                    match read.docs {
                        Err(errors) => {
                            state.rejected = Some((version, source_errors(&cfg.name, errors)));
                        }
                        Ok(docs) => {
                            let candidate = Arc::new(SourceResources {
                                source: cfg.name.clone(),
                                version_info: version.clone(),
                                docs,
                            });
                            kept.push(candidate.clone());
                            match build_check(loaded, &kept) {
                                Ok(()) => state.accepted = Some(candidate),
                                Err(e) => {
                                    kept.pop();
                                    state.rejected = Some((version, e.to_string()));
                                }
                            }
                        }
                    }
                }
            }
        }
        out.push(state);
    }
    build_check(loaded, &kept)?;
    Ok(out)
}

/// `validate`: the config file with every `path` source's files, all errors at once (parse
/// errors of every file; then, when all parse, the merged build's). REST sources are not
/// fetched.
pub fn validate(loaded: &LoadedConfig, offline: bool) -> Result<(), ConfigErrors> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for cfg in configs_of(loaded) {
        let Some(dir) = &cfg.path else { continue };
        let dir = loaded.resolve(dir);
        if offline && !dir.is_dir() {
            continue; // the directory is part of the deployment, not of the change under review
        }
        match read_dir(&dir) {
            Ok(read) => {
                let version_info = read.version_info();
                match read.docs {
                    Ok(docs) => all.push(Arc::new(SourceResources {
                        source: cfg.name.clone(),
                        version_info,
                        docs,
                    })),
                    Err(e) => errors.extend(e),
                }
            }
            Err(why) => errors.push(ConfigError {
                file: None,
                path: String::new(),
                line: None,
                column: None,
                message: format!("config source `{}`: {why}", cfg.name),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors {
            source: loaded.source.clone(),
            errors,
        });
    }
    build_with_sources(loaded, &all, offline)
}

/// Whether `sources`, as the answers in force, build with `loaded` into a snapshot.
pub fn build_check(
    loaded: &LoadedConfig,
    sources: &[Arc<SourceResources>],
) -> Result<(), ConfigErrors> {
    build_with_sources(loaded, sources, false)
}

fn build_with_sources(
    loaded: &LoadedConfig,
    sources: &[Arc<SourceResources>],
    offline: bool,
) -> Result<(), ConfigErrors> {
    crate::snapshot::build_with(crate::snapshot::BuildInput {
        loaded,
        discovered: &[],
        retained: &crate::retained::Retained::new(),
        registered: None,
        sources,
        version: 0,
        offline,
    })
    .map(|_| ())
}

fn configs_of(loaded: &LoadedConfig) -> &[ConfigSourceConfig] {
    loaded
        .config
        .dynamic_resources
        .as_ref()
        .map(|d| d.config_sources.as_slice())
        .unwrap_or(&[])
}

/// Parse errors of one answer, for the status and the log.
pub fn source_errors(name: &str, errors: Vec<ConfigError>) -> String {
    ConfigErrors {
        source: format!("config source `{name}`"),
        errors,
    }
    .to_string()
}

/// One read of a `path` source's directory.
pub struct PathRead {
    /// Of the files' names and contents: unchanged files read again compare equal.
    pub fingerprint: u64,
    pub docs: Result<Vec<ResourceDoc>, Vec<ConfigError>>,
}

impl PathRead {
    pub fn version_info(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir` (following symlinks, as a
/// ConfigMap's are; names starting with `.` skipped), in name order. Every file's errors are
/// collected. `Err` when the directory itself cannot be listed.
pub fn read_dir(dir: &Path) -> Result<PathRead, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json") && p.is_file()
        })
        .collect();
    files.sort();
    let mut hasher = DefaultHasher::new();
    let mut docs = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let fail = |message: String| ConfigError {
            file: Some(shown.clone()),
            path: String::new(),
            line: None,
            column: None,
            message,
        };
        let bytes = match crate::config::read_document(&file) {
            Ok(b) => b,
            // Removed between listing and reading: the next event reads the new state.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(fail(format!("cannot read the file: {e}")));
                continue;
            }
        };
        shown.hash(&mut hasher);
        bytes.hash(&mut hasher);
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                errors.push(fail(format!("not valid UTF-8 (at byte {at})")));
                continue;
            }
        };
        match parse_resource_file(&text, &shown) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.extend(e),
        }
    }
    Ok(PathRead {
        fingerprint: hasher.finish(),
        docs: if errors.is_empty() {
            Ok(docs)
        } else {
            Err(errors)
        },
    })
}

/// The control loop's record of every source.
pub struct Sources {
    entries: Vec<Entry>,
    events: mpsc::Sender<ControlEvent>,
    shutdown: CancellationToken,
    next_generation: u64,
}

struct Entry {
    config: ConfigSourceConfig,
    generation: u64,
    accepted: Option<Arc<SourceResources>>,
    status: ConfigSourceStatus,
    stop: CancellationToken,
    report: Option<watch::Sender<Report>>,
}

impl Sources {
    /// Records the start-up state of each source of `loaded` and starts their tasks.
    pub fn start(
        loaded: &LoadedConfig,
        initial: Vec<InitialSource>,
        events: mpsc::Sender<ControlEvent>,
        shutdown: CancellationToken,
    ) -> Sources {
        let mut sources = Sources {
            entries: Vec::new(),
            events,
            shutdown,
            next_generation: 1,
        };
        let mut initial = initial.into_iter();
        for cfg in configs_of(loaded) {
            let first = initial.next();
            let baseline = first.as_ref().and_then(|f| f.fingerprint);
            let mut entry = sources.spawn(loaded, cfg, baseline);
            if let Some(first) = first {
                if let Some(accepted) = first.accepted {
                    entry.ack(accepted);
                }
                if let Some((version, why)) = first.rejected {
                    entry.nack(version, why);
                }
                if let Some(why) = first.failed {
                    entry.fetch_failed(why);
                }
            }
            sources.entries.push(entry);
        }
        sources
    }

    /// A new entry for `cfg`, with its task running; `baseline`: the content of a `path` source
    /// already in its status (read at start), not sent again.
    fn spawn(
        &mut self,
        loaded: &LoadedConfig,
        cfg: &ConfigSourceConfig,
        baseline: Option<u64>,
    ) -> Entry {
        let generation = self.next_generation;
        self.next_generation += 1;
        let stop = self.shutdown.child_token();
        let (kind, location) = match (&cfg.path, &cfg.rest) {
            (Some(dir), _) => ("path", loaded.resolve(dir).display().to_string()),
            (None, Some(rest)) => ("rest", shown_url(&rest.url).into_owned()),
            (None, None) => ("path", String::new()), // refused by the build
        };
        let mut report = None;
        if let Some(dir) = &cfg.path {
            tokio::spawn(watch_dir(
                PathTask {
                    name: cfg.name.clone(),
                    generation,
                    dir: loaded.resolve(dir),
                    baseline,
                    events: self.events.clone(),
                },
                stop.clone(),
            ));
        } else if let Some(rest) = &cfg.rest {
            let (tx, rx) = watch::channel(Report::default());
            report = Some(tx);
            tokio::spawn(poll_rest(
                RestTask {
                    name: cfg.name.clone(),
                    generation,
                    config: rest.clone(),
                    ca: rest.ca.as_ref().map(|p| loaded.resolve(p)),
                    events: self.events.clone(),
                    report: rx,
                },
                stop.clone(),
            ));
        }
        Entry {
            config: cfg.clone(),
            generation,
            accepted: None,
            status: ConfigSourceStatus {
                name: cfg.name.clone(),
                kind,
                location,
                state: SourceState::Waiting,
                version_info: None,
                rejected_version_info: None,
                error: None,
                last_update: None,
                last_success: None,
                fetch_error: None,
                resources: SourceCounts::default(),
                listeners: Vec::new(),
                clusters: Vec::new(),
                last_success_unix: None,
            },
            stop,
            report,
        }
    }

    /// The resources in force for the sources `loaded` declares (a source whose settings
    /// changed in the file contributes nothing until it answers again).
    pub fn in_force(&self, loaded: &LoadedConfig) -> Vec<Arc<SourceResources>> {
        configs_of(loaded)
            .iter()
            .filter_map(|cfg| {
                self.entries
                    .iter()
                    .find(|e| e.config == *cfg)
                    .and_then(|e| e.accepted.clone())
            })
            .collect()
    }

    /// After the file changed and its build applied: stops sources it no longer declares (or
    /// declares differently) and starts the new ones.
    pub fn reconcile(&mut self, loaded: &LoadedConfig) {
        let configs = configs_of(loaded);
        let mut old = std::mem::take(&mut self.entries);
        for cfg in configs {
            match old.iter().position(|e| e.config == *cfg) {
                Some(i) => self.entries.push(old.remove(i)),
                None => {
                    tracing::info!(source = %cfg.name, "config source added");
                    let entry = self.spawn(loaded, cfg, None);
                    self.entries.push(entry);
                }
            }
        }
        for gone in old {
            tracing::info!(source = %gone.config.name, "config source removed");
            gone.stop.cancel();
        }
    }

    /// The entry an event is for, unless that source was removed or restarted since.
    fn find(&mut self, name: &str, generation: u64) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| e.config.name == name && e.generation == generation)
    }

    /// Puts `candidate` in force for its source, returning what it replaces (for a revert).
    pub fn try_accept(
        &mut self,
        generation: u64,
        candidate: Arc<SourceResources>,
    ) -> Option<Option<Arc<SourceResources>>> {
        let e = self.find(&candidate.source, generation)?;
        Some(e.accepted.replace(candidate))
    }

    /// Undoes [`Sources::try_accept`].
    pub fn revert(&mut self, name: &str, generation: u64, previous: Option<Arc<SourceResources>>) {
        if let Some(e) = self.find(name, generation) {
            e.accepted = previous;
        }
    }

    /// Whether an answer is for a source still running.
    pub fn is_current(&mut self, name: &str, generation: u64) -> bool {
        self.find(name, generation).is_some()
    }

    pub fn acked(&mut self, name: &str, generation: u64) {
        if let Some(e) = self.find(name, generation) {
            if let Some(accepted) = e.accepted.clone() {
                e.ack(accepted);
            }
        }
    }

    pub fn nacked(&mut self, name: &str, generation: u64, version: String, why: String) {
        if let Some(e) = self.find(name, generation) {
            e.nack(version, why);
        }
    }

    /// A fetch failed; returns whether this is news (a different error than the last).
    pub fn fetch_failed(&mut self, name: &str, generation: u64, why: String) -> bool {
        match self.find(name, generation) {
            Some(e) if e.status.fetch_error.as_ref() != Some(&why) => {
                e.fetch_failed(why);
                true
            }
            _ => false,
        }
    }

    pub fn statuses(&self) -> Vec<ConfigSourceStatus> {
        self.entries.iter().map(|e| e.status.clone()).collect()
    }
}

impl Entry {
    fn ack(&mut self, accepted: Arc<SourceResources>) {
        let now = time::OffsetDateTime::now_utc();
        let at = crate::identity::registration::rfc3339(now);
        let (listeners, clusters) = (accepted.listeners(), accepted.clusters());
        tracing::info!(
            source = %self.config.name,
            version = %accepted.version_info,
            listeners,
            clusters,
            "config source update applied"
        );
        telemetry::source_update(&self.config.name, true);
        telemetry::source_applied(&self.config.name, now.unix_timestamp(), listeners, clusters);
        let s = &mut self.status;
        s.state = SourceState::Acked;
        s.version_info = Some(accepted.version_info.clone());
        s.rejected_version_info = None;
        s.error = None;
        s.fetch_error = None;
        s.last_update = Some(at.clone());
        s.last_success = Some(at);
        s.last_success_unix = Some(now.unix_timestamp());
        s.resources = SourceCounts {
            listeners,
            clusters,
        };
        let docs = || accepted.docs.iter().map(|d| &d.resources);
        s.listeners = docs()
            .flat_map(|r| r.listeners.iter().map(|l| l.name.clone()))
            .collect();
        s.clusters = docs()
            .flat_map(|r| r.clusters.iter().map(|c| c.name.clone()))
            .collect();
        if let Some(report) = &self.report {
            report.send_replace(Report {
                version_info: Some(accepted.version_info.clone()),
                error_detail: None,
            });
        }
        self.accepted = Some(accepted);
    }

    fn nack(&mut self, version: String, why: String) {
        let keeps = match &self.accepted {
            Some(a) => format!("version {} stays in force", a.version_info),
            None => "nothing from it is in force".to_owned(),
        };
        tracing::error!(
            "config source `{}`: version {version} rejected; {keeps}:\n{why}",
            self.config.name
        );
        telemetry::source_update(&self.config.name, false);
        let s = &mut self.status;
        s.state = SourceState::Nacked;
        s.rejected_version_info = Some(version);
        s.fetch_error = None;
        s.last_update = Some(crate::identity::registration::rfc3339(
            time::OffsetDateTime::now_utc(),
        ));
        if let Some(report) = &self.report {
            report.send_replace(Report {
                version_info: self.accepted.as_ref().map(|a| a.version_info.clone()),
                error_detail: Some(error_detail(&why)),
            });
        }
        s.error = Some(why);
    }

    fn fetch_failed(&mut self, why: String) {
        tracing::warn!(
            "config source `{}`: {why}; its resources in force stay",
            self.config.name
        );
        self.status.fetch_error = Some(why);
    }
}

/// What is reported back for a rejected answer: the first error line, at most 512 bytes.
pub fn error_detail(why: &str) -> String {
    let line = why
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.ends_with("error") && !l.ends_with("errors"))
        .unwrap_or(why.trim());
    let mut end = line.len().min(512);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

struct PathTask {
    name: String,
    generation: u64,
    dir: PathBuf,
    /// The content already answered (read at start), if any.
    baseline: Option<u64>,
    events: mpsc::Sender<ControlEvent>,
}

/// Watches a `path` source's directory (non-recursively: a ConfigMap's `..data` swap is a rename
/// in it) and sends an answer whenever the files' content changes.
async fn watch_dir(task: PathTask, stop: CancellationToken) {
    use notify::Watcher;
    let PathTask {
        name,
        generation,
        dir,
        baseline,
        events,
    } = task;
    let changed = Arc::new(Notify::new());
    let wake = changed.clone();
    let watcher = crate::fs_watch::content_watcher(move |_| wake.notify_one()).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        // A symlink swap on the way to `dir` (git-sync's `current`) is seen where it happens;
        // without that watch, the periodic re-read still finds it.
        for d in crate::fs_watch::dirs_for(&dir).into_iter().skip(1) {
            let _ = w.watch(&d, notify::RecursiveMode::NonRecursive);
        }
        Ok(w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                source = %name,
                "cannot watch {} ({e}); re-reading it every {}s",
                dir.display(),
                PATH_RECHECK.as_secs()
            );
            None
        }
    };
    // Read once the watch is in place (nothing written since is missed); sent unless it is the
    // content read at start.
    let mut last: Option<u64> = baseline;
    let mut first = true;
    let mut last_error: Option<String> = None;
    loop {
        if !first {
            tokio::select! {
                _ = changed.notified() => {
                    // Let a writer (or the kubelet's swap) finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = tokio::time::sleep(PATH_RECHECK) => {}
                _ = stop.cancelled() => return,
            }
        }
        match read_dir(&dir) {
            Ok(read) => {
                last_error = None;
                if Some(read.fingerprint) != last {
                    last = Some(read.fingerprint);
                    let answer = SourceAnswer {
                        source: name.clone(),
                        generation,
                        version_info: read.version_info(),
                        docs: read.docs,
                    };
                    if events
                        .send(ControlEvent::SourceAnswer(Box::new(answer)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(why) => {
                if last_error.as_ref() != Some(&why) {
                    last_error = Some(why.clone());
                    let failed = ControlEvent::SourceFailed {
                        source: name.clone(),
                        generation,
                        why,
                    };
                    if events.send(failed).await.is_err() {
                        return;
                    }
                }
            }
        }
        first = false;
    }
}

struct RestTask {
    name: String,
    generation: u64,
    config: RestSourceConfig,
    /// `config.ca`, resolved against the config file's directory.
    ca: Option<PathBuf>,
    events: mpsc::Sender<ControlEvent>,
    report: watch::Receiver<Report>,
}

/// What one GET brought.
pub enum Fetched {
    /// `304`: the document is the one fetched last.
    NotModified,
    Body {
        text: String,
        /// The `Content-Type` says YAML.
        yaml: bool,
        etag: Option<String>,
    },
}

/// The HTTP side of a REST source: its client (headers, CA, timeout) and the last `ETag`.
pub struct RestFetcher {
    client: reqwest::Client,
    etag: Option<String>,
}

impl RestFetcher {
    /// `ca`: `config.ca` resolved against the config file's directory.
    pub fn new(config: &RestSourceConfig, ca: Option<&Path>) -> Result<RestFetcher, String> {
        Ok(RestFetcher {
            client: rest_client(config, ca)?,
            etag: None,
        })
    }

    /// One GET of `url`, conditional on the last answer's `ETag`.
    pub async fn fetch(&mut self, url: &str) -> Result<Fetched, String> {
        let fetched = fetch(&self.client, url, self.etag.as_deref()).await?;
        if let Fetched::Body { etag, .. } = &fetched {
            self.etag.clone_from(etag);
        }
        Ok(fetched)
    }
}

/// Polls a REST source until stopped: every `poll_interval` (jittered) while it answers, backing
/// off from 1s up to the interval while it fails.
async fn poll_rest(task: RestTask, stop: CancellationToken) {
    let RestTask {
        name,
        generation,
        config,
        ca,
        events,
        report,
    } = task;
    let mut fetcher = match RestFetcher::new(&config, ca.as_deref()) {
        Ok(f) => f,
        Err(why) => {
            let _ = events
                .send(ControlEvent::SourceFailed {
                    source: name,
                    generation,
                    why,
                })
                .await;
            return;
        }
    };
    // Names the answer in its errors, which reach logs and `/config_dump`: without its secrets.
    let shown = shown_url(&config.url).into_owned();
    let mut last_body: Option<u64> = None;
    let mut failures: u32 = 0;
    loop {
        let url = report_url(&config, &report.borrow());
        let outcome = tokio::select! {
            r = fetcher.fetch(&url) => r,
            _ = stop.cancelled() => return,
        };
        let event = match outcome {
            Ok(Fetched::NotModified) => {
                failures = 0;
                telemetry::source_fetch(&name, "unchanged");
                tracing::debug!(source = %name, "config source not modified");
                None
            }
            Ok(Fetched::Body { text, yaml, .. }) => {
                failures = 0;
                let mut h = DefaultHasher::new();
                text.hash(&mut h);
                let hash = h.finish();
                if last_body == Some(hash) {
                    telemetry::source_fetch(&name, "unchanged");
                    None
                } else {
                    last_body = Some(hash);
                    telemetry::source_fetch(&name, "changed");
                    let (version_info, docs) = match parse_rest_document(&text, &shown, yaml) {
                        Ok((v, doc)) => (v, Ok(vec![doc])),
                        Err(e) => (lenient_version(&text, yaml), Err(e)),
                    };
                    Some(ControlEvent::SourceAnswer(Box::new(SourceAnswer {
                        source: name.clone(),
                        generation,
                        version_info,
                        docs,
                    })))
                }
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                telemetry::source_fetch(&name, "failed");
                Some(ControlEvent::SourceFailed {
                    source: name.clone(),
                    generation,
                    why,
                })
            }
        };
        if let Some(event) = event {
            if events.send(event).await.is_err() {
                return;
            }
        }
        let interval = config.poll_interval.get();
        let wait = if failures == 0 {
            interval
        } else {
            FIRST_RETRY
                .checked_mul(2u32.saturating_pow(failures - 1))
                .unwrap_or(interval)
                .min(interval)
        };
        // ±10%, so a fleet started together does not poll in lockstep.
        let wait = wait.mul_f64(0.9 + rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn rest_client(config: &RestSourceConfig, ca: Option<&Path>) -> Result<reqwest::Client, String> {
    let roots = crate::identity::load_trust_roots(ca, true).map_err(|e| format!("`ca`: {e}"))?;
    let provider = Arc::new(crate::identity::crypto_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &config.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`{k}` is not a valid header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(v.expose())
            .map_err(|_| format!("the value of header `{k}` cannot be sent"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .default_headers(headers)
        .user_agent(concat!("bindgate/", env!("CARGO_PKG_VERSION")))
        .timeout(config.timeout.get())
        .connect_timeout(config.timeout.get())
        // Headers carry credentials: they go to the configured URL only.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client setup: {e}"))
}

/// The URL of the next poll: with `report_status`, the version in force and the last error.
fn report_url(config: &RestSourceConfig, report: &Report) -> String {
    if !config.report_status {
        return config.url.clone();
    }
    let Ok(mut url) = reqwest::Url::parse(&config.url) else {
        return config.url.clone();
    };
    {
        let mut q = url.query_pairs_mut();
        if let Some(v) = &report.version_info {
            q.append_pair("version_info", v);
        }
        if let Some(e) = &report.error_detail {
            q.append_pair("error_detail", e);
        }
    }
    url.to_string()
}

async fn fetch(client: &reqwest::Client, url: &str, etag: Option<&str>) -> Result<Fetched, String> {
    let mut req = client.get(url).header(
        reqwest::header::ACCEPT,
        "application/json, application/yaml;q=0.9",
    );
    if let Some(tag) = etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, tag);
    }
    // The URL may carry a token in its query: errors name the host only.
    let mut resp = req.send().await.map_err(|e| describe(&e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(format!("the server answered {status}"));
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let yaml = header(reqwest::header::CONTENT_TYPE).is_some_and(|t| t.contains("yaml"));
    let etag = header(reqwest::header::ETAG);
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!(
            "the answer is larger than {} MiB",
            MAX_DOCUMENT_BYTES >> 20
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the answer is larger than {} MiB",
                MAX_DOCUMENT_BYTES >> 20
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|e| {
        format!(
            "the answer is not UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(Fetched::Body { text, yaml, etag })
}

/// A reqwest error without its URL (which may hold a token), with its causes.
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The `version_info` of an answer that does not parse as a whole, when it has one. Read
/// without building the rest of the answer (a YAML one within its bounds only).
fn lenient_version(text: &str, yaml: bool) -> String {
    #[derive(serde::Deserialize)]
    struct Version {
        version_info: String,
    }
    let text = crate::config::without_bom(text);
    let v: Option<Version> = if yaml {
        crate::config::bounds::check(text)
            .ok()
            .and_then(|()| serde_yaml_ng::from_str(text).ok())
    } else {
        serde_json::from_str(text).ok()
    };
    // One that could not be taken either (too long, a newline in it) is not repeated.
    v.map(|v| v.version_info)
        .filter(|v| crate::config::check_version_info(v).is_ok())
        .unwrap_or_else(|| "(unknown)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_of_a_refused_answer_is_repeated_only_when_it_could_be_taken() {
        let bad = |v: &str| format!("{{\"version_info\": {v}, \"resources\": {{\"typo\": 1}}}}");
        assert_eq!(lenient_version(&bad("\"v2\""), false), "v2");
        assert_eq!(
            lenient_version(&format!("\u{feff}{}", bad("\"v3\"")), false),
            "v3"
        );
        assert_eq!(
            lenient_version("\u{feff}version_info: v4\nx: [", true),
            "(unknown)"
        );
        assert_eq!(
            lenient_version("\u{feff}version_info: v4\ntypo: 1\n", true),
            "v4"
        );
        for forged in ["\"v1\\nINFO forged\"", &format!("\"{}\"", "v".repeat(300))] {
            assert_eq!(lenient_version(&bad(forged), false), "(unknown)");
        }
    }

    fn rest(url: &str, report: bool) -> RestSourceConfig {
        RestSourceConfig {
            url: url.into(),
            poll_interval: crate::config::HumanDuration::from_secs(1),
            headers: Default::default(),
            ca: None,
            timeout: crate::config::HumanDuration::from_secs(1),
            report_status: report,
        }
    }

    #[test]
    fn the_report_rides_in_the_query_only_when_asked() {
        let r = Report {
            version_info: Some("v1".into()),
            error_detail: Some("line 3: no cluster named `x`".into()),
        };
        assert_eq!(
            report_url(&rest("http://127.0.0.1:1/r?env=prod", false), &r),
            "http://127.0.0.1:1/r?env=prod"
        );
        assert_eq!(
            report_url(&rest("http://127.0.0.1:1/r?env=prod", true), &r),
            "http://127.0.0.1:1/r?env=prod&version_info=v1&error_detail=line+3%3A+no+cluster+named+%60x%60"
        );
    }

    #[test]
    fn a_rest_answer_cannot_make_this_host_write_files() {
        let dir = tempfile::tempdir().unwrap();
        let loaded =
            crate::config::parse("version: 1\n", "gw.yaml", dir.path().into(), |_| None).unwrap();
        let log = dir.path().join("x.log");
        let doc = |path: &str| {
            format!(
                r#"{{"version_info": "1", "resources": {{
  "listeners": [{{"name": "l", "address": "127.0.0.1:0", "routes": [{{"cluster": "c"}}],
    "filters": [{{"access_log": {{"path": "{path}"}}}}]}}],
  "clusters": [{{"name": "c", "type": "static", "endpoints": ["127.0.0.1:1"]}}]}}}}"#
            )
        };
        let build = |text: &str, remote: bool| {
            let (version_info, doc) = if remote {
                parse_rest_document(text, "https://config/r", false).unwrap()
            } else {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                let file = serde_json::to_string(&v["resources"]).unwrap();
                ("1".into(), parse_resource_file(&file, "/d/a.json").unwrap())
            };
            let source = Arc::new(SourceResources {
                source: "s".into(),
                version_info,
                docs: vec![doc],
            });
            build_with_sources(&loaded, &[source], false)
        };
        let to_file = doc(log.to_str().unwrap());
        let err = build(&to_file, true).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert_eq!(
            err.errors[0].path,
            "resources.listeners[0].filters[0].access_log.path"
        );
        assert_eq!(err.errors[0].line, Some(3), "{err}");
        // To stdout it is fine; a file on this host may name a file.
        build(&doc("-"), true).unwrap();
        build(&to_file, false).unwrap();
    }

    #[test]
    fn error_detail_is_the_first_error_line_capped() {
        let why = "config source `a`: 2 errors\n  /d/a.yaml: line 3, column 5: bad\n  more\n";
        assert_eq!(error_detail(why), "/d/a.yaml: line 3, column 5: bad");
        let long = format!("x: 1 error\n  {}\n", "é".repeat(400));
        let d = error_detail(&long);
        assert!(d.len() <= 512 && d.starts_with('é'), "{}", d.len());
    }

    #[test]
    fn a_directory_read_collects_every_files_errors_and_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.yaml"), "listeners:\n  - name: a\n    adress: x\n").unwrap();
        std::fs::write(p.join("b.json"), "{\"clusters\": [{\"name\": 1}]}").unwrap();
        std::fs::write(p.join("c.yml"), "clusters: []\n").unwrap();
        std::fs::write(p.join(".hidden.yaml"), "garbage: [").unwrap();
        std::fs::write(p.join("notes.txt"), "garbage: [").unwrap();
        let read = read_dir(p).unwrap();
        let errors = read.docs.unwrap_err();
        // Every error of every file, in file order: a.yaml's two, then b.json's two.
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| {
                let file = e.file.as_deref().unwrap();
                (&file[file.len() - 6..], e.path.as_str())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.yaml", "listeners[0]"),
                ("a.yaml", "listeners[0].adress"),
                ("b.json", "clusters[0]"),
                ("b.json", "clusters[0].name"),
            ],
            "{errors:?}"
        );
        assert_eq!(errors[1].line, Some(3));
        // The same content reads to the same fingerprint; a change to another.
        let again = read_dir(p).unwrap();
        assert_eq!(read.fingerprint, again.fingerprint);
        std::fs::write(p.join("c.yml"), "clusters: [] \n").unwrap();
        assert_ne!(read.fingerprint, read_dir(p).unwrap().fingerprint);
        assert!(read_dir(&p.join("missing")).is_err());
    }
}
