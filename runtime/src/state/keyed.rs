//! The state of one task of a stateful operator: a [`StateStore`] per key
//! group the task owns, their working copies in one backend, committed
//! together in one file per version (see `files`).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::ObjectStore;

use super::files::{self, StateFile};
use super::{
    BackendKind, Change, KeyGroups, MemoryBackend, SNAPSHOT_EVERY, StateBackend, StateMetrics,
    StateStore,
};
use crate::error::{Result, WeirError};

/// How many state files are read from the checkpoint at once on open.
const OPEN_CONCURRENCY: usize = 16;

/// A task's state: one [`StateStore`] per key group of its range.
pub struct KeyedState {
    groups: KeyGroups,
    range: Range<u16>,
    stores: Vec<StateStore>,
    checkpoint: Arc<dyn ObjectStore>,
    operator: String,
    /// Versions kept restorable behind the latest (`min_batches_to_retain`).
    retained: u64,
    /// Whether a delta was written (or restored) since the last snapshot.
    changed_since_snapshot: bool,
    /// Files of versions after the one loaded, found when it was loaded.
    uncommitted: Vec<StateFile>,
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
        let stores = range
            .clone()
            .map(|group| {
                let backend: Box<dyn StateBackend> = match &shared {
                    Some(shared) => Box::new(PrefixedBackend {
                        shared: shared.clone(),
                        prefix: group.to_be_bytes(),
                    }),
                    None => Box::new(MemoryBackend::default()),
                };
                StateStore::new(backend)
            })
            .collect();
        let mut state = KeyedState {
            groups,
            range,
            stores,
            checkpoint,
            operator: operator.to_string(),
            retained: 1,
            changed_since_snapshot: false,
            uncommitted: Vec::new(),
        };
        state.restore(version).await?;
        Ok(state)
    }

    /// Opens operator `operator`'s state at `version` as one key group
    /// holding every key (a benchmark's, or a tool's without key groups).
    pub async fn open_single(
        checkpoint: Arc<dyn ObjectStore>,
        operator: &str,
        kind: BackendKind,
        version: u64,
    ) -> Result<KeyedState> {
        let groups = KeyGroups::single();
        KeyedState::open(checkpoint, operator, kind, groups, 0..1, version).await
    }

    /// Keeps the files that restore any of the last `versions` versions
    /// (the query's `min_batches_to_retain`); by default only what a
    /// restart or a replay of the last batch needs.
    pub fn retaining(mut self, versions: u64) -> KeyedState {
        self.retained = versions.max(1);
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

    /// Makes this batch's changes durable as `version`, in one file for
    /// the groups it changed (written again, with the same content, if the
    /// batch is replayed); nothing is written for a batch that changed
    /// nothing, unless a snapshot is due.
    pub async fn commit(&mut self, version: u64) -> Result<()> {
        let changes: Vec<(u16, Vec<Change>)> = self
            .range
            .clone()
            .zip(&mut self.stores)
            .map(|(group, store)| (group, store.take_changes()))
            .filter(|(_, changes)| !changes.is_empty())
            .collect();
        if !changes.is_empty() {
            let path = files::path(&self.operator, version, &self.range, false);
            files::write(&self.checkpoint, &path, &changes).await?;
            self.changed_since_snapshot = true;
        }
        if version.is_multiple_of(SNAPSHOT_EVERY) && self.changed_since_snapshot {
            let mut rows = Vec::new();
            for (group, store) in self.range.clone().zip(&self.stores) {
                let held = store.rows()?;
                if !held.is_empty() {
                    rows.push((group, held));
                }
            }
            let path = files::path(&self.operator, version, &self.range, true);
            files::write(&self.checkpoint, &path, &rows).await?;
            self.changed_since_snapshot = false;
            crate::faults::crash_point("state-before-trim", version - 1);
            // The oldest retained version restores from the newest snapshot
            // at or below it (a replay of this batch restores the previous
            // version, which is retained); nothing older is needed.
            self.trim(version.saturating_sub(self.retained)).await?;
        }
        Ok(())
    }

    /// Loads `version` into the task's key groups: for each, the newest
    /// snapshot at or below it that covers the group, then the deltas after
    /// that snapshot (a group no batch changed has none).
    async fn restore(&mut self, version: u64) -> Result<()> {
        let listed = files::list(&self.checkpoint, &self.operator).await?;
        let range = self.range.clone();
        let base: Vec<Option<u64>> = range
            .clone()
            .map(|group| {
                listed
                    .iter()
                    .filter(|f| f.snapshot && f.version <= version && f.groups.contains(&group))
                    .map(|f| f.version)
                    .max()
            })
            .collect();
        let wanted = |file: &StateFile, group: u16| {
            let base = base[usize::from(group - range.start)];
            match file.snapshot {
                true => base == Some(file.version),
                false => base.is_none_or(|base| file.version > base),
            }
        };
        let needed: Vec<&StateFile> = listed
            .iter()
            .filter(|f| f.version <= version && overlap(f, &range).any(|g| wanted(f, g)))
            .collect();
        let checkpoint = self.checkpoint.clone();
        let mut reads = futures::stream::iter(needed.into_iter().map(|file| {
            let checkpoint = &checkpoint;
            async move { Ok::<_, WeirError>((file, files::read(checkpoint, file).await?)) }
        }))
        .buffered(OPEN_CONCURRENCY);
        while let Some(read) = reads.next().await {
            let (file, entries) = read?;
            for (group, changes) in entries {
                if range.contains(&group) && wanted(file, group) {
                    self.stores[usize::from(group - range.start)].restore(changes)?;
                    self.changed_since_snapshot |= !file.snapshot;
                }
            }
        }
        drop(reads);
        self.uncommitted = listed
            .iter()
            .filter(|f| f.version > version && f.meets(&range))
            .cloned()
            .collect();
        Ok(())
    }

    /// Deletes the files that no version from `oldest_retained` on needs:
    /// those older, for every key group they cover, than the newest
    /// snapshot at or below `oldest_retained` covering the group. (Files
    /// of this task's groups only; another task trims its own.)
    async fn trim(&self, oldest_retained: u64) -> Result<()> {
        let listed = files::list(&self.checkpoint, &self.operator).await?;
        let mut restores_from = vec![None::<u64>; usize::from(self.groups.count())];
        for file in listed
            .iter()
            .filter(|f| f.snapshot && f.version <= oldest_retained)
        {
            for group in file.groups.clone() {
                if let Some(slot) = restores_from.get_mut(usize::from(group)) {
                    *slot = (*slot).max(Some(file.version));
                }
            }
        }
        let superseded = listed.iter().filter(|f| {
            f.meets(&self.range)
                && f.groups.clone().all(|group| {
                    restores_from
                        .get(usize::from(group))
                        .copied()
                        .flatten()
                        .is_some_and(|from| f.version < from)
                })
        });
        files::remove(&self.checkpoint, superseded).await
    }

    /// Deletes files a batch wrote and never committed (versions after the
    /// one loaded), so that a replay that changes other key groups than
    /// its first attempt (or runs with another parallelism) leaves none of
    /// the attempt's changes behind.
    pub async fn discard_uncommitted(&mut self) -> Result<()> {
        let uncommitted = std::mem::take(&mut self.uncommitted);
        files::remove(&self.checkpoint, uncommitted.iter()).await
    }

    /// Rows and bytes held in all key groups.
    pub fn metrics(&self) -> StateMetrics {
        self.stores
            .iter()
            .map(|s| s.metrics())
            .fold(StateMetrics::default(), |a, b| a + b)
    }
}

