//! PEM loading for certificates, private keys and CA bundles.
//!
//! Keys are accepted under any `* PRIVATE KEY` label: ngrok's operator stores a SEC1 EC key as
//! `OPENSSH PRIVATE KEY`, so the label is a hint, and the DER is tried as SEC1, PKCS#8, PKCS#1.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable private key found (expected a `* PRIVATE KEY` block)")]
    NoKey { path: PathBuf },
    #[error("{path}: certificate rejected: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
}

/// At most `config::MAX_DOCUMENT_BYTES`: a `ca:` or key naming the wrong file (a device, an
/// image) is refused, not read without end.
fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    crate::config::read_document(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

fn blocks(path: &Path, data: &[u8]) -> Result<Vec<::pem::Pem>, PemError> {
    ::pem::parse_many(data).map_err(|e| PemError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// All `CERTIFICATE` blocks of a PEM file, in order (leaf first for a chain).
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let data = read(path)?;
    let certs: Vec<_> = blocks(path, &data)?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let data = read(path)?;
    parse_private_key(&data).ok_or_else(|| PemError::NoKey {
        path: path.to_owned(),
    })
}

/// The first usable private key in PEM text, whatever its `* PRIVATE KEY` label says.
pub fn parse_private_key(data: &[u8]) -> Option<PrivateKeyDer<'static>> {
    let provider = crate::identity::crypto_provider();
    for block in ::pem::parse_many(data).ok()? {
        if !block.tag().ends_with("PRIVATE KEY") {
            continue;
        }
        let der = block.into_contents();
        let candidates: [PrivateKeyDer<'static>; 3] = [
            PrivatePkcs8KeyDer::from(der.clone()).into(),
            PrivateSec1KeyDer::from(der.clone()).into(),
            PrivatePkcs1KeyDer::from(der).into(),
        ];
        for key in candidates {
            if provider
                .key_provider
                .load_private_key(key.clone_key())
                .is_ok()
            {
                return Some(key);
            }
        }
    }
    None
}

/// Every certificate in `path`: a PEM file, or every regular file in a directory (sorted).
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let meta = std::fs::metadata(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return load_cert_chain(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|source| PemError::Read {
            path: path.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut certs = Vec::new();
    for file in files {
        // A directory like /etc/ssl/certs/ngrok/ may hold other files; skip those without certs.
        match load_cert_chain(&file) {
            Ok(mut c) => certs.append(&mut c),
            Err(PemError::NoCertificate { .. } | PemError::Parse { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Trust roots for the ingress: the system's roots (when `system` is true) plus `extra_ca`.
pub fn load_trust_roots(extra_ca: Option<&Path>, system: bool) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    if system {
        // A host without a system bundle still works with a configured CA; errors here are the
        // platform's (unreadable files), not the user's, so they only shrink the set.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = extra_ca {
        for cert in load_ca_certs(path)? {
            roots.add(cert).map_err(|e| PemError::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn ec_key_is_accepted_under_any_private_key_label() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // SEC1 DER (what ngrok's operator stores) under the operator's odd label.
        let sec1 = sec1_der_of(&key);
        let operator_style = ::pem::encode(&::pem::Pem::new("OPENSSH PRIVATE KEY", sec1));
        assert!(parse_private_key(operator_style.as_bytes()).is_some());
        let pkcs8 = key.serialize_pem();
        assert!(parse_private_key(pkcs8.as_bytes()).is_some());
        let relabelled = pkcs8
            .replace("BEGIN PRIVATE KEY", "BEGIN OPENSSH PRIVATE KEY")
            .replace("END PRIVATE KEY", "END OPENSSH PRIVATE KEY");
        assert!(matches!(
            parse_private_key(relabelled.as_bytes()),
            Some(PrivateKeyDer::Pkcs8(_))
        ));
        assert!(
            parse_private_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_none()
        );
    }

    /// Extracts the SEC1 `ECPrivateKey` from a PKCS#8 wrapper: the last OCTET STRING of the
    /// PrivateKeyInfo holds it.
    fn sec1_der_of(key: &rcgen::KeyPair) -> Vec<u8> {
        let pkcs8 = key.serialize_der();
        let (_, info) = x509_parser::der_parser::der::parse_der(&pkcs8).unwrap();
        let seq = info.as_sequence().unwrap();
        seq[2].as_slice().unwrap().to_vec()
    }

    /// A `ca:`, certificate or key naming a device that never ends is refused after the bound,
    /// not read until memory runs out.
    #[test]
    fn a_file_without_end_is_refused_at_the_bound() {
        let zero = Path::new("/dev/zero");
        for e in [
            load_trust_roots(Some(zero), false).unwrap_err(),
            load_private_key(zero).unwrap_err(),
        ] {
            assert!(
                e.to_string() == "/dev/zero: the file is larger than 64 MiB",
                "{e}"
            );
        }
    }

    #[test]
    fn ca_directory_collects_certs_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        write(dir.path(), "a.pem", &cert.pem());
        write(dir.path(), "README", "not a cert");
        assert_eq!(load_ca_certs(dir.path()).unwrap().len(), 1);
        let roots = load_trust_roots(Some(dir.path()), false).unwrap();
        assert_eq!(roots.len(), 1);
        let missing = load_ca_certs(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
