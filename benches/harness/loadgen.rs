//! The external HTTP load generators of the `http_peers` group, used when installed: `wrk`
//! (kept-alive connections) and `ab` (ApacheBench: HTTP/1.0, a new connection per request). A
//! run is one child process, bounded in time, whose printed summary is parsed into an
//! [`HttpRun`]. A run that fails (the tool exits non-zero, or its output lacks a number) is an
//! `HttpRun` with no requests and the error, never fatal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio::time::timeout;

use super::HttpPeersSettings;
use super::http_peers::HttpRun;
use super::peers::PeerInfo;
use super::process::find_executable;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Wrk,
    Ab,
}

impl Tool {
    pub const ALL: [Tool; 2] = [Tool::Wrk, Tool::Ab];

    /// The executable, and the name of its columns and JSON fields.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::Ab => "ab",
        }
    }

    /// The executable on `PATH` (Debian: `apt-get install wrk apache2-utils`).
    pub fn find(self) -> Option<PathBuf> {
        find_executable(&[self.name()], &[])
    }

    /// `wrk -v` / `ab -V`: the line naming the version.
    pub async fn info(self, bin: &Path, s: &HttpPeersSettings) -> anyhow::Result<PeerInfo> {
        let (flag, wanted) = match self {
            Tool::Wrk => ("-v", "wrk "),
            Tool::Ab => ("-V", "This is ApacheBench"),
        };
        let mut info = PeerInfo::of(bin, flag, wanted, s.tool_time_limit).await?;
        // "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer": the version is what comes first.
        if let Some((version, _)) = info.version.split_once(" Copyright") {
            info.version = version.to_owned();
        }
        Ok(info)
    }

    /// The arguments of one run against `addr`.
    pub fn args(self, addr: SocketAddr, s: &HttpPeersSettings) -> Vec<String> {
        let url = format!("http://{addr}/");
        match self {
            Tool::Wrk => vec![
                format!("-t{}", s.wrk_threads),
                format!("-c{}", s.wrk_connections),
                // wrk takes whole seconds.
                format!("-d{}s", s.wrk_duration.as_secs().max(1)),
                "--latency".to_owned(),
                url,
            ],
            // `-r`: a failed receive is counted in "Failed requests" instead of ending the run.
            Tool::Ab => vec![
                "-q".to_owned(),
                "-r".to_owned(),
                "-c".to_owned(),
                s.ab_concurrency.to_string(),
                "-n".to_owned(),
                s.ab_requests.to_string(),
                url,
            ],
        }
    }

    /// The command line, for the report (the URL as `URL`).
    pub fn command(self, s: &HttpPeersSettings) -> String {
        let mut args = self.args(SocketAddr::from(([127, 0, 0, 1], 0)), s);
        if let Some(url) = args.last_mut() {
            *url = "URL".to_owned();
        }
        format!("{} {}", self.name(), args.join(" "))
    }

    /// Runs `bin` against `addr` and parses what it printed.
    pub async fn run(self, bin: &Path, addr: SocketAddr, s: &HttpPeersSettings) -> HttpRun {
        let args = self.args(addr, s);
        let limit = match self {
            Tool::Wrk => s.wrk_duration + s.tool_time_limit,
            Tool::Ab => s.tool_time_limit,
        };
        let output = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let command = format!("{} {}", self.name(), args.join(" "));
        let output = match timeout(limit, output).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return HttpRun::failed(format!("running {command}: {e}")),
            Err(_) => return HttpRun::failed(format!("{command}: not done within {limit:?}")),
        };
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return HttpRun::failed(format!("{command}: {}: {}", output.status, tail(&text)));
        }
        let parsed = match self {
            Tool::Wrk => parse_wrk(&text),
            Tool::Ab => parse_ab(&text),
        };
        parsed.unwrap_or_else(|e| HttpRun::failed(format!("{command}: {e} in: {}", tail(&text))))
    }
}

/// The last lines of a tool's output, for an error.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// wrk's summary: the average of `Latency` under "Thread Stats", `99%` of "Latency
/// Distribution", `N requests in T`, `Requests/sec:`, and errors from `Socket errors:` and
/// `Non-2xx or 3xx responses:` (printed only when there are some).
fn parse_wrk(text: &str) -> Result<HttpRun, String> {
    let mut mean = None;
    let mut p99 = None;
    let mut count = None;
    let mut per_second = None;
    let mut errors = 0u64;
    let mut first_error = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Latency ") {
            // "Latency   4.82ms  4.43ms  22.37ms  81.33%" (and "Latency Distribution", no number).
            if let Some(ms) = rest.split_whitespace().next().and_then(wrk_time_ms) {
                mean.get_or_insert(ms);
            }
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = wrk_time_ms(rest.trim());
        } else if let Some((n, rest)) = line.split_once(" requests in ") {
            let seconds = rest
                .split(',')
                .next()
                .and_then(wrk_time_ms)
                .map(|ms| ms / 1000.0);
            count = n.trim().parse::<u64>().ok().zip(seconds);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            per_second = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            let n: u64 = rest
                .split(',')
                .filter_map(|kind| kind.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            if n > 0 {
                errors += n;
                first_error.get_or_insert_with(|| format!("socket errors: {}", rest.trim()));
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            let n = rest.trim().parse::<u64>().unwrap_or(0);
            if n > 0 {
                errors += n;
                first_error.get_or_insert_with(|| format!("{n} responses not 2xx or 3xx"));
            }
        }
    }
    let (requests, seconds) = count.ok_or("no `N requests in T`")?;
    Ok(HttpRun {
        requests,
        errors,
        seconds,
        per_second: per_second.ok_or("no `Requests/sec:`")?,
        mean_latency_ms: Some(mean.ok_or("no `Latency` average")?),
        p99_latency_ms: p99,
        first_error,
        proxy_cpu_seconds: None,
    })
}

