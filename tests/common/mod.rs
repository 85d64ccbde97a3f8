//! Helpers for end-to-end tests: run the real `bindgate` binary and wait on its readiness lines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_bindgate");

/// A running `bindgate` process, stopped (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// Every stderr line, read continuously so the child never blocks on a full pipe.
    pub stderr: mpsc::UnboundedReceiver<String>,
    /// The first JSON line the process printed (its readiness event).
    pub event: serde_json::Value,
}

impl Proc {
    /// Starts `bindgate ARGS`, and waits for its first stdout line (a JSON readiness event).
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Proc::start_cmd(Command::new(BIN), args, envs).await
    }

    /// Like [`Proc::start`], with the open-file limit (soft and hard) set to `nofile`.
    pub async fn start_with_fd_limit(args: &[&str], nofile: u64) -> Proc {
        let mut cmd = Command::new(BIN);
        // SAFETY: setrlimit is async-signal-safe, as code between fork and exec must be.
        unsafe {
            cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, nofile, nofile));
        }
        Proc::start_cmd(cmd, args, &[]).await
    }

    async fn start_cmd(mut cmd: Command, args: &[&str], envs: &[(&str, &str)]) -> Proc {
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
        let (tx, stderr) = mpsc::unbounded_channel();
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
        let status = self.child.wait().await.unwrap();
        (status, self.rest_of_log().await)
    }

    /// Waits for the process to exit by itself; returns its status and remaining log.
    pub async fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), self.child.wait())
            .await
            .expect("process did not exit")
            .unwrap();
        (status, self.rest_of_log().await)
    }

    async fn rest_of_log(&mut self) -> String {
        let mut log = String::new();
        while let Some(line) = self.stderr.recv().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    }

    /// Reads stderr lines until one contains `needle` (the process keeps running).
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_all(&[needle]).await
    }

    /// Reads stderr lines until one contains every needle.
    pub async fn wait_for_log_all(&mut self, needles: &[&str]) -> String {
        let mut seen = String::new();
        let wait = async {
            while let Some(line) = self.stderr.recv().await {
                seen.push_str(&line);
                seen.push('\n');
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(std::time::Duration::from_secs(60), wait).await {
            Ok(Some(line)) => line,
            _ => panic!("no log line containing {needles:?}; log so far:\n{seen}"),
        }
    }
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
    start_sandbox_full("", "", extra).await
}

/// Like [`start_sandbox`], with `ingress` lines (indented two spaces, newline-terminated)
/// appended to the sandbox's `ingress:` section, e.g. `"  h2: false\n"`.
pub async fn start_sandbox_with(ingress: &str, extra: &str) -> SandboxProc {
    start_sandbox_full(ingress, "", extra).await
}

/// Like [`start_sandbox`], with `top` (e.g. an `api:` section) added at the top level.
pub async fn start_sandbox_api(top: &str, extra: &str) -> SandboxProc {
    start_sandbox_full("", top, extra).await
}

pub async fn start_sandbox_full(ingress: &str, top: &str, extra: &str) -> SandboxProc {
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
{top}
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

/// The sandbox API section used by dynamic tests; the key is `k-e2e`.
pub const SANDBOX_API: &str = "api:\n  address: 127.0.0.1:0\n  api_keys: [k-e2e]\n";

impl SandboxProc {
    pub fn api_url(&self) -> String {
        self.proc.event["api"]
            .as_str()
            .expect("sandbox api")
            .to_owned()
    }

    /// An HTTPS client trusting the sandbox CA.
    pub fn client(&self) -> reqwest::Client {
        bindgate::identity::install_crypto_provider();
        let roots = bindgate::identity::load_trust_roots(Some(Path::new(&self.ca)), false).unwrap();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    /// Calls a `/sandbox/...` control route; returns the status and body.
    pub async fn control(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let mut req = self
            .client()
            .request(
                method,
                format!("{}/sandbox/{path_and_query}", self.api_url()),
            )
            .bearer_auth("k-e2e");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// `GET /sandbox/stats`: `registrations`, `operator_writes`, `operators`, `endpoints`.
    pub async fn stats(&self) -> serde_json::Value {
        let (code, body) = self.control(reqwest::Method::GET, "stats", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Adds a bound endpoint to the sandbox at run time (`target`: `echo`, `http` or an address).
    pub async fn add_endpoint(&self, url: &str, target: &str) {
        let (code, body) = self
            .control(
                reqwest::Method::POST,
                "endpoints",
                Some(serde_json::json!({"url": url, "target": target})),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }

    pub async fn registrations(&self) -> u64 {
        let (code, body) = self.control(reqwest::Method::GET, "stats", None).await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["registrations"]
            .as_u64()
            .unwrap_or_else(|| panic!("no registrations in {v}"))
    }

    /// A bindgate config that registers with this sandbox and exposes discovered endpoints on
    /// `ports` (a `first-last` range).
    pub fn dynamic_config(
        &self,
        state_dir: &Path,
        (ip, ports): &(String, String),
        api_key: &str,
        extra: &str,
    ) -> String {
        let expose =
            format!("      mode: port_range\n      address: {ip}\n      ports: \"{ports}\"\n");
        self.discovery_config(state_dir, api_key, &expose, "20s", extra)
    }

    /// A bindgate config that registers with this sandbox and exposes discovered endpoints as
    /// `expose` says (its fields, indented six spaces, newline-terminated); discovered listeners
    /// drain for `drain_timeout`. `extra` is appended at the top level.
    pub fn discovery_config(
        &self,
        state_dir: &Path,
        api_key: &str,
        expose: &str,
        drain_timeout: &str,
        extra: &str,
    ) -> String {
        format!(
            "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
state_dir: {state}
ngrok:
  api_url: {api}
  api_key: {api_key}
  api_ca: {ca}
ingresses:
  - name: ngrok
    server_name: localhost
    ca: {ca}
dynamic_resources:
  bound_endpoints:
    ingress: ngrok
    poll_interval: 1s
    expose:
{expose}    listener: {{ drain_timeout: {drain_timeout} }}
{extra}",
            state = state_dir.display(),
            api = self.api_url(),
            ca = self.ca,
        )
    }
}

/// A loopback IP of its own and a range of `n` ports on it, below the ephemeral range. The IP
/// is claimed for this process's life (see [`claim_loopback`]), so no other test process, run
/// at the same time or not, can be handed it.
pub fn port_range(n: u16) -> (String, String) {
    let ip = claim_loopback(100..200, 1);
    (ip.to_string(), format!("20000-{}", 20000 + n - 1))
}

/// The first address of a block of `size` loopback addresses (aligned; `size` a power of two up
/// to 128) whose second octet is in `second_octet`, claimed for this process's life by binding
/// `first:19999` and keeping that socket open. All of 127/8 is local on Linux, so the bind only
/// fails when another process holds the claim; then another random block is tried.
pub fn claim_loopback(second_octet: std::ops::Range<u8>, size: u8) -> std::net::Ipv4Addr {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let last = if size <= 1 {
            rng.random_range(1..=250u8)
        } else {
            rng.random_range(0..(256 / u16::from(size)) as u8) * size
        };
        let ip = std::net::Ipv4Addr::new(
            127,
            rng.random_range(second_octet.clone()),
            rng.random_range(1..=250),
            last,
        );
        if let Ok(claim) = std::net::TcpListener::bind((ip, 19999)) {
            // Held until the process exits: the claim is the socket.
            std::mem::forget(claim);
            return ip;
        }
    }
    panic!("no free loopback block after 1000 tries");
}

/// GETs an admin path and parses the JSON body.
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    bindgate::identity::install_crypto_provider();
    let body = reqwest::get(format!("http://{admin}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The local address of a discovered endpoint, from the admin `/endpoints` view.
pub async fn endpoint_address(admin: SocketAddr, url: &str) -> Option<SocketAddr> {
    let rows = admin_json(admin, "/endpoints").await;
    rows.as_array()?
        .iter()
        .find(|r| r["endpoint"] == url)
        .and_then(|r| r["address"].as_str()?.parse().ok())
}

/// A connection streaming a known pattern through an echo path, checked byte-exact at the end.
pub struct EchoStream {
    writer: tokio::net::tcp::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
    /// Bytes echoed back so far.
    echoed: tokio::sync::watch::Receiver<usize>,
    chunk: Vec<u8>,
    sent: usize,
}

impl EchoStream {
    pub async fn open(addr: SocketAddr, chunk_len: usize) -> EchoStream {
        use tokio::io::AsyncReadExt;
        let (mut r, writer) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let (progress, echoed) = tokio::sync::watch::channel(0);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok(got);
                }
                got.extend_from_slice(&buf[..n]);
                progress.send_replace(got.len());
            }
        });
        let chunk = (0..chunk_len).map(|i| (i % 251) as u8).collect();
        EchoStream {
            writer,
            reader,
            echoed,
            chunk,
            sent: 0,
        }
    }

    /// Waits until everything sent so far has come back: the path is established end to end.
    pub async fn echoed_all(&mut self) {
        let want = self.sent * self.chunk.len();
        tokio::time::timeout(GUARD, self.echoed.wait_for(|n| *n >= want))
            .await
            .expect("echo stalled")
            .expect("stream ended");
    }

    /// Sends `n` more chunks.
    pub async fn send(&mut self, n: usize) {
        use tokio::io::AsyncWriteExt;
        for _ in 0..n {
            self.writer.write_all(&self.chunk).await.unwrap();
            self.sent += 1;
        }
    }

    /// Half-closes and asserts every byte sent came back, in order.
    pub async fn finish(mut self) {
        use tokio::io::AsyncWriteExt;
        self.writer.shutdown().await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), self.reader)
            .await
            .expect("stream hung")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), self.sent * self.chunk.len(), "bytes lost");
        assert!(
            got.chunks(self.chunk.len())
                .all(|c| c == self.chunk.as_slice()),
            "bytes differ"
        );
    }
}