/// The key groups of `range` that `file` covers.
fn overlap(file: &StateFile, range: &Range<u16>) -> Range<u16> {
    let start = (*file.groups.start()).max(range.start);
    // The file's last group + 1 fits a u16 once capped by `range.end`.
    let end = (u32::from(*file.groups.end()) + 1).min(u32::from(range.end)) as u16;
    start..end.max(start)
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

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    async fn open(
        checkpoint: &Arc<dyn ObjectStore>,
        range: Range<u16>,
        version: u64,
    ) -> KeyedState {
        let groups = KeyGroups::try_new(8).unwrap();
        KeyedState::open(
            checkpoint.clone(),
            "op",
            BackendKind::Memory,
            groups,
            range,
            version,
        )
        .await
        .unwrap()
    }

    /// Key `k` of `group` in `state`, as text.
    fn value(state: &KeyedState, group: u16, k: &str) -> Option<String> {
        let (_, store) = state.iter().find(|(g, _)| *g == group).unwrap();
        store
            .get(k.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// The operator's files, by name below `state/op/`.
    async fn names(checkpoint: &Arc<dyn ObjectStore>) -> Vec<String> {
        let prefix = ObjectPath::from("state/op");
        let mut names: Vec<String> = files::list(checkpoint, "op")
            .await
            .unwrap()
            .iter()
            .map(|f| {
                f.path
                    .prefix_match(&prefix)
                    .unwrap()
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        names.sort();
        names
    }

    /// Versions `versions` of a task owning `range`: each sets `k<g>` of
    /// every group to the version (and deletes `gone` at version 5).
    async fn write_versions(
        checkpoint: &Arc<dyn ObjectStore>,
        range: Range<u16>,
        versions: std::ops::RangeInclusive<u64>,
    ) {
        let mut task = open(checkpoint, range.clone(), versions.start() - 1).await;
        for v in versions {
            for g in range.clone() {
                let store = task.group_mut(g);
                store
                    .put(format!("k{g}").as_bytes(), v.to_string().as_bytes())
                    .unwrap();
                match v {
                    1 => store.put(b"gone", b"soon").unwrap(),
                    5 => store.delete(b"gone").unwrap(),
                    _ => {}
                }
            }
            task.commit(v).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_task_writes_one_file_per_version_and_any_parallelism_reads_them() {
        let checkpoint: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for range in [0..4, 4..8] {
            write_versions(&checkpoint, range, 1..=12).await;
        }
        let names = names(&checkpoint).await;
        // 12 deltas and snapshot 10 per task; nothing trimmed yet (the
        // retained version 11 restores from no snapshot at or below it).
        assert_eq!(names.len(), 2 * 13, "{names:?}");
        assert!(names.contains(&"10.4-7.snapshot".to_string()), "{names:?}");
        assert!(names.contains(&"1.0-3.delta".to_string()), "{names:?}");
        // One task, three tasks, at the last version and at earlier ones.
        // Task ranges as their first groups (the last ends at 8).
        for (starts, version) in [(&[0][..], 12), (&[0, 3, 6], 12), (&[0], 4), (&[0, 5], 10)] {
            let ends = starts.iter().skip(1).copied().chain([8]);
            for range in starts.iter().zip(ends).map(|(&a, b)| a..b) {
                let task = open(&checkpoint, range.clone(), version).await;
                for g in range {
                    let want = version.to_string();
                    assert_eq!(value(&task, g, &format!("k{g}")).as_deref(), Some(&*want));
                    let gone = value(&task, g, "gone");
                    assert_eq!(gone.is_some(), version < 5, "group {g} at {version}");
                }
            }
        }
    }

    #[tokio::test]
    async fn one_groups_files_from_before_restore_and_go_once_a_snapshot_replaces_them() {
        let checkpoint: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let old = |group: u16, version: u64, key: &str, value: &str| {
            let checkpoint = checkpoint.clone();
            let changes = vec![Change {
                key: key.as_bytes().to_vec(),
                value: Some(value.as_bytes().to_vec()),
            }];
            async move {
                let path = ObjectPath::from(format!("state/op/{group}/{version}.delta"));
                let bytes = postcard::to_stdvec(&changes).unwrap();
                checkpoint
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .unwrap();
            }
        };
        old(3, 1, "a", "1").await;
        old(3, 2, "a", "2").await;
        old(5, 1, "b", "1").await;
        let task = open(&checkpoint, 0..8, 2).await;
        assert_eq!(value(&task, 3, "a").as_deref(), Some("2"));
        assert_eq!(value(&task, 5, "b").as_deref(), Some("1"));
        assert_eq!(task.metrics().rows, 2);
        drop(task);
        // Snapshots 10 and 20 cover every group: retaining one version,
        // what is older than snapshot 10 goes at snapshot 20.
        write_versions(&checkpoint, 0..8, 3..=20).await;
        let names = names(&checkpoint).await;
        assert!(!names.iter().any(|n| n.contains('/')), "{names:?}");
        assert_eq!(
            names.first().map(String::as_str),
            Some("10.0-7.delta"),
            "{names:?}"
        );
        assert!(names.contains(&"10.0-7.snapshot".to_string()), "{names:?}");
        let task = open(&checkpoint, 0..8, 20).await;
        assert_eq!(value(&task, 3, "a").as_deref(), Some("2"));
        assert_eq!(value(&task, 6, "k6").as_deref(), Some("20"));
    }

    #[tokio::test]
    async fn a_replay_with_another_parallelism_drops_the_first_attempts_files() {
        let checkpoint: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // Version 2 was written by a batch that never committed.
        write_versions(&checkpoint, 0..8, 1..=2).await;
        for range in [0..4, 4..8] {
            let mut task = open(&checkpoint, range.clone(), 1).await;
            task.discard_uncommitted().await.unwrap();
            for g in range {
                assert_eq!(value(&task, g, &format!("k{g}")).as_deref(), Some("1"));
            }
        }
        assert_eq!(names(&checkpoint).await, ["1.0-7.delta"]);
    }

    #[tokio::test]
    async fn a_file_holding_a_group_outside_its_name_is_corrupt() {
        let checkpoint: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let entries = vec![(6u16, Vec::<Change>::new())];
        let path = ObjectPath::from("state/op/1.0-3.delta");
        files::write(&checkpoint, &path, &entries).await.unwrap();
        let groups = KeyGroups::try_new(8).unwrap();
        let opened = KeyedState::open(checkpoint, "op", BackendKind::Memory, groups, 0..8, 1).await;
        let err = opened.err().unwrap().to_string();
        assert!(err.contains("key group 6, outside its groups 0-3"), "{err}");
    }
}
