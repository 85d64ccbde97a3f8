//! Shared identity end to end: `bindgate identity issue` as the one writer, replicas reading
//! `ngrok.identity_dir` from a read-only, Kubernetes-Secret-shaped directory (files are symlinks
//! through a `..data` symlink that is re-pointed on update), and static `client_cert` /
//! `client_key` files following rotation the same way. Real binaries, the sandbox's API and
//! ingress, loopback only.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proc, SANDBOX_API, SandboxProc, port_range, start_sandbox_api, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO: &str = "tcp://echo.e2e:7000";
const IDENTITY_FILES: [&str; 4] = ["ingress_endpoint", "operator_id", "tls.crt", "tls.key"];

/// `bindgate identity issue -c CONFIG --out DIR`; asserts exit 0 and returns its JSON line.
fn issue(config: &str, out: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = common::run_to_end(
        &[
            "identity",
            "issue",
            "-c",
            config,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "identity issue: {stdout}{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "no key in logs: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Each file's bytes and modification time.
fn files_state(dir: &Path) -> Vec<(Vec<u8>, i64, i64)> {
    IDENTITY_FILES
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let meta = std::fs::metadata(&p).unwrap();
            (std::fs::read(&p).unwrap(), meta.mtime(), meta.mtime_nsec())
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A directory updated the way the kubelet updates a Secret volume: each version in a
/// `..<version>` directory, `..data` a symlink to the current one, re-pointed by renaming a new
/// symlink over it; the visible names are symlinks through `..data`. Between updates the
/// directory is read-only (0500).
struct SecretMount {
    dir: PathBuf,
}

impl SecretMount {
    fn new(dir: PathBuf) -> SecretMount {
        std::fs::create_dir(&dir).unwrap();
        SecretMount { dir }
    }

    /// Publishes `files` as version `version` in one atomic swap.
    fn publish(&self, version: &str, files: &[(&str, Vec<u8>)]) {
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let data = self.dir.join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        for (name, bytes) in files {
            std::fs::write(data.join(name), bytes).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    }

    /// The files of an identity directory written by `identity issue`.
    fn publish_dir(&self, version: &str, from: &Path) {
        let files: Vec<(&str, Vec<u8>)> = IDENTITY_FILES
            .iter()
            .map(|f| (*f, std::fs::read(from.join(f)).unwrap()))
            .collect();
        self.publish(version, &files);
    }
}

/// A reader: discovery through the sandbox with the shared identity in `mount`.
struct Reader {
    config: String,
}

impl Reader {
    fn new(sb: &SandboxProc, dir: &Path, n: usize, mount: &Path) -> Reader {
        let cfg = sb
            .dynamic_config(&dir.join(format!("state{n}")), &port_range(5), "k-e2e", "")
            .replacen(
                "ngrok:\n",
                &format!("ngrok:\n  identity_dir: {}\n", mount.display()),
                1,
            );
        Reader {
            config: write(dir, &format!("reader{n}.yaml"), &cfg),
        }
    }

    /// Starts it and waits until it serves the echo endpoint; returns the process and where.
    async fn start(&self) -> (Proc, SocketAddr) {
        let p = Proc::start(&["run", "-c", &self.config], &[]).await;
        let echo = common::wait_endpoint(p.admin(), ECHO).await;
        assert_eq!(common::echo_once(echo, b"reader").await, b"reader");
        (p, echo)
    }
}

/// The sandbox's operator count, registrations and operator writes (POST, PATCH, DELETE).
async fn api_counts(sb: &SandboxProc) -> (u64, u64, u64) {
    let s = sb.stats().await;
    (
        s["operators"].as_u64().unwrap(),
        s["registrations"].as_u64().unwrap(),
        s["operator_writes"].as_u64().unwrap(),
    )
}

fn unix_seconds(rfc3339: &str) -> f64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp() as f64
}

#[tokio::test]
async fn identity_issue_writes_once_then_is_a_no_op_and_adopts_into_an_empty_dir() {
    let sb = start_sandbox_api(SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("identity");
    let config = write(
        dir.path(),
        "writer.yaml",
        &format!(
            "version: 1\nngrok:\n  api_url: {}\n  api_key: k-e2e\n  api_ca: {}\n  registration:\n    description: shared gw\n",
            sb.api_url(),
            sb.ca
        ),
    );

    let first = issue(&config, &out);
    assert_eq!(
        (first["action"].as_str(), first["changed"].as_bool()),
        (Some("issued"), Some(true)),
        "{first}"
    );
    assert_eq!(mode(&out), 0o700);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names, IDENTITY_FILES,
        "exactly the identity, no temporary files"
    );
    for f in IDENTITY_FILES {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    let operator = first["operator_id"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(out.join("operator_id")).unwrap(),
        format!("{operator}\n")
    );
    assert_eq!(api_counts(&sb).await, (1, 1, 1), "one POST, nothing else");

    let before = files_state(&out);
    let second = issue(&config, &out);
    assert_eq!(
        (second["action"].as_str(), second["changed"].as_bool()),
        (Some("unchanged"), Some(false)),
        "{second}"
    );
    assert_eq!(second["operator_id"], first["operator_id"]);
    assert_eq!(files_state(&out), before, "bytes and mtimes untouched");
    assert_eq!(api_counts(&sb).await, (1, 1, 1), "no API write");

    // The output lost (a Job's fresh emptyDir): the deployment's operator is adopted with a new
    // key (one PATCH), not registered again.
    for f in IDENTITY_FILES {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let third = issue(&config, &out);
    assert_eq!(
        third["operator_id"].as_str(),
        Some(operator.as_str()),
        "{third}"
    );
    assert_eq!(third["action"], "issued");
    assert_ne!(files_state(&out)[2].0, before[2].0, "a new certificate");
    assert_eq!(
        api_counts(&sb).await,
        (1, 1, 2),
        "one PATCH, no registration"
    );

    // A shared identity takes no fleet settings (peers would reap it, a writer could delete it).
    let fleet = write(
        dir.path(),
        "fleet.yaml",
        &std::fs::read_to_string(&config).unwrap().replace(
            "    description: shared gw\n",
            "    description: shared gw\n    fleet: gw\n",
        ),
    );
    let (code, stdout, stderr) = common::run_to_end(
        &[
            "identity",
            "issue",
            "-c",
            &fleet,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("`ngrok.registration.fleet`"), "{stderr}");
    assert_eq!(
        api_counts(&sb).await,
        (1, 1, 2),
        "refused before any API call"
    );
}

#[tokio::test]
async fn readers_share_one_identity_follow_its_renewal_and_never_write() {
    // Renewal is due after half the lifetime; the first certificate expires during the test, so
    // a reader that did not take the renewed one would fail afterwards.
    let api = format!("{SANDBOX_API}  cert_lifetime: 24s\n");
    let sb = start_sandbox_api(&api, "").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("issued");
    let mount = SecretMount::new(dir.path().join("mount"));
    let readers: Vec<Reader> = (0..5)
        .map(|n| Reader::new(&sb, dir.path(), n, &mount.dir))
        .collect();
    // The writer runs with a reader's config: one file can serve both.
    let first = issue(&readers[0].config, &out);
    assert_eq!(first["action"], "issued", "{first}");
    mount.publish_dir("v1", &out);
    assert_eq!(mode(&mount.dir), 0o500);

    let mut procs = Vec::new();
    for r in &readers {
        procs.push(r.start().await);
    }
    assert_eq!(
        api_counts(&sb).await,
        (1, 1, 1),
        "5 readers, one registration"
    );

    // Held open across the rotation.
    let mut held = TcpStream::connect(procs[0].1).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    // A half-done rotation (a new key beside the old certificate) is refused; the old
    // identity stays in force.
    let stray = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let mut mismatched: Vec<(&str, Vec<u8>)> = IDENTITY_FILES
        .iter()
        .map(|f| (*f, std::fs::read(out.join(f)).unwrap()))
        .collect();
    mismatched[3].1 = stray.into_bytes();
    mount.publish("v2-mismatched", &mismatched);
    for (p, echo) in &procs {
        common::wait_for_metric(
            p.admin(),
            "bindgate_identity_refused_total",
            &[("source", "identity_dir")],
            1.0,
        )
        .await;
        assert_eq!(common::echo_once(*echo, b"kept").await, b"kept");
    }

    // The writer renews once it is due (until then each run is a no-op).
    let renewed = loop {
        let run = issue(&readers[0].config, &out);
        if run["action"] == "renewed" {
            break run;
        }
        assert_eq!(run["action"], "unchanged", "{run}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(renewed["operator_id"], first["operator_id"]);
    assert_eq!(api_counts(&sb).await, (1, 1, 2), "the writer's one PATCH");
    mount.publish_dir("v3", &out);
    let not_after = unix_seconds(renewed["not_after"].as_str().unwrap());
    for (p, _) in &procs {
        common::wait_for_metric(
            p.admin(),
            "bindgate_identity_rotations_total",
            &[("source", "identity_dir")],
            1.0,
        )
        .await;
        common::wait_for_metric(p.admin(), bindgate::telemetry::CERT_EXPIRY, &[], not_after).await;
    }
    held.write_all(b"across").await.unwrap();
    let mut got = [0u8; 6];
    held.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"across");

    // Past the first certificate's expiry only the renewed one opens connections.
    let first_expiry = unix_seconds(first["not_after"].as_str().unwrap());
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    if first_expiry + 1.0 > now {
        tokio::time::sleep(Duration::from_secs_f64(first_expiry + 1.0 - now)).await;
    }
    for (_, echo) in &procs {
        assert_eq!(common::echo_once(*echo, b"renewed").await, b"renewed");
    }
    held.write_all(b"after").await.unwrap();
    held.shutdown().await.unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"after");

    // Scale 5 -> 1, restart the one left 10 times, scale back to 5: still one operator, and no
    // reader wrote.
    let mut survivors = procs.split_off(1);
    for (p, _) in survivors.drain(..) {
        let (status, _) = p.terminate().await;
        assert!(status.success());
    }
    for _ in 0..10 {
        let (p, _) = procs.pop().unwrap();
        let (status, _) = p.terminate().await;
        assert!(status.success());
        procs.push(readers[0].start().await);
    }
    for r in &readers[1..] {
        procs.push(r.start().await);
    }
    assert_eq!(procs.len(), 5);
    assert_eq!(
        api_counts(&sb).await,
        (1, 1, 2),
        "readers made no API write"
    );
}

#[tokio::test]
async fn static_client_files_follow_rotation_and_refuse_a_mismatched_pair() {
    let sb = common::start_sandbox("").await;
    let dir = tempfile::tempdir().unwrap();
    // A second certificate for the same account.
    let second = dir.path().join("second");
    let (code, stdout, stderr) = common::run_to_end(
        &[
            "sandbox",
            "-c",
            sb.dir.path().join("sandbox.yaml").to_str().unwrap(),
            "client-cert",
            "--out",
            second.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let pair = |dir: &Path| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("tls.crt", std::fs::read(dir.join("tls.crt")).unwrap()),
            ("tls.key", std::fs::read(dir.join("tls.key")).unwrap()),
        ]
    };
    let first = Path::new(&sb.cert).parent().unwrap().to_owned();
    let mount = SecretMount::new(dir.path().join("mount"));
    mount.publish("v1", &pair(&first));

    let ingress = format!(
        "ingresses:\n  - name: sandbox\n    address: {}\n    server_name: localhost\n    ca: {}\n    client_cert: {}\n    client_key: {}\n",
        sb.ingress,
        sb.ca,
        mount.dir.join("tls.crt").display(),
        mount.dir.join("tls.key").display()
    );
    let cfg = common::binding_config(&ingress, &[("echo", ECHO)], "");
    let p = common::start_proxy(&cfg, dir.path()).await;
    let echo = p.listener("echo");
    assert_eq!(common::echo_once(echo, b"first").await, b"first");
    let mut held = TcpStream::connect(echo).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    let mut mixed = pair(&first);
    mixed[1] = pair(&second)[1].clone();
    mount.publish("v2", &mixed);
    common::wait_for_metric(
        p.admin(),
        "bindgate_identity_refused_total",
        &[("source", "client_cert")],
        1.0,
    )
    .await;
    assert_eq!(common::echo_once(echo, b"kept").await, b"kept");

    mount.publish("v3", &pair(&second));
    common::wait_for_metric(
        p.admin(),
        "bindgate_identity_rotations_total",
        &[("source", "client_cert")],
        1.0,
    )
    .await;
    assert_eq!(common::echo_once(echo, b"second").await, b"second");
    held.write_all(b"across").await.unwrap();
    held.shutdown().await.unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"across");
}
