//! `bindgate demo`, the README's first command: it serves, and what it prints works.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

#[tokio::test]
async fn demo_serves_what_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::BIN)
        .args(["demo", "--dir", dir.path().to_str().unwrap()])
        .env("BINDGATE_DEMO_WEB_PORT", "0")
        .env("BINDGATE_DEMO_ECHO_PORT", "0")
        .env("BINDGATE_DEMO_ADMIN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
