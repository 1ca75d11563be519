//! The state of one task of a stateful operator: a [`StateStore`] per key
//! group the task owns, their working copies in one backend.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::ObjectStore;

use super::{BackendKind, KeyGroups, MemoryBackend, StateBackend, StateMetrics, StateStore};
use crate::error::{Result, WeirError};

/// How many key groups are read from the checkpoint at once on open.
const OPEN_CONCURRENCY: usize = 16;

/// A task's state: one [`StateStore`] per key group of its range.
pub struct KeyedState {
    groups: KeyGroups,
    range: Range<u16>,
    stores: Vec<StateStore>,
}

impl KeyedState {
    /// Opens the key groups `range` of operator `operator`'s state at
    /// `version` (`checkpoint`: the store rooted at the checkpoint).
    pub async fn open(
        checkpoint: Arc<dyn ObjectStore>,
        operator: &str,
        kind: BackendKind,
        groups: KeyGroups,
        range: Range<u16>,
        version: u64,
    ) -> Result<KeyedState> {
        // RocksDB: one database per task, each key group under its own
        // two-byte prefix; in memory, a map per key group.
        let shared = match kind {
            BackendKind::Rocksdb => Some(Arc::new(Mutex::new(super::open_backend(kind)?))),
            BackendKind::Memory => None,
        };
        let opening = range.clone().map(|group| {
            let backend: Box<dyn StateBackend> = match &shared {
                Some(shared) => Box::new(PrefixedBackend {
                    shared: shared.clone(),
                    prefix: group.to_be_bytes(),
                }),
                None => Box::new(MemoryBackend::default()),
            };
            StateStore::open_group(checkpoint.clone(), operator, group, backend, version)
        });
        let stores: Vec<StateStore> = futures::stream::iter(opening)
            .buffered(OPEN_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        Ok(KeyedState {
            groups,
            range,
            stores,
        })
    }

    /// Keeps `versions` versions restorable in every key group (see
    /// [`StateStore::retaining`]).
    pub fn retaining(mut self, versions: u64) -> KeyedState {
        self.stores = self
            .stores
            .into_iter()
            .map(|s| s.retaining(versions))
            .collect();
        self
    }

    /// The query's key groups.
    pub fn groups(&self) -> KeyGroups {
        self.groups
    }

    /// The key groups this task owns.
    pub fn range(&self) -> Range<u16> {
        self.range.clone()
    }

    /// Key group `group`'s state, to change (one this task owns).
    pub fn group_mut(&mut self, group: u16) -> &mut StateStore {
        &mut self.stores[usize::from(group - self.range.start)]
    }

    /// Every key group's state with its id, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &StateStore)> {
        self.range.clone().zip(&self.stores)
    }

    /// Commits every key group's changes as `version`.
    pub async fn commit(&mut self, version: u64) -> Result<()> {
        let commits = self.stores.iter_mut().map(|s| s.commit(version));
        futures::stream::iter(commits)
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Deletes what batches after the loaded version wrote (see
    /// [`StateStore::discard_uncommitted`]).
    pub async fn discard_uncommitted(&mut self) -> Result<()> {
        for store in &mut self.stores {
            store.discard_uncommitted().await?;
        }
        Ok(())
    }

    /// Rows and bytes held in all key groups.
    pub fn metrics(&self) -> StateMetrics {
        self.stores
            .iter()
            .map(|s| s.metrics())
            .fold(StateMetrics::default(), |a, b| a + b)
    }
}

/// One key group's view of a backend shared by a task's key groups.
struct PrefixedBackend {
    shared: Arc<Mutex<Box<dyn StateBackend>>>,
    prefix: [u8; 2],
}

impl PrefixedBackend {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut prefixed = Vec::with_capacity(2 + key.len());
        prefixed.extend_from_slice(&self.prefix);
        prefixed.extend_from_slice(key);
        prefixed
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Box<dyn StateBackend>>> {
        self.shared
            .lock()
            .map_err(|_| WeirError::Internal("a state backend's lock was poisoned".into()))
    }
}

impl StateBackend for PrefixedBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.lock()?.get(&self.key(key))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let key = self.key(key);
        self.lock()?.put(&key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        let key = self.key(key);
        self.lock()?.delete(&key)
    }

    fn scan_from(&self, start: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let prefix = self.prefix;
        self.lock()?.scan_from(&self.key(start), &mut |key, value| {
            key.starts_with(&prefix) && visit(&key[2..], value)
        })
    }
}
