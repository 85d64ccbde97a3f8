//! `bindgate status`: asks a running bindgate's admin API how it is doing and prints a summary:
//! readiness, the snapshot version, listeners, clusters with their transport counters, and
//! discovered endpoints. Exit 0 when it is ready, 1 when it is not or cannot be reached.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;

use crate::config;

/// Bound on connecting to the admin server and on each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The config file of the running instance (its `admin.address` is asked).
    #[arg(short, long, value_name = "FILE", required_unless_present = "admin")]
    pub config: Option<PathBuf>,
    /// The admin address to ask instead, e.g. `127.0.0.1:9901`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Print the admin API's answers as one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// What the admin API says.
struct Status {
    ready: Result<(), String>,
    version: String,
    listeners: Value,
    clusters: Value,
    endpoints: Value,
    /// `/config_dump`'s `control.discovery` (null without discovery).
    discovery: Value,
    /// `/config_dump`'s `config_sources`.
    sources: Value,
    /// `/config_dump`'s `control.restart_pending`: settings waiting for a restart.
    restart_pending: Value,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let admin = admin_address(&args)?;
    let status = fetch(admin)
        .await
        .with_context(|| format!("cannot ask the admin API at {admin}; is bindgate running?"))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let dump = serde_json::json!({
            "admin": admin.to_string(),
            "ready": status.ready.is_ok(),
            "not_ready_because": status.ready.as_ref().err(),
            "version": status.version,
            "listeners": status.listeners,
            "clusters": status.clusters,
            "endpoints": status.endpoints,
            "discovery": status.discovery,
            "config_sources": status.sources,
            "restart_pending": status.restart_pending,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&dump)?)?;
    } else {
        out.write_all(summary(admin, &status).as_bytes())?;
    }
    Ok(if status.ready.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn admin_address(args: &StatusArgs) -> anyhow::Result<SocketAddr> {
    if let Some(a) = args.admin {
        return Ok(a);
    }
    let Some(path) = &args.config else {
        bail!("give the config file (-c) or the admin address (--admin)");
    };
    let loaded = config::load_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(admin) = &loaded.config.admin else {
        bail!(
            "{} has no `admin:` section, so the running instance has no admin API to ask",
            path.display()
        );
    };
    let addr: SocketAddr = admin
        .address
        .parse()
        .with_context(|| format!("`admin.address` `{}` is not an address", admin.address))?;
    if addr.port() == 0 {
        bail!(
            "`admin.address` is `{addr}`: the OS chose the port; pass the bound one with --admin (bindgate run prints it on its first stdout line)"
        );
    }
    Ok(addr)
}

async fn fetch(admin: SocketAddr) -> anyhow::Result<Status> {
    let (ready_code, ready_text) = get(admin, "/ready").await?;
    let json = |path: &'static str| async move {
        let (code, body) = get(admin, path).await?;
        if code != 200 {
            bail!("{path} answered {code}: {body}");
        }
        serde_json::from_str::<Value>(&body).with_context(|| format!("{path} is not JSON"))
    };
    let dump = json("/config_dump").await?;
    Ok(Status {
        ready: if ready_code == 200 {
            Ok(())
        } else {
            Err(ready_text
                .trim()
                .trim_start_matches("not ready: ")
                .to_owned())
        },
        version: dump["version_info"].as_str().unwrap_or("?").to_owned(),
        listeners: json("/listeners").await?,
        clusters: json("/clusters").await?,
        endpoints: json("/endpoints").await?,
        discovery: dump["control"]["discovery"].clone(),
        sources: dump["config_sources"].clone(),
        restart_pending: dump["control"]["restart_pending"].clone(),
    })
}

/// One GET on a fresh connection: the status code and the body.
async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(admin).await?;
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(answer) => answer.with_context(|| format!("GET {path}")),
        Err(_) => bail!("GET {path}: no answer within {TIMEOUT:?}"),
    }
}