/// A process's stderr lines, handed over from [`Proc`] for tests that wait on many lines.
pub struct Logs {
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Takes over the stderr lines (the `wait_for_log*` methods see none afterwards).
    pub fn logs(&mut self) -> Logs {
        let (_, empty) = mpsc::unbounded_channel();
        Logs {
            lines: std::mem::replace(&mut self.stderr, empty),
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
        // A guard against hangs only: a line that never comes fails with the log so far.
        let deadline = tokio::time::Instant::now() + LOG_GUARD;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
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
        let deadline = tokio::time::Instant::now() + LOG_GUARD;
        loop {
            let found = self.matching(needle);
            if found.len() >= n {
                return found;
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) | Err(_) => panic!(
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

/// Guard against hangs only; no assertion depends on it.
pub const GUARD: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a test waits for a log line before failing with the log so far (a guard against
/// hangs; every awaited line comes within a few seconds when things work).
const LOG_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts `bindgate run` on `config` (written into `dir`) and asserts it came up ready.
pub async fn start_proxy(config: &str, dir: &Path) -> Proc {
    let path = write(dir, "bindgate.yaml", config);
    let p = Proc::start(&["run", "-c", &path], &[]).await;
    assert_eq!(p.event["event"], "started");
    assert_eq!(p.event["ready"], true, "{}", p.event);
    p
}

/// Reads until EOF (or an error); returns what arrived.
/// Connects to `addr`, sends `data`, half-closes, and returns everything that came back before
/// the peer closed (a refused or reset connection returns what arrived, often nothing).
pub async fn echo_once(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(data).await.unwrap();
    c.shutdown().await.unwrap();
    read_all(&mut c).await
}

pub async fn read_all(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("read hung");
    out
}

/// Every sample of a scrape: the line parser must classify each line (prometheus-parse skips what
/// it cannot read rather than failing), then the whole body must parse.
pub fn parse_scrape(body: &str) -> prometheus_parse::Scrape {
    for line in body.lines() {
        assert_ne!(
            prometheus_parse::LineInfo::parse(line),
            prometheus_parse::LineInfo::Ignored,
            "unparsable line {line:?} in\n{body}"
        );
    }
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The admin `/metrics` scrape, parsed.
pub async fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    bindgate::identity::install_crypto_provider();
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_scrape(&body)
}

/// The value of the one sample `name` whose labels are exactly `labels`.
/// The value of the first sample `name` whose labels are exactly `labels`, if there is one.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use prometheus_parse::Value;
    let found = scrape.samples.iter().find(|s| {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })?;
    match found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        ref other => panic!("{name}: not a single value: {other:?}"),
    }
}

pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: not a single value: {other:?}"),
    }
}

/// Polls `/metrics` until the sample `name{labels}` equals `want` (panics after [`GUARD`]).
pub async fn wait_for_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let s = scrape(admin).await;
        if sample(&s, name, labels) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} {labels:?} never reached {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `check` on the admin JSON at `path` until it returns `Some` (panics after [`GUARD`]
/// with the last answer): tests wait on state, not on log wording.
pub async fn wait_admin<T>(
    admin: SocketAddr,
    path: &str,
    what: &str,
    mut check: impl FnMut(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let v = admin_json(admin, path).await;
        if let Some(t) = check(&v) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}; {path} says {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until listener `name` is in `state` in `/listeners`; returns its bound address.
pub async fn wait_listener(admin: SocketAddr, name: &str, state: &str) -> Option<SocketAddr> {
    wait_admin(admin, "/listeners", &format!("{name} {state}"), |v| {
        let row = v
            .as_array()?
            .iter()
            .find(|r| r["name"] == name && r["state"] == state)?;
        Some(row["bound_address"].as_str().and_then(|a| a.parse().ok()))
    })
    .await
}

/// Waits until listener `name` is gone from `/listeners` (drained, or never there).
pub async fn wait_listener_gone(admin: SocketAddr, name: &str) {
    wait_admin(admin, "/listeners", &format!("{name} gone"), |v| {
        (!v.as_array()?.iter().any(|r| r["name"] == name)).then_some(())
    })
    .await
}

/// Waits until the discovered endpoint `url` is exposed and its listener active; returns where.
pub async fn wait_endpoint(admin: SocketAddr, url: &str) -> SocketAddr {
    wait_admin(admin, "/endpoints", &format!("{url} active"), |v| {
        let row = v.as_array()?.iter().find(|r| r["endpoint"] == url)?;
        (row["state"] == "active").then(|| row["address"].as_str()?.parse().ok())?
    })
    .await
}

/// Waits until `/config_dump`'s `control` counter `field` (`applied_updates`,
/// `rejected_updates`) reaches `n`; returns the whole dump.
pub async fn wait_control(admin: SocketAddr, field: &str, n: u64) -> serde_json::Value {
    wait_admin(admin, "/config_dump", &format!("{field} = {n}"), |v| {
        (v["control"][field].as_u64()? >= n).then(|| v.clone())
    })
    .await
}

/// Waits until nothing accepts at `addr` any more (a removed or draining listener).
pub async fn wait_not_accepting(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A local TCP echo server on an OS-chosen loopback port: each connection gets its bytes back,
/// and its half-close is passed on.
pub async fn echo_server() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Publishes `files` (name, text) the way the kubelet updates a ConfigMap volume: a new
/// timestamped directory, a `..data_tmp` symlink to it renamed over `..data` (one atomic switch),
/// then the old directory removed. Each file is a symlink to `..data/<name>` throughout.
pub fn kubelet_publish(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..2026_12_06_00_00_{generation:02}.000000001"));
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(data.file_name().unwrap(), &tmp).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}
