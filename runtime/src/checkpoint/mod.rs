//! The checkpoint: the durable memory of a query, laid out as Spark's.
//!
//! ```text
//! <checkpoint>/
//! ├── metadata          query id and format version, written once
//! ├── offsets/N         what batch N reads; written before batch N runs
//! ├── commits/N         written after batch N's sink commit succeeded
//! ├── sources/0/N       source-specific log (the file source: files of batch N)
//! ├── sources/0/N.compact  the source's position after batch N (see `retention`)
//! ├── versions/N        the plugin versions batch N ran (digests; `plugins/` holds them)
//! ├── quarantine/N      rows transform stages set aside in batch N (only batches with some)
//! ├── operators         the stateful operators, in order, whose state `state/<i>` is
//! ├── key_groups        how many key groups the state is partitioned into, fixed at the first start
//! ├── state/<op>/       operator state, a file per task and version: `<V>.<g1>-<g2>.delta`
//! │                     and `<V>.<g1>-<g2>.snapshot` hold key groups g1..=g2
//! ├── .lock             held while a query runs (local checkpoints)
//! └── .lease            held while a query runs (object storage; see `lease`)
//! ```
//!
//! Restart follows the table in Spark's docs: `offsets/N` and `commits/N`
//! both present means batch N is durable and the query starts at N+1;
//! `offsets/N` without `commits/N` means batch N was in flight and is
//! replayed with exactly the same input; nothing logged starts at batch 0.
//! Every entry is written once with a create-if-absent put, so no entry is
//! ever half-written or overwritten. Entries older than the last
//! `min_batches_to_retain` batches are deleted once a compact entry covers
//! them (`retention`).

pub mod inspect;
mod lease;
mod lock;
mod retention;

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, WeirError};
use crate::state::{DEFAULT_KEY_GROUPS, KeyGroups};
use crate::storage::{Location, get_if_exists};

pub use lease::Lease;
pub(crate) use lease::host_name;
pub use lock::CheckpointLock;
pub use retention::Purged;

/// Version of the checkpoint layout written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// `metadata`: the query's identity.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct QueryMetadata {
    /// Stable id of the query, kept across restarts.
    pub id: uuid::Uuid,
    /// Query name when the checkpoint was created.
    pub name: String,
    /// Layout version.
    pub format_version: u32,
}

/// `offsets/N`: what batch N reads.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct OffsetEntry {
    /// The batch id N.
    pub batch_id: u64,
    /// When the batch was planned (ms since the epoch).
    pub batch_timestamp_ms: i64,
    /// Number of input files planned, per source (details in `sources/<i>/N`).
    pub source_files: Vec<usize>,
    /// The event-time watermark batch N uses (ms), if the query has one.
    #[serde(default)]
    pub watermark_ms: Option<i64>,
    /// The watermark batch N judges late rows by (the previous batch's,
    /// Spark 3.4+). Absent without a watermark, and in entries written
    /// before Weir split the two, whose batches used `watermark_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_rows_watermark_ms: Option<i64>,
}

impl OffsetEntry {
    /// The watermark batch N judged late rows by: the logged one, or for
    /// entries from before the split, the batch's only watermark.
    pub fn late_rows_watermark(&self) -> Option<i64> {
        self.late_rows_watermark_ms.or(self.watermark_ms)
    }
}

/// `commits/N`: batch N is durable in the sink.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CommitEntry {
    /// The batch id N.
    pub batch_id: u64,
    /// Rows the sink received for this batch.
    pub output_rows: u64,
    /// The watermark batch N+1 will use (Spark's `nextBatchWatermarkMs`).
    #[serde(default)]
    pub next_watermark_ms: Option<i64>,
    /// With several inputs: each input's own watermark after this batch
    /// (the query's is `next_watermark_ms`, their min or max).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_input_watermarks_ms: Vec<Option<i64>>,
    /// How the sink names the write that committed this batch (a Kafka
    /// transaction attempt), when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_commit: Option<String>,
}

/// Where a restarted query resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// A batch that was planned but not committed: replay it first.
    pub replay: Option<u64>,
    /// The id of the next new batch.
    pub next_batch: u64,
}

