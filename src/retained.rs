//! State that outlives a snapshot: connection counts, rate-limit buckets, retry budgets, circuit
//! breakers, http upstream pools. One store, owned by the control plane and handed to every
//! build, keyed by what the state belongs to (`kind`, the owner's name, and a fingerprint of the
//! config that shaped it). A build asks for its state by key and gets the one the snapshot in
//! force uses when the key is unchanged, so a reload that changes one filter keeps every other
//! listener's counters and buckets.
//!
//! Entries no build has asked for since the last [`Retained::commit`] are dropped there (the
//! snapshots still using them keep their own `Arc`s until their last connection ends).
//! `validate` builds use a throwaway store.

use std::any::Any;
use std::collections::{HashMap, HashSet};
// Only builds touch the store, never the data path, so a plain mutex is fine here.
use std::sync::Arc;
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

/// What a piece of retained state is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// What the state is (`"network/connection_limit"`, `"cluster/retry_budget"`, ...).
    pub kind: &'static str,
    /// Whose it is: a listener, route or cluster name (with a position where one owner may
    /// hold several of a kind).
    pub owner: String,
    /// The config that shaped it (serialized); a changed config gets fresh state. Boxed: a
    /// `String` from `serde_json` reserves 128 bytes for text as short as `null`, and each
    /// discovered endpoint holds several keys.
    pub fingerprint: Box<str>,
}

impl StateKey {
    pub fn new(
        kind: &'static str,
        owner: impl Into<String>,
        config: &impl serde::Serialize,
    ) -> Self {
        StateKey {
            kind,
            owner: owner.into(),
            fingerprint: serde_json::to_string(config)
                .unwrap_or_default()
                .into_boxed_str(),
        }
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<StateKey, Arc<dyn Any + Send + Sync>>,
    /// Keys asked for since the last commit.
    touched: HashSet<StateKey>,
}

/// The store (cheap to clone: every clone is the same store).
#[derive(Clone, Default)]
pub struct Retained {
    #[allow(clippy::disallowed_types)]
    inner: Arc<Mutex<Entries>>,
}

impl std::fmt::Debug for Retained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|e| e.map.len()).unwrap_or(0);
        f.debug_struct("Retained").field("entries", &n).finish()
    }
}

impl Retained {
    pub fn new() -> Self {
        Retained::default()
    }

    /// The state under `key`, made by `make` when there is none (or one of another type).
    pub fn get_or_insert<T: Any + Send + Sync>(
        &self,
        key: StateKey,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        // Build-time only (never on the data path), so a plain mutex is fine.
        let mut entries = match self.inner.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.touched.insert(key.clone());
        if let Some(found) = entries
            .map
            .get(&key)
            .and_then(|a| a.clone().downcast::<T>().ok())
        {
            return found;
        }
        let made = Arc::new(make());
        entries.map.insert(key, made.clone());
        made
    }

    /// Like [`Retained::get_or_insert`] for state whose making can fail (nothing is kept then).
    pub fn get_or_try_insert<T: Any + Send + Sync, E>(
        &self,
        key: StateKey,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        {
            let mut entries = match self.inner.lock() {
                Ok(e) => e,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(found) = entries
                .map
                .get(&key)
                .and_then(|a| a.clone().downcast::<T>().ok())
            {
                entries.touched.insert(key);
                return Ok(found);
            }
        }
        // Made outside the lock (it may read files); a racing maker loses to the first insert.
        let made = make()?;
        Ok(self.get_or_insert(key, || made))
    }

    /// Called once a build has been published: forgets the state no build asked for since the
    /// previous commit.
    pub fn commit(&self) {
        let mut entries = match self.inner.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let touched = std::mem::take(&mut entries.touched);
        entries.map.retain(|k, _| touched.contains(k));
    }

    /// How many entries the store holds (for tests and views).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|e| e.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn same_key_same_state_until_a_commit_without_it() {
        let store = Retained::new();
        let key = StateKey::new("t", "a", &1);
        let first = store.get_or_insert(key.clone(), || AtomicU32::new(7));
        first.store(9, Ordering::Relaxed);
        store.commit();
        let again = store.get_or_insert(key.clone(), || AtomicU32::new(7));
        assert!(Arc::ptr_eq(&first, &again));
        store.commit();
        // A build that no longer asks for it: gone at the next commit.
        store.commit();
        let fresh = store.get_or_insert(key, || AtomicU32::new(7));
        assert_eq!(fresh.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn a_changed_config_gets_fresh_state() {
        let store = Retained::new();
        let a = store.get_or_insert(StateKey::new("t", "a", &1), || AtomicU32::new(1));
        let b = store.get_or_insert(StateKey::new("t", "a", &2), || AtomicU32::new(1));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(store.len(), 2);
    }
}
