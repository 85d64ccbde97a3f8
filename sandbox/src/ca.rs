//! The sandbox's certificate authority: one ECDSA P-256 key and self-signed certificate,
//! persisted in the state directory, that signs the ingress and API server certificates, static
//! client certificates, and the CSRs operators register with.
//!
//! Client certificates carry the account id as their **first DNS SAN** and an empty subject:
//! that is how the ingress reads the account (PROTOCOL.md §1). This module owns the CA key; it
//! never logs or formats key material.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};

/// File names inside the state directory.
pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_CERT_FILE: &str = "ca.pem";

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Server certificates are reissued at every start, so a year is plenty.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Static client certificates (`bindgate sandbox client-cert`) outlive any test run.
const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir}: holds {present} but not {missing}; remove both to create a new sandbox CA (clients trusting the old one must then be given the new ca.pem)"
    )]
    Incomplete {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("certificate request rejected: {0}")]
    BadCsr(String),
    #[error("cannot issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("a certificate lifetime of {0:?} ends beyond the representable dates")]
    Lifetime(Duration),
}

/// Whether a server built by [`SandboxCa::server_tls`] demands client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// A client certificate chaining to this CA, as the binding ingress demands.
    Required,
}

/// A certificate signed from a CSR, with its validity as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    pub cert_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The serial number's DER content bytes, as `revoke` and the ingress compare them.
    pub serial: Vec<u8>,
}

/// A server certificate and its key, ready for rustls.
#[derive(Debug)]
pub struct ServerIdentity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

pub struct SandboxCa {
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    cert_path: PathBuf,
    /// Serials of certificates whose operator was deleted. In memory, like the operators.
    revoked: ArcSwap<HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl SandboxCa {
    /// Loads the CA from `state_dir`, or creates and persists a new one there. The directory is
    /// created (and kept) 0700; `ca.key` is 0600.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        create_private_dir(state_dir)?;
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_path = state_dir.join(CA_CERT_FILE);
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => Self::load(&key_path, &cert_path),
            (false, false) => Self::create(&key_path, &cert_path),
            (true, false) => Err(CaError::Incomplete {
                dir: state_dir.to_owned(),
                present: CA_KEY_FILE,
                missing: CA_CERT_FILE,
            }),
            (false, true) => Err(CaError::Incomplete {
                dir: state_dir.to_owned(),
                present: CA_CERT_FILE,
                missing: CA_KEY_FILE,
            }),
        }
    }

    fn load(key_path: &Path, cert_path: &Path) -> Result<Self, CaError> {
        let key_pem = read_text(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Corrupt {
            path: key_path.to_owned(),
            reason: format!("not a usable private key: {e}"),
        })?;
        let cert_pem = read_text(cert_path)?;
        let corrupt = |reason: String| CaError::Corrupt {
            path: cert_path.to_owned(),
            reason,
        };
        let block = ::pem::parse(&cert_pem).map_err(|e| corrupt(format!("not PEM: {e}")))?;
        if block.tag() != "CERTIFICATE" {
            return Err(corrupt(format!(
                "expected a CERTIFICATE, found {}",
                block.tag()
            )));
        }
        let cert_der = CertificateDer::from(block.into_contents());
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| corrupt(format!("not a certificate: {e}")))?;
        // A key and certificate from two different CAs would sign certificates nobody trusts.
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(corrupt(format!(
                "does not belong to the key in {}",
                key_path.display()
            )));
        }
        Ok(SandboxCa {
            key,
            cert_der,
            cert_pem,
            cert_path: cert_path.to_owned(),
            revoked: ArcSwap::default(),
        })
    }

    fn create(key_path: &Path, cert_path: &Path) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "bindgate sandbox");
        // A per-CA suffix: two sandboxes' CAs never share a name, so a certificate from the
        // wrong one fails as "unknown CA" rather than as a bad signature.
        let suffix: u32 = rand::random();
        name.push(
            DnType::CommonName,
            format!("bindgate sandbox CA {suffix:08x}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_LIFETIME)?;
        let cert = params.self_signed(&key)?;
        write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(SandboxCa {
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            cert_path: cert_path.to_owned(),
            revoked: ArcSwap::default(),
        })
    }

    /// `<state_dir>/ca.pem`: what clients put in their `ca:` setting.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Marks certificates as no longer valid for the ingress (their operator was deleted).
    pub fn revoke(&self, serials: &[Vec<u8>]) {
        if serials.is_empty() {
            return;
        }
        self.revoked.rcu(|current| {
            let mut next = HashSet::clone(current);
            next.extend(serials.iter().cloned());
            next
        });
    }

    /// Whether the certificate with this serial was revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.load().contains(serial)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CaError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// A server certificate (fresh P-256 key) for these DNS names and IP addresses.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<ServerIdentity, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, SERVER_CERT_LIFETIME)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(ServerIdentity {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }

    /// A rustls server config (TLS 1.2 and 1.3) presenting a fresh certificate for these names
    /// and IPs.
    pub fn server_tls(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        client_auth: ClientAuth,
    ) -> Result<rustls::ServerConfig, CaError> {
        let tls = |e: &dyn std::fmt::Display| CaError::Tls(e.to_string());
        let identity = self.issue_server_cert(dns_names, ips)?;
        let provider = crate::tls::crypto_provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?;
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(self.cert_der.clone()).map_err(|e| tls(&e))?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| tls(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(vec![identity.cert], identity.key)
            .map_err(|e| tls(&e))
    }

    /// A client certificate and its PEM key (ECDSA P-256) for `account_id`: empty subject, the
    /// account as first DNS SAN.
    pub fn issue_client_cert(&self, account_id: &str) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = client_params(account_id, &[], CLIENT_CERT_LIFETIME)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs an operator's CSR (ECDSA P-256 or P-384, signature verified) as a client
    /// certificate valid for `lifetime` from now. The account id becomes the first DNS SAN; DNS
    /// names the CSR requests follow it. The CSR's subject and other requests are ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        account_id: &str,
        lifetime: Duration,
    ) -> Result<SignedCert, CaError> {
        // rcgen verifies the CSR's signature and parses its requested SANs.
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let subject_key = CsrPublicKey::from_pem(csr_pem)?;
        let requested: Vec<String> = request
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::DnsName(name) => Some(name.as_str().to_string()),
                _ => None,
            })
            .filter(|name| name != account_id)
            .collect();
        let params = client_params(account_id, &requested, lifetime)?;
        let cert = params.signed_by(&subject_key, &self.issuer()?)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            not_before: params.not_before,
            not_after: params.not_after,
            serial: params
                .serial_number
                .as_ref()
                .map(SerialNumber::to_bytes)
                .unwrap_or_default(),
        })
    }
}

