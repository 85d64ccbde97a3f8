//! Credentials: loading PEM certificates and keys, and the trust roots for the ingress.
//! Owns key material; never logs or formats it.

pub mod pem;

pub use pem::{PemError, load_cert_chain, load_private_key, load_trust_roots, parse_private_key};

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
