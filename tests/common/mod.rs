//! Helpers for end-to-end tests: run the real `bindgate` binary and wait on its readiness lines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_bindgate");

/// A running `bindgate` process, stopped (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Option<ChildStderr>,
    /// The first JSON line the process printed (its readiness event).
    pub event: serde_json::Value,
}

impl Proc {
    /// Starts `bindgate ARGS`, and waits for its first stdout line (a JSON readiness event).
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("BINDGATE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn bindgate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take();
        let mut lines = BufReader::new(stdout).lines();
        let line = match lines.next_line().await.unwrap() {
            Some(l) => l,
            None => {
                let out = child.wait_with_output().await.unwrap();
                panic!(
                    "bindgate {args:?} exited before becoming ready: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        Proc {
            child,
            stdout: lines,
            stderr,
            event,
        }
    }

    /// The bound address of listener `name`, from the readiness event.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let listeners = self.event["listeners"].as_array().expect("listeners");
        let l = listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name}: {}", self.event));
        l["bound_address"].as_str().expect("bound").parse().unwrap()
    }

    pub fn admin(&self) -> SocketAddr {
        self.event["admin"]
            .as_str()
            .expect("admin address")
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM and returns the exit status and everything the process logged.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let mut err = String::new();
        if let Some(mut s) = self.stderr.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut err)
                .await
                .unwrap();
        }
        let status = self.child.wait().await.unwrap();
        (status, err)
    }

    /// Reads stderr lines until one contains `needle` (the process keeps running).
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        let stderr = self.stderr.take().expect("stderr already consumed");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                // Keep draining stderr in the background so the process never blocks on it.
                tokio::spawn(drain(lines));
                return line;
            }
        }
        panic!("log line containing {needle:?} never came; log was:\n{seen}");
    }
}

/// A process's stderr, read in the background so a chatty process never blocks on a full pipe.
pub struct Logs {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts reading stderr in the background; use the returned [`Logs`] to wait for lines.
    pub fn logs(&mut self) -> Logs {
        let stderr = self.stderr.take().expect("stderr already consumed");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    while let Ok(Some(_)) = reader.next_line().await {}
                    return;
                }
            }
        });
        Logs {
            lines,
            seen: Vec::new(),
        }
    }
}

impl Logs {
    /// Waits for a line containing `needle` (searching lines already seen first).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!(
            "log line containing {needle:?} never came; log was:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits until `n` lines containing `needle` have been seen; returns them.
    pub async fn wait_for_count(&mut self, needle: &str, n: usize) -> Vec<String> {
        loop {
            let found = self.matching(needle);
            if found.len() >= n {
                return found;
            }
            match self.lines.recv().await {
                Some(line) => self.seen.push(line),
                None => panic!(
                    "{n} log lines containing {needle:?} never came; log was:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Lines received so far that contain `needle`.
    pub fn matching(&mut self, needle: &str) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

async fn drain<R: AsyncRead + Unpin>(mut lines: Lines<BufReader<R>>) {
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// Runs `bindgate ARGS` to completion: (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run bindgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// A `bindgate sandbox` process with a client certificate issued for its account.
pub struct SandboxProc {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub ingress: SocketAddr,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The endpoints every e2e sandbox serves; `extra` is appended to the `endpoints:` list.
pub async fn start_sandbox(extra: &str) -> SandboxProc {
    start_sandbox_with("", extra).await
}

/// Like [`start_sandbox`], with `ingress` lines (indented two spaces, newline-terminated)
/// appended to the sandbox's `ingress:` section, e.g. `"  h2: false\n"`.
pub async fn start_sandbox_with(ingress: &str, extra: &str) -> SandboxProc {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = format!(
        "\
state_dir: {state}
account_id: ac_e2e
ingress:
  address: 127.0.0.1:0
  server_names: [localhost]
{ingress}backends:
  echo: 127.0.0.1:0
  http: 127.0.0.1:0
endpoints:
  - url: tcp://echo.e2e:7000
    target: echo
  - url: http://web.e2e:80
    target: http
{extra}",
        state = state.display()
    );
    let path = write(dir.path(), "sandbox.yaml", &cfg);
    let certs = dir.path().join("client");
    let (code, out, err) = run_to_end(
        &[
            "sandbox",
            "-c",
            &path,
            "client-cert",
            "--out",
            certs.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "client-cert: {out}{err}");
    let proc = Proc::start(&["sandbox", "-c", &path], &[]).await;
    assert_eq!(proc.event["event"], "ready", "{}", proc.event);
    let ingress = proc.event["ingress"].as_str().unwrap().parse().unwrap();
    let ca = proc.event["ca"].as_str().unwrap().to_owned();
    SandboxProc {
        proc,
        ingress,
        ca,
        cert: certs.join("tls.crt").to_str().unwrap().to_owned(),
        key: certs.join("tls.key").to_str().unwrap().to_owned(),
        dir,
    }
}

impl SandboxProc {
    /// An `ingresses:` entry pointing at this sandbox with its CA and client certificate.
    pub fn ingress_yaml(&self) -> String {
        format!(
            "\
ingresses:
  - name: sandbox
    address: {ingress}
    server_name: localhost
    ca: {ca}
    client_cert: {cert}
    client_key: {key}
    connect_timeout: 5s
",
            ingress = self.ingress,
            ca = self.ca,
            cert = self.cert,
            key = self.key
        )
    }
}

/// A bindgate config: admin on port 0, `ingresses` as given, one tcp listener per
/// `(name, endpoint URL)` pair, each with a binding_upstream cluster of the same name.
pub fn binding_config(ingresses: &str, endpoints: &[(&str, &str)], listener_extra: &str) -> String {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for (name, url) in endpoints {
        listeners.push_str(&format!(
            "    - name: {name}\n      address: 127.0.0.1:0\n      routes: [ {{ cluster: {name} }} ]\n{listener_extra}"
        ));
        clusters.push_str(&format!(
            "    - name: {name}\n      type: binding_upstream\n      endpoint: {url}\n      ingress: sandbox\n      retry: {{ attempts: 2, base_backoff: 10ms, max_backoff: 20ms }}\n"
        ));
    }
    format!(
        "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\n{ingresses}static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}
