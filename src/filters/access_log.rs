//! Where `access_log` filters write: JSON lines, to a file (opened for append on the first line,
//! created 0640) or to stdout (`-`), from a thread of their own. Filters writing the same path
//! share one writer, so lines never interleave. A line that cannot be written (a full disk, a
//! removed directory, a queue full behind a slow disk) is counted in
//! `bindgate_access_log_lines_lost_total` and said at warn at most every 10 s, with the count;
//! the first line written after failed writes says so at info. It never fails the connection or
//! request it describes.
//!
//! Rotation: a file renamed or removed under the writer (logrotate's default `create`, an
//! operator's `mv`) is noticed within [`ROTATION_CHECK`] and the path opened afresh, so lines
//! never go on filling a rotated or deleted file; SIGUSR1 ([`reopen_files`]) makes every writer
//! reopen before its next line, as Envoy and nginx do.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Lines queued for the writer thread; past this, lines are dropped (and counted) rather than
/// holding up traffic behind a slow or full disk.
const QUEUE: usize = 8192;

/// How often a writer looks whether its path still names the file it has open.
pub const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// At most one warning about lost lines per writer in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Set by SIGUSR1 (the flag is the signal handler's) and by [`reopen_files`]: the first writer
/// to see it clears it and bumps [`REOPEN`].
static REQUESTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// A writer that sees it change reopens its file.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// The flag a SIGUSR1 handler sets to have every access log reopened.
pub fn reopen_request_flag() -> Arc<AtomicBool> {
    REQUESTED.clone()
}

/// Makes every access log writer open its path afresh before its next line.
pub fn reopen_files() {
    REQUESTED.store(true, Ordering::Relaxed);
}