/// A wrk duration (`622.79us`, `4.82ms`, `1.03s`, `1.50m`, `2.00h`) in milliseconds.
fn wrk_time_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * scale)
}

/// ab's summary: `Complete requests:`, `Failed requests:`, `Non-2xx responses:` (printed only
/// when there are some), `Time taken for tests:`, `Requests per second:`, the first `Time per
/// request:` (the mean latency of one request) and `99%` of the percentages (whole ms).
fn parse_ab(text: &str) -> Result<HttpRun, String> {
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let requests = field("Complete requests:").ok_or("no `Complete requests:`")? as u64;
    let failed = field("Failed requests:").unwrap_or(0.0) as u64;
    let non_2xx = field("Non-2xx responses:").unwrap_or(0.0) as u64;
    let mut first_error = None;
    if failed > 0 {
        first_error = Some(format!("{failed} failed requests"));
    } else if non_2xx > 0 {
        first_error = Some(format!("{non_2xx} responses not 2xx"));
    }
    Ok(HttpRun {
        requests,
        errors: failed + non_2xx,
        seconds: field("Time taken for tests:").ok_or("no `Time taken for tests:`")?,
        per_second: field("Requests per second:").ok_or("no `Requests per second:`")?,
        mean_latency_ms: field("Time per request:"),
        p99_latency_ms: field("99%"),
        first_error,
        proxy_cpu_seconds: None,
    })
}

// Run by the `bench_smoke` test binary. The benches are also checked with `cfg(test)` but
// without a test harness (`harness = false`), which drops the `#[test]` functions: so nothing
// here lives outside them (no `use`, no shared constants), or it would be unused there.
#[cfg(test)]
mod tests {
    #[test]
    fn wrk_summary() {
        const WRK: &str = "\
Running 1s test @ http://127.0.0.1:18088/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   622.79us    4.43ms  22.37ms   81.33%
    Req/Sec     7.62k     0.88k    9.92k    75.00%
  Latency Distribution
     50%    3.50ms
     75%    7.64ms
     90%   11.10ms
     99%   17.60ms
  15551 requests in 1.03s, 2.25MB read
  Socket errors: connect 0, read 12, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  15070.30
Transfer/sec:      2.18MB
";
        let run = super::parse_wrk(WRK).expect("parses");
        assert_eq!(run.requests, 15551);
        assert_eq!(run.errors, 18);
        assert_eq!(
            run.first_error.as_deref(),
            Some("socket errors: connect 0, read 12, write 0, timeout 1")
        );
        assert!((run.seconds - 1.03).abs() < 1e-9);
        assert!((run.per_second - 15070.30).abs() < 1e-9);
        assert!((run.mean_latency_ms.expect("mean") - 0.62279).abs() < 1e-9);
        assert!((run.p99_latency_ms.expect("p99") - 17.6).abs() < 1e-9);

        let truncated = WRK.replace("15551 requests in 1.03s, 2.25MB read", "");
        assert_eq!(
            super::parse_wrk(&truncated).map(|r| r.requests),
            Err("no `N requests in T`".to_owned())
        );
    }

    #[test]
    fn wrk_times() {
        assert_eq!(super::wrk_time_ms("250.00us"), Some(0.25));
        assert_eq!(super::wrk_time_ms("4.50ms"), Some(4.5));
        assert_eq!(super::wrk_time_ms("1.50s"), Some(1500.0));
        assert_eq!(super::wrk_time_ms("2.00m"), Some(120_000.0));
        assert_eq!(super::wrk_time_ms("Distribution"), None);
        assert_eq!(super::wrk_time_ms("12"), None);
    }

    #[test]
    fn ab_summary() {
        const AB: &str = "\
Server Software:        nginx/1.22.1
Document Path:          /
Document Length:        256 bytes

Concurrency Level:      16
Time taken for tests:   0.436 seconds
Complete requests:      2000
Failed requests:        3
   (Connect: 0, Receive: 3, Length: 0, Exceptions: 0)
Non-2xx responses:      2
Total transferred:      294000 bytes
Requests per second:    4583.08 [#/sec] (mean)
Time per request:       3.491 [ms] (mean)
Time per request:       0.218 [ms] (mean, across all concurrent requests)

Percentage of the requests served within a certain time (ms)
  50%      2
  99%     13
 100%     21 (longest request)
";
        let run = super::parse_ab(AB).expect("parses");
        assert_eq!(run.requests, 2000);
        assert_eq!(run.errors, 5);
        assert_eq!(run.first_error.as_deref(), Some("3 failed requests"));
        assert!((run.seconds - 0.436).abs() < 1e-9);
        assert!((run.per_second - 4583.08).abs() < 1e-9);
        assert_eq!(run.mean_latency_ms, Some(3.491));
        assert_eq!(run.p99_latency_ms, Some(13.0));

        let truncated = AB.replace("Requests per second:", "Requests:");
        assert_eq!(
            super::parse_ab(&truncated).map(|r| r.requests),
            Err("no `Requests per second:`".to_owned())
        );
    }

    #[test]
    fn command_lines() {
        let s = super::super::Settings::new("bindgate".into(), "test", false);
        assert_eq!(
            super::Tool::Wrk.command(&s.http_peers),
            "wrk -t2 -c64 -d5s --latency URL"
        );
        assert_eq!(
            super::Tool::Ab.command(&s.http_peers),
            "ab -q -r -c 16 -n 20000 URL"
        );
    }
}
