//! Sinks: where rows go. Each sink kind gets a module.
//!
//! A sink is *idempotent per batch id*: committing batch N a second time
//! (a replay after a crash) must leave the output as if it ran once. With
//! the checkpoint's offset/commit logs this gives exactly-once output.

mod console;
#[cfg(feature = "delta")]
mod delta;
mod file;
mod foreach_batch;
mod kafka;
mod postgres;
mod upsert;

use arrow::record_batch::RecordBatch;

pub use console::ConsoleSink;
#[cfg(feature = "delta")]
pub use delta::{DeltaMergeOutput, DeltaSink};
pub use file::{FileSink, SinkCompactEntry, SinkLogEntry, batch_files, committed_files};
pub use foreach_batch::ForeachBatchSink;
pub use kafka::KafkaSink;
pub use postgres::PostgresOutput;

use crate::config::{Retention, SinkConfig, SinkKind};
use crate::error::Result;

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The rows were written.
    Written,
    /// The batch was already committed before (a replay); nothing written.
    AlreadyCommitted,
}

/// A destination for the query's output.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Writes batch `batch_id`'s rows; a batch id committed before is
    /// recognised and skipped.
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome>;

    /// Called before [`Sink::commit`] with the time batch `batch_id` was
    /// planned at (logged, so a replay passes the same): a sink running a
    /// plugin gives it that time (see [`crate::plugin::BatchEnv`]).
    fn begin_batch(&mut self, _batch_id: u64, _batch_time_ms: i64) {}

    /// Runs the sink's plugin (foreachBatch) over batch `batch_id` before
    /// anything is written, leaving out the rows `recorded` (what a first
    /// attempt set aside, from `quarantine/N`) names for its stage. Returns
    /// the rows it set aside (`on_error = "quarantine"`), which the runner
    /// logs before [`Sink::commit`] writes the batch. A sink without a
    /// plugin has nothing to do here.
    async fn prepare(
        &mut self,
        _batch_id: u64,
        _batches: &[RecordBatch],
        _recorded: &crate::quarantine::QuarantineRecord,
    ) -> Result<Option<crate::quarantine::StageSetAside>> {
        Ok(None)
    }

    /// What the sink's plugin did in the latest batch, if it runs one.
    fn stage_progress(&self) -> Option<crate::query::StageProgress> {
        None
    }

    /// How the sink names the write that committed batch `batch_id` (a
    /// Kafka transaction attempt), recorded in `commits/N`.
    fn commit_token(&self, _batch_id: u64) -> Option<String> {
        None
    }
}

/// Encodes batches as newline-delimited JSON (file and console sinks).
pub(crate) fn json_lines(batches: &[RecordBatch], context: &str) -> Result<Vec<u8>> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .map_err(|e| crate::error::WeirError::format(context, e))?;
    writer
        .finish()
        .map_err(|e| crate::error::WeirError::format(context, e))?;
    Ok(writer.into_inner())
}

/// Opens the sink a pipeline declares (a `foreach_batch` sink is opened
/// with [`ForeachBatchSink::open`], which loads its plugin, and a `kafka`
/// sink with [`KafkaSink::open`], which talks to the broker).
pub fn open(config: &SinkConfig, retention: Retention) -> Result<Box<dyn Sink>> {
    Ok(match (config.kind, &config.path) {
        (SinkKind::ForeachBatch | SinkKind::Kafka | SinkKind::Delta, _) => {
            return Err(crate::error::WeirError::Internal(
                "foreach_batch, kafka and delta sinks are opened with their own open".into(),
            ));
        }
        (SinkKind::Console, _) => Box::new(ConsoleSink {
            json: config.console_json,
        }),
        (kind, Some(path)) => Box::new(
            FileSink::open(path, kind, retention)?.with_target_file_size(config.target_file_size),
        ),
        (_, None) => unreachable!("config checks give file sinks a path"),
    })
}
