#![cfg_attr(not(target_os = "linux"), allow(dead_code))]
//! The `process_*` families, read from `/proc/self` at each render (Linux; elsewhere none).
//!
//! Written as text rather than through the recorder: CPU time is a fractional counter, which the
//! facade's integer counters cannot hold, and these are facts read on demand, not events counted.

use std::fmt::Write;

/// `/proc` reports CPU times and the start time in clock ticks of USER_HZ, which Linux fixes at
/// 100 on every architecture we build for (reading `sysconf` would need `unsafe`).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` told; a field it could not read is left out.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Process {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Appends the process families to `out`.
pub(super) fn render(out: &mut String) {
    write_families(out, &read());
}

pub(super) fn write_families(out: &mut String, p: &Process) {
    let rows: [(&str, &str, &str, Option<f64>); 5] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process, in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size of the process, in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "File descriptors the process has open.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "The process's limit on open file descriptors.",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in rows {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        }
    }
}

#[cfg(target_os = "linux")]
fn read() -> Process {
    let file = |path: &str| std::fs::read_to_string(path).ok();
    let stat = file("/proc/self/stat");
    let stat = stat.as_deref().and_then(parse_stat);
    let boot_time = file("/proc/stat").as_deref().and_then(parse_boot_time);
    Process {
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SECOND),
        resident_bytes: file("/proc/self/status").as_deref().and_then(parse_rss),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: file("/proc/self/limits").as_deref().and_then(parse_max_fds),
        start_time_seconds: stat
            .zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.starttime as f64 / TICKS_PER_SECOND),
    }
}

#[cfg(not(target_os = "linux"))]
fn read() -> Process {
    Process::default()
}

/// The fields of `/proc/self/stat` we use, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Stat {
    pub utime: u64,
    pub stime: u64,
    pub starttime: u64,
}

/// Fields 14, 15 and 22 of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may hold spaces and parentheses itself, so fields are counted from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
pub(super) fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes (the file says kB).
pub(super) fn parse_rss(text: &str) -> Option<u64> {
    let v = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits` (absent when "unlimited").
pub(super) fn parse_max_fds(text: &str) -> Option<u64> {
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    v.split_whitespace().next()?.parse().ok()
}
