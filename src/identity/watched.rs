//! `WatchedIdentity`: a client certificate and key (and, for a shared identity directory, the
//! operator id) read from files that someone else rotates: `bindgate identity issue`, a
//! Kubernetes Secret mount, or whoever replaces an ingress's `client_cert` / `client_key`.
//!
//! The files' directories are watched (a Secret mount is updated by re-pointing its `..data`
//! symlink, which is an event in the directory, not on the file names readers use) and also
//! read again every [`RECHECK_INTERVAL`], so a missed event costs a delay, not the rotation.
//! A new pair is swapped into the [`ClientIdentity`] only when the certificate parses and the key
//! fits it; a half-written or mismatched pair is refused with one log line per content, and the
//! identity in force stays. Swapping never touches open connections (see [`ClientIdentity`]).
//! Reads only: nothing here writes a file or calls the API.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::certificate;
use super::client_identity::ClientIdentity;
use super::registration::rfc3339;
use super::store::{self, StoreError};
use crate::secret::Secret;
use crate::telemetry;

/// How often the files are read again even without a watch event.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Events come in bursts (a `..data` swap is several renames): wait this long, then read once.
const SETTLE: Duration = Duration::from_millis(100);

/// Which files make the identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `operator_id` of a shared identity directory; `None` for an ingress's static files.
    pub operator_id: Option<PathBuf>,
    /// Metric label and log field: `identity_dir` or `client_cert`.
    pub source: &'static str,
}

impl IdentityFiles {
    /// The files of a shared identity directory (`ngrok.identity_dir`).
    pub fn identity_dir(dir: &Path) -> IdentityFiles {
        IdentityFiles {
            cert: dir.join(store::CERT_FILE),
            key: dir.join(store::KEY_FILE),
            operator_id: Some(dir.join(store::OPERATOR_ID_FILE)),
            source: "identity_dir",
        }
    }

    /// An ingress's `client_cert` and `client_key`.
    pub fn client_files(cert: PathBuf, key: PathBuf) -> IdentityFiles {
        IdentityFiles {
            cert,
            key,
            operator_id: None,
            source: "client_cert",
        }
    }
}

/// Why the files do not make an identity. Names the file at fault; never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{key} does not fit {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Operator(StoreError),
    #[error("{0}: missing (the identity directory holds no operator id)")]
    NoOperator(PathBuf),
}

/// Which configured file an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    Cert,
    Key,
    Operator,
}

impl FilesError {
    pub fn role(&self, files: &IdentityFiles) -> FileRole {
        match self {
            FilesError::Read { path, .. } if *path == files.key => FileRole::Key,
            FilesError::Key { .. } | FilesError::Mismatch { .. } => FileRole::Key,
            FilesError::Operator(_) | FilesError::NoOperator(_) => FileRole::Operator,
            _ => FileRole::Cert,
        }
    }
}

/// What the files held at one read.
struct Contents {
    cert_pem: String,
    key: Secret,
    operator_id: Option<String>,
    /// Over the raw bytes of all files: tells a change from a re-read of the same content.
    digest: u64,
}

impl Contents {
    fn read(files: &IdentityFiles) -> Result<Contents, FilesError> {
        let read = |path: &Path| {
            crate::config::read_document(path).map_err(|source| FilesError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        let operator = match &files.operator_id {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&cert, &key, &operator).hash(&mut h);
        let digest = h.finish();
        let cert_pem = String::from_utf8(cert).map_err(|_| FilesError::Certificate {
            path: files.cert.clone(),
            reason: "not PEM text".into(),
        })?;
        let key = Secret::new(String::from_utf8(key).map_err(|_| FilesError::Key {
            path: files.key.clone(),
            reason: "not PEM text".into(),
        })?);
        let operator_id = match (&files.operator_id, operator) {
            (Some(path), Some(_)) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let saved = store::load_identity_operator(dir)
                    .map_err(FilesError::Operator)?
                    .ok_or_else(|| FilesError::NoOperator(path.clone()))?;
                Some(saved.operator_id)
            }
            _ => None,
        };
        Ok(Contents {
            cert_pem,
            key,
            operator_id,
            digest,
        })
    }

    /// Checks the pair: the certificate parses, the key parses and fits it.
    fn certified(&self, files: &IdentityFiles) -> Result<certificate::CertInfo, FilesError> {
        let info =
            certificate::inspect(&self.cert_pem).map_err(|reason| FilesError::Certificate {
                path: files.cert.clone(),
                reason,
            })?;
        if crate::identity::parse_private_key(self.key.expose().as_bytes()).is_none() {
            return Err(FilesError::Key {
                path: files.key.clone(),
                reason: "no usable private key (expected a `* PRIVATE KEY` block)".into(),
            });
        }
        certificate::certified_key(&self.cert_pem, &self.key).map_err(|reason| {
            FilesError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason,
            }
        })?;
        Ok(info)
    }
}

