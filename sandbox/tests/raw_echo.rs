//! The raw mTLS echo port over loopback with real mTLS: a client with the certificate the
//! sandbox issued gets its bytes echoed; a client without a certificate, with one from another
//! CA, or with one for another account is refused before anything is echoed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bindgate_sandbox::{Sandbox, SandboxCa, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

mod common;
use common::connector;

/// Guards against hangs only; no assertion depends on it.
const GUARD: Duration = Duration::from_secs(20);

async fn start(dir: &Path) -> Sandbox {
    let yaml = format!(
        "state_dir: {}\nraw_echo: {{ address: 127.0.0.1:0 }}\n",
        dir.join("state").display()
    );
    Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap()
}

/// Connects over TLS, writes `payload`, half-closes, and reads until the end of stream.
async fn exchange(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(payload).await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    tls.read_to_end(&mut back)
        .await
        .map_err(|e| e.to_string())?;
    Ok(back)
}

/// Writes a certificate and key `ca` issues for `account` into `dir`.
fn issue(ca: &SandboxCa, account: &str, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert_pem, key_pem) = ca.issue_client_cert(account).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    (cert, key)
}

#[tokio::test]
async fn the_issued_client_certificate_gets_its_bytes_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start(dir.path()).await;
    let addr = sandbox.raw_echo_addr().expect("raw_echo is configured");
    assert!(addr.ip().is_loopback());
    assert_ne!(addr, sandbox.ingress_addr());
    let (cert, key) = sandbox
        .issue_client_cert(&dir.path().join("client"))
        .unwrap();
    let client = connector(&sandbox.ca_pem_path(), Some((&cert, &key)));
    // More than one TLS record, so the echo is a stream and not one read.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let back = timeout(GUARD, exchange(addr, &client, &payload))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    // No binding upgrade: the first bytes are echoed as they are, not read as a ConnRequest.
    let back = timeout(GUARD, exchange(addr, &client, b"GET / HTTP/1.1\r\n\r\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"GET / HTTP/1.1\r\n\r\n");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start(dir.path()).await;
    let anonymous = connector(&sandbox.ca_pem_path(), None);
    let outcome = timeout(
        GUARD,
        exchange(sandbox.raw_echo_addr().unwrap(), &anonymous, b"ping"),
    )
    .await
    .unwrap();
    let err = outcome.unwrap_err();
    assert!(
        err.contains("received fatal alert: CertificateRequired"),
        "{err}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start(dir.path()).await;
    let foreign = SandboxCa::load_or_create(&dir.path().join("foreign")).unwrap();
    let (cert, key) = issue(&foreign, "ac_sandbox", dir.path(), "foreign");
    let client = connector(&sandbox.ca_pem_path(), Some((&cert, &key)));
    let outcome = timeout(
        GUARD,
        exchange(sandbox.raw_echo_addr().unwrap(), &client, b"ping"),
    )
    .await
    .unwrap();
    let err = outcome.unwrap_err();
    assert!(err.contains("received fatal alert: UnknownCA"), "{err}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_another_account_gets_nothing_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start(dir.path()).await;
    // Signed by the sandbox's own CA, so the handshake succeeds; the account check closes it.
    let (cert, key) = issue(sandbox.ca(), "ac_other", dir.path(), "other");
    let client = connector(&sandbox.ca_pem_path(), Some((&cert, &key)));
    let outcome = timeout(
        GUARD,
        exchange(sandbox.raw_echo_addr().unwrap(), &client, b"ping"),
    )
    .await
    .unwrap();
    // Closed unread, without close_notify: the client sees a reset or a truncated stream,
    // never an echo.
    if let Ok(back) = outcome {
        panic!("another account's connection ended cleanly with {back:?}");
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn without_the_section_there_is_no_raw_echo_port() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("state_dir: {}\n", dir.path().join("state").display());
    let sandbox = Sandbox::start(SandboxConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    assert_eq!(sandbox.raw_echo_addr(), None);
    sandbox.shutdown().await;
}