/// An open, locked checkpoint.
pub struct Checkpoint {
    location: Location,
    store: Arc<dyn ObjectStore>,
    metadata: QueryMetadata,
    /// `None` when opened read-only.
    _lock: Option<CheckpointLock>,
    /// Object-storage checkpoints: the lease that keeps other hosts out.
    lease: Option<Lease>,
}

impl Checkpoint {
    /// Opens (creating if new) the checkpoint at `location` for query
    /// `name`, refusing if another query holds it.
    pub async fn open(location: &Location, name: &str) -> Result<Checkpoint> {
        Checkpoint::open_leased(location, name, lease::ttl()).await
    }

    /// [`Checkpoint::open`], with an object-storage checkpoint's lease
    /// lasting `lease_ttl` between renewals (a replica's shard: its
    /// group's session timeout, so a replaced replica is fenced as soon as
    /// the group has replaced it).
    pub async fn open_leased(
        location: &Location,
        name: &str,
        lease_ttl: std::time::Duration,
    ) -> Result<Checkpoint> {
        let store = location.open()?;
        let lock = CheckpointLock::acquire(location)?;
        let lease = match location.local_dir() {
            Some(_) => None,
            None => Some(Lease::acquire(store.clone(), location.to_string(), lease_ttl).await?),
        };
        let mut checkpoint = Checkpoint {
            location: location.clone(),
            store,
            metadata: QueryMetadata {
                id: uuid::Uuid::new_v4(),
                name: name.to_string(),
                format_version: FORMAT_VERSION,
            },
            _lock: Some(lock),
            lease,
        };
        match checkpoint.read_opt::<QueryMetadata>("metadata").await? {
            Some(existing) => {
                if existing.format_version > FORMAT_VERSION {
                    return Err(WeirError::CheckpointCorrupt {
                        path: checkpoint.describe("metadata"),
                        reason: format!(
                            "written by a newer Weir (format {}; this build reads up to {})",
                            existing.format_version, FORMAT_VERSION
                        ),
                    });
                }
                checkpoint.metadata = existing;
            }
            None => {
                let metadata = checkpoint.metadata.clone();
                checkpoint.write_once("metadata", &metadata).await?;
            }
        }
        Ok(checkpoint)
    }

    /// Opens an existing checkpoint to read it (`weir replay`), without
    /// its lock or lease: the query may be running. Writing through it is
    /// a mistake the type does not prevent; readers only read.
    pub async fn open_read_only(location: &Location) -> Result<Checkpoint> {
        let store = location.open()?;
        let mut checkpoint = Checkpoint {
            location: location.clone(),
            store,
            metadata: QueryMetadata {
                id: uuid::Uuid::nil(),
                name: String::new(),
                format_version: FORMAT_VERSION,
            },
            _lock: None,
            lease: None,
        };
        checkpoint.metadata = checkpoint.read("metadata").await?;
        Ok(checkpoint)
    }

    /// The query's identity.
    pub fn metadata(&self) -> &QueryMetadata {
        &self.metadata
    }

    /// Where the checkpoint is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Decides where to resume, from the offset and commit logs.
    pub async fn recover(&self) -> Result<Recovery> {
        let offsets = self.last_id("offsets").await?;
        let commits = self.last_id("commits").await?;
        match (offsets, commits) {
            (None, None) => Ok(Recovery {
                replay: None,
                next_batch: 0,
            }),
            (Some(o), Some(c)) if o == c => Ok(Recovery {
                replay: None,
                next_batch: o + 1,
            }),
            (Some(0), None) => Ok(Recovery {
                replay: Some(0),
                next_batch: 1,
            }),
            (Some(o), Some(c)) if o == c + 1 => Ok(Recovery {
                replay: Some(o),
                next_batch: o + 1,
            }),
            (o, c) => Err(WeirError::CheckpointCorrupt {
                path: self.describe("offsets"),
                reason: format!(
                    "the logs do not line up: last offsets entry {o:?}, last commit {c:?} \
                     (expected equal, or offsets one ahead)"
                ),
            }),
        }
    }

