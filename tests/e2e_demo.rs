//! `bindgate demo`, the README's first command: it serves, and what it prints works.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `bindgate demo ARGS` on ports the OS chooses, with `envs`; its stdout piped.
fn demo(args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Child {
    Command::new(common::BIN)
        .arg("demo")
        .args(args)
        .envs(envs.iter().copied())
        .env("BINDGATE_DEMO_WEB_PORT", "0")
        .env("BINDGATE_DEMO_ECHO_PORT", "0")
        .env("BINDGATE_DEMO_ADMIN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Ctrl-C, then a clean exit within 20 s.
async fn stop_cleanly(mut child: tokio::process::Child) {
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn demo_serves_what_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo(&["--dir", dir.path().to_str().unwrap()], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut web, mut echo) = (None, None);
    while let Some(line) = lines.next_line().await.unwrap() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["curl", url, "#", ..] if url.starts_with("http://") && url.ends_with("/") => {
                web = Some(
                    url.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_owned(),
                );
            }
            ["bash", "-c", ..] if line.contains("/dev/tcp/") => {
                let start = line.find("bash -c '").unwrap() + "bash -c '".len();
                let script = &line[start..line[start..].find('\'').unwrap() + start];
                echo = Some(script.to_owned());
            }
            _ if line.contains("Press Ctrl-C") => break,
            _ => {}
        }
    }
    let (web, echo) = (
        web.expect("a curl line"),
        echo.expect("a bash /dev/tcp line"),
    );

    let mut c = TcpStream::connect(&web).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.demo\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("hello from the bindgate sandbox"),
        "{reply}"
    );
    drop(c);

    // The echo line as printed, run by bash (a fresh machine has no nc).
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&echo)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{echo}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{echo}");

    stop_cleanly(child).await;
}

/// Without `--dir`, the demo keeps its CA key and client key in a new directory only its user
/// can enter, at a name nobody can guess, created exclusively, and removes it on Ctrl-C. Before,
/// it used `bindgate-demo-<pid>` under the temporary directory as it found it (mode 0755, or a
/// directory someone else planted there first).
#[tokio::test]
async fn the_demo_keeps_its_keys_in_a_private_directory_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = demo(&[], &[("TMPDIR", tmp.path().to_str().unwrap())]);
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        printed.push_str(&line);
        printed.push(' ');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let start = printed.find("(CA in ").expect("the CA's directory") + "(CA in ".len();
    let dir =
        std::path::PathBuf::from(&printed[start..start + printed[start..].find(')').unwrap()]);
    assert_eq!(dir.parent(), Some(tmp.path()), "{printed}");
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(
        name,
        format!("bindgate-demo-{pid}"),
        "a name others can guess"
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    stop_cleanly(child).await;
    assert!(!dir.exists(), "removed on the way out");
}
