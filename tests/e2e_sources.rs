//! Config sources end to end: listeners and clusters from a REST document the sandbox serves
//! and from a ConfigMap-style directory, each source ACKed or NACKed on its own while the rest
//! keeps serving.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use common::{
    EchoStream, Proc, SANDBOX_API, SandboxProc, admin_json, echo_once, echo_server,
    kubelet_publish, metric, scrape, start_sandbox_api, wait_admin, write,
};
use reqwest::Method;

/// `config_sources[i]` of `/config_dump` once `check` holds for it.
async fn wait_source(
    admin: SocketAddr,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_admin(admin, "/config_dump", what, |v| {
        let s = v["config_sources"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?;
        check(s).then(|| v.clone())
    })
    .await
}

/// The bound address of every active listener in a `/listeners` answer, by name, when there
/// are `n` listeners and all are active.
fn all_active(v: &serde_json::Value, n: usize) -> Option<BTreeMap<String, String>> {
    let rows = v.as_array()?;
    let active: BTreeMap<String, String> = rows
        .iter()
        .filter(|r| r["state"] == "active")
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["bound_address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (active.len() == n && rows.len() == n).then_some(active)
}

/// Every listener's bound address, by name, once `n` are active.
async fn bound(admin: SocketAddr, n: usize) -> BTreeMap<String, String> {
    wait_admin(admin, "/listeners", &format!("{n} listeners active"), |v| {
        all_active(v, n)
    })
    .await
}

/// A REST document: `listeners` tcp listeners `l0000`.. on 127.0.0.1 port 0, each to cluster
/// `echo` at `echo`; `edit` changes the JSON value before it is written.
fn document(
    version: &str,
    listeners: usize,
    echo: SocketAddr,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let ls: Vec<serde_json::Value> = (0..listeners)
        .map(|i| {
            serde_json::json!({
                "name": format!("l{i:04}"),
                "address": "127.0.0.1:0",
                "routes": [{"cluster": "echo"}],
            })
        })
        .collect();
    let mut doc = serde_json::json!({
        "version_info": version,
        "resources": {
            "listeners": ls,
            "clusters": [{"name": "echo", "type": "static", "endpoints": [echo.to_string()]}],
        },
    });
    edit(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap()
}

async fn put_doc(sb: &SandboxProc, name: &str, body: String) {
    put_doc_as(sb, name, body, "application/json").await;
}

async fn put_doc_as(sb: &SandboxProc, name: &str, body: String, content_type: &str) {
    let resp = sb
        .client()
        .put(format!("{}/sandbox/config_docs/{name}", sb.api_url()))
        .bearer_auth("k-e2e")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 204, "{}", resp.text().await.unwrap());
}

async fn doc_requests(sb: &SandboxProc, name: &str) -> Vec<serde_json::Value> {
    let (code, body) = sb
        .control(Method::GET, &format!("config_docs/{name}/requests"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A config with an admin server and the REST source `central` reading document `fleet` from
/// the sandbox, authenticated by a header expanded from `CONFIG_TOKEN`.
fn rest_config(sb: &SandboxProc) -> String {
    format!(
        "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
dynamic_resources:
  config_sources:
    - name: central
      rest:
        url: {api}/sandbox/config_docs/fleet
        poll_interval: 200ms
        headers: {{ authorization: \"Bearer ${{CONFIG_TOKEN}}\" }}
        ca: {ca}
        report_status: true
",
        api = sb.api_url(),
        ca = sb.ca,
    )
}

/// 1,000 listeners from a REST source; one changed alone; a 304 rebuilds nothing; a malformed
/// document and a broken reference are NACKed with the old version serving; a good version
/// recovers.
#[tokio::test]
async fn a_rest_source_serves_a_thousand_listeners_and_acks_or_nacks_each_version() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let echo = echo_server().await;
    put_doc(&sb, "fleet", document("1", 1000, echo, |_| {})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bindgate.yaml", &rest_config(&sb));
    let gw = Proc::start(&["run", "-c", &path], &[("CONFIG_TOKEN", "k-e2e")]).await;
    let admin = gw.admin();

    let before = bound(admin, 1000).await;
    let dump = wait_source(admin, "central", "central ACKED v1", |s| {
        s["state"] == "ACKED" && s["version_info"] == "1"
    })
    .await;
    let status = &dump["config_sources"][0];
    assert_eq!(status["resources"]["listeners"], 1000);
    assert_eq!(status["resources"]["clusters"], 1);
    assert_eq!(status["type"], "rest");
    // The header is a secret: redacted in the dump.
    let headers = &dump["config"]["dynamic_resources"]["config_sources"][0]["rest"]["headers"];
    assert_eq!(headers["authorization"], "<redacted>");
    assert!(
        !dump.to_string().contains("k-e2e"),
        "a secret leaked: {dump}"
    );
    let r = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    assert_eq!(r.status(), 200);

    // A stream through l0001 lives across every later update.
    let mut stream = EchoStream::open(before["l0001"].parse().unwrap(), 16 * 1024).await;
    stream.send(4).await;
    stream.echoed_all().await;

    // v2 moves l0500 alone; the others keep their sockets.
    put_doc(
        &sb,
        "fleet",
        document("2", 1000, echo, |d| {
            d["resources"]["listeners"][500]["address"] = "127.0.0.2:0".into();
        }),
    )
    .await;
    wait_source(admin, "central", "central v2", |s| s["version_info"] == "2").await;
    let after = wait_admin(admin, "/listeners", "l0500 on 127.0.0.2", |v| {
        all_active(v, 1000).filter(|a| a["l0500"].starts_with("127.0.0.2:"))
    })
    .await;
    let moved: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(moved, ["l0500"], "only l0500 was re-bound");
    stream.send(4).await;
    stream.echoed_all().await;

    // Unchanged: 304s, and no rebuild.
    let version = admin_json(admin, "/config_dump").await["version_info"].clone();
    let applied = metric(&scrape(admin).await, "bindgate_config_applied_total", &[]);
    let seen = doc_requests(&sb, "fleet").await.len();
    let not_modified = wait_for_requests(&sb, seen, 3).await;
    for r in &not_modified {
        assert_eq!(r["status"], 304, "{r}");
        assert!(r["if_none_match"].is_string(), "{r}");
        // report_status: the version in force rides in the query.
        assert_eq!(r["query"], "version_info=2", "{r}");
    }
    let unchanged = metric(
        &scrape(admin).await,
        "bindgate_config_source_fetches_total",
        &[("source", "central"), ("result", "unchanged")],
    );
    assert!(unchanged >= 3.0, "{unchanged}");
    assert_eq!(
        admin_json(admin, "/config_dump").await["version_info"],
        version
    );
    assert_eq!(
        metric(&scrape(admin).await, "bindgate_config_applied_total", &[]),
        applied
    );

    // v3 does not parse: NACKed with its line; v2 serves on.
    let bad = document("3", 1000, echo, |d| {
        d["resources"]["listeners"][7]["adress"] = "127.0.0.1:0".into();
    });
    let bad_line = bad.lines().position(|l| l.contains("\"adress\"")).unwrap() + 1;
    put_doc(&sb, "fleet", bad).await;
    let dump = wait_source(admin, "central", "central NACKs v3", |s| {
        s["state"] == "NACKED" && s["rejected_version_info"] == "3"
    })
    .await;
    let s = &dump["config_sources"][0];
    assert_eq!(s["version_info"], "2", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("unknown field `adress`"), "{error}");
    assert!(error.contains(&format!("line {bad_line},")), "{error}");
    assert_eq!(
        echo_once(after["l0002"].parse().unwrap(), b"v2 serves").await,
        b"v2 serves"
    );
    // The next poll reports the refusal.
    let seen = doc_requests(&sb, "fleet").await.len();
    let next = wait_for_requests(&sb, seen, 1).await;
    let query = next[0]["query"].as_str().unwrap();
    assert!(
        query.starts_with("version_info=2&error_detail=") && query.contains("adress"),
        "{query}"
    );

    // v4 parses but routes to a cluster nobody defines: NACKed naming the field's line.
    let broken = document("4", 1000, echo, |d| {
        d["resources"]["listeners"][3]["routes"][0]["cluster"] = "nowhere".into();
    });
    let broken_line = broken.lines().position(|l| l.contains("nowhere")).unwrap() + 1;
    put_doc(&sb, "fleet", broken).await;
    let dump = wait_source(admin, "central", "central NACKs v4", |s| {
        s["rejected_version_info"] == "4"
    })
    .await;
    let error = dump["config_sources"][0]["error"].as_str().unwrap();
    assert!(error.contains("no cluster named `nowhere`"), "{error}");
    assert!(error.contains(&format!("line {broken_line},")), "{error}");
    assert_eq!(dump["config_sources"][0]["version_info"], "2");
    assert_eq!(
        metric(
            &scrape(admin).await,
            "bindgate_config_source_updates_total",
            &[("source", "central"), ("result", "rejected")]
        ),
        2.0
    );

    // v5 is good again (l0999 removed), served as YAML: ACKed, applied.
    let mut v5 = String::from("version_info: \"5\"\nresources:\n  listeners:\n");
    for i in 0..999 {
        let ip = if i == 500 { "127.0.0.2" } else { "127.0.0.1" };
        v5.push_str(&format!(
            "    - {{ name: l{i:04}, address: \"{ip}:0\", routes: [{{ cluster: echo }}] }}\n"
        ));
    }
    v5.push_str(&format!(
        "  clusters:\n    - {{ name: echo, type: static, endpoints: [\"{echo}\"] }}\n"
    ));
    put_doc_as(&sb, "fleet", v5, "application/yaml").await;
    let dump = wait_source(admin, "central", "central ACKs v5", |s| {
        s["state"] == "ACKED" && s["version_info"] == "5"
    })
    .await;
    assert!(dump["config_sources"][0].get("error").is_none());
    common::wait_listener_gone(admin, "l0999").await;
    stream.send(4).await;
    stream.echoed_all().await;
    assert_eq!(
        metric(
            &scrape(admin).await,
            "bindgate_config_source_updates_total",
            &[("source", "central"), ("result", "applied")]
        ),
        3.0
    );

    // The server goes away: fetches fail, v5 keeps serving, the status says why.
    let (code, body) = sb.control(Method::DELETE, "config_docs/fleet", None).await;
    assert_eq!(code, 204, "{body}");
    let dump = wait_source(admin, "central", "central fetch failing", |s| {
        s["fetch_error"].is_string()
    })
    .await;
    let s = &dump["config_sources"][0];
    assert_eq!(
        (&s["state"], &s["version_info"]),
        (&"ACKED".into(), &"5".into())
    );
    assert!(s["fetch_error"].as_str().unwrap().contains("404"), "{s}");
    stream.send(4).await;
    stream.finish().await;

    // `bindgate status` lists the source.
    let admin_arg = admin.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::run_to_end(&["status", "--admin", &admin_arg], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("central"))
        .unwrap_or_else(|| panic!("no source row: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["central", "rest", "ACKED", "5", "999/1"],
        "{out}"
    );
    assert!(row.contains("404"), "{row}");

    // The token never reached the log, even at debug level.
    let (_, logs) = gw.terminate().await;
    assert!(!logs.contains("k-e2e"), "the header's secret was logged");
}

/// Waits until the sandbox has answered `n` more requests for `fleet` after the first `seen`.
async fn wait_for_requests(sb: &SandboxProc, seen: usize, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let all = doc_requests(sb, "fleet").await;
        if all.len() >= seen + n {
            return all[seen..].to_vec();
        }
        assert!(tokio::time::Instant::now() < deadline, "no more polls");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One listener `name` to cluster `cluster`, as a source file.
fn listener_file(name: &str, cluster: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: {name}\n    address: 127.0.0.1:0\n    routes: [{{ cluster: {cluster} }}]\n{extra}"
    )
}

fn path_config(sources: &[(&str, &Path)], echo: SocketAddr) -> String {
    let mut cfg = format!(
        "\
version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  clusters:
    - {{ name: echo, type: static, endpoints: [\"{echo}\"] }}
dynamic_resources:
  config_sources:
"
    );
    for (name, dir) in sources {
        cfg.push_str(&format!(
            "    - {{ name: {name}, path: {} }}\n",
            dir.display()
        ));
    }
    cfg
}

/// A `path` source mounted from a ConfigMap: a good `..data` swap applies, a bad file is NACKed
/// naming file and line while the previous files keep serving.
#[tokio::test]
async fn a_path_source_follows_a_configmap_swap_and_nacks_a_bad_file() {
    let echo = echo_server().await;
    let top = tempfile::tempdir().unwrap();
    let conf_d = top.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    kubelet_publish(&conf_d, 1, &[("a.yaml", &listener_file("a", "echo", ""))]);
    let path = write(
        top.path(),
        "bindgate.yaml",
        &path_config(&[("gitops", &conf_d)], echo),
    );
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    // Read at start: in the first snapshot.
    let a = gw.listener("a");
    assert_eq!(echo_once(a, b"from a").await, b"from a");

    kubelet_publish(
        &conf_d,
        2,
        &[
            ("a.yaml", &listener_file("a", "echo", "")),
            ("b.yaml", &listener_file("b", "echo", "")),
        ],
    );
    let b = common::wait_listener(admin, "b", "active").await.unwrap();
    assert_eq!(echo_once(b, b"from b").await, b"from b");
    let dump = wait_source(admin, "gitops", "gitops ACKED with 2 listeners", |s| {
        s["state"] == "ACKED" && s["resources"]["listeners"] == 2
    })
    .await;
    let v2 = dump["config_sources"][0]["version_info"].clone();
    // The start-up read and this change: two updates, two snapshots (the directory's content at
    // start is not applied a second time when its watch begins).
    assert_eq!(dump["version_info"], "2");
    assert_eq!(
        metric(
            &scrape(admin).await,
            "bindgate_config_source_updates_total",
            &[("source", "gitops"), ("result", "applied")]
        ),
        2.0
    );

    // b.yaml's idle_timeout is not a duration: line 5 of b.yaml.
    kubelet_publish(
        &conf_d,
        3,
        &[
            ("a.yaml", &listener_file("a", "echo", "")),
            (
                "b.yaml",
                &listener_file("b", "echo", "    idle_timeout: soon\n"),
            ),
        ],
    );
    let dump = wait_source(admin, "gitops", "gitops NACKED", |s| s["state"] == "NACKED").await;
    let s = &dump["config_sources"][0];
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{}: line 5,", conf_d.join("b.yaml").display())),
        "{error}"
    );
    assert!(error.contains("`soon`"), "{error}");
    assert_eq!(s["version_info"], v2);
    assert_eq!(echo_once(b, b"still b").await, b"still b");
    assert_eq!(echo_once(a, b"still a").await, b"still a");

    // The file drops the source: its listeners go, the status list empties.
    let other = top.path().join("other");
    std::fs::create_dir(&other).unwrap();
    write(&other, "c.yaml", &listener_file("c", "echo", ""));
    std::fs::write(&path, path_config(&[], echo)).unwrap();
    common::wait_listener_gone(admin, "a").await;
    common::wait_listener_gone(admin, "b").await;
    let dump = admin_json(admin, "/config_dump").await;
    assert_eq!(dump["config_sources"], serde_json::json!([]));
    // ... and adds another: read and applied without a restart.
    std::fs::write(&path, path_config(&[("other", &other)], echo)).unwrap();
    let c = common::wait_listener(admin, "c", "active").await.unwrap();
    assert_eq!(echo_once(c, b"from c").await, b"from c");
    wait_source(admin, "other", "other ACKED", |s| s["state"] == "ACKED").await;
}

/// Two sources defining the same listener: the second is refused, naming both places; a source
/// update that removes a cluster another source's route uses is refused too.
#[tokio::test]
async fn names_and_references_across_sources_are_checked_with_both_origins() {
    let echo = echo_server().await;
    let top = tempfile::tempdir().unwrap();
    let (one, two, shared) = (
        top.path().join("one"),
        top.path().join("two"),
        top.path().join("shared"),
    );
    for d in [&one, &two, &shared] {
        std::fs::create_dir(d).unwrap();
    }
    write(&one, "dup.yaml", &listener_file("dup", "echo", ""));
    write(&two, "dup.yaml", &listener_file("dup", "echo", ""));
    // `shared` defines cluster `up`; `one` routes to it.
    write(
        &shared,
        "clusters.yaml",
        &format!("clusters:\n  - {{ name: up, type: static, endpoints: [\"{echo}\"] }}\n"),
    );
    write(&one, "uses.yaml", &listener_file("uses", "up", ""));
    let path = write(
        top.path(),
        "bindgate.yaml",
        &path_config(&[("shared", &shared), ("one", &one), ("two", &two)], echo),
    );
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let dump = wait_source(admin, "two", "two NACKED", |s| s["state"] == "NACKED").await;
    let sources = dump["config_sources"].as_array().unwrap();
    assert_eq!(sources[0]["state"], "ACKED");
    assert_eq!(sources[1]["state"], "ACKED");
    let error = sources[2]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{}: line 2, column 5: `listeners[0].name`: duplicate listener name `dup`: also defined by source `one` ({}, line 2)",
            two.join("dup.yaml").display(),
            one.join("dup.yaml").display()
        )),
        "{error}"
    );
    assert_eq!(
        echo_once(gw.listener("uses"), b"via up").await,
        b"via up",
        "a route to another source's cluster"
    );

    // `shared` drops `up`, which `one` still uses: refused, `up` stays.
    write(&shared, "clusters.yaml", "clusters: []\n");
    let dump = wait_source(admin, "shared", "shared NACKED", |s| s["state"] == "NACKED").await;
    let error = dump["config_sources"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{}: line 4, column 16: `listeners[0].routes[0].cluster`: no cluster named `up`",
            one.join("uses.yaml").display()
        )),
        "{error}"
    );
    assert_eq!(
        echo_once(gw.listener("uses"), b"up stays").await,
        b"up stays"
    );
}

/// `validate` reads a `path` source's files: a mistake in one is named with its file and line.
#[test]
fn validate_checks_the_files_of_path_sources() {
    let top = tempfile::tempdir().unwrap();
    let conf_d = top.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    write(&conf_d, "a.yaml", &listener_file("a", "echo", ""));
    let cfg = path_config(&[("gitops", &conf_d)], "127.0.0.1:9".parse().unwrap());
    let path = write(top.path(), "bindgate.yaml", &cfg);
    let (code, out, err) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    write(&conf_d, "b.yaml", &listener_file("b", "nowhere", ""));
    let (code, out, _) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: line 4, column 16: `listeners[0].routes[0].cluster`: no cluster named `nowhere`",
            conf_d.join("b.yaml").display()
        )),
        "{out}"
    );
}

/// A YAML document of `n` clusters sharing one anchored list of `m` addresses: a few KB of text
/// that aliases repeat into `n * m` strings once read.
fn alias_bomb(version: &str, n: usize, m: usize) -> String {
    let list: Vec<String> = (0..m).map(|i| format!("\"127.0.0.1:{}\"", i + 1)).collect();
    let mut doc = format!(
        "version_info: \"{version}\"\nresources:\n  clusters:\n    - {{ name: c0, type: static, endpoints: &e [{}] }}\n",
        list.join(", ")
    );
    for i in 1..n {
        doc.push_str(&format!(
            "    - {{ name: c{i}, type: static, endpoints: *e }}\n"
        ));
    }
    doc
}

/// A REST source answering YAML whose aliases would repeat 9 million addresses is NACKed before
/// anything is built from it (the line of the alias that crossed the bound on nodes named), and
/// the version in force keeps serving; `validate` refuses the same in a config file. The source's
/// URL carries a token in its query, which shows nowhere: not in `/config_dump` (config, status,
/// error), `bindgate status` or the log.
#[tokio::test]
async fn yaml_aliases_that_repeat_too_much_are_refused_and_the_version_in_force_stays() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let echo = echo_server().await;
    put_doc(&sb, "fleet", document("1", 1, echo, |_| {})).await;
    let dir = tempfile::tempdir().unwrap();
    let config = rest_config(&sb).replace(
        "/sandbox/config_docs/fleet\n",
        "/sandbox/config_docs/fleet?token=${URL_TOKEN}\n",
    );
    assert!(config.contains("?token="));
    let path = write(dir.path(), "bindgate.yaml", &config);
    const TOKEN: &str = "q-s3cret-e2e";
    let gw = Proc::start(
        &["run", "-c", &path],
        &[("CONFIG_TOKEN", "k-e2e"), ("URL_TOKEN", TOKEN)],
    )
    .await;
    let admin = gw.admin();
    wait_source(admin, "central", "central ACKED v1", |s| {
        s["state"] == "ACKED" && s["version_info"] == "1"
    })
    .await;
    let l = bound(admin, 1).await["l0000"].parse().unwrap();
    assert_eq!(echo_once(l, b"v1").await, b"v1");

    put_doc_as(
        &sb,
        "fleet",
        alias_bomb("2", 3_000, 3_000),
        "application/yaml",
    )
    .await;
    let dump = wait_source(admin, "central", "central NACKED", |s| {
        s["state"] == "NACKED"
    })
    .await;
    let s = &dump["config_sources"][0];
    let error = s["error"].as_str().unwrap();
    // 7 nodes of header, 6 a cluster and its 3,001 addresses, written or repeated: cluster i's
    // alias brings the count to 3,014 + 3,007 i, past 1,000,000 first for i = 332 (line 336).
    assert!(
        error.contains("line 336, column") && error.contains("YAML aliases"),
        "{error}"
    );
    assert_eq!(s["version_info"], "1");
    assert_eq!(echo_once(l, b"still v1").await, b"still v1");
    assert_eq!(
        s["location"],
        format!(
            "{}/sandbox/config_docs/fleet?token=<redacted>",
            sb.api_url()
        )
    );
    let requests = doc_requests(&sb, "fleet").await;
    assert!(
        requests.iter().any(|r| r["query"]
            .as_str()
            .is_some_and(|q| q.starts_with(&format!("token={TOKEN}")))),
        "the token is sent: {requests:?}"
    );
    assert!(!dump.to_string().contains(TOKEN), "{dump}");
    let admin_arg = admin.to_string();
    let (code, out, err) = common::run_to_end(&["status", "--admin", &admin_arg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("central") && !out.contains(TOKEN), "{out}");
    let (_, log) = gw.terminate().await;
    assert!(log.contains("rejected") && !log.contains(TOKEN), "{log}");

    let bomb = alias_bomb("x", 3_000, 3_000).replace(
        "version_info: \"x\"\nresources:\n",
        "version: 1\nstatic_resources:\n",
    );
    let file = write(dir.path(), "bomb.yaml", &bomb);
    let (code, out, _) = common::run_to_end(&["validate", "-c", &file], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 336, column") && out.contains("YAML aliases"),
        "{out}"
    );
}

/// A file over 64 MiB (a wrong `-c`, an image or a log dropped into a source's directory) is
/// refused by its size, naming the file, without being read into memory: here 1 GiB, sparse.
#[test]
fn a_file_over_64_mib_is_refused_without_being_read() {
    let top = tempfile::tempdir().unwrap();
    let conf_d = top.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let huge = |path: &Path| {
        let f = std::fs::File::create(path).unwrap();
        f.set_len((1 << 30) + 1).unwrap();
    };
    huge(&conf_d.join("big.yaml"));
    let cfg = path_config(&[("gitops", &conf_d)], "127.0.0.1:9".parse().unwrap());
    let path = write(top.path(), "bindgate.yaml", &cfg);
    let (code, out, _) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: cannot read the file: the file is larger than 64 MiB",
            conf_d.join("big.yaml").display()
        )),
        "{out}"
    );
    let big = top.path().join("disk.img");
    huge(&big);
    let (code, out, _) = common::run_to_end(&["validate", "-c", big.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot read the file: the file is larger than 64 MiB"),
        "{out}"
    );
}

