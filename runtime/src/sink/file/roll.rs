//! Small-file control: with `target_file_size`, each compaction merges the
//! small data files of consecutive batches into larger ones.
//!
//! The files a compaction may merge are the newest file of the previous
//! compact entry, if still under the target (the "open" file), and the
//! files of the batches since. They are taken in commit order and grouped
//! greedily until a group reaches the target; every group of more than one
//! file is rewritten as one file named by its batch range,
//! `part-<first>-<last>.<ext>`. The compact entry then lists the merged
//! files in place of the small ones, and that entry's creation is the
//! switch: a reader sees the old files or the merged ones, never both and
//! never neither. A crash before it leaves a merged file no entry names,
//! rewritten with the same rows (the groups depend only on what is
//! committed) when the compaction runs again. The replaced files stay for
//! one interval, for readers of the previous entry, then are deleted.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{FileSink, SinkCompactEntry};
use crate::config::SinkKind;
use crate::error::{Result, WeirError};
use crate::faults::crash_point;

/// The batch range a data file holds, from its name (`part-N.ext` or
/// `part-F-L.ext`).
fn batch_range(file: &str) -> Option<(u64, u64)> {
    let stem = file.strip_prefix("part-")?.split('.').next()?;
    match stem.split_once('-') {
        Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
        None => {
            let batch = stem.parse().ok()?;
            Some((batch, batch))
        }
    }
}

impl FileSink {
    /// Adds `new_files` to `compact`, merging small files up to `target`
    /// bytes.
    pub(super) async fn roll(
        &self,
        compact: &mut SinkCompactEntry,
        new_files: Vec<String>,
        target: u64,
    ) -> Result<()> {
        let mut pending = Vec::new();
        if let Some(last) = compact.files.last()
            && self.size(last).await? < target
        {
            pending.push(compact.files.pop().expect("a last file"));
        }
        pending.extend(new_files);
        let mut group: Vec<(String, u64)> = Vec::new();
        let mut group_bytes = 0;
        let mut groups = Vec::new();
        for file in pending {
            let size = self.size(&file).await?;
            group_bytes += size;
            group.push((file, size));
            if group_bytes >= target {
                groups.push(std::mem::take(&mut group));
                group_bytes = 0;
            }
        }
        if !group.is_empty() {
            groups.push(group);
        }
        for group in groups {
            let files: Vec<String> = group.into_iter().map(|(f, _)| f).collect();
            match self.merge(&files, compact.batch_id).await? {
                Some(merged) => {
                    compact.files.push(merged);
                    compact.superseded.extend(files);
                }
                None => compact.files.extend(files),
            }
        }
        Ok(())
    }

    async fn size(&self, file: &str) -> Result<u64> {
        let path = ObjectPath::from(file);
        self.store
            .head(&path)
            .await
            .map(|meta| meta.size)
            .map_err(|e| WeirError::storage(self.describe(&path), e))
    }

    /// Writes `files` (in order) as one file; `None` when there is nothing
    /// to merge (one file) or the files cannot be (different schemas).
    async fn merge(&self, files: &[String], batch_id: u64) -> Result<Option<String>> {
        let (Some(first), Some(last)) = (files.first(), files.last()) else {
            return Ok(None);
        };
        let (Some((from, _)), Some((_, to))) = (batch_range(first), batch_range(last)) else {
            return Ok(None);
        };
        if files.len() < 2 {
            return Ok(None);
        }
        let name = format!("part-{from:06}-{to:06}.{}", self.extension());
        let mut contents = Vec::with_capacity(files.len());
        for file in files {
            let path = ObjectPath::from(file.as_str());
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|e| WeirError::storage(self.describe(&path), e))?
                .bytes()
                .await
                .map_err(|e| WeirError::storage(self.describe(&path), e))?;
            contents.push(bytes);
        }
        let merged = match self.kind {
            SinkKind::Parquet => {
                let mut batches = Vec::new();
                for (file, bytes) in files.iter().zip(contents) {
                    batches.extend(self.parquet_batches(file, bytes)?);
                }
                let schema = batches[0].schema();
                if batches.iter().any(|b| b.schema() != schema) {
                    tracing::warn!(first, last, "not merging files with different schemas");
                    return Ok(None);
                }
                self.encode(&batches)?
            }
            // JSON lines: the files one after the other.
            _ => contents.concat(),
        };
        let path = ObjectPath::from(name.as_str());
        self.store
            .put(&path, PutPayload::from(merged))
            .await
            .map_err(|e| WeirError::storage(self.describe(&path), e))?;
        crash_point("sink-after-merge", batch_id);
        Ok(Some(name))
    }

    fn parquet_batches(&self, file: &str, bytes: Bytes) -> Result<Vec<RecordBatch>> {
        let context = || format!("merging {}/{file}", self.location);
        ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| WeirError::format(context(), e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| WeirError::format(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::batch_range;

    #[test]
    fn data_file_names_give_their_batch_range() {
        assert_eq!(batch_range("part-000012.parquet"), Some((12, 12)));
        assert_eq!(batch_range("part-000010-000019.jsonl"), Some((10, 19)));
        assert_eq!(batch_range("other.parquet"), None);
    }
}