    /// Reads `offsets/N`.
    pub async fn offsets(&self, batch: u64) -> Result<OffsetEntry> {
        self.read(&format!("offsets/{batch}")).await
    }

    /// Writes `offsets/N` (before batch N runs).
    pub async fn write_offsets(&self, entry: &OffsetEntry) -> Result<()> {
        self.write_once(&format!("offsets/{}", entry.batch_id), entry)
            .await
    }

    /// Reads `commits/N`.
    pub async fn commit_entry(&self, batch: u64) -> Result<CommitEntry> {
        self.read(&format!("commits/{batch}")).await
    }

    /// The store rooted at the checkpoint location (operator state lives
    /// under `state/`).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Writes `commits/N` (after batch N's sink commit).
    pub async fn write_commit(&self, entry: &CommitEntry) -> Result<()> {
        self.write_once(&format!("commits/{}", entry.batch_id), entry)
            .await
    }

    /// Reads source `source`'s log entry for batch N.
    pub async fn source_log<T: DeserializeOwned>(&self, source: usize, batch: u64) -> Result<T> {
        self.read(&format!("sources/{source}/{batch}")).await
    }

    /// Writes source `source`'s log entry for batch N. It is written just
    /// before `offsets/N` and only counts once that exists, so a leftover
    /// from a crash in between is simply replaced.
    pub async fn write_source_log<T: Serialize>(
        &self,
        source: usize,
        batch: u64,
        entry: &T,
    ) -> Result<()> {
        self.check_lease()?;
        let name = format!("sources/{source}/{batch}");
        let bytes = to_json(&name, entry)?;
        self.store
            .put(&ObjectPath::from(name.as_str()), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| WeirError::storage(self.describe(&name), e))
    }

