//! `StateStore`: the registration's files under `state_dir`, or a shared identity directory
//! written by `bindgate identity issue` (see [`StateStore::open_identity_dir`]).
//!
//! The directory is 0700 (tightened if it exists looser); every file is written atomically
//! (a temporary file in the same directory, fsync, rename, fsync of the directory) with mode
//! 0600, so a crash leaves either the old file or the new one, never half of either.
//! `tls.key` and `tls.crt` are two files: a crash between their renames can pair a new key with
//! an old certificate, which is why loaders check that they match.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub const OPERATOR_FILE: &str = "operator.json";
pub const KEY_FILE: &str = "tls.key";
pub const CERT_FILE: &str = "tls.crt";
pub const NODE_ID_FILE: &str = "node_id";
/// A shared identity directory: the operator's id, one line.
pub const OPERATOR_ID_FILE: &str = "operator_id";
/// A shared identity directory: the ingress `host:port` the API gave, one line (optional for
/// readers: an ingress `address` in their config, or the API, can say it instead).
pub const INGRESS_ENDPOINT_FILE: &str = "ingress_endpoint";
/// The node id every writer of a shared identity uses: the operator belongs to the deployment
/// (`deployment.name` and `namespace`), not to the host that happened to run the writer, so a
/// writer starting from an empty directory adopts the deployment's operator.
pub const SHARED_NODE_ID: &str = "shared";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state_dir {} is in use by another bindgate process ({holder}); give each process a state_dir of its own",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
}

/// The exclusive lock of a state directory (its file `lock`, holding the owner's pid), taken by
/// `run` so that two processes never register, allocate ports or save endpoint sets in one
/// directory. Held until the process ends, however it ends: the kernel releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `operator.json` holds: which registration this host is, and where its ingress is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOperator {
    pub operator_id: String,
    pub ingress_endpoint: String,
    /// Expiry of the stored certificate (RFC 3339), for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The API the operator was registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// How the directory's files are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `state_dir`: `operator.json`, `node_id`, `tls.key`, `tls.crt` (and other state).
    StateDir,
    /// A shared identity (`identity issue --out DIR`, `ngrok.identity_dir`): `operator_id`,
    /// `ingress_endpoint`, `tls.key`, `tls.crt`, nothing else; the node id is [`SHARED_NODE_ID`].
    Identity,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
    layout: Layout,
}

