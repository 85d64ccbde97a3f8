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
            ["echo", "hello", "|", "nc", "-q", "2", host, port, ..] => {
                echo = Some(format!("{host}:{port}"))
            }
            _ if line.contains("Press Ctrl-C") => break,
            _ => {}
        }
    }
    let (web, echo) = (web.expect("a curl line"), echo.expect("an nc line"));

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

    let mut c = TcpStream::connect(&echo).await.unwrap();
    c.write_all(b"hello\n").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello\n");

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
