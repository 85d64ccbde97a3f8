//! What the sandbox's integration tests share: TLS clients that trust the sandbox CA.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsConnector;

/// A connector trusting only the sandbox's CA, presenting `client` when given.
pub fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(ca, client)))
}

/// Trusts only the sandbox's CA; presents `client` (PEM certificate and key files) when given.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca) {
        roots.add(cert).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(bindgate_sandbox::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let key = bindgate_sandbox::tls::parse_private_key(&std::fs::read(key).unwrap());
            builder
                .with_client_auth_cert(certificates(cert), key.unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// The CERTIFICATE blocks of a PEM file.
pub fn certificates(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    pem::parse_many(std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| block.into_contents().into())
        .collect()
}