impl StateStore {
    /// Opens `dir`, creating it 0700, or tightening an existing one to 0700.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateStore, StoreError> {
        let (dir, mode) = create_dir(dir.into())?;
        if mode != DIR_MODE {
            tracing::warn!(
                dir = %dir.display(),
                "state directory had mode {mode:o}; tightening to {DIR_MODE:o}"
            );
            fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io(&dir))?;
        }
        Ok(StateStore {
            dir,
            layout: Layout::StateDir,
        })
    }

    /// Takes the directory's lock, or says which process holds it.
    pub fn lock(&self) -> Result<StateLock, StoreError> {
        use std::io::{Read, Seek};
        let path = self.dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io(&path))?;
        // flock(2): released with the file, and by the kernel when the process ends.
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "its pid not written yet".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(StoreError::InUse {
                    dir: self.dir.clone(),
                    holder,
                });
            }
            Err(e) => return Err(io(&path)(e.into())),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io(&path))?;
        Ok(StateLock { _file: file })
    }

    /// Opens a shared identity directory for writing (`identity issue --out DIR`): created 0700
    /// when missing; an existing one keeps its mode (it may be prepared for readers of another
    /// user), with a warning when others can read it.
    pub fn open_identity_dir(dir: impl Into<PathBuf>) -> Result<StateStore, StoreError> {
        let (dir, mode) = create_dir(dir.into())?;
        if mode & 0o007 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "identity directory has mode {mode:o}: other users can list it"
            );
        }
        Ok(StateStore {
            dir,
            layout: Layout::Identity,
        })
    }

    /// Opens `dir` if it exists, creating and changing nothing (for read-only commands).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Option<StateStore>, StoreError> {
        let dir = dir.into();
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(Some(StateStore {
                dir,
                layout: Layout::StateDir,
            })),
            Ok(_) => Err(StoreError::Corrupt {
                path: dir,
                reason: "not a directory".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Where the saved operator is: `operator.json`, or `operator_id` in an identity directory.
    pub fn operator_path(&self) -> PathBuf {
        match self.layout {
            Layout::StateDir => self.dir.join(OPERATOR_FILE),
            Layout::Identity => self.dir.join(OPERATOR_ID_FILE),
        }
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }
    pub fn node_id_path(&self) -> PathBuf {
        self.dir.join(NODE_ID_FILE)
    }

    /// The saved registration, if any.
    pub fn load_operator(&self) -> Result<Option<SavedOperator>, StoreError> {
        if self.layout == Layout::Identity {
            return load_identity_operator(&self.dir);
        }
        let path = self.operator_path();
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let saved: SavedOperator =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("not a saved registration: {e}"),
            })?;
        if saved.operator_id.is_empty() {
            return Err(StoreError::Corrupt {
                path,
                reason: "empty operator_id".into(),
            });
        }
        Ok(Some(saved))
    }

    pub fn save_operator(&self, saved: &SavedOperator) -> Result<(), StoreError> {
        if self.layout == Layout::Identity {
            // Rewritten only when they change, so a run with nothing due touches no file.
            self.write_if_changed(
                OPERATOR_ID_FILE,
                format!("{}\n", saved.operator_id).as_bytes(),
            )?;
            return self.write_if_changed(
                INGRESS_ENDPOINT_FILE,
                format!("{}\n", saved.ingress_endpoint).as_bytes(),
            );
        }
        let mut text = serde_json::to_string_pretty(saved).map_err(|e| StoreError::Corrupt {
            path: self.operator_path(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        self.write_atomic(OPERATOR_FILE, text.as_bytes())
    }

    /// The saved certificate (PEM) and key, when both files exist. Whether they are usable is
    /// the caller's question.
    pub fn load_credentials(&self) -> Result<Option<(String, Secret)>, StoreError> {
        let cert = read_optional(&self.cert_path())?;
        let key = read_optional(&self.key_path())?;
        Ok(match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, Secret::new(key))),
            _ => None,
        })
    }

    /// Writes the key and the certificate as a pair: both are written and synced to temporary
    /// files first, and renamed into place only when both writes succeeded, so a failed write
    /// (a full disk) leaves the previous pair as it was, never a new key beside an old
    /// certificate.
    pub fn save_credentials(&self, cert_pem: &str, key: &Secret) -> Result<(), StoreError> {
        let key = self.stage(KEY_FILE, key.expose().as_bytes())?;
        let cert = self.stage(CERT_FILE, cert_pem.as_bytes())?;
        key.commit()?;
        cert.commit()?;
        sync_dir(&self.dir)
    }

    /// The saved node id, without creating one.
    pub fn existing_node_id(&self) -> Result<Option<String>, StoreError> {
        if self.layout == Layout::Identity {
            return Ok(Some(SHARED_NODE_ID.to_owned()));
        }
        Ok(read_optional(&self.node_id_path())?.map(|t| t.trim().to_owned()))
    }

    /// This host's node id: random, created on first use, then stable.
    pub fn node_id(&self) -> Result<String, StoreError> {
        if self.layout == Layout::Identity {
            return Ok(SHARED_NODE_ID.to_owned());
        }
        let path = self.node_id_path();
        if let Some(text) = read_optional(&path)? {
            let id = text.trim();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(StoreError::Corrupt {
                    path,
                    reason: "not a node id (expected letters, digits and `-`); remove the file to get a new one, which makes this host register anew".into(),
                });
            }
            return Ok(id.to_owned());
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.write_atomic(NODE_ID_FILE, format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// Removes the registration's files (`operator.json`, `tls.key`, `tls.crt`) and returns
    /// those that existed. The node id stays: it names this host, not the registration.
    pub fn remove_registration(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let mut paths = vec![self.operator_path(), self.key_path(), self.cert_path()];
        if self.layout == Layout::Identity {
            paths.push(self.dir.join(INGRESS_ENDPOINT_FILE));
        }
        for path in paths {
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Like [`StateStore::write_atomic`], unless the file already holds exactly `data`.
    pub fn write_if_changed(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        match fs::read(self.dir.join(name)) {
            Ok(current) if current == data => Ok(()),
            _ => self.write_atomic(name, data),
        }
    }

    /// Writes `name` in the state directory atomically (temp file, fsync, rename, directory
    /// fsync) with mode 0600.
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.stage(name, data)?.commit()?;
        sync_dir(&self.dir)
    }

    /// Writes `data` to a synced temporary file beside `name` (mode 0600); nothing changes
    /// until [`Staged::commit`]. A failed write removes the temporary file.
    fn stage(&self, name: &str, data: &[u8]) -> Result<Staged, StoreError> {
        let staged = Staged {
            committed: false,
            tmp: self
                .dir
                .join(format!(".{name}.{:016x}.tmp", rand::random::<u64>())),
            path: self.dir.join(name),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&staged.tmp)
            .map_err(io(&staged.tmp))?;
        // From here on, dropping `staged` removes the temporary file.
        file.write_all(data).map_err(io(&staged.path))?;
        file.sync_all().map_err(io(&staged.path))?;
        Ok(staged)
    }
}

/// A synced temporary file waiting to replace `path`; removed if dropped uncommitted.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the temporary file over `path` (the caller syncs the directory).
    fn commit(mut self) -> Result<(), StoreError> {
        fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// An identity directory's `operator_id` (and `ingress_endpoint`, empty when absent).
pub fn load_identity_operator(dir: &Path) -> Result<Option<SavedOperator>, StoreError> {
    let path = dir.join(OPERATOR_ID_FILE);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let id = text.trim();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(StoreError::Corrupt {
            path,
            reason: "not an operator id (expected one line of letters, digits, `_` and `-`)".into(),
        });
    }
    let ingress_endpoint = read_optional(&dir.join(INGRESS_ENDPOINT_FILE))?
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    Ok(Some(SavedOperator {
        operator_id: id.to_owned(),
        ingress_endpoint,
        not_after: None,
        api_url: None,
    }))
}

/// Creates `dir` (0700, with its parents) when missing; returns it with its permission bits.
fn create_dir(dir: PathBuf) -> Result<(PathBuf, u32), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&dir)
        .map_err(io(&dir))?;
    let meta = fs::metadata(&dir).map_err(io(&dir))?;
    if !meta.is_dir() {
        return Err(StoreError::Corrupt {
            path: dir,
            reason: "not a directory".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    Ok((dir, mode))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_dir_and_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state/nested");
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        store.save_credentials("CERT", &Secret::new("KEY")).unwrap();
        let saved = SavedOperator {
            operator_id: "k8sop_1".into(),
            ingress_endpoint: "ing:443".into(),
            not_after: None,
            api_url: None,
        };
        store.save_operator(&saved).unwrap();
        let id = store.node_id().unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(store.node_id().unwrap(), id);
        for f in [KEY_FILE, CERT_FILE, OPERATOR_FILE, NODE_ID_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(store.load_operator().unwrap(), Some(saved));
        let (cert, key) = store.load_credentials().unwrap().unwrap();
        assert_eq!((cert.as_str(), key.expose()), ("CERT", "KEY"));
        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![NODE_ID_FILE, OPERATOR_FILE, CERT_FILE, KEY_FILE]
        );
        let removed = store.remove_registration().unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(store.load_operator().unwrap(), None);
        assert!(store.load_credentials().unwrap().is_none());
        assert_eq!(store.node_id().unwrap(), id);
    }

    #[test]
    fn tightens_an_existing_loose_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("loose");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        StateStore::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn corrupt_files_are_reported_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(root.path()).unwrap();
        fs::write(store.operator_path(), "{not json").unwrap();
        let err = store.load_operator().unwrap_err().to_string();
        assert!(
            err.starts_with(&store.operator_path().display().to_string()),
            "{err}"
        );
        fs::write(store.node_id_path(), "a b\n").unwrap();
        assert!(store.node_id().is_err());
    }

    #[test]
    fn a_state_dir_is_locked_by_one_holder_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(root.path()).unwrap();
        let held = store.lock().unwrap();
        let pid = fs::read_to_string(root.path().join("lock")).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        let mode = fs::metadata(root.path().join("lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
        // Another open file description (as another process would have) is refused.
        let e = StateStore::open(root.path()).unwrap().lock().unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "is in use by another bindgate process (pid {})",
                std::process::id()
            )),
            "{e}"
        );
        drop(held);
        let again = store.lock().unwrap();
        drop(again);
    }
}
