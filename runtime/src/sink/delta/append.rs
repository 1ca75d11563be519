//! `[sink] kind = "delta"`: each micro-batch is one Delta commit.

use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{ArrayRef, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};

use super::{DeltaTarget, delta_types, schema_change, table_schema};
use crate::config::{DeltaSinkConfig, OutputMode};
use crate::error::Result;
use crate::faults::crash_point;
use crate::sink::{CommitOutcome, Sink};
use crate::storage::Location;

/// Appends each batch's rows to a Delta table (or, in complete mode,
/// replaces the table's rows with them), with the batch's application
/// transaction in the same commit.
pub struct DeltaSink {
    target: DeltaTarget,
    config: DeltaSinkConfig,
    overwrite: bool,
    /// The table as of our last commit (we are its only writer for this
    /// app id; another writer's commits are picked up by `deltalake`'s
    /// conflict resolution at commit time, or by reading the table again
    /// when that gives up: see [`lost_a_race`]).
    table: Option<DeltaTable>,
}

impl DeltaSink {
    /// A sink writing `location` for query `query_id`.
    pub fn new(
        location: Location,
        config: DeltaSinkConfig,
        output_mode: OutputMode,
        query_id: &str,
    ) -> DeltaSink {
        DeltaSink::with_target(
            DeltaTarget::new(location, query_id, "sink", "delta sink".into()),
            config,
            output_mode == OutputMode::Complete,
        )
    }

    pub(crate) fn with_target(
        target: DeltaTarget,
        config: DeltaSinkConfig,
        overwrite: bool,
    ) -> DeltaSink {
        DeltaSink {
            target,
            config,
            overwrite,
            table: None,
        }
    }

    async fn table(&mut self) -> Result<DeltaTable> {
        if let Some(table) = &self.table {
            return Ok(table.clone());
        }
        let table = self.target.open().await?;
        if let Ok(state) = table.snapshot() {
            let existing = state.metadata().partition_columns();
            if *existing != self.config.partition_by {
                return Err(self.target.error(format!(
                    "the table is partitioned by {existing:?}, the sink by {:?}",
                    self.config.partition_by
                )));
            }
        }
        self.table = Some(table.clone());
        Ok(table)
    }

    /// The rows in the table's column order, with NULL for columns they
    /// lack. A new column or a changed type is an error naming them, unless
    /// `merge_schema` is set: then the rows go as they are and the write
    /// widens the table.
    fn conform(&self, table: &Schema, rows: RecordBatch) -> Result<RecordBatch> {
        if let Some(change) = schema_change(table, &rows.schema()) {
            if self.config.merge_schema {
                return Ok(rows);
            }
            return Err(self.target.unfit(&change));
        }
        let columns = table
            .fields()
            .iter()
            .map(|field| match rows.column_by_name(field.name()) {
                Some(column) => cast(column, field.data_type())
                    .map_err(|e| self.target.error(format!("column `{}`: {e}", field.name()))),
                None if field.is_nullable() => {
                    Ok(new_null_array(field.data_type(), rows.num_rows()))
                }
                None => Err(self.target.schema_error(format!(
                    "the rows lack column `{}`, which is not nullable",
                    field.name()
                ))),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(Arc::new(table.clone()), columns).map_err(|e| self.target.error(e))
    }
}

impl DeltaSink {
    /// After batch `batch_id` (committed now or before): OPTIMIZE and
    /// VACUUM when their schedule says. Both are separate Delta commits
    /// that change no rows, so a crash between them and the batch's commit
    /// loses nothing, and running one again is harmless.
    async fn maintain(&mut self, batch_id: u64) -> Result<()> {
        let due = |every: u64| (batch_id + 1).is_multiple_of(every);
        if let Some(optimize) = self.config.optimize.filter(|o| due(o.every)) {
            let table = self.table().await?;
            if table.snapshot().is_err() {
                return Ok(()); // no table yet
            }
            let mut builder = table.optimize();
            if let Some(size) = optimize.target_file_size.and_then(NonZeroU64::new) {
                builder = builder.with_target_size(size);
            }
            let (table, metrics) = builder.await.map_err(|e| self.target.error(e))?;
            tracing::info!(
                batch_id,
                added = metrics.num_files_added,
                removed = metrics.num_files_removed,
                "delta OPTIMIZE"
            );
            self.table = Some(table);
            crash_point("delta-after-optimize", batch_id);
        }
        if let Some(vacuum) = self.config.vacuum.filter(|v| due(v.every)) {
            let table = self.table().await?;
            if table.snapshot().is_err() {
                return Ok(());
            }
            let retention = chrono::Duration::from_std(vacuum.retention)
                .map_err(|e| self.target.error(format!("vacuum_retention: {e}")))?;
            let (table, metrics) = table
                .vacuum()
                .with_retention_period(retention)
                // The retention is the user's explicit choice, also when
                // it is shorter than the table's own.
                .with_enforce_retention_duration(false)
                .await
                .map_err(|e| self.target.error(e))?;
            tracing::info!(
                batch_id,
                deleted = metrics.files_deleted.len(),
                "delta VACUUM"
            );
            self.table = Some(table);
            crash_point("delta-after-vacuum", batch_id);
        }
        Ok(())
    }
}

/// Writers of one table (a replicated query's shards, or several queries)
/// race for each version. delta-rs resolves a lost race between appends by
/// itself, but not one lost to a commit that created the table or changed
/// its metadata: such a batch is written again on the newest version, up
/// to this many attempts in all.
const CONFLICT_ATTEMPTS: u32 = 10;
/// The wait before the next attempt, times the attempts so far.
const CONFLICT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a write failed only because another writer committed first
/// (nothing of it was committed).
fn lost_a_race(error: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        error,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::VersionAlreadyExists(_)
                    | TransactionError::MaxCommitAttempts(_)
            }
    )
}

