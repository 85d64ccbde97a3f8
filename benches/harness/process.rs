//! Child processes. `bindgate` ones: start one, wait for its one-line JSON readiness event, keep
//! its pipes drained, stop it; logging is set to `warn` so log formatting is not part of what is
//! measured, and whatever is logged is forwarded to our stderr with the process's name. Other
//! programs (the peers, nginx, the load generators): found on `PATH`, run in the foreground with
//! their output in a log file, ready when a probe through them succeeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

/// A running child, killed when stopped or dropped.
pub struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    /// Runs `bin ARGS` at log level `warn` and waits (up to `limit`) for its first stdout line,
    /// a JSON event.
    pub async fn start(
        bin: &Path,
        args: &[&str],
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<(ChildProcess, serde_json::Value)> {
        Self::start_logged(bin, args, name, limit, Some("warn")).await
    }

    /// Like [`ChildProcess::start`], at log level `level`, or at the binary's default (`info`,
    /// what a deployment runs) with `None`; its `INFO` lines are read but not printed.
    pub async fn start_logged(
        bin: &Path,
        args: &[&str],
        name: &str,
        limit: Duration,
        level: Option<&str>,
    ) -> anyhow::Result<(ChildProcess, serde_json::Value)> {
        let mut command = Command::new(bin);
        match level {
            Some(level) => command.env("BINDGATE_LOG", level),
            None => command.env_remove("BINDGATE_LOG"),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", bin.display()))?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("{name}: no stdout/stderr pipes");
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = timeout(limit, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            failed => {
                let why = match failed {
                    Err(_) => format!("no readiness line within {limit:?}"),
                    Ok(Err(e)) => format!("reading its stdout: {e}"),
                    _ => "it exited before printing a readiness line".to_owned(),
                };
                let _ = child.start_kill();
                let mut log = String::new();
                let _ = timeout(
                    Duration::from_secs(5),
                    (&mut stderr).take(64 * 1024).read_to_string(&mut log),
                )
                .await;
                bail!("{name}: {why}; its stderr:\n{log}");
            }
        };
        let event: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{name}: readiness line is not JSON: {line}"))?;
        tokio::spawn(forward_lines(lines, None));
        tokio::spawn(forward_lines(
            BufReader::new(stderr).lines(),
            Some(name.to_owned()),
        ));
        Ok((ChildProcess { child }, event))
    }

    /// The child's process id (`None` once it has been waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Some` once the child has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().context("polling the process")
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Reads a pipe to its end so the child never blocks on it; prints the lines when `name` is set,
/// except `INFO` ones (a child started at the default level logs one per endpoint).
async fn forward_lines<R: AsyncRead + Unpin>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    name: Option<String>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(name) = &name
            && !line.contains(" INFO ")
        {
            eprintln!("[{name}] {line}");
        }
    }
}

/// Runs `bin ARGS` to completion (up to `limit`): (exit success, stdout + stderr).
pub async fn run_to_end(
    bin: &Path,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<(bool, String)> {
    let output = Command::new(bin)
        .args(args)
        .env("BINDGATE_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(limit, output)
        .await
        .with_context(|| format!("{} {args:?} did not finish within {limit:?}", bin.display()))?
        .with_context(|| format!("running {} {args:?}", bin.display()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// `bindgate --version`, for the report.
pub async fn version(bin: &Path, limit: Duration) -> anyhow::Result<String> {
    let (ok, text) = run_to_end(bin, &["--version"], limit).await?;
    if !ok {
        bail!("{} --version failed: {text}", bin.display());
    }
    Ok(text.trim().to_owned())
}

/// `bin FLAG` (e.g. `haproxy -v`): the first line of its stdout + stderr that starts with
/// `wanted`, else its first line. Programs print their version on either stream and some exit
/// non-zero after it (wrk), so neither is judged.
pub async fn program_version(
    bin: &Path,
    flag: &str,
    wanted: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let output = Command::new(bin)
        .arg(flag)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(limit, output)
        .await
        .with_context(|| format!("{} {flag} did not finish within {limit:?}", bin.display()))?
        .with_context(|| format!("running {} {flag}", bin.display()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text
        .lines()
        .find(|l| l.starts_with(wanted))
        .unwrap_or_else(|| text.lines().next().unwrap_or(""))
        .trim()
        .to_owned())
}

/// The first of `names` found in a directory of `PATH`, else in `fallback_dirs` (`/usr/sbin` is
/// not on every user's `PATH`).
pub fn find_executable(names: &[&str], fallback_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(fallback_dirs.iter().map(PathBuf::from))
        .collect();
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback port the OS chose: bound by a probe socket, which is closed for a child to bind.
pub fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let probe =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe on 127.0.0.1:0")?;
    probe.local_addr().context("the probe's address")
}

/// Calls `probe` every 20 ms until it succeeds. Fails when `exited` reports that the process
/// ended first, or after `limit`, with the last probe's error.
pub async fn poll_ready<P, F>(
    limit: Duration,
    mut exited: impl FnMut() -> anyhow::Result<Option<ExitStatus>>,
    mut probe: P,
) -> anyhow::Result<()>
where
    P: FnMut() -> F,
    F: Future<Output = std::io::Result<()>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = String::from("never tried");
    loop {
        if let Some(status) = exited()? {
            bail!("exited before it was ready ({status}); last probe: {last_error}");
        }
        match timeout(Duration::from_secs(2), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "the probe timed out".to_owned(),
        }
        if Instant::now() >= deadline {
            bail!("not ready within {limit:?}: {last_error}");
        }
        // A retry interval for the poll, not a guess at readiness.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a [`LoggedProcess`] is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWith {
    /// SIGKILL: one process (HAProxy with `-db`, stunnel in the foreground).
    Kill,
    /// SIGTERM, then SIGKILL if it is still there after 10 s: a master process whose workers
    /// would outlive a SIGKILL of the master (nginx's do).
    Terminate,
}

/// A program other than bindgate, in the foreground, with its stdout and stderr in a log file;
/// stopped as `stop_with` says when stopped or dropped.
pub struct LoggedProcess {
    child: Child,
    log: PathBuf,
    stop_with: StopWith,
}

impl LoggedProcess {
    pub fn spawn(
        bin: &Path,
        args: &[&str],
        log: PathBuf,
        stop_with: StopWith,
    ) -> anyhow::Result<LoggedProcess> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // A SIGKILL on drop only where it takes everything down; see `Drop`.
            .kill_on_drop(stop_with == StopWith::Kill)
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", bin.display()))?;
        Ok(LoggedProcess {
            child,
            log,
            stop_with,
        })
    }

    /// Polls `probe` until it succeeds (see [`poll_ready`]).
    pub async fn wait_ready<P, F>(&mut self, limit: Duration, probe: P) -> anyhow::Result<()>
    where
        P: FnMut() -> F,
        F: Future<Output = std::io::Result<()>>,
    {
        let child = &mut self.child;
        poll_ready(
            limit,
            || child.try_wait().context("polling the process"),
            probe,
        )
        .await
    }

    /// What it has written so far (empty when the log cannot be read).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        if self.stop_with == StopWith::Terminate {
            self.terminate();
            if timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Sends SIGTERM, unless the child has been waited for already.
    fn terminate(&self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is our
            // child's and it has not been reaped (`id()` is `Some`), so it names no other process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        // `StopWith::Kill` children are killed by tokio (`kill_on_drop`).
        if self.stop_with == StopWith::Terminate {
            self.terminate();
        }
    }
}
