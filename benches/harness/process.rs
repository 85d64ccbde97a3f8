//! Child `bindgate` processes: start one, wait for its one-line JSON readiness event, keep its
//! pipes drained, stop it. Logging is set to `warn` so log formatting is not part of what is
//! measured; whatever is logged is forwarded to our stderr with the process's name.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// A running child, killed when stopped or dropped.
pub struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    /// Runs `bin ARGS` and waits (up to `limit`) for its first stdout line, a JSON event.
    pub async fn start(
        bin: &Path,
        args: &[&str],
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<(ChildProcess, serde_json::Value)> {
        let mut child = Command::new(bin)
            .args(args)
            .env("BINDGATE_LOG", "warn")
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
    #[allow(dead_code)] // used by benches/soak.rs, not by the load bench
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Reads a pipe to its end so the child never blocks on it; prints the lines when `name` is set.
async fn forward_lines<R: AsyncRead + Unpin>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    name: Option<String>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(name) = &name {
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