/// A client identity that follows its files.
pub struct WatchedIdentity {
    files: IdentityFiles,
    identity: Arc<ClientIdentity>,
    operator_id: watch::Sender<String>,
    /// Digest of the contents in force, and of the last refused contents (logged once).
    in_force: AtomicU64,
    refused: AtomicU64,
    watching: AtomicBool,
}

impl std::fmt::Debug for WatchedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedIdentity")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl WatchedIdentity {
    /// Reads the files once; an unreadable, half-written or mismatched set is an error naming
    /// the file. Nothing is watched until [`WatchedIdentity::watch`].
    pub fn load(files: IdentityFiles) -> Result<WatchedIdentity, FilesError> {
        let contents = Contents::read(&files)?;
        let info = contents.certified(&files)?;
        if files.operator_id.is_some() && contents.operator_id.is_none() {
            return Err(FilesError::NoOperator(
                files.operator_id.clone().unwrap_or_default(),
            ));
        }
        let identity = ClientIdentity::new(&contents.cert_pem, &contents.key).map_err(|e| {
            FilesError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason: e.to_string(),
            }
        })?;
        if files.source == "identity_dir" {
            telemetry::set_certificate_expiry(info.not_after.unix_timestamp());
        }
        Ok(WatchedIdentity {
            operator_id: watch::Sender::new(contents.operator_id.clone().unwrap_or_default()),
            identity: Arc::new(identity),
            in_force: AtomicU64::new(contents.digest),
            refused: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            files,
        })
    }

    pub fn files(&self) -> &IdentityFiles {
        &self.files
    }

    /// The hot-swappable identity handed to ingress TLS configs.
    pub fn identity(&self) -> Arc<ClientIdentity> {
        self.identity.clone()
    }

    /// The operator id in force (empty for static files); changes with the files.
    pub fn operator_id(&self) -> watch::Receiver<String> {
        self.operator_id.subscribe()
    }

    /// Reads the files again and swaps a new, good pair in. Returns whether it swapped.
    pub fn recheck(&self) -> bool {
        let refuse = |digest: u64, e: &FilesError| {
            if self.refused.swap(digest, Ordering::AcqRel) != digest {
                telemetry::identity_refused(self.files.source);
                tracing::warn!(
                    source = self.files.source,
                    "new client identity refused; the one in force stays: {e}"
                );
            }
        };
        let contents = match Contents::read(&self.files) {
            Ok(c) => c,
            Err(e) => {
                // Unreadable (mid-swap, removed): the digest of the error text stands for it.
                let mut h = std::collections::hash_map::DefaultHasher::new();
                e.to_string().hash(&mut h);
                refuse(h.finish(), &e);
                return false;
            }
        };
        if contents.digest == self.in_force.load(Ordering::Acquire) {
            self.refused.store(0, Ordering::Release);
            return false;
        }
        let info = match contents.certified(&self.files) {
            Ok(info) => info,
            Err(e) => {
                refuse(contents.digest, &e);
                return false;
            }
        };
        if let Err(e) = self.identity.replace(&contents.cert_pem, &contents.key) {
            refuse(
                contents.digest,
                &FilesError::Key {
                    path: self.files.key.clone(),
                    reason: e.to_string(),
                },
            );
            return false;
        }
        self.in_force.store(contents.digest, Ordering::Release);
        self.refused.store(0, Ordering::Release);
        let operator = contents.operator_id.unwrap_or_default();
        let operator_changed = self.operator_id.send_if_modified(|current| {
            if *current != operator {
                *current = operator.clone();
                true
            } else {
                false
            }
        });
        telemetry::identity_rotated(self.files.source);
        if self.files.source == "identity_dir" {
            telemetry::set_certificate_expiry(info.not_after.unix_timestamp());
        }
        tracing::info!(
            source = self.files.source,
            cert = %self.files.cert.display(),
            operator_id = %operator,
            operator_changed,
            "client identity rotated; valid until {}",
            rfc3339(info.not_after)
        );
        true
    }

    /// Starts following the files (once; later calls do nothing). Needs a tokio runtime. The
    /// task ends when the last handle to this identity is dropped.
    pub fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let changed = Arc::new(Notify::new());
        let watcher = watch_dirs(&self.files, changed.clone());
        let weak = Arc::downgrade(self);
        tokio::spawn(follow(weak, changed, watcher));
    }
}

