//! Exactly-once file sink (Parquet or JSON lines).
//!
//! Batch N becomes one data file `part-N.<ext>` (written atomically: the
//! object store writes a temporary file and renames it), then an entry
//! `_weir_log/N` listing it is created. The log entry is the commit: a
//! replay of N finds it and writes nothing. A crash between the two leaves
//! a data file that the replay rewrites under the same name with the same
//! rows, so the directory converges to one copy of each batch. Readers
//! that must never see uncommitted files read the files `_weir_log` lists
//! ([`committed_files`]).
//!
//! Every `compact_interval` batches the log is compacted, as Spark's file
//! sink log is: `_weir_log/N.compact` lists every file committed through
//! batch N. Then batch entries the compact entry covers are deleted but
//! for the newest `min_batches_to_retain`, and compact entries older than
//! the previous one. A reader takes the newest compact entry and the
//! batch entries after it.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{CommitOutcome, Sink};
use crate::config::{Retention, SinkKind};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::storage::Location;

/// `_weir_log/N`: what batch N wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkLogEntry {
    /// Batch id.
    pub batch_id: u64,
    /// Data files, relative to the sink directory.
    pub files: Vec<String>,
    /// Rows written.
    pub rows: u64,
}

/// `_weir_log/N.compact`: every file committed through batch N.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkCompactEntry {
    /// The last batch it covers.
    pub batch_id: u64,
    /// Data files, relative to the sink directory, in commit order.
    pub files: Vec<String>,
    /// Rows in those files.
    pub rows: u64,
}

/// Writes each batch to one file in a directory, exactly once.
pub struct FileSink {
    location: Location,
    store: Arc<dyn ObjectStore>,
    kind: SinkKind,
    retention: Retention,
    /// The newest compact entry's batch id, once looked up.
    compacted_through: Option<Option<u64>>,
}

impl FileSink {
    /// Opens (creating) the output directory.
    pub fn open(location: &Location, kind: SinkKind, retention: Retention) -> Result<FileSink> {
        Ok(FileSink {
            location: location.clone(),
            store: location.open()?,
            kind,
            retention,
            compacted_through: None,
        })
    }

    fn describe(&self, path: &ObjectPath) -> String {
        format!("{}/{path}", self.location)
    }

    /// Whether batch `batch_id` is committed: its log entry exists, or a
    /// compact entry covers it (its own entry may be deleted).
    async fn is_committed(&mut self, batch_id: u64) -> Result<bool> {
        let log_path = ObjectPath::from(format!("_weir_log/{batch_id}"));
        match self.store.head(&log_path).await {
            Ok(_) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(WeirError::storage(self.describe(&log_path), e)),
        }
        let through = match self.compacted_through {
            Some(through) => through,
            None => {
                let log = read_log(self.store.as_ref(), &self.location).await?;
                let through = log.compact.map(|c| c.batch_id);
                self.compacted_through = Some(through);
                through
            }
        };
        Ok(through.is_some_and(|c| batch_id <= c))
    }

    /// Writes `_weir_log/N.compact` for committed batch `batch_id` (unless
    /// one covers it already) and deletes the entries it makes redundant.
    /// The sink does this itself at the end of each compaction interval.
    pub async fn compact(&mut self, batch_id: u64) -> Result<()> {
        let log = read_log(self.store.as_ref(), &self.location).await?;
        if log.compact.as_ref().is_some_and(|c| c.batch_id >= batch_id) {
            return Ok(());
        }
        let mut compact = log.compact.clone().unwrap_or_default();
        compact.batch_id = batch_id;
        for entry in log.batches.iter().filter(|e| e.batch_id <= batch_id) {
            compact.files.extend(entry.files.iter().cloned());
            compact.rows += entry.rows;
        }
        let path = ObjectPath::from(format!("_weir_log/{batch_id}.compact"));
        let bytes = serde_json::to_vec(&compact).map_err(|e| WeirError::Internal(e.to_string()))?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| WeirError::storage(self.describe(&path), e))?;
        self.compacted_through = Some(Some(batch_id));
        crash_point("sink-after-compact", batch_id);
        // The newest `min_batches_to_retain` entries stay (counted, not by
        // id: continuous epochs number their small batches sparsely), and
        // readers that took the previous compact entry still find it and
        // the entries after it for another interval.
        let covered: Vec<u64> = log
            .batch_ids
            .iter()
            .copied()
            .filter(|id| *id <= batch_id)
            .collect();
        let retained = self.retention.min_batches_to_retain as usize;
        let previous = log.compact.map(|c| c.batch_id);
        let mut doomed: Vec<ObjectPath> = covered[..covered.len().saturating_sub(retained)]
            .iter()
            .map(|id| ObjectPath::from(format!("_weir_log/{id}")))
            .collect();
        doomed.extend(
            log.older_compacts
                .iter()
                .filter(|id| previous.is_some_and(|p| **id < p))
                .map(|id| ObjectPath::from(format!("_weir_log/{id}.compact"))),
        );
        for path in doomed {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(WeirError::storage(self.describe(&path), e)),
            }
        }
        Ok(())
    }

    fn extension(&self) -> &'static str {
        match self.kind {
            SinkKind::Parquet => "parquet",
            _ => "jsonl",
        }
    }

    fn encode(&self, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let context = || format!("encoding output for {}", self.location);
        match self.kind {
            SinkKind::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let mut writer = ArrowWriter::try_new(Vec::new(), batches[0].schema(), Some(props))
                    .map_err(|e| WeirError::format(context(), e))?;
                for batch in batches {
                    writer
                        .write(batch)
                        .map_err(|e| WeirError::format(context(), e))?;
                }
                writer
                    .into_inner()
                    .map_err(|e| WeirError::format(context(), e))
            }
            _ => super::json_lines(batches, &context()),
        }
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let outcome = self.write_batch(batch_id, batches).await?;
        if self.retention.compacts_at(batch_id) {
            self.compact(batch_id).await?;
        }
        Ok(outcome)
    }
}

