//! Credentials: registration with the ngrok API (as a Kubernetes operator), the client key,
//! CSR and certificate, their store under `state_dir`, renewal, and the hot-swappable client
//! identity presented to the binding ingress; plus PEM loading and trust roots.
//! Owns key material; never logs or formats it (keys travel as [`crate::secret::Secret`]).

pub mod certificate;
pub mod client_identity;
pub mod pem;
pub mod registration;
pub mod renewal;
pub mod store;

#[cfg(test)]
mod tests;

pub use certificate::CertInfo;
pub use client_identity::ClientIdentity;
pub use pem::{PemError, load_cert_chain, load_private_key, load_trust_roots, parse_private_key};
pub use registration::{Credentials, Deregistered, IdentityError, Registrar, RegistrationSettings};
pub use renewal::run_renewal;
pub use store::{SavedOperator, StateStore, StoreError};

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