#[async_trait::async_trait]
impl Sink for DeltaSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let outcome = self.write_batch(batch_id, batches).await?;
        self.maintain(batch_id).await?;
        Ok(outcome)
    }
}

impl DeltaSink {
    async fn write_batch(
        &mut self,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<CommitOutcome> {
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| delta_types(b.clone()).map_err(|e| self.target.error(e)))
            .collect::<Result<_>>()?;
        // An append of nothing changes nothing; a complete-mode batch always
        // replaces (an empty result empties the table).
        if batches.is_empty() && !self.overwrite {
            return Ok(CommitOutcome::Written);
        }
        let mut attempt = 1;
        loop {
            let table = self.table().await?;
            if self
                .target
                .committed_version(&table)
                .await?
                .is_some_and(|v| v >= batch_id)
            {
                return Ok(CommitOutcome::AlreadyCommitted);
            }
            let rows = match table_schema(&table) {
                Some(schema) => batches
                    .iter()
                    .map(|b| self.conform(&schema, b.clone()))
                    .collect::<Result<Vec<_>>>()?,
                // Nothing to create a table from (a complete-mode batch with no rows).
                None if batches.is_empty() => return Ok(CommitOutcome::Written),
                None => batches.clone(),
            };
            let mut write = table
                .write(rows)
                .with_save_mode(if self.overwrite {
                    SaveMode::Overwrite
                } else {
                    SaveMode::Append
                })
                .with_commit_properties(self.target.commit_properties(batch_id));
            if !self.config.partition_by.is_empty() {
                write = write.with_partition_columns(self.config.partition_by.clone());
            }
            if self.config.merge_schema {
                write = write.with_schema_mode(SchemaMode::Merge);
            }
            match write.await {
                Ok(table) => {
                    self.table = Some(table);
                    break;
                }
                Err(e) if lost_a_race(&e) && attempt < CONFLICT_ATTEMPTS => {
                    // Nothing was committed: read the newest version (it
                    // may hold this batch, if a previous owner of the
                    // query's checkpoint wrote it) and write again.
                    tracing::info!(
                        batch_id,
                        attempt,
                        error = %e,
                        "delta commit lost a race with another writer; writing again on the newest version"
                    );
                    self.table = None;
                    tokio::time::sleep(CONFLICT_BACKOFF * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.target.error(e)),
            }
        }
        crash_point("delta-after-commit", batch_id);
        Ok(CommitOutcome::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field};

    /// Writers that all found no table race to create it (as a replicated
    /// query's shards do at their first batch): every one commits its
    /// batch, in a version of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_racing_to_create_a_table_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap(), dir.path()).unwrap();
        let mut sinks = Vec::new();
        for i in 0..6 {
            let mut sink = DeltaSink::new(
                location.clone(),
                DeltaSinkConfig::default(),
                OutputMode::Append,
                &format!("query-{i}"),
            );
            // Each reads the table (absent) before any writes it.
            sink.table().await.unwrap();
            sinks.push(sink);
        }
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let writes = sinks.iter_mut().enumerate().map(|(i, sink)| {
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![i as i64]))],
            )
            .unwrap();
            async move { sink.commit(0, &[rows]).await }
        });
        for outcome in futures::future::join_all(writes).await {
            assert_eq!(outcome.unwrap(), CommitOutcome::Written);
        }
        let table = sinks[0].target.open().await.unwrap();
        assert_eq!(table.version(), Some(5));
        for sink in &sinks {
            assert_eq!(
                sink.target.committed_version(&table).await.unwrap(),
                Some(0)
            );
        }
    }
}