/// The public key of a CSR with the signature algorithm that matches its curve. rcgen infers
/// the key's algorithm from the CSR's *signature* algorithm, which would misdescribe a P-384 key
/// signed with SHA-256; reading the curve from the SubjectPublicKeyInfo avoids that.
struct CsrPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrPublicKey {
    fn from_pem(csr_pem: &str) -> Result<Self, CaError> {
        use x509_parser::prelude::FromDer;
        let block = ::pem::parse(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(
            block.contents(),
        )
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let spki = &csr.certification_request_info.subject_pki;
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(CaError::BadCsr(
                "the key must be ECDSA P-256 or P-384".into(),
            ));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let alg = match curve {
            Some(oid) if oid == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(oid) if oid == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => {
                return Err(CaError::BadCsr(
                    "the key must be ECDSA P-256 or P-384".into(),
                ));
            }
        };
        Ok(CsrPublicKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        })
    }
}

impl rcgen::PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn client_params(
    account_id: &str,
    more_dns_names: &[String],
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    // Empty subject, as ngrok's CSRs have: the identity is in the SAN.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = std::iter::once(account_id)
        .chain(more_dns_names.iter().map(String::as_str))
        .map(|n| Ok(SanType::DnsName(n.to_string().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params, lifetime)?;
    Ok(params)
}

/// Validity from now (to the second, as X.509 stores it) for `lifetime`, and a random serial.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), CaError> {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = now;
    params.not_after = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|lifetime| now.checked_add(lifetime))
        .ok_or(CaError::Lifetime(lifetime))?;
    let mut serial: [u8; 16] = rand::random();
    // Positive and of full length.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir` (and parents) and makes it 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `contents` to `path` with `mode`, replacing any previous file. The mode is set at
/// creation, so a secret is never readable by others even briefly.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its old mode through `open`; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn dns_sans(pem_text: &str) -> Vec<String> {
        let block = ::pem::parse(pem_text).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_is_persisted_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = SandboxCa::load_or_create(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(CA_KEY_FILE)), 0o600);
        assert_eq!(first.cert_path(), state.join(CA_CERT_FILE));
        assert_eq!(
            fs::read_to_string(state.join(CA_CERT_FILE)).unwrap(),
            first.cert_pem()
        );
        let second = SandboxCa::load_or_create(&state).unwrap();
        assert_eq!(second.cert_der(), first.cert_der());
        // The reloaded key signs certificates that chain to the same CA.
        let (cert_pem, _) = second.issue_client_cert("ac_x").unwrap();
        let block = ::pem::parse(&cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(first.cert_der()).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_silent_replacement() {
        let dir = tempfile::tempdir().unwrap();
        SandboxCa::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = SandboxCa::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                CaError::Incomplete {
                    missing: "ca.pem",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mismatched_key_and_cert_are_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        SandboxCa::load_or_create(a.path()).unwrap();
        SandboxCa::load_or_create(b.path()).unwrap();
        fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).unwrap();
        let err = SandboxCa::load_or_create(a.path()).unwrap_err();
        assert!(matches!(err, CaError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn client_cert_names_the_account_first_with_an_empty_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::load_or_create(dir.path()).unwrap();
        let (cert_pem, key_pem) = ca.issue_client_cert("ac_sandbox").unwrap();
        assert_eq!(dns_sans(&cert_pem), ["ac_sandbox"]);
        let block = ::pem::parse(&cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
        assert_eq!(cert.subject().iter_attributes().count(), 0);
        crate::tls::parse_private_key(key_pem.as_bytes()).unwrap();
    }

    #[test]
    fn csr_is_signed_with_the_account_first_and_the_requested_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::load_or_create(dir.path()).unwrap();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut params = CertificateParams::new(vec!["gw-1.example".to_string()]).unwrap();
            params.distinguished_name = DistinguishedName::new();
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            let lifetime = Duration::from_secs(3600);
            let signed = ca.sign_csr(&csr, "ac_sandbox", lifetime).unwrap();
            assert_eq!(dns_sans(&signed.cert_pem), ["ac_sandbox", "gw-1.example"]);
            assert_eq!(signed.not_after - signed.not_before, lifetime);
            let block = ::pem::parse(&signed.cert_pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
            // The certificate carries the CSR's own key.
            assert_eq!(
                cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw()
            );
            assert_eq!(
                cert.validity().not_after.timestamp(),
                signed.not_after.unix_timestamp()
            );
            assert_eq!(cert.raw_serial(), signed.serial.as_slice());
            assert!(!ca.is_revoked(&signed.serial));
            ca.revoke(std::slice::from_ref(&signed.serial));
            assert!(ca.is_revoked(cert.raw_serial()));
        }
    }

    #[test]
    fn bad_csrs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::load_or_create(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        assert!(matches!(
            ca.sign_csr("not pem", "ac_sandbox", day),
            Err(CaError::BadCsr(_))
        ));
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&ed)
            .unwrap()
            .pem()
            .unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, "ac_sandbox", day),
            Err(CaError::BadCsr(_))
        ));
        // A CSR whose signature does not match its key.
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(matches!(
            ca.sign_csr(&tampered, "ac_sandbox", day),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn an_unrepresentable_lifetime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, "ac_sandbox", Duration::MAX),
            Err(CaError::Lifetime(_))
        ));
    }

    #[test]
    fn server_cert_carries_names_and_ips() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::load_or_create(dir.path()).unwrap();
        let identity = ca
            .issue_server_cert(
                &["localhost".to_string(), "ingress.sandbox.local".to_string()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&identity.cert).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("other:{other}"),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "dns:localhost",
                "dns:ingress.sandbox.local",
                "ip:[127, 0, 0, 1]"
            ]
        );
    }
}
