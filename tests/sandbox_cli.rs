//! `bindgate sandbox` as a process: the ready line on stdout, `client-cert`, and a clean exit on
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bindgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bindgate"))
}

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sandbox.yaml");
    std::fs::write(
        &path,
        format!(
            "state_dir: {}\napi: {{ api_keys: [k] }}\nraw_echo: {{ address: 127.0.0.1:0 }}\nendpoints:\n  - {{ url: 'tcp://echo.demo:7000', target: echo }}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn prints_one_ready_line_then_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut child = bindgate()
        .args(["sandbox", "-c"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let ca = dir.path().join("state/ca.pem");
    assert!(ca.exists());
    // The exact line, field order included: it is a contract with scripts.
    assert_eq!(
        line.trim_end(),
        format!(
            r#"{{"event":"ready","ingress":"{}","ca":"{}","backends":{{"echo":"{}","http":"{}"}},"api":"{}","raw_echo":"{}"}}"#,
            ready["ingress"].as_str().unwrap(),
            ca.display(),
            ready["backends"]["echo"].as_str().unwrap(),
            ready["backends"]["http"].as_str().unwrap(),
            ready["api"].as_str().unwrap(),
            ready["raw_echo"].as_str().unwrap(),
        )
    );
    let api = ready["api"].as_str().unwrap();
    assert!(api.starts_with("https://127.0.0.1:"), "{api}");
    let api: std::net::SocketAddr = api.trim_start_matches("https://").parse().unwrap();
    std::net::TcpStream::connect(api).unwrap();
    assert!(
        line.starts_with(r#"{"event":"ready","ingress":"127.0.0.1:"#),
        "{line}"
    );
    let ingress: std::net::SocketAddr = ready["ingress"].as_str().unwrap().parse().unwrap();
    std::net::TcpStream::connect(ingress).unwrap();
    let raw_echo: std::net::SocketAddr = ready["raw_echo"].as_str().unwrap().parse().unwrap();
    assert!(raw_echo.ip().is_loopback(), "{raw_echo}");
    std::net::TcpStream::connect(raw_echo).unwrap();
    for backend in ["echo", "http"] {
        let addr: std::net::SocketAddr = ready["backends"][backend]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        std::net::TcpStream::connect(addr).unwrap();
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "only one line goes to stdout");
}

#[test]
fn client_cert_writes_a_private_key_and_prints_the_paths() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = dir.path().join("client");
    let output = bindgate()
        .args(["sandbox", "-c"])
        .arg(&config)
        .args(["client-cert", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["cert"], out.join("tls.crt").to_str().unwrap());
    assert_eq!(printed["key"], out.join("tls.key").to_str().unwrap());
    assert_eq!(printed["account_id"], "ac_sandbox");
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("tls.key"), 0o600);
    assert_eq!(mode("tls.crt"), 0o644);
}

#[test]
fn an_invalid_config_fails_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "endpoints:\n  - { url: 'tcp://nohost:1', target: echo }\n",
    )
    .unwrap();
    let output = bindgate()
        .args(["sandbox", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("endpoints[0].url"), "{stderr}");
    assert!(output.stdout.is_empty());
}
