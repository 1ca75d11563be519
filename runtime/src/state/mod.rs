//! Keyed operator state: a [`StateStore`] per key group, held by the
//! [`KeyedState`] of the operator's task that owns the group, versioned per
//! batch and made durable in the checkpoint.
//!
//! The working copy lives in a [`StateBackend`] — RocksDB in a local
//! scratch directory (default) or an in-memory map. Durability comes from
//! the checkpoint, as in Spark's changelog checkpointing, with a file per
//! task and version holding its key groups (see `files` for the layout):
//! a delta with the changes a batch made to the groups it changed, and
//! every [`SNAPSHOT_EVERY`] versions, if anything changed since the last,
//! a snapshot of every row. Version V is the state after batch V-1
//! (version 0 is empty).
//!
//! A restart that resumes at batch N loads, for each of its key groups,
//! the newest snapshot at or below N that covers the group and replays the
//! deltas after it, so the state is exactly that of the last committed
//! batch, whichever backend holds it and whatever the parallelism was.
//! When a snapshot is written, files no retained version needs are
//! deleted: those older, for every group they cover, than the snapshot
//! that restores the oldest of the last `min_batches_to_retain` versions.
//!
//! A query's key groups ([`KeyGroups`]) are fixed when it first starts;
//! checkpoints from before key groups have one, `0`.

mod files;
mod key_groups;
mod keyed;
mod memory;
mod rocks;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use key_groups::{DEFAULT_KEY_GROUPS, KeyGroups, MAX_KEY_GROUPS, split_by_group};
pub use keyed::KeyedState;
pub use memory::MemoryBackend;
pub use rocks::RocksBackend;

use crate::error::Result;

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

/// One key group's state: its working copy in a backend plus the changes
/// of the current batch, which its task's [`KeyedState`] commits.
pub struct StateStore {
    backend: Box<dyn StateBackend>,
    /// Changes since the last commit (None = deleted).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    metrics: StateMetrics,
}

impl StateStore {
    /// An empty key group whose working copy is `backend` (empty too).
    pub fn new(backend: Box<dyn StateBackend>) -> StateStore {
        StateStore {
            backend,
            pending: BTreeMap::new(),
            metrics: StateMetrics::default(),
        }
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

    /// The changes since the last call, to commit (none: an empty list).
    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(key, value)| Change { key, value })
            .collect()
    }

    /// Every row held, for a snapshot.
    fn rows(&self) -> Result<Vec<Change>> {
        let mut rows = Vec::new();
        self.backend.scan_from(&[], &mut |k, v| {
            rows.push(Change {
                key: k.to_vec(),
                value: Some(v.to_vec()),
            });
            true
        })?;
        Ok(rows)
    }

    /// Applies changes read from the checkpoint (they are not this
    /// batch's: nothing is left pending).
    fn restore(&mut self, changes: Vec<Change>) -> Result<()> {
        for change in changes {
            match change.value {
                Some(value) => self.put(&change.key, &value)?,
                None => self.delete(&change.key)?,
            }
        }
        self.pending.clear();
        Ok(())
    }
}
