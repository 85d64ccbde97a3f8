//! Fleet hygiene end to end: members with their own identity (`registration.fleet`) heartbeat
//! in their operator's metadata, reap members whose heartbeat stopped, and delete their own
//! operator on a clean stop with `deregister_on_shutdown`; operators outside the fleet are never
//! touched. Real binaries against the sandbox API.

mod common;

use std::path::Path;

use common::{Proc, SANDBOX_API, SandboxProc, port_range, start_sandbox_api, write};

/// A member's config: discovery through the sandbox, its own `state_dir`, and `registration`
/// lines (indented four spaces).
fn member(sb: &SandboxProc, dir: &Path, name: &str, registration: &str) -> String {
    let cfg = sb
        .dynamic_config(&dir.join(name), &port_range(5), "k-e2e", "")
        .replacen(
            "ngrok:\n",
            &format!("ngrok:\n  registration:\n{registration}"),
            1,
        );
    write(dir, &format!("{name}.yaml"), &cfg)
}

async fn api(
    sb: &SandboxProc,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = sb
        .client()
        .request(method, format!("{}/{path}", sb.api_url()))
        .bearer_auth("k-e2e")
        .header("Ngrok-Version", "2");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Every operator's id, sorted.
async fn operator_ids(sb: &SandboxProc) -> Vec<String> {
    let (code, body) = api(sb, reqwest::Method::GET, "kubernetes_operators", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["next_page_uri"].is_null(), "one page: {body}");
    let mut ids: Vec<String> = body["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// An operator created straight through the API, not by bindgate, with `metadata`.
async fn outsider(sb: &SandboxProc, metadata: &str) -> String {
    let (code, body) = api(
        sb,
        reqwest::Method::POST,
        "kubernetes_operators",
        Some(serde_json::json!({
            "description": "someone else's",
            "metadata": metadata,
            "enabled_features": [],
            "region": "global",
            "deployment": {"name": "bindgate", "namespace": "default", "version": "1", "cluster_name": ""},
        })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn saved_operator(state: &Path) -> String {
    let text = std::fs::read_to_string(state.join("operator.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["operator_id"].as_str().unwrap().to_owned()
}

/// Fleet `gw`, beating every 500 ms and reaping members silent for 2 s.
const FAST_FLEET: &str = "    fleet: gw\n    heartbeat_interval: 500ms\n    reap_after: 2s\n";

/// Ancient heartbeats: a reaper that looked outside its fleet would delete these at once.
const OTHER_FLEET: &str =
    r#"{"bindgate":{"node_id":"x","fleet":"other","heartbeat":"2001-01-01T00:00:00Z"}}"#;
const NO_FLEET: &str = r#"{"bindgate":{"node_id":"y","heartbeat":"2001-01-01T00:00:00Z"}}"#;

#[tokio::test]
async fn ten_start_stop_cycles_with_deregister_on_shutdown_leave_no_operator() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let other = outsider(&sb, OTHER_FLEET).await;
    let config = member(
        &sb,
        dir.path(),
        "gw",
        "    fleet: gw\n    deregister_on_shutdown: true\n    heartbeat_interval: 500ms\n    reap_after: 2s\n",
    );
    for cycle in 0..10 {
        let p = Proc::start(&["run", "-c", &config], &[]).await;
        let ours = saved_operator(&dir.path().join("gw"));
        let mut want = vec![other.clone(), ours.clone()];
        want.sort();
        assert_eq!(operator_ids(&sb).await, want, "cycle {cycle}: registered");
        let (status, log) = p.terminate().await;
        assert!(status.success(), "cycle {cycle}: {log}");
        assert_eq!(
            operator_ids(&sb).await,
            std::slice::from_ref(&other),
            "cycle {cycle}: {log}"
        );
        assert!(
            !dir.path().join("gw/operator.json").exists(),
            "the registration's files go with it"
        );
    }
    let stats = sb.stats().await;
    assert_eq!(stats["registrations"], 11, "{stats}");
}

#[tokio::test]
async fn a_killed_member_is_reaped_by_a_peer_and_nothing_else_is_touched() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let other = outsider(&sb, OTHER_FLEET).await;
    let plain = outsider(&sb, NO_FLEET).await;

    let a = member(&sb, dir.path(), "a", FAST_FLEET);
    let mut ghost = Proc::start(&["run", "-c", &a], &[]).await;
    let ghost_id = saved_operator(&dir.path().join("a"));
    ghost.child.kill().await.unwrap(); // SIGKILL: no deregistration, no last heartbeat
    assert_eq!(operator_ids(&sb).await.len(), 3);

    let b = member(&sb, dir.path(), "b", FAST_FLEET);
    let peer = Proc::start(&["run", "-c", &b], &[]).await;
    let peer_id = saved_operator(&dir.path().join("b"));
    let path = format!("kubernetes_operators/{ghost_id}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, _) = api(&sb, reqwest::Method::GET, &path, None).await;
        if code == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ghost was never reaped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The peer's metadata names its fleet and carries a heartbeat that moves on.
    let heartbeat = |op: &serde_json::Value| -> (String, String) {
        let meta: serde_json::Value =
            serde_json::from_str(op["metadata"].as_str().unwrap()).unwrap();
        (
            meta["bindgate"]["fleet"].as_str().unwrap().to_owned(),
            meta["bindgate"]["heartbeat"].as_str().unwrap().to_owned(),
        )
    };
    let peer_path = format!("kubernetes_operators/{peer_id}");
    let (_, op) = api(&sb, reqwest::Method::GET, &peer_path, None).await;
    let (fleet, first_beat) = heartbeat(&op);
    assert_eq!(fleet, "gw");
    loop {
        let (_, op) = api(&sb, reqwest::Method::GET, &peer_path, None).await;
        if heartbeat(&op).1 != first_beat {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never moved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut want = vec![other, plain, peer_id];
    want.sort();
    assert_eq!(operator_ids(&sb).await, want, "only the ghost went");
    let (status, log) = peer.terminate().await;
    assert!(status.success(), "{log}");
    assert_eq!(
        operator_ids(&sb).await,
        want,
        "no deregistration without the setting"
    );
}

/// A member whose clock is wrong (its heartbeats say 2001) is not reaped while it beats: the
/// reaper measures silence in the API's clock (`updated_at`), not in the heartbeat each member
/// writes with its own clock. Once it stops, it is reaped. Before the fix it was deleted at the
/// reaper's first round, certificate and all, though it was alive.
#[tokio::test]
async fn a_member_whose_clock_is_wrong_is_reaped_only_once_it_stops() {
    const SKEWED: &str =
        r#"{"bindgate":{"node_id":"s","fleet":"gw","heartbeat":"2001-01-01T00:00:00Z"}}"#;
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let skewed = outsider(&sb, SKEWED).await;
    let skewed_path = format!("kubernetes_operators/{skewed}");
    let beat = |path: String| {
        let sb = &sb;
        async move {
            api(
                sb,
                reqwest::Method::PATCH,
                &path,
                Some(serde_json::json!({ "metadata": SKEWED })),
            )
            .await
            .0
        }
    };
    // `reap_after` 5 s against a beat every 200 ms: a test starved for seconds still beats
    // in time.
    let b = member(
        &sb,
        dir.path(),
        "b",
        "    fleet: gw\n    heartbeat_interval: 500ms\n    reap_after: 5s\n",
    );
    let peer = Proc::start(&["run", "-c", &b], &[]).await;
    let peer_path = format!(
        "kubernetes_operators/{}",
        saved_operator(&dir.path().join("b"))
    );
    let peer_beat = || async {
        let (_, op) = api(&sb, reqwest::Method::GET, &peer_path, None).await;
        op["updated_at"].as_str().unwrap_or_default().to_owned()
    };
    // The skewed member beats every 200 ms while the peer goes through rounds of heartbeat and
    // reaping that span more than twice `reap_after`.
    let mut rounds = 0;
    let mut last = peer_beat().await;
    let deadline = tokio::time::Instant::now() + common::GUARD;
    while rounds < 5 {
        assert_eq!(beat(skewed_path.clone()).await, 200, "reaped while beating");
        let now = peer_beat().await;
        if now != last {
            rounds += 1;
            last = now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peer stopped beating"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // It stops: the peer reaps it.
    loop {
        let (code, _) = api(&sb, reqwest::Method::GET, &skewed_path, None).await;
        if code == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline + common::GUARD,
            "never reaped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, log) = peer.terminate().await;
    assert!(status.success(), "{log}");
}

#[test]
fn fleet_settings_contradicting_an_identity_dir_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
version: 1
ngrok:
  api_key: k
  identity_dir: /etc/bindgate/identity
  registration:
    fleet: gw
    deregister_on_shutdown: true
ingresses:
  - name: ngrok
";
    let path = write(dir.path(), "both.yaml", text);
    let (code, out, err) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("line 6") && out.contains("`ngrok.registration.fleet`"),
        "{out}"
    );
    assert!(
        out.contains("line 7") && out.contains("`ngrok.registration.deregister_on_shutdown`"),
        "{out}"
    );
    // Without the fleet settings the same file validates offline (nothing is read from the
    // identity directory).
    let path = write(
        dir.path(),
        "reader.yaml",
        &text.replace(
            "    fleet: gw\n    deregister_on_shutdown: true\n",
            "    description: gw\n",
        ),
    );
    let (code, out, err) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");

    let path = write(
        dir.path(),
        "fast.yaml",
        "version: 1\nngrok:\n  api_key: k\n  registration:\n    fleet: gw\n    heartbeat_interval: 1m\n    reap_after: 90s\n",
    );
    let (code, out, _) = common::run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("line 7") && out.contains("more than twice `heartbeat_interval`"),
        "{out}"
    );
}
