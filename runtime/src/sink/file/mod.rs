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

mod log;
mod roll;

use log::read_log;
pub use log::{batch_files, committed_files};

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
    /// With `target_file_size`: files this compaction merged into larger
    /// ones (still on disk for readers of the previous entry; deleted by
    /// the next compaction).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
}

/// Writes each batch to one file in a directory, exactly once.
pub struct FileSink {
    location: Location,
    store: Arc<dyn ObjectStore>,
    kind: SinkKind,
    retention: Retention,
    /// Small files are merged up to this size at each compaction.
    target_file_size: Option<u64>,
    /// The newest compact entry's batch id, once looked up.
    compacted_through: Option<Option<u64>>,
    /// Threads a batch's JSON lines are encoded by.
    encoders: usize,
}

impl FileSink {
    /// Opens (creating) the output directory.
    pub fn open(location: &Location, kind: SinkKind, retention: Retention) -> Result<FileSink> {
        Ok(FileSink {
            location: location.clone(),
            store: location.open()?,
            kind,
            retention,
            target_file_size: None,
            compacted_through: None,
            encoders: 1,
        })
    }

    /// Rolls the rows of consecutive batches into files of about `target`
    /// bytes: at each compaction, files smaller than it are merged (see
    /// `roll`). `None` keeps one file per batch.
    pub fn with_target_file_size(mut self, target: Option<u64>) -> FileSink {
        self.target_file_size = target;
        self
    }

    /// Encodes a batch's JSON lines with up to `threads` threads (the
    /// bytes are the same as with one).
    pub fn with_encoders(mut self, threads: usize) -> FileSink {
        self.encoders = threads.max(1);
        self
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
        let newest = log.compact.as_ref().map(|c| c.batch_id);
        if newest.is_some_and(|c| c > batch_id) {
            return Ok(());
        }
        let previous = if newest == Some(batch_id) {
            // Written before a crash: only the cleanup may be missing.
            match log.older_compacts.iter().max() {
                Some(&id) => log::read_compact(self.store.as_ref(), &self.location, id).await?,
                None => None,
            }
        } else {
            let previous = log.compact.clone();
            self.write_compact(batch_id, &log).await?;
            previous
        };
        crash_point("sink-after-compact", batch_id);
        self.clean_up(batch_id, &log, previous).await
    }

    /// Writes `N.compact`: the previous compact entry's files and those of
    /// the batch entries after it (merged with `target_file_size`).
    async fn write_compact(&mut self, batch_id: u64, log: &log::SinkLog) -> Result<()> {
        let mut compact = log.compact.clone().unwrap_or_default();
        compact.superseded.clear();
        compact.batch_id = batch_id;
        let mut new_files = Vec::new();
        for entry in log.batches.iter().filter(|e| e.batch_id <= batch_id) {
            new_files.extend(entry.files.iter().cloned());
            compact.rows += entry.rows;
        }
        match self.target_file_size {
            Some(target) => self.roll(&mut compact, new_files, target).await?,
            None => compact.files.extend(new_files),
        }
        let path = ObjectPath::from(format!("_weir_log/{batch_id}.compact"));
        let bytes = serde_json::to_vec(&compact).map_err(|e| WeirError::Internal(e.to_string()))?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| WeirError::storage(self.describe(&path), e))?;
        self.compacted_through = Some(Some(batch_id));
        Ok(())
    }

    /// Once `N.compact` exists: deletes what it makes redundant. The
    /// newest `min_batches_to_retain` batch entries stay (counted, not by
    /// id: continuous epochs number their small batches sparsely), and so
    /// do the `previous` compact entry and the files it names, for readers
    /// an interval behind; the files *it* replaced go. Repeating this after
    /// a crash deletes the same files.
    async fn clean_up(
        &self,
        batch_id: u64,
        log: &log::SinkLog,
        previous: Option<SinkCompactEntry>,
    ) -> Result<()> {
        let covered: Vec<u64> = log
            .batch_ids
            .iter()
            .copied()
            .filter(|id| *id <= batch_id)
            .collect();
        let retained = self.retention.min_batches_to_retain as usize;
        let mut doomed: Vec<ObjectPath> = covered[..covered.len().saturating_sub(retained)]
            .iter()
            .map(|id| ObjectPath::from(format!("_weir_log/{id}")))
            .collect();
        if let Some(previous) = &previous {
            doomed.extend(
                previous
                    .superseded
                    .iter()
                    .map(|f| ObjectPath::from(f.as_str())),
            );
            doomed.extend(
                log.older_compacts
                    .iter()
                    .filter(|id| **id < previous.batch_id)
                    .map(|id| ObjectPath::from(format!("_weir_log/{id}.compact"))),
            );
        }
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
            _ => super::json_lines_by(self.encoders, batches, &context()),
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
