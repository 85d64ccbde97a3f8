//! Hot reload of the config file: atomic swap, unchanged listeners keep their sockets and
//! connections, an invalid file is refused and the running config stays.

mod common;

use common::{Proc, admin_json, binding_config, start_sandbox, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Saves like editors and config management do: write a temp file, rename it over the config.
/// (An in-place write can be seen half-written; that file is rejected and the next one applied.)
fn save(dir: &std::path::Path, path: &str, text: &str) {
    let tmp = write(dir, ".bindgate.yaml.tmp", text);
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn reload_under_load_keeps_unchanged_listeners_and_refuses_bad_files() {
    let sb = start_sandbox("").await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = binding_config(&sb.ingress_yaml(), &[("echo", "tcp://echo.e2e:7000")], "");
    let path = write(dir.path(), "bindgate.yaml", &v1);
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let echo = gw.listener("echo");

    // Stream through `echo` for the whole test.
    let mut stream = common::EchoStream::open(echo, 32 * 1024).await;
    stream.send(8).await;

    // v2 adds a listener; written with a rename, as editors and config management do.
    let v2 = binding_config(
        &sb.ingress_yaml(),
        &[("echo", "tcp://echo.e2e:7000"), ("web", "http://web.e2e")],
        "",
    );
    save(dir.path(), &path, &v2);
    common::wait_listener(admin, "web", "active").await;
    let listeners = admin_json(admin, "/listeners").await;
    let bound_echo = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "echo")
        .unwrap()["bound_address"]
        .clone();
    assert_eq!(
        bound_echo.as_str().unwrap(),
        echo.to_string(),
        "echo kept its socket (port 0 was not re-bound)"
    );
    stream.send(8).await;

    // An invalid file is refused; everything keeps serving.
    save(
        dir.path(),
        &path,
        &v2.replace("cluster: web", "cluster: nowhere"),
    );
    let dump = common::wait_control(admin, "rejected_updates", 1).await;
    stream.send(8).await;
    stream.finish().await;
    assert_eq!(dump["control"]["rejected_updates"], 1);
    assert!(
        dump["control"]["last_rejection"]
            .as_str()
            .unwrap()
            .contains("no cluster named `nowhere`")
    );
    assert_eq!(dump["version_info"], "2", "v2 is in force");
    let web = admin_json(admin, "/listeners").await;
    let web = web
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "web")
        .unwrap()["bound_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = TcpStream::connect(&web).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.e2e\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("hello from the bindgate sandbox"), "{reply}");

    // SIGHUP re-reads the (still invalid) file: rejected again, nothing changes.
    let pid = gw.child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    let dump = common::wait_control(admin, "rejected_updates", 2).await;
    assert_eq!(dump["control"]["rejected_updates"], 2);
    assert_eq!(dump["version_info"], "2", "nothing changed");

    // Removing a listener drains it; a valid file applies again.
    save(dir.path(), &path, &v1);
    common::wait_listener(admin, "web", "draining").await;
    assert!(TcpStream::connect(&web).await.is_err());
    assert_eq!(admin_json(admin, "/config_dump").await["version_info"], "3");
}

#[tokio::test]
async fn identical_rewrite_does_not_swap() {
    let sb = start_sandbox("").await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = binding_config(&sb.ingress_yaml(), &[("echo", "tcp://echo.e2e:7000")], "");
    let path = write(dir.path(), "bindgate.yaml", &v1);
    let mut gw = Proc::start(&["run", "-c", &path], &[]).await;
    // Same content with a comment: a real change of text, the same configuration.
    save(dir.path(), &path, &format!("# touched\n{v1}"));
    gw.wait_for_log("identical inputs; not swapping").await;
    assert_eq!(
        admin_json(gw.admin(), "/config_dump").await["version_info"],
        "1"
    );
}

/// A config mounted from a Kubernetes ConfigMap: the kubelet never writes `config.yaml`, it
/// re-points the `..data` symlink. A good update applies (a listener added, the other keeping
/// its socket and its open stream); a bad one is refused with its line, and the config in force
/// keeps serving.
#[tokio::test]
async fn a_configmap_symlink_swap_applies_and_a_bad_one_is_refused() {
    let echo = common::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |names: &[&str], extra: &str| {
        let mut listeners = String::new();
        for n in names {
            listeners.push_str(&format!(
                "    - {{ name: {n}, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}\n"
            ));
        }
        format!(
            "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n    - {{ name: c, type: static, endpoints: [ \"{echo}\" ] }}\n{extra}"
        )
    };
    common::kubelet_publish(dir.path(), 1, &[("config.yaml", &config(&["a"], ""))]);
    let path = dir.path().join("config.yaml");
    let gw = Proc::start(&["run", "-c", path.to_str().unwrap()], &[]).await;
    let admin = gw.admin();
    let a = gw.listener("a");
    let mut stream = common::EchoStream::open(a, 1024).await;
    stream.send(4).await;
    stream.echoed_all().await;

    common::kubelet_publish(dir.path(), 2, &[("config.yaml", &config(&["a", "b"], ""))]);
    let b = common::wait_listener(admin, "b", "active").await.unwrap();
    assert_eq!(common::wait_listener(admin, "a", "active").await, Some(a));
    let mut c = TcpStream::connect(b).await.unwrap();
    c.write_all(b"via b").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(common::read_all(&mut c).await, b"via b");

    common::kubelet_publish(
        dir.path(),
        3,
        &[("config.yaml", &config(&["a"], "unknown_top_level: 1\n"))],
    );
    let dump = common::wait_control(admin, "rejected_updates", 1).await;
    let why = dump["control"]["last_rejection"].as_str().unwrap();
    assert!(why.contains("unknown_top_level"), "{why}");
    assert!(why.contains("line 8"), "{why}");
    assert_eq!(dump["version_info"], "2", "the config in force stays");
    assert_eq!(common::wait_listener(admin, "b", "active").await, Some(b));
    stream.send(4).await;
    stream.finish().await;
}

/// A config read through a symlinked directory, as git-sync keeps a checkout: `current` is
/// re-pointed at each new revision, beside it, so nothing happens in the directory the config
/// was read from. The new revision applies all the same.
#[tokio::test]
async fn a_swap_of_a_symlinked_checkout_applies() {
    use std::os::unix::fs::symlink;
    let echo = common::echo_server().await;
    let root = tempfile::tempdir().unwrap();
    let revision = |n: u32, names: &[&str]| {
        let mut listeners = String::new();
        for l in names {
            listeners.push_str(&format!(
                "    - {{ name: {l}, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}\n"
            ));
        }
        let dir = root.path().join(format!("rev-{n}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("bindgate.yaml"),
            format!(
                "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n    - {{ name: c, type: static, endpoints: [ \"{echo}\" ] }}\n"
            ),
        )
        .unwrap();
        // git-sync's swap: a new link renamed over the old one.
        let tmp = root.path().join("current.tmp");
        symlink(format!("rev-{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, root.path().join("current")).unwrap();
    };
    revision(1, &["a"]);
    let path = root.path().join("current").join("bindgate.yaml");
    let gw = Proc::start(&["run", "-c", path.to_str().unwrap()], &[]).await;
    let admin = gw.admin();
    let a = gw.listener("a");

    revision(2, &["a", "b"]);
    let b = common::wait_listener(admin, "b", "active").await;
    assert!(b.is_some(), "the new revision was not applied");
    assert_eq!(common::wait_listener(admin, "a", "active").await, Some(a));
}

/// The config file replaced by something huge (here a 1 GiB sparse file renamed over it) is
/// refused by its size without being read, and the running config stays; so is a start from it.
#[tokio::test]
async fn a_config_replaced_by_a_huge_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let echo = common::echo_server().await;
    let cfg = format!(
        "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\nstatic_resources:\n  listeners:\n    - {{ name: l, address: 127.0.0.1:0, routes: [ {{ cluster: c }} ] }}\n  clusters:\n    - {{ name: c, type: static, endpoints: [\"{echo}\"] }}\n"
    );
    let path = write(dir.path(), "bindgate.yaml", &cfg);
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let l = gw.listener("l");
    let big = dir.path().join(".big.tmp");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    std::fs::rename(&big, &path).unwrap();
    let why = common::wait_admin(admin, "/config_dump", "the huge file refused", |v| {
        v["control"]["last_rejection"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        why.contains("cannot read the file: the file is larger than 64 MiB"),
        "{why}"
    );
    assert_eq!(common::echo_once(l, b"still").await, b"still");
    let (code, _, err) = common::run_to_end(&["run", "-c", &path], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the file is larger than 64 MiB"), "{err}");
}

/// Settings read once at start-up (here `admin.address`) are not silently taken as applied: a
/// reload applies the rest of the file, keeps the admin server where it is, shows the address in
/// force in `/config_dump`, and names the setting in `control.restart_pending`, in
/// `bindgate_config_restart_pending` and in `bindgate status`. The file's own value is still
/// checked, so a file that would not start is refused; going back clears the mark.
#[tokio::test]
async fn a_start_up_setting_changed_by_a_reload_is_kept_and_named_as_pending() {
    let echo = common::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |admin: &str, listeners: &[&str]| {
        let mut text = format!(
            "version: 1\nadmin: {{ address: \"{admin}\" }}\nstatic_resources:\n  listeners:\n"
        );
        for name in listeners {
            text.push_str(&format!(
                "    - {{ name: {name}, address: 127.0.0.1:0, routes: [ {{ cluster: echo }} ] }}\n"
            ));
        }
        text + &format!(
            "  clusters:\n    - {{ name: echo, type: static, endpoints: [ \"{echo}\" ] }}\n"
        )
    };
    let path = write(dir.path(), "bindgate.yaml", &config("127.0.0.1:0", &["a"]));
    let gw = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = gw.admin();
    let pending = |want: &'static [&'static str]| {
        common::wait_admin(admin, "/config_dump", "restart_pending", move |v| {
            (v["control"]["restart_pending"] == serde_json::json!(want)).then(|| v.clone())
        })
    };
    let dump = pending(&[]).await;
    assert_eq!(dump["config"]["admin"]["address"], "127.0.0.1:0");
    let scrape = common::scrape(admin).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_config_restart_pending", &[]),
        0.0
    );

    // A new admin address and a new listener: the listener applies, the address waits.
    save(dir.path(), &path, &config("127.0.0.1:1", &["a", "b"]));
    let dump = pending(&["admin.address"]).await;
    common::wait_listener(admin, "b", "active").await;
    assert_eq!(
        dump["config"]["admin"]["address"], "127.0.0.1:0",
        "the dump shows the address in force, not the file's: {dump}"
    );
    assert_eq!(dump["control"]["rejected_updates"], 0);
    let scrape = common::scrape(admin).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_config_restart_pending", &[]),
        1.0
    );
    let (code, out, err) = common::run_to_end(&["status", "--admin", &admin.to_string()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("restart pending: the config file changes `admin.address`"),
        "{out}"
    );

    // The file's own value must be one the next start accepts.
    save(dir.path(), &path, &config("0.0.0.0:9901", &["a", "b", "c"]));
    let dump = common::wait_control(admin, "rejected_updates", 1).await;
    let why = dump["control"]["last_rejection"].as_str().unwrap();
    assert!(
        why.contains("admin.address") && why.contains("loopback"),
        "{why}"
    );
    assert_eq!(
        dump["control"]["restart_pending"],
        serde_json::json!(["admin.address"])
    );
    assert!(
        !admin_json(admin, "/listeners")
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "c"),
        "nothing of a refused file applies"
    );

    // Back to the address in force: nothing waits any more, and the listeners stay.
    save(dir.path(), &path, &config("127.0.0.1:0", &["a", "b"]));
    pending(&[]).await;
    let scrape = common::scrape(admin).await;
    assert_eq!(
        common::metric(&scrape, "bindgate_config_restart_pending", &[]),
        0.0
    );
    common::wait_listener(admin, "b", "active").await;
}