fn reopen_generation() -> u64 {
    if REQUESTED.load(Ordering::Relaxed) && REQUESTED.swap(false, Ordering::Relaxed) {
        REOPEN.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        REOPEN.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// An access log: lines go to a writer thread of its own, so a slow disk never stalls the
/// runtime.
#[derive(Debug)]
pub struct AccessLogWriter {
    target: Target,
    /// Started on the first line (a `validate` build never starts it).
    queue: OnceLock<SyncSender<String>>,
    failures: Arc<Failures>,
    rotation_check: Duration,
}

/// Lines a writer lost, and when it last said so.
#[derive(Debug)]
struct Failures {
    lost: AtomicU64,
    /// `bindgate_access_log_lines_lost_total` for this log, registered once with the writer.
    metric: metrics::Counter,
    /// Lost lines already named in a warning.
    warned: AtomicU64,
    /// Milliseconds after `since` of the last warning (`u64::MAX`: none yet).
    last_warning: AtomicU64,
    since: Instant,
}

impl Failures {
    fn new(target: &Target) -> Self {
        Failures {
            lost: AtomicU64::new(0),
            metric: crate::telemetry::access_log_lost_counter(&target.to_string()),
            warned: AtomicU64::new(0),
            last_warning: AtomicU64::new(u64::MAX),
            since: Instant::now(),
        }
    }
}

impl AccessLogWriter {
    /// `Target::File` paths are already resolved against the config's directory.
    pub fn new(target: Target) -> Self {
        AccessLogWriter {
            failures: Arc::new(Failures::new(&target)),
            target,
            queue: OnceLock::new(),
            rotation_check: ROTATION_CHECK,
        }
    }

    /// Queues one JSON object as a line.
    pub fn write(&self, record: &serde_json::Value) {
        let mut line = record.to_string();
        line.push('\n');
        let queue = self.queue.get_or_init(|| self.start());
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                report(&self.failures, &self.target, "queue full, line dropped")
            }
            Err(TrySendError::Disconnected(_)) => {
                report(&self.failures, &self.target, "writer stopped")
            }
        }
    }

    fn start(&self) -> SyncSender<String> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let target = self.target.clone();
        let failures = self.failures.clone();
        let rotation_check = self.rotation_check;
        let spawned = std::thread::Builder::new()
            .name("bindgate-access-log".into())
            .spawn(move || {
                let mut file: Option<Opened> = None;
                let mut failing = false;
                while let Ok(line) = rx.recv() {
                    let r = match &target {
                        Target::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                        Target::File(path) => {
                            append(&mut file, path, line.as_bytes(), rotation_check)
                        }
                    };
                    match r {
                        Err(e) => {
                            failing = true;
                            report(&failures, &target, &e.to_string());
                        }
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!(
                                log = %target,
                                lost = failures.lost.load(Ordering::Relaxed),
                                "access log: writing again"
                            );
                        }
                        Ok(()) => {}
                    }
                }
            });
        if let Err(e) = spawned {
            report(
                &self.failures,
                &self.target,
                &format!("cannot start the writer: {e}"),
            );
        }
        tx
    }

    /// Lines that could not be written (failed or dropped).
    pub fn failures(&self) -> u64 {
        self.failures.lost.load(Ordering::Relaxed)
    }

    /// Waits until every queued line has been handed to the OS (tests).
    #[cfg(test)]
    pub fn flush_for_test(&self, expected_lines: usize) {
        if let Target::File(p) = &self.target {
            for _ in 0..500 {
                let n = std::fs::read_to_string(p)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                if n >= expected_lines || self.failures() > 0 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn report(failures: &Failures, target: &Target, why: &str) {
    let lost = failures.lost.fetch_add(1, Ordering::Relaxed) + 1;
    failures.metric.increment(1);
    let now = u64::try_from(failures.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    let last = failures.last_warning.load(Ordering::Relaxed);
    let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
    if due
        && failures
            .last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let since = lost - failures.warned.swap(lost, Ordering::Relaxed);
        tracing::warn!(
            log = %target,
            lost,
            "access log: {why}; {since} line(s) lost since the last warning (said at most every 10 s)"
        );
    } else {
        tracing::debug!(log = %target, "access log: {why}");
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("-"),
            Target::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The file a writer has open, and what it knows of it.
struct Opened {
    file: std::fs::File,
    /// Device and inode: the path names this file while `stat` says the same.
    id: (u64, u64),
    /// [`REOPEN`] when it was opened.
    generation: u64,
    checked: Instant,
}

impl Opened {
    fn open(path: &Path) -> std::io::Result<Opened> {
        let generation = reopen_generation();
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        let file = options.open(path)?;
        let meta = file.metadata()?;
        Ok(Opened {
            file,
            id: (meta.dev(), meta.ino()),
            generation,
            checked: Instant::now(),
        })
    }

    /// Whether the path should be opened again: a reopen was asked for, or (looked at once per
    /// `every`) the path is gone or names another file.
    fn stale(&mut self, path: &Path, every: Duration) -> bool {
        if reopen_generation() != self.generation {
            return true;
        }
        if self.checked.elapsed() < every {
            return false;
        }
        self.checked = Instant::now();
        std::fs::metadata(path).map_or(true, |m| (m.dev(), m.ino()) != self.id)
    }
}

/// Appends one line, opening the file (0640, created if missing) when needed.
fn append(
    file: &mut Option<Opened>,
    path: &Path,
    bytes: &[u8],
    rotation_check: Duration,
) -> std::io::Result<()> {
    if file.as_mut().is_some_and(|f| f.stale(path, rotation_check)) {
        tracing::info!(path = %path.display(), "access log reopened (rotated, removed, or SIGUSR1)");
        *file = None;
    }
    let opened = match file {
        Some(f) => f,
        None => file.insert(Opened::open(path)?),
    };
    // One write per line: with O_APPEND, lines from several writers stay whole.
    let r = opened.file.write_all(bytes);
    if r.is_err() {
        *file = None; // reopen next time (the file may have been rotated away)
    }
    r
}

/// Now, in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The config of both `access_log` filters.
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// File to append JSON lines to (relative to the config file's directory), or `-` for
    /// stdout.
    pub path: String,
}

impl AccessLogConfig {
    pub fn target(&self, base_dir: &std::path::Path) -> Target {
        if self.path == "-" {
            Target::Stdout
        } else {
            let p = std::path::Path::new(&self.path);
            Target::File(if p.is_absolute() {
                p.to_owned()
            } else {
                base_dir.join(p)
            })
        }
    }

    /// The path's directory must exist (the file itself is created on the first line).
    pub fn check(&self, base_dir: &std::path::Path) -> Vec<super::FilterIssue> {
        match self.target(base_dir) {
            Target::Stdout => Vec::new(),
            Target::File(p) if p.is_dir() => {
                vec![("path".into(), format!("`{}` is a directory", p.display()))]
            }
            Target::File(p) if !p.parent().is_some_and(|d| d.is_dir()) => vec![(
                "path".into(),
                format!("`{}`: its directory does not exist", p.display()),
            )],
            Target::File(_) => Vec::new(),
        }
    }

    /// The shared writer for this path.
    pub fn writer(&self, ctx: &super::BuildCtx<'_>) -> std::sync::Arc<AccessLogWriter> {
        let target = self.target(ctx.base_dir);
        let key = match &target {
            Target::Stdout => "-".to_owned(),
            Target::File(p) => p.display().to_string(),
        };
        ctx.retained.get_or_insert(
            crate::retained::StateKey::new("access_log/writer", key, &()),
            || AccessLogWriter::new(target),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let w = AccessLogWriter::new(Target::File(path.clone()));
        w.write(&serde_json::json!({"a": 1}));
        w.write(&serde_json::json!({"b": "x\ny"}));
        w.flush_for_test(2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": "x\ny"})
            ]
        );
        assert_eq!(w.failures(), 0);
    }

    /// Polls `path` until it holds `n` lines.
    fn wait_lines(path: &Path, n: usize) -> String {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never held {n} lines", path.display());
    }

    #[test]
    fn a_rotated_or_removed_file_is_followed_by_a_new_one_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut w = AccessLogWriter::new(Target::File(path.clone()));
        w.rotation_check = Duration::ZERO; // look at every line
        w.write(&serde_json::json!({"n": 1}));
        wait_lines(&path, 1);
        // logrotate's `create`: renamed away; the next line goes to a new file at the path.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        w.write(&serde_json::json!({"n": 2}));
        assert_eq!(wait_lines(&path, 1), "{\"n\":2}\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
        // Removed: a new file again, rather than lines into a deleted one.
        std::fs::remove_file(&path).unwrap();
        w.write(&serde_json::json!({"n": 3}));
        assert_eq!(wait_lines(&path, 1), "{\"n\":3}\n");
        assert_eq!(w.failures(), 0);
    }

    #[test]
    fn a_reopen_request_opens_the_path_afresh_before_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut w = AccessLogWriter::new(Target::File(path.clone()));
        assert_eq!(w.rotation_check, ROTATION_CHECK);
        w.rotation_check = Duration::from_secs(3600); // only the request makes it reopen
        w.write(&serde_json::json!({"n": 1}));
        wait_lines(&path, 1);
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen_files();
        w.write(&serde_json::json!({"n": 2}));
        assert_eq!(wait_lines(&path, 1), "{\"n\":2}\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
    }

    /// The value of `bindgate_access_log_lines_lost_total` for `path`, if the series exists.
    fn lost_metric(path: &Path) -> Option<String> {
        let series = format!(
            "{}{{log=\"{}\"}} ",
            crate::telemetry::ACCESS_LOG_LOST,
            path.display()
        );
        crate::telemetry::render()
            .lines()
            .find_map(|l| l.strip_prefix(&series).map(str::to_owned))
    }

    fn wait_failures(w: &AccessLogWriter, n: u64) {
        for _ in 0..500 {
            if w.failures() == n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(w.failures(), n);
    }

    #[test]
    fn an_unwritable_path_is_counted_not_fatal_and_writing_resumes_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet").join("access.log");
        let w = AccessLogWriter::new(Target::File(path.clone()));
        w.write(&serde_json::json!({"n": 1}));
        w.write(&serde_json::json!({"n": 2}));
        wait_failures(&w, 2);
        assert_eq!(lost_metric(&path).as_deref(), Some("2"));
        // The directory appears (the disk was freed, a mount came back): the next line lands.
        std::fs::create_dir(dir.path().join("not-yet")).unwrap();
        w.write(&serde_json::json!({"n": 3}));
        assert_eq!(wait_lines(&path, 1), "{\"n\":3}\n");
        assert_eq!(w.failures(), 2);
        assert_eq!(lost_metric(&path).as_deref(), Some("2"));
    }
}
