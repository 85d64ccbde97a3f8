//! Client keys, CSRs and certificate inspection. Keys are generated here and leave only as a
//! [`Secret`]; nothing in this file formats key material.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::KeyType;
use crate::secret::Secret;

/// What `bindgate certs show` prints about a certificate: public facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names as `DNS:name`, `IP:addr`, `URI:uri`.
    pub sans: Vec<String>,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// `ECDSA P-256`, `ECDSA P-384`, `RSA 2048`, …
    pub key_type: String,
}

impl CertInfo {
    /// When renewal is due: `renew_before` ahead of expiry, but never earlier than halfway
    /// through the lifetime, so a short-lived certificate is not renewed in a loop.
    pub fn renew_at(&self, renew_before: Duration) -> OffsetDateTime {
        let lifetime = self.not_after - self.not_before;
        let before = time::Duration::try_from(renew_before).unwrap_or(time::Duration::MAX);
        let before = before.min(lifetime / 2).max(time::Duration::ZERO);
        self.not_after - before
    }
}

/// The `CERTIFICATE` blocks of a PEM text, leaf first.
pub fn cert_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = ::pem::parse_many(cert_pem).map_err(|e| format!("not valid PEM: {e}"))?;
    let chain: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(chain)
}

/// Public facts of the first certificate in `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, String> {
    let chain = cert_chain(cert_pem)?;
    inspect_der(&chain[0])
}

/// Public facts of one DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a valid certificate: {e}"))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::RFC822Name(m) => format!("email:{m}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        format!("IP:{}", std::net::Ipv6Addr::from(b))
                    }
                    _ => "IP:?".to_owned(),
                },
                other => format!("{other}"),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subjectAltName: {e}")),
    };
    let key_type = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => format!("ECDSA P-{}", ec.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(other) => format!("other ({} bits)", other.key_size()),
        Err(_) => "unknown".to_owned(),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        key_type,
    })
}

/// A rustls signing identity from PEM text, refusing a key that does not match the leaf.
pub fn certified_key(cert_pem: &str, key: &Secret) -> Result<CertifiedKey, String> {
    let chain = cert_chain(cert_pem)?;
    let der = super::parse_private_key(key.expose().as_bytes())
        .ok_or_else(|| "no usable private key (expected a `* PRIVATE KEY` PEM block)".to_owned())?;
    let provider = Arc::new(crate::identity::crypto_provider());
    CertifiedKey::from_der(chain, der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not match the certificate".to_owned()
        }
        other => format!("unusable key or certificate: {other}"),
    })
}

/// A fresh private key of `key_type`.
pub(crate) fn new_key(key_type: KeyType) -> Result<rcgen::KeyPair, String> {
    let alg = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    rcgen::KeyPair::generate_for(alg).map_err(|e| format!("key generation failed: {e}"))
}

/// A PEM CSR for `key` with an empty subject and no extensions, as ngrok's operator sends.
pub(crate) fn csr_for(key: &rcgen::KeyPair) -> Result<String, String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("CSR generation failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(key: &rcgen::KeyPair, days: i64) -> String {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.test".into(), "10.0.0.1".into()]).unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        params.self_signed(key).unwrap().pem()
    }

    #[test]
    fn csr_has_empty_subject_and_key_type() {
        for (kt, alg) in [
            (KeyType::EcdsaP256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (KeyType::EcdsaP384, &rcgen::PKCS_ECDSA_P384_SHA384),
        ] {
            let key = new_key(kt).unwrap();
            assert_eq!(key.algorithm(), alg);
            let csr =
                rcgen::CertificateSigningRequestParams::from_pem(&csr_for(&key).unwrap()).unwrap();
            assert_eq!(csr.params.distinguished_name.iter().count(), 0);
            assert!(csr.params.subject_alt_names.is_empty());
        }
    }

    #[test]
    fn inspects_public_facts() {
        let key = new_key(KeyType::EcdsaP384).unwrap();
        let info = inspect(&self_signed(&key, 10)).unwrap();
        assert_eq!(info.sans, vec!["DNS:a.test", "IP:10.0.0.1"]);
        assert_eq!(info.key_type, "ECDSA P-384");
        assert_eq!(info.not_after - info.not_before, time::Duration::days(11));
        assert!(inspect("garbage").is_err());
    }

    #[test]
    fn renewal_time_is_clamped_to_half_the_lifetime() {
        let key = new_key(KeyType::EcdsaP256).unwrap();
        let info = inspect(&self_signed(&key, 89)).unwrap(); // 90-day lifetime
        let day = Duration::from_secs(86_400);
        assert_eq!(
            info.renew_at(30 * day),
            info.not_after - time::Duration::days(30)
        );
        assert_eq!(
            info.renew_at(60 * day),
            info.not_after - time::Duration::days(45)
        );
        assert_eq!(
            info.renew_at(Duration::MAX),
            info.not_after - time::Duration::days(45)
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let key = new_key(KeyType::EcdsaP256).unwrap();
        let other = new_key(KeyType::EcdsaP256).unwrap();
        let cert = self_signed(&key, 10);
        assert!(certified_key(&cert, &Secret::new(key.serialize_pem())).is_ok());
        let err = certified_key(&cert, &Secret::new(other.serialize_pem())).unwrap_err();
        assert_eq!(err, "the private key does not match the certificate");
        assert!(certified_key(&cert, &Secret::new("nope")).is_err());
    }
}