impl FileSink {
    async fn write_batch(
        &mut self,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<CommitOutcome> {
        if self.is_committed(batch_id).await? {
            return Ok(CommitOutcome::AlreadyCommitted);
        }
        let log_path = ObjectPath::from(format!("_weir_log/{batch_id}"));
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let name = format!("part-{batch_id:06}.{}", self.extension());
        let data_path = ObjectPath::from(name.as_str());
        let mut files = Vec::new();
        if rows > 0 {
            let bytes = self.encode(&batches)?;
            self.store
                .put(&data_path, PutPayload::from(bytes))
                .await
                .map_err(|e| WeirError::storage(format!("{}/{name}", self.location), e))?;
            files.push(name);
        } else {
            // A replay that now yields no rows must not leave an earlier attempt's file.
            match self.store.delete(&data_path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(WeirError::storage(format!("{}/{name}", self.location), e)),
            }
        }
        crash_point("sink-after-data", batch_id);
        let entry = SinkLogEntry {
            batch_id,
            files,
            rows: rows as u64,
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| WeirError::Internal(e.to_string()))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&log_path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Ok(CommitOutcome::AlreadyCommitted);
            }
            Err(e) => {
                return Err(WeirError::storage(
                    format!("{}/{log_path}", self.location),
                    e,
                ));
            }
        }
        crash_point("sink-after-log", batch_id);
        Ok(CommitOutcome::Written)
    }
}

/// A file sink's log as a reader sees it.
#[derive(Debug, Clone, Default)]
struct SinkLog {
    /// The newest compact entry.
    compact: Option<SinkCompactEntry>,
    /// Batch ids of the other compact entries.
    older_compacts: Vec<u64>,
    /// Ids of every batch entry present (some predate the compact entry).
    batch_ids: Vec<u64>,
    /// The batch entries after the compact entry, in batch order.
    batches: Vec<SinkLogEntry>,
}

async fn read_log(store: &dyn ObjectStore, location: &Location) -> Result<SinkLog> {
    let prefix = ObjectPath::from("_weir_log");
    let listed = store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| WeirError::storage(format!("{location}/_weir_log"), e))?;
    let mut compacts = Vec::new();
    let mut batches = Vec::new();
    for meta in listed.objects {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        match name.strip_suffix(".compact") {
            Some(id) => compacts.extend(id.parse::<u64>().ok()),
            None => batches.extend(name.parse::<u64>().ok()),
        }
    }
    compacts.sort_unstable();
    batches.sort_unstable();
    let newest = compacts.pop();
    let read = |path: ObjectPath| async move {
        let bytes = crate::storage::get_if_exists(store, &path)
            .await
            .map_err(|e| WeirError::storage(format!("{location}/{path}"), e))?;
        Ok::<_, WeirError>(bytes.map(|b| (path, b)))
    };
    let compact = match newest {
        Some(id) => match read(ObjectPath::from(format!("_weir_log/{id}.compact"))).await? {
            Some((path, bytes)) => Some(parse_entry::<SinkCompactEntry>(location, &path, &bytes)?),
            None => None,
        },
        None => None,
    };
    let through = compact.as_ref().map(|c| c.batch_id);
    let mut entries = Vec::new();
    for &id in batches.iter().filter(|id| through.is_none_or(|c| **id > c)) {
        // Deleted since the listing: a compact entry covers it.
        if let Some((path, bytes)) = read(ObjectPath::from(format!("_weir_log/{id}"))).await? {
            entries.push(parse_entry::<SinkLogEntry>(location, &path, &bytes)?);
        }
    }
    Ok(SinkLog {
        compact,
        older_compacts: compacts,
        batch_ids: batches,
        batches: entries,
    })
}

fn parse_entry<T: serde::de::DeserializeOwned>(
    location: &Location,
    path: &ObjectPath,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| WeirError::CheckpointCorrupt {
        path: format!("{location}/{path}"),
        reason: format!("not a sink log entry: {e}"),
    })
}

/// The data files a file sink at `location` has committed, in commit
/// order: what a reader that must not see uncommitted or half-written
/// files reads. Follows the log across compactions.
pub async fn committed_files(location: &Location) -> Result<Vec<String>> {
    let store = location.open()?;
    let log = read_log(store.as_ref(), location).await?;
    let mut files = log.compact.map(|c| c.files).unwrap_or_default();
    for entry in log.batches {
        files.extend(entry.files);
    }
    Ok(files)
}
