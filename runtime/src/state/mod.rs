//! Keyed operator state: a [`StateStore`] per stateful operator, versioned
//! per batch and made durable in the checkpoint.
//!
//! The working copy lives in a [`StateBackend`] — RocksDB in a local
//! scratch directory (default) or an in-memory map. Durability comes from
//! the checkpoint, as in Spark's changelog checkpointing:
//!
//! ```text
//! <checkpoint>/state/<operator>/<key group>/<V>.delta      the changes batch V-1 made
//! <checkpoint>/state/<operator>/<key group>/<V>.snapshot   every row at version V
//! ```
//!
//! Version V is the state after batch V-1 (version 0 is empty). A key
//! group's delta is written only by a batch that changed it, and a snapshot
//! every [`SNAPSHOT_EVERY`] versions only if it changed since its last. A
//! restart that resumes at batch N loads the newest snapshot at or below N
//! and replays the deltas after it, so the state is exactly that of the
//! last committed batch, whichever backend holds it. When a new snapshot is
//! written, files no retained version needs are deleted: those older than
//! the snapshot that restores the oldest of the last
//! `min_batches_to_retain` versions.
//!
//! A query's key groups ([`KeyGroups`]) are fixed when it first starts;
//! checkpoints from before key groups have one, `0`.

mod key_groups;
mod keyed;
mod memory;
mod rocks;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

pub use key_groups::{DEFAULT_KEY_GROUPS, KeyGroups, MAX_KEY_GROUPS, split_by_group};
pub use keyed::KeyedState;
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
    /// Keys held, but for operators' metadata (keys starting with [`METADATA`]).
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

/// The first byte of an operator's metadata keys (the columns it keeps):
/// [`StateMetrics::rows`] leaves them out.
pub const METADATA: u8 = 0;

