//! Keyed operator state: a [`StateStore`] per stateful operator, versioned
//! per batch and made durable in the checkpoint.
//!
//! The working copy lives in a [`StateBackend`] — RocksDB in a local
//! scratch directory (default) or an in-memory map. Durability comes from
//! the checkpoint, as in Spark's changelog checkpointing:
//!
//! ```text
//! <checkpoint>/state/<operator>/0/<V>.delta      the changes batch V-1 made
//! <checkpoint>/state/<operator>/0/<V>.snapshot   every state row at version V
//! ```
//!
//! Version V is the state after batch V-1 (version 0 is empty). A restart
//! that resumes at batch N loads the newest snapshot at or below N and
//! replays the deltas after it, so the state is exactly that of the last
//! committed batch, whichever backend holds it. When a new snapshot is
//! written, files no retained version needs are deleted: those older than
//! the previous snapshot and than the snapshot that restores the oldest of
//! the last `min_batches_to_retain` versions.

mod memory;
mod rocks;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

pub use memory::MemoryBackend;
pub use rocks::RocksBackend;

use crate::error::{Result, WeirError};

/// Which backend holds an operator's working state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// RocksDB in a local scratch directory.
    #[default]
    Rocksdb,
    /// A sorted in-memory map.
    Memory,
}

/// Ordered key-value storage for the working copy of operator state.
pub trait StateBackend: Send {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<()>;
    /// Keys from `start` (inclusive) in ascending order, with their values,
    /// while `visit` returns true.
    fn scan_from(&self, start: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
}

/// Opens a fresh, empty backend of `kind`.
pub fn open_backend(kind: BackendKind) -> Result<Box<dyn StateBackend>> {
    Ok(match kind {
        BackendKind::Memory => Box::new(MemoryBackend::default()),
        BackendKind::Rocksdb => Box::new(RocksBackend::open_scratch()?),
    })
}

/// Size of an operator's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateMetrics {
    /// Keys held.
    pub rows: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
}

impl std::ops::Add for StateMetrics {
    type Output = StateMetrics;