/// The human-readable summary.
fn summary(admin: SocketAddr, s: &Status) -> String {
    let mut out = String::new();
    let ready = match &s.ready {
        Ok(()) => "ready".to_owned(),
        Err(why) => format!("NOT READY: {why}"),
    };
    out.push_str(&format!(
        "bindgate at {admin}: {ready} (config version {})\n",
        s.version
    ));
    let pending: Vec<String> = s
        .restart_pending
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("`{}`", text(p)))
        .collect();
    if !pending.is_empty() {
        out.push_str(&format!(
            "restart pending: the config file changes {}, read at start-up only; the values started with are in force\n",
            pending.join(", ")
        ));
    }
    if let Some(line) = discovery(&s.discovery) {
        out.push_str(&line);
    }
    let sources = rows(&s.sources, |c| {
        let error = c["fetch_error"]
            .as_str()
            .or_else(|| c["error"].as_str())
            .and_then(|e| {
                // The first error itself, not the "N errors" heading above it.
                e.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.ends_with(" error") && !l.ends_with(" errors"))
            })
            .unwrap_or_default();
        vec![
            text(&c["name"]),
            text(&c["type"]),
            text(&c["state"]),
            c["version_info"].as_str().unwrap_or("-").to_owned(),
            format!(
                "{}/{}",
                c["resources"]["listeners"], c["resources"]["clusters"]
            ),
            c["last_update"].as_str().unwrap_or("-").to_owned(),
            error.to_owned(),
        ]
    });
    if !sources.is_empty() {
        table(
            &mut out,
            "config sources",
            &[
                "NAME",
                "TYPE",
                "STATE",
                "VERSION",
                "LISTENERS/CLUSTERS",
                "LAST UPDATE",
                "ERROR",
            ],
            sources,
        );
    }

    let listeners = rows(&s.listeners, |l| {
        let address = match &l["bound_address"] {
            Value::Null => &l["address"],
            bound => bound,
        };
        vec![
            text(&l["name"]),
            text(address),
            text(&l["state"]),
            l["error"].as_str().unwrap_or_default().to_owned(),
        ]
    });
    table(
        &mut out,
        "listeners",
        &["NAME", "ADDRESS", "STATE", "ERROR"],
        listeners,
    );

    let clusters = rows(&s.clusters, |c| {
        let target = match c["type"].as_str() {
            Some("binding_upstream") => text(&c["endpoint"]),
            _ => c["endpoints"]
                .as_array()
                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        };
        vec![
            text(&c["name"]),
            text(&c["type"]),
            target,
            transport(&c["transport"]),
            breaker(&c["circuit_breaker"]),
        ]
    });
    table(
        &mut out,
        "clusters",
        &["NAME", "TYPE", "UPSTREAM", "TRANSPORT", "BREAKER"],
        clusters,
    );

    let endpoints = rows(&s.endpoints, |e| {
        vec![text(&e["endpoint"]), text(&e["address"]), text(&e["state"])]
    });
    if !endpoints.is_empty() {
        table(
            &mut out,
            "discovered endpoints",
            &["ENDPOINT", "ADDRESS", "STATE"],
            endpoints,
        );
    }
    out
}

/// Discovery in one line: its state, the last success, the last error (`None` without it).
fn discovery(d: &Value) -> Option<String> {
    if !d.is_object() {
        return None;
    }
    let mut line = format!("discovery: {}", text(&d["state"]));
    if let Some(n) = d["cached_endpoints"].as_u64() {
        line.push_str(&format!(", {n} endpoints loaded from the last run"));
    }
    match d["last_success"].as_str() {
        Some(t) => line.push_str(&format!(", last poll succeeded at {t}")),
        None => line.push_str(", no poll has succeeded yet"),
    }
    if let Some(e) = d["last_error"].as_str() {
        line.push_str(&format!("; last error: {e}"));
    }
    line.push('\n');
    Some(line)
}

/// A cluster's circuit breaker in a few words: its state and connections (`-`: none).
fn breaker(b: &Value) -> String {
    if !b.is_object() {
        return "-".into();
    }
    let mut s = format!(
        "{}, {}/{} connections",
        text(&b["state"]),
        b["open_connections"],
        b["max_connections"]
    );
    if b["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
        s.push_str(&format!(
            ", {} failures in a row",
            b["consecutive_failures"]
        ));
    }
    s
}

/// A cluster's transport in a few words: kind, its main counters, and TLS handshakes.
fn transport(t: &Value) -> String {
    let mut s = transport_kind(t);
    let tls = &t["tls_handshakes"];
    if tls.is_object() {
        s.push_str(&format!(
            "; TLS handshakes: {} full, {} resumed",
            tls["full"], tls["resumed"]
        ));
    }
    s
}

fn transport_kind(t: &Value) -> String {
    let stats = &t["stats"];
    match t["kind"].as_str() {
        Some("pool") => format!(
            "pool: {} idle, {} hits, {} misses",
            stats["idle"], stats["hits"], stats["misses"]
        ),
        Some("multiplex") => {
            let mut s = format!(
                "multiplex: {} connections, {} streams open, {} opened",
                stats["connections"], stats["active_streams"], stats["streams_opened"]
            );
            if stats["h2_refused"] == true {
                s.push_str(" (no HTTP/2 from the ingress)");
            }
            s
        }
        Some(kind) => kind.to_owned(),
        None => String::new(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| items.iter().map(row).collect())
        .unwrap_or_default()
}

/// A titled table with columns padded to their widest cell.
fn table(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    out.push_str(&format!("\n{title} ({}):\n", rows.len()));
    if rows.is_empty() {
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
}