/// A snapshot every this many versions bounds how many deltas a restart replays.
pub const SNAPSHOT_EVERY: u64 = 10;

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
    /// Whether a delta was written since the last snapshot.
    changed_since_snapshot: bool,
    /// Files of versions after the one loaded, found when it was loaded.
    uncommitted: Vec<ObjectPath>,
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
        StateStore::open_group(checkpoint, operator, 0, open_backend(kind)?, version).await
    }

    /// Opens key group `group` of operator `operator`'s state at `version`,
    /// its working copy in `backend` (empty).
    pub async fn open_group(
        checkpoint: Arc<dyn ObjectStore>,
        operator: &str,
        group: u16,
        backend: Box<dyn StateBackend>,
        version: u64,
    ) -> Result<StateStore> {
        let mut store = StateStore {
            backend,
            pending: BTreeMap::new(),
            checkpoint,
            dir: format!("state/{operator}/{group}"),
            version: 0,
            metrics: StateMetrics::default(),
            retained: 1,
            changed_since_snapshot: false,
            uncommitted: Vec::new(),
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
        self.account(key, old, Some(value.len()));
        self.backend.put(key, value)?;
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        let Some(old) = self.stored_len(key)? else {
            return Ok(());
        };
        self.account(key, Some(old), None);
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

    fn account(&mut self, key: &[u8], old: Option<usize>, new: Option<usize>) {
        let key_len = key.len();
        let size = |v: Option<usize>| v.map_or(0, |v| (key_len + v) as u64);
        // Keys starting with 0 hold what an operator records of its
        // columns, in every key group: not rows of state.
        if key.first() != Some(&METADATA) {
            match (old, new) {
                (None, Some(_)) => self.metrics.rows += 1,
                (Some(_), None) => self.metrics.rows -= 1,
                _ => {}
            }
        }
        self.metrics.bytes = self.metrics.bytes + size(new) - size(old);
    }

    /// Makes this batch's changes durable as `version` (written again, with
    /// the same content, if the batch is replayed). Nothing is written for a
    /// batch that changed nothing, unless a snapshot is due.
    pub async fn commit(&mut self, version: u64) -> Result<()> {
        if !self.pending.is_empty() {
            let changes: Vec<Change> = std::mem::take(&mut self.pending)
                .into_iter()
                .map(|(key, value)| Change { key, value })
                .collect();
            self.write(&format!("{version}.delta"), &changes).await?;
            self.changed_since_snapshot = true;
        }
        if version.is_multiple_of(SNAPSHOT_EVERY) && self.changed_since_snapshot {
            let mut rows = Vec::new();
            self.backend.scan_from(&[], &mut |k, v| {
                rows.push(Change {
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
                true
            })?;
            self.write(&format!("{version}.snapshot"), &rows).await?;
            self.changed_since_snapshot = false;
            crate::faults::crash_point("state-before-trim", version - 1);
            // The oldest retained version restores from the newest snapshot
            // at or below it (a replay of this batch restores the previous
            // version, which is retained); nothing older is needed.
            let oldest_retained = version.saturating_sub(self.retained);
            self.remove_before_snapshot_of(oldest_retained).await?;
        }
        self.version = version;
        Ok(())
    }

    /// This key group's files, as (version, is a snapshot), oldest first.
    async fn files(&self) -> Result<Vec<(u64, bool, ObjectPath)>> {
        let prefix = ObjectPath::from(self.dir.as_str());
        let listed: Vec<_> = self
            .checkpoint
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| WeirError::storage(&prefix, e))?;
        let mut files: Vec<(u64, bool, ObjectPath)> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let (version, kind) = name.split_once('.')?;
                let snapshot = match kind {
                    "snapshot" => true,
                    "delta" => false,
                    _ => return None,
                };
                Some((version.parse().ok()?, snapshot, meta.location))
            })
            .collect();
        files.sort_by_key(|(v, snapshot, _)| (*v, *snapshot));
        Ok(files)
    }

    /// Deletes the files older than the newest snapshot at or below
    /// `version`: no retained version restores from them.
    async fn remove_before_snapshot_of(&self, version: u64) -> Result<()> {
        let files = self.files().await?;
        let Some(oldest) = files
            .iter()
            .filter(|(v, snapshot, _)| *snapshot && *v <= version)
            .map(|(v, _, _)| *v)
            .max()
        else {
            return Ok(());
        };
        self.remove(
            files
                .iter()
                .filter(|(v, _, _)| *v < oldest)
                .map(|(_, _, path)| path),
        )
        .await
    }

    /// Deletes files a batch wrote and never committed (versions after the
    /// one loaded), so that a replay that changes other key groups than
    /// its first attempt leaves none of the attempt's changes behind.
    pub async fn discard_uncommitted(&mut self) -> Result<()> {
        let uncommitted = std::mem::take(&mut self.uncommitted);
        self.remove(uncommitted.iter()).await
    }

    async fn remove<'a>(&self, files: impl Iterator<Item = &'a ObjectPath>) -> Result<()> {
        for path in files {
            match self.checkpoint.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(WeirError::storage(path, e)),
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

    /// Loads `version`: the newest snapshot at or below it, then the
    /// deltas after it (a key group no batch changed has none).
    async fn restore(&mut self, version: u64) -> Result<()> {
        let files = self.files().await?;
        let start = files
            .iter()
            .filter(|(v, snapshot, _)| *snapshot && *v <= version)
            .map(|(v, _, _)| *v)
            .max();
        if let Some(start) = start {
            let rows = self.read(&format!("{start}.snapshot")).await?;
            self.apply(rows.unwrap_or_default())?;
        }
        let deltas = files
            .iter()
            .filter(|(v, snapshot, _)| !*snapshot && start.is_none_or(|s| *v > s) && *v <= version);
        for (v, _, _) in deltas {
            let changes = self.read(&format!("{v}.delta")).await?.ok_or_else(|| {
                WeirError::CheckpointCorrupt {
                    path: format!("{}/{v}.delta", self.dir),
                    reason: format!("the file vanished while state version {version} was read"),
                }
            })?;
            self.apply(changes)?;
            self.changed_since_snapshot = true;
        }
        self.uncommitted = files
            .into_iter()
            .filter(|(v, _, _)| *v > version)
            .map(|(_, _, path)| path)
            .collect();
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