    /// The size of two operators' states together.
    fn add(self, other: StateMetrics) -> StateMetrics {
        StateMetrics {
            rows: self.rows + other.rows,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// One change in a delta file.
#[derive(Serialize, Deserialize)]
struct Change {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// A snapshot every this many versions bounds how many deltas a restart replays.
const SNAPSHOT_EVERY: u64 = 10;

/// An operator's state: a backend plus the changes of the current batch,
/// committed to the checkpoint as a new version.
pub struct StateStore {
    backend: Box<dyn StateBackend>,
    /// Changes since the last commit (None = deleted).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    checkpoint: Arc<dyn ObjectStore>,
    dir: String,
    version: u64,
    metrics: StateMetrics,
    /// Versions kept restorable behind the latest (`min_batches_to_retain`).
    retained: u64,
}

impl StateStore {
    /// Opens operator `operator`'s state at `version` from the checkpoint
    /// (`checkpoint` is the store rooted at the checkpoint location).
    pub async fn open(
        checkpoint: Arc<dyn ObjectStore>,
        operator: &str,
        kind: BackendKind,
        version: u64,
    ) -> Result<StateStore> {
        let mut store = StateStore {
            backend: open_backend(kind)?,
            pending: BTreeMap::new(),
            checkpoint,
            dir: format!("state/{operator}/0"),
            version: 0,
            metrics: StateMetrics::default(),
            retained: 1,
        };
        store.restore(version).await?;
        Ok(store)
    }

    /// Keeps the files that restore any of the last `versions` versions
    /// (the query's `min_batches_to_retain`); by default only what a
    /// restart or a replay of the last batch needs.
    pub fn retaining(mut self, versions: u64) -> StateStore {
        self.retained = versions.max(1);
        self
    }

    /// The version loaded or last committed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Rows and bytes held.
    pub fn metrics(&self) -> StateMetrics {
        self.metrics
    }

    /// The value under `key`, including uncommitted changes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.backend.get(key),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let old = self.stored_len(key)?;
        self.account(key.len(), old, Some(value.len()));
        self.backend.put(key, value)?;
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        let Some(old) = self.stored_len(key)? else {
            return Ok(());
        };
        self.account(key.len(), Some(old), None);
        self.backend.delete(key)?;
        self.pending.insert(key.to_vec(), None);
        Ok(())
    }

    /// Length of the value under `key`, if any. A key changed in this batch
    /// is answered from the changelog, sparing a backend read.
    fn stored_len(&self, key: &[u8]) -> Result<Option<usize>> {
        match self.pending.get(key) {
            Some(change) => Ok(change.as_ref().map(Vec::len)),
            None => Ok(self.backend.get(key)?.map(|v| v.len())),
        }
    }

    /// Keys from `start` in ascending order while `visit` returns true.
    pub fn scan_from(
        &self,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.backend.scan_from(start, visit)
    }

    fn account(&mut self, key_len: usize, old: Option<usize>, new: Option<usize>) {
        let size = |v: Option<usize>| v.map_or(0, |v| (key_len + v) as u64);
        match (old, new) {
            (None, Some(_)) => self.metrics.rows += 1,
            (Some(_), None) => self.metrics.rows -= 1,
            _ => {}
        }
        self.metrics.bytes = self.metrics.bytes + size(new) - size(old);
    }

    /// Makes this batch's changes durable as `version` (written again, with
    /// the same content, if the batch is replayed).
    pub async fn commit(&mut self, version: u64) -> Result<()> {
        let changes: Vec<Change> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(key, value)| Change { key, value })
            .collect();
        self.write(&format!("{version}.delta"), &changes).await?;
        if version.is_multiple_of(SNAPSHOT_EVERY) {
            let mut rows = Vec::new();
            self.backend.scan_from(&[], &mut |k, v| {
                rows.push(Change {
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
                true
            })?;
            self.write(&format!("{version}.snapshot"), &rows).await?;
            crate::faults::crash_point("state-before-trim", version - 1);
            // The oldest retained version restores from the newest snapshot
            // at or below it; a replay of this batch, from the previous one.
            let oldest_retained = version.saturating_sub(self.retained);
            let oldest_needed = (oldest_retained - oldest_retained % SNAPSHOT_EVERY)
                .min(version.saturating_sub(SNAPSHOT_EVERY));
            self.remove_before(oldest_needed).await?;
        }
        self.version = version;
        Ok(())
    }

    /// Deletes deltas and snapshots older than version `oldest`. Called with
    /// the previous snapshot's version once a new snapshot is written: a
    /// replay of the batch that wrote the new one still restores from the
    /// previous snapshot, and no restart ever needs anything older.
    async fn remove_before(&self, oldest: u64) -> Result<()> {
        let prefix = ObjectPath::from(self.dir.as_str());
        let listed: Vec<_> = self
            .checkpoint
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| WeirError::storage(&prefix, e))?;
        for meta in listed {
            let version = meta
                .location
                .filename()
                .and_then(|name| name.split('.').next())
                .and_then(|v| v.parse::<u64>().ok());
            if version.is_some_and(|v| v < oldest) {
                match self.checkpoint.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(WeirError::storage(&meta.location, e)),
                }
            }
        }
        Ok(())
    }

    async fn write(&self, name: &str, changes: &[Change]) -> Result<()> {
        let bytes = postcard::to_stdvec(changes)
            .map_err(|e| WeirError::Internal(format!("encoding state: {e}")))?;
        let path = ObjectPath::from(format!("{}/{name}", self.dir));
        self.checkpoint
            .put(&path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| WeirError::storage(&path, e))
    }

    async fn read(&self, name: &str) -> Result<Option<Vec<Change>>> {
        let path = ObjectPath::from(format!("{}/{name}", self.dir));
        let bytes = match self.checkpoint.get(&path).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| WeirError::storage(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(WeirError::storage(&path, e)),
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| WeirError::CheckpointCorrupt {
                path: path.to_string(),
                reason: format!("cannot decode state: {e}"),
            })
    }

    /// Loads `version`: the newest snapshot at or below it, then the deltas.
    async fn restore(&mut self, version: u64) -> Result<()> {
        let mut start = 0;
        for candidate in (1..=version)
            .rev()
            .filter(|v| v.is_multiple_of(SNAPSHOT_EVERY))
        {
            if let Some(rows) = self.read(&format!("{candidate}.snapshot")).await? {
                self.apply(rows)?;
                start = candidate;
                break;
            }
        }
        for v in start + 1..=version {
            let changes = self.read(&format!("{v}.delta")).await?.ok_or_else(|| {
                WeirError::CheckpointCorrupt {
                    path: format!("{}/{v}.delta", self.dir),
                    reason: format!("the file is missing but state version {version} needs it"),
                }
            })?;
            self.apply(changes)?;
        }
        self.pending.clear();
        self.version = version;
        Ok(())
    }

    fn apply(&mut self, changes: Vec<Change>) -> Result<()> {
        for change in changes {
            match change.value {
                Some(value) => self.put(&change.key, &value)?,
                None => self.delete(&change.key)?,
            }
        }
        Ok(())
    }
}