async fn follow(
    weak: Weak<WatchedIdentity>,
    changed: Arc<Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(SETTLE).await,
            _ = tick.tick() => {}
        }
        let Some(me) = weak.upgrade() else { return };
        me.recheck();
    }
}

/// Watches the directories holding the files (not the files: a rename-save or a `..data` swap
/// replaces them). `None` when watching is impossible; the periodic re-read still runs.
fn watch_dirs(files: &IdentityFiles, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dirs: BTreeSet<PathBuf> = [
        Some(&files.cert),
        Some(&files.key),
        files.operator_id.as_ref(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|p| crate::fs_watch::dirs_for(&crate::fs_watch::parent_dir(p)))
    .collect();
    let mut watcher = match crate::fs_watch::content_watcher(move |_| changed.notify_one()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "cannot watch client identity files ({e}); reading them every {RECHECK_INTERVAL:?}"
            );
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}); reading it every {RECHECK_INTERVAL:?}",
                dir.display()
            );
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_dir(dir: &Path, op: &str, (cert, key): &(String, String)) {
        std::fs::write(dir.join("operator_id"), format!("{op}\n")).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    #[test]
    fn follows_good_pairs_and_refuses_mismatched_ones() {
        let dir = tempfile::tempdir().unwrap();
        let one = pair("one.test");
        write_dir(dir.path(), "k8sop_1", &one);
        let w = WatchedIdentity::load(IdentityFiles::identity_dir(dir.path())).unwrap();
        let ops = w.operator_id();
        assert_eq!(*ops.borrow(), "k8sop_1");
        assert!(!w.recheck(), "same content: no swap");

        // A new key with the old certificate (a half-done rotation): refused, old one stays.
        let two = pair("two.test");
        std::fs::write(dir.path().join("tls.key"), &two.1).unwrap();
        assert!(!w.recheck());
        assert_eq!(
            w.identity().certificate_info().unwrap().sans,
            ["DNS:one.test"]
        );
        // Truncated certificate: refused too.
        std::fs::write(dir.path().join("tls.crt"), &two.0[..40]).unwrap();
        assert!(!w.recheck());

        write_dir(dir.path(), "k8sop_2", &two);
        assert!(w.recheck());
        assert_eq!(
            w.identity().certificate_info().unwrap().sans,
            ["DNS:two.test"]
        );
        assert_eq!(*ops.borrow(), "k8sop_2");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::identity_dir(dir.path());
        let e = WatchedIdentity::load(files.clone()).unwrap_err();
        assert_eq!(e.role(&files), FileRole::Cert);
        assert!(e.to_string().contains("tls.crt"), "{e}");
        let one = pair("one.test");
        let two = pair("two.test");
        write_dir(dir.path(), "k8sop_1", &one);
        std::fs::write(dir.path().join("tls.key"), &two.1).unwrap();
        let e = WatchedIdentity::load(files.clone()).unwrap_err();
        assert_eq!(e.role(&files), FileRole::Key);
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
        std::fs::write(dir.path().join("tls.key"), &one.1).unwrap();
        std::fs::write(dir.path().join("operator_id"), "two words\n").unwrap();
        let e = WatchedIdentity::load(files.clone()).unwrap_err();
        assert_eq!(e.role(&files), FileRole::Operator);
    }
}