    /// The highest N in `dir/` (ignoring names that are not batch ids).
    async fn last_id(&self, dir: &str) -> Result<Option<u64>> {
        let prefix = ObjectPath::from(dir);
        let entries: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| WeirError::storage(self.describe(dir), e))?;
        Ok(entries
            .iter()
            .filter_map(|meta| meta.location.filename()?.parse::<u64>().ok())
            .max())
    }

    /// The plugin versions batch `batch` ran with (`versions/N`), if its
    /// transforms completed before (they do before the sink sees a row).
    pub async fn versions_of<T: DeserializeOwned>(&self, batch: u64) -> Result<Option<T>> {
        self.read_opt(&format!("versions/{batch}")).await
    }

    /// Records the plugin versions batch N ran with, once its transforms
    /// completed and before the sink receives it.
    pub async fn write_versions<T: Serialize>(&self, batch: u64, versions: &T) -> Result<()> {
        self.write_once(&format!("versions/{batch}"), versions)
            .await
    }

    /// The rows the transform stages set aside in batch `batch`
    /// (`quarantine/N`), if they set any aside.
    pub async fn quarantine_of<T: DeserializeOwned>(&self, batch: u64) -> Result<Option<T>> {
        self.read_opt(&format!("quarantine/{batch}")).await
    }

    /// Records the rows the stages set aside in batch N, before the sink
    /// sees the batch, so a replay sets aside the same rows. A replay that
    /// had to set more aside (a plugin failing at random) replaces it.
    pub async fn write_quarantine<T: Serialize>(&self, batch: u64, rows: &T) -> Result<()> {
        self.check_lease()?;
        let name = format!("quarantine/{batch}");
        let bytes = to_json(&name, rows)?;
        self.store
            .put(&ObjectPath::from(name.as_str()), PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| WeirError::storage(self.describe(&name), e))
    }

    /// Checks that `operators` (the pipeline's stateful operators, in
    /// order) are those whose state the checkpoint holds (`operators`),
    /// recording them the first time: state `i` is read by the `i`th
    /// operator, so another chain must not run on it. (A checkpoint from
    /// before the record starts one.)
    pub async fn check_operators(&self, operators: &[String]) -> Result<()> {
        match self.read_opt::<Vec<String>>("operators").await? {
            Some(recorded) if recorded == operators => Ok(()),
            Some(recorded) => Err(WeirError::OperatorsChanged {
                path: self.describe("operators"),
                recorded,
                declared: operators.to_vec(),
            }),
            None => self.write_once("operators", &operators).await,
        }
    }

    /// The query's key groups, fixed at its first start (`key_groups`):
    /// `declared` (or the default) for a new checkpoint, one for state
    /// written before key groups (`has_run`: batches were committed), and
    /// a refusal if `declared` differs from the record.
    pub async fn key_groups(&self, declared: Option<u16>, has_run: bool) -> Result<KeyGroups> {
        let recorded = match self.read_opt::<u16>("key_groups").await? {
            Some(recorded) => recorded,
            None => {
                let count = match has_run {
                    true => 1,
                    false => declared.unwrap_or(DEFAULT_KEY_GROUPS),
                };
                self.write_once("key_groups", &count).await?;
                count
            }
        };
        match declared {
            Some(declared) if declared != recorded => Err(WeirError::KeyGroupsChanged {
                path: self.describe("key_groups"),
                recorded,
                declared,
            }),
            _ => KeyGroups::try_new(recorded).map_err(|_| WeirError::CheckpointCorrupt {
                path: self.describe("key_groups"),
                reason: format!("{recorded} key groups is out of range"),
            }),
        }
    }

    /// The key groups a checkpoint's state is partitioned into, to read it
    /// (one for state written before key groups).
    pub async fn recorded_key_groups(&self) -> Result<KeyGroups> {
        match self.read_opt::<u16>("key_groups").await? {
            Some(count) => KeyGroups::try_new(count).map_err(|_| WeirError::CheckpointCorrupt {
                path: self.describe("key_groups"),
                reason: format!("{count} key groups is out of range"),
            }),
            None => Ok(KeyGroups::single()),
        }
    }

    /// Keeps a plugin component under `name` (`plugins/<digest>.wasm`), so
    /// a replay can run the version a batch first ran with.
    pub async fn store_plugin(&self, name: &str, wasm: &[u8]) -> Result<()> {
        self.check_lease()?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &ObjectPath::from(name),
                PutPayload::from(wasm.to_vec()),
                options,
            )
            .await
        {
            // Content-addressed: an existing object holds the same bytes.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(WeirError::storage(self.describe(name), e)),
        }
    }

    /// A plugin component [`Checkpoint::store_plugin`] kept.
    pub async fn plugin(&self, name: &str) -> Result<Vec<u8>> {
        self.bytes(name)
            .await?
            .map(|b| b.to_vec())
            .ok_or_else(|| WeirError::CheckpointCorrupt {
                path: self.describe(name),
                reason: "the plugin version a logged batch ran with is missing".into(),
            })
    }

    async fn bytes(&self, name: &str) -> Result<Option<bytes::Bytes>> {
        get_if_exists(self.store.as_ref(), &ObjectPath::from(name))
            .await
            .map_err(|e| WeirError::storage(self.describe(name), e))
    }

    async fn read<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.read_opt(name)
            .await?
            .ok_or_else(|| WeirError::CheckpointCorrupt {
                path: self.describe(name),
                reason: "the file is missing".into(),
            })
    }

    async fn read_opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(bytes) = self.bytes(name).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| WeirError::CheckpointCorrupt {
                path: self.describe(name),
                reason: e.to_string(),
            })
    }

    /// Gives up the checkpoint (its lease, so another host can start at once).
    pub async fn release(self) {
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }

    /// Errors if this query no longer holds the checkpoint's lease.
    fn check_lease(&self) -> Result<()> {
        self.lease.as_ref().map_or(Ok(()), Lease::check)
    }

    /// Creates `name` atomically; it must not exist yet.
    async fn write_once<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.check_lease()?;
        let bytes = to_json(name, value)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjectPath::from(name), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(WeirError::CheckpointRaced {
                path: self.describe(name),
            }),
            Err(e) => Err(WeirError::storage(self.describe(name), e)),
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.location)
    }
}

fn to_json<T: Serialize>(name: &str, value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| WeirError::Internal(format!("serialising {name}: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}
