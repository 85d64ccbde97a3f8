//! What the benches read from a running proxy: resident memory, open descriptors, threads and
//! CPU time from `/proc/PID`, and (the soak) one gauge from the admin server's `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One look at a process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcStats {
    /// `VmRSS` of `/proc/PID/status`, in KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// `Threads` of `/proc/PID/status`.
    pub threads: u64,
}

impl ProcStats {
    pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("/proc/{pid}/status has no `{name}`"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .count() as u64;
        Ok(ProcStats {
            rss_kib: field("VmRSS:")?,
            fds,
            threads: field("Threads:")?,
        })
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s times: Linux reports them in `USER_HZ`, which is
/// 100 on every architecture it ships for but alpha.
const USER_HZ: f64 = 100.0;

/// CPU time the process has used so far, user plus system (`utime` + `stime` of
/// `/proc/PID/stat`, all its threads), in seconds; 10 ms granularity.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("/proc/{pid}/stat has no command name: {stat}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file; field 3 (the state) is the first after the name.
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields
            .get(field - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {field}: {stat}"))
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// The value of the unlabelled sample `name` in the admin server's `/metrics` (absent: 0, as a
/// gauge nothing has touched yet is not rendered).
pub async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let body = get(admin, "/metrics").await?;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if let Some(value) = rest.strip_prefix(' ') {
            return value
                .trim()
                .parse()
                .with_context(|| format!("`{line}`: not a number"));
        }
    }
    Ok(0.0)
}

/// `GET path` on the admin server, HTTP/1.1 with `Connection: close`; the body of a `200`.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{admin}{path}: no response within 10 s"))??;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("GET http://{admin}{path}: no end of head in {response:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{admin}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

/// The payload of a chunked body (the admin server may chunk `/metrics`).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