/// Documents whose reading would cost far more than their size are refused at once, naming
/// where: 4 MiB of `[` (the YAML reader slows quadratically with nesting: minutes, gigabytes),
/// a list of 1.5 million numbers, and a JSON answer with a cluster of 1.2 million addresses.
/// The version in force keeps serving; `validate` refuses the first as a config file too.
#[tokio::test]
async fn documents_nested_too_deep_or_too_large_once_read_are_refused_at_once() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let echo = echo_server().await;
    put_doc(&sb, "fleet", document("1", 1, echo, |_| {})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bindgate.yaml", &rest_config(&sb));
    let gw = Proc::start(&["run", "-c", &path], &[("CONFIG_TOKEN", "k-e2e")]).await;
    let admin = gw.admin();
    wait_source(admin, "central", "central ACKED v1", |s| {
        s["state"] == "ACKED" && s["version_info"] == "1"
    })
    .await;
    let l = bound(admin, 1).await["l0000"].parse().unwrap();

    let deep = "[".repeat(4 << 20);
    put_doc_as(&sb, "fleet", deep.clone(), "application/yaml").await;
    let dump = wait_source(admin, "central", "central NACKED", |s| {
        s["state"] == "NACKED"
    })
    .await;
    let error = dump["config_sources"][0]["error"].as_str().unwrap();
    assert!(error.contains(": line 1, column "), "{error}");
    assert_eq!(dump["config_sources"][0]["version_info"], "1");

    let numbers = vec!["1"; 1_500_000].join(",");
    let wide = format!("version_info: '3'\nresources: {{ clusters: [] }}\nx: [{numbers}]\n");
    put_doc_as(&sb, "fleet", wide, "application/yaml").await;
    let dump = wait_source(admin, "central", "v3 NACKED", |s| {
        s["rejected_version_info"] == "(unknown)"
            && s["error"]
                .as_str()
                .is_some_and(|e| e.contains("line 3, column") && e.contains("1000000 nodes"))
    })
    .await;
    assert_eq!(dump["config_sources"][0]["version_info"], "1");

    // JSON, well formed: one cluster of 1.2 million addresses.
    let big = document("4", 1, echo, |d| {
        d["resources"]["clusters"][0]["endpoints"] = vec![echo.to_string(); 1_200_000].into();
    });
    let compact = serde_json::from_str::<serde_json::Value>(&big)
        .unwrap()
        .to_string();
    put_doc(&sb, "fleet", compact).await;
    let dump = wait_source(admin, "central", "v4 NACKED", |s| {
        s["rejected_version_info"] == "4"
    })
    .await;
    let error = dump["config_sources"][0]["error"].as_str().unwrap();
    assert!(error.contains("1000000 nodes"), "{error}");
    assert_eq!(dump["config_sources"][0]["version_info"], "1");
    assert_eq!(echo_once(l, b"still v1").await, b"still v1");

    let file = write(dir.path(), "deep.yaml", &deep);
    let (code, out, _) = common::run_to_end(&["validate", "-c", &file], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1, column "), "{out}");
}
