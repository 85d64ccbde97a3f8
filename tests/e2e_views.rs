//! Views and reloads tell the truth. A removed listener is gone from `/listeners` (and `bindgate status`) once it has closed; it
//! used to stay `draining` there until the next reload.

mod common;

use common::{Proc, admin_json, write};

fn config(listeners: &str) -> String {
    format!(
        "version: 1
admin: {{ address: 127.0.0.1:0 }}
static_resources:
  listeners:
    - {{ name: kept, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}
{listeners}
  clusters:
    - {{ name: c, type: static, endpoints: [ 127.0.0.1:9 ] }}
"
    )
}

#[tokio::test]
async fn a_removed_listener_leaves_the_views_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let removed =
        "    - { name: gone, address: 127.0.0.1:0, drain_timeout: 1s, routes: [ { cluster: c } ] }";
    let path = write(dir.path(), "bindgate.yaml", &config(removed));
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();

    let tmp = write(dir.path(), ".next.yaml", &config(""));
    std::fs::rename(tmp, &path).unwrap();
    let names = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_owned(),
                    l["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + common::GUARD;
    loop {
        let now = names(&admin_json(admin, "/listeners").await);
        if now == [("kept".to_owned(), "active".to_owned())] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_file_that_is_not_utf8_is_refused_visibly_and_the_config_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bindgate.yaml", &config(""));
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let mut bad = config("").into_bytes();
    bad.extend_from_slice(b"# caf\xe9\n");
    let tmp = dir.path().join(".next.yaml");
    std::fs::write(&tmp, &bad).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = tokio::time::Instant::now() + common::GUARD;
    let dump = loop {
        let dump = admin_json(admin, "/config_dump").await;
        if dump["control"]["rejected_updates"] == 1 {
            break dump;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not refused: {dump}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let why = dump["control"]["last_rejection"].as_str().unwrap();
    assert!(why.contains("not valid UTF-8"), "{why}");
    assert_eq!(dump["version_info"], "1", "the running config stays");
}
