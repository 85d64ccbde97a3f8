//! Credentials: registration with the ngrok API (as a Kubernetes operator), the client key,
//! CSR and certificate, their store under `state_dir`, renewal, and the hot-swappable client
//! identity presented to the binding ingress; plus PEM loading and trust roots.
//! Owns key material; never logs or formats it (keys travel as [`crate::secret::Secret`]).

pub mod certificate;
pub mod client_identity;
pub mod fleet;
pub mod pem;
pub mod registration;
pub mod renewal;
pub mod session_store;
pub mod store;
pub mod watched;

#[cfg(test)]
mod tests;

pub use certificate::CertInfo;
pub use client_identity::ClientIdentity;
pub use pem::{PemError, load_cert_chain, load_private_key, load_trust_roots, parse_private_key};
pub use registration::{Credentials, Deregistered, IdentityError, Registrar, RegistrationSettings};
pub use renewal::run_renewal;
pub use store::{SavedOperator, StateStore, StoreError};
pub use watched::{FileRole, FilesError, IdentityFiles, WatchedIdentity};

/// Installs [`crypto_provider`] as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// aws-lc-rs, with the SHA-256 cipher suites preferred over the SHA-384 ones (both AES-GCM).
/// Every handshake runs its key schedule through the suite's hash, and SHA-256 has hardware
/// instructions on current x86 and ARM cores where SHA-512 (behind SHA-384) mostly does not: in
/// a profile of the warm pool's refills, SHA-512 blocks were the largest single cost. Peers keep
/// their own preference (ngrok's Go servers already prefer AES-128-GCM-SHA256).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        matches!(
            suite.suite(),
            S::TLS13_AES_256_GCM_SHA384
                | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    provider
}
