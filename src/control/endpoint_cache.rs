//! The last good set of discovered endpoints, saved in `state_dir`, so that a restart exposes
//! it at once: before the first poll answers, and while the API cannot be reached.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::identity::StateStore;
use crate::snapshot::BoundUrl;

/// The file in `state_dir`.
pub const FILE: &str = "endpoints.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// The operator the set was discovered for: another operator's set is not used.
    operator_id: String,
    /// When it was saved (RFC 3339), for people reading the file.
    saved_at: String,
    endpoints: Vec<String>,
}

pub struct EndpointCache {
    store: StateStore,
    /// The operator in force (it changes when a shared identity rotates to another one).
    operator_id: tokio::sync::watch::Receiver<String>,
    /// What the file holds now, as far as this process knows.
    on_disk: Option<BTreeSet<BoundUrl>>,
    /// A save failed and was reported; reported again only after one succeeds.
    failing: bool,
}

impl EndpointCache {
    pub fn new(
        store: StateStore,
        operator_id: tokio::sync::watch::Receiver<String>,
    ) -> EndpointCache {
        EndpointCache {
            store,
            operator_id,
            on_disk: None,
            failing: false,
        }
    }

    /// The set saved for this operator by an earlier run. A missing file is `None`; an
    /// unreadable one, or one saved for another operator, is reported and `None`.
    pub fn load(&mut self) -> Option<BTreeSet<BoundUrl>> {
        let path = self.store.dir().join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: cannot read the saved endpoints: {e}", path.display());
                return None;
            }
        };
        let saved: Saved = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{}: ignoring the saved endpoints: {e}", path.display());
                return None;
            }
        };
        if saved.operator_id != *self.operator_id.borrow() {
            tracing::info!(
                saved_for = %saved.operator_id,
                "{}: saved for another operator; not used",
                path.display()
            );
            return None;
        }
        let mut set = BTreeSet::new();
        for url in &saved.endpoints {
            match BoundUrl::parse(url, None) {
                Ok(u) => {
                    set.insert(u);
                }
                Err(e) => tracing::warn!("{}: skipping `{url}`: {e}", path.display()),
            }
        }
        self.on_disk = Some(set.clone());
        Some(set)
    }

    /// Saves `set` when the file holds something else. A failure is logged once (until a save
    /// succeeds again) and changes nothing else: the set in memory serves.
    pub fn save(&mut self, set: &BTreeSet<BoundUrl>) {
        if self.on_disk.as_ref() == Some(set) {
            return;
        }
        let saved = Saved {
            operator_id: self.operator_id.borrow().clone(),
            saved_at: crate::identity::registration::rfc3339(time::OffsetDateTime::now_utc()),
            endpoints: set.iter().map(ToString::to_string).collect(),
        };
        let mut text = serde_json::to_string_pretty(&saved).unwrap_or_default();
        text.push('\n');
        match self.store.write_atomic(FILE, text.as_bytes()) {
            Ok(()) => {
                self.on_disk = Some(set.clone());
                if self.failing {
                    tracing::info!("saving discovered endpoints works again");
                }
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(
                        "cannot save the discovered endpoints (a restart would wait for the API \
                         to expose them): {e}"
                    );
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str) -> tokio::sync::watch::Receiver<String> {
        tokio::sync::watch::channel(id.to_string()).1
    }

    fn urls(list: &[&str]) -> BTreeSet<BoundUrl> {
        list.iter()
            .map(|u| BoundUrl::parse(u, None).unwrap())
            .collect()
    }

    #[test]
    fn a_saved_set_comes_back_for_its_operator_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state")).unwrap();
        let set = urls(&["tcp://db.prod:5432", "http://web.prod:80"]);
        let mut cache = EndpointCache::new(store.clone(), op("op_1"));
        assert_eq!(cache.load(), None, "nothing saved yet");
        cache.save(&set);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("state").join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            EndpointCache::new(store.clone(), op("op_1")).load(),
            Some(set)
        );
        assert_eq!(EndpointCache::new(store.clone(), op("op_2")).load(), None);
        std::fs::write(dir.path().join("state").join(FILE), "{ not json").unwrap();
        assert_eq!(EndpointCache::new(store, op("op_1")).load(), None);
    }
}
