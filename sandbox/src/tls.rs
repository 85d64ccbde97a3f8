//! The sandbox's own TLS plumbing: the rustls crypto provider its servers are built on, and
//! reading the PEM private keys its CA issues. Written for the sandbox alone: the emulator
//! shares no TLS code with bindgate's client, so a mistake on one side cannot hide on both.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

/// aws-lc-rs with its default cipher suites, groups and algorithms. Every server the sandbox
/// builds names this provider explicitly, so the sandbox never needs (nor sets) a process-wide
/// default. rustls servers follow the client's cipher suite order, so no preference is set here.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block")]
    Missing,
    // The key itself never goes into an error.
    #[error("the {label} block is not a key the crypto provider can use")]
    Unusable { label: String },
}

/// The first private key in `pem_text`, read by its PEM label: `PRIVATE KEY` (PKCS#8, what the
/// sandbox's CA writes), `EC PRIVATE KEY` (SEC1) or `RSA PRIVATE KEY` (PKCS#1). The key must
/// load in [`crypto_provider`], so a key that would only fail at the handshake fails here.
pub fn parse_private_key(pem_text: &[u8]) -> Result<PrivateKeyDer<'static>, KeyError> {
    let blocks = ::pem::parse_many(pem_text).map_err(|e| KeyError::NotPem(e.to_string()))?;
    let (label, key) = blocks
        .into_iter()
        .find_map(|block| {
            let label = block.tag().to_owned();
            let der = block.into_contents();
            let key: PrivateKeyDer<'static> = match label.as_str() {
                "PRIVATE KEY" => PrivatePkcs8KeyDer::from(der).into(),
                "EC PRIVATE KEY" => PrivateSec1KeyDer::from(der).into(),
                "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(der).into(),
                _ => return None,
            };
            Some((label, key))
        })
        .ok_or(KeyError::Missing)?;
    match crypto_provider()
        .key_provider
        .load_private_key(key.clone_key())
    {
        Ok(_) => Ok(key),
        Err(_) => Err(KeyError::Unusable { label }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pkcs8_key_by_its_label() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_pem();
        assert!(matches!(
            parse_private_key(pkcs8.as_bytes()),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
        // A certificate before the key is skipped.
        let mixed = format!(
            "{}{pkcs8}",
            ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![1, 2, 3]))
        );
        assert!(parse_private_key(mixed.as_bytes()).is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_usable_key() {
        assert!(matches!(
            parse_private_key(b"no pem here"),
            Err(KeyError::Missing | KeyError::NotPem(_))
        ));
        let cert_only = ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            parse_private_key(cert_only.as_bytes()),
            Err(KeyError::Missing)
        ));
        let garbage = ::pem::encode(&::pem::Pem::new("PRIVATE KEY", vec![0x30, 0x03, 1, 2, 3]));
        let err = parse_private_key(garbage.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Unusable { .. }), "{err}");
    }
}
