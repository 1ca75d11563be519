//! Exactly-once file sink (Parquet or JSON lines).
//!
//! Batch N becomes one data file `part-N.<ext>` (written atomically: the
//! object store writes a temporary file and renames it), then an entry
//! `_weir_log/N` listing it is created. The log entry is the commit: a
//! replay of N finds it and writes nothing. A crash between the two leaves
//! a data file that the replay rewrites under the same name with the same
//! rows, so the directory converges to one copy of each batch. Readers
//! that must never see uncommitted files read the files `_weir_log` lists.

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
use crate::config::SinkKind;
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

/// Writes each batch to one file in a directory, exactly once.
pub struct FileSink {
    location: Location,
    store: Arc<dyn ObjectStore>,
    kind: SinkKind,
}

impl FileSink {
    /// Opens (creating) the output directory.
    pub fn open(location: &Location, kind: SinkKind) -> Result<FileSink> {
        Ok(FileSink {
            location: location.clone(),
            store: location.open()?,
            kind,
        })
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
        let log_path = ObjectPath::from(format!("_weir_log/{batch_id}"));
        match self.store.head(&log_path).await {
            Ok(_) => return Ok(CommitOutcome::AlreadyCommitted),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(WeirError::storage(
                    format!("{}/{log_path}", self.location),
                    e,
                ));
            }
        }
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
