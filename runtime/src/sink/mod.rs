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

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;

pub use console::ConsoleSink;
#[cfg(feature = "delta")]
pub use delta::{DeltaMergeOutput, DeltaSink};
pub use file::{FileSink, SinkCompactEntry, SinkLogEntry, batch_files, committed_files};
pub use foreach_batch::ForeachBatchSink;
pub use kafka::KafkaSink;
pub use postgres::PostgresOutput;

use crate::config::{Retention, SinkConfig, SinkTarget};
use crate::error::{Result, WeirError};
use crate::plugin::PluginEngine;
use crate::retry::Retries;

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
        .map_err(|e| WeirError::format(context, e))?;
    writer.finish().map_err(|e| WeirError::format(context, e))?;
    Ok(writer.into_inner())
}

/// What opening a sink needs besides its settings.
#[derive(Clone)]
pub struct SinkContext {
    /// Runs a foreachBatch sink's plugin.
    pub engine: PluginEngine,
    /// The query's id: names its Kafka transactions and Delta app ids.
    pub query_id: String,
    /// The query's checkpoint store (the Kafka sink records attempts there).
    pub checkpoint: Arc<dyn ObjectStore>,
    /// Where connector outages are counted.
    pub retries: Retries,
    /// How long file sinks keep their logs.
    pub retention: Retention,
}

/// Opens the sink a pipeline declares: loads a foreachBatch sink's plugin
/// (off the async runtime), connects a Kafka sink, opens a file sink's log.
pub async fn open(config: &SinkConfig, cx: SinkContext) -> Result<Box<dyn Sink>> {
    Ok(match &config.target {
        SinkTarget::Files(files) => Box::new(
            FileSink::open(&files.path, files.kind, cx.retention)?
                .with_target_file_size(files.target_file_size),
        ),
        SinkTarget::Console { json } => Box::new(ConsoleSink { json: *json }),
        SinkTarget::ForeachBatch(plugin) => {
            let plugin = plugin.clone();
            tokio::task::spawn_blocking(move || {
                ForeachBatchSink::open(&cx.engine, &plugin, &cx.query_id, cx.retention)
            })
            .await
            .map_err(|e| WeirError::Internal(format!("opening the foreach_batch sink: {e}")))?
            .map(|sink| Box::new(sink) as Box<dyn Sink>)?
        }
        SinkTarget::Kafka(kafka) => {
            Box::new(KafkaSink::open(kafka, &cx.query_id, cx.checkpoint, cx.retries).await?)
        }
        #[cfg(feature = "delta")]
        SinkTarget::Delta { path, options } => Box::new(DeltaSink::new(
            path.clone(),
            options.clone(),
            config.output_mode,
            &cx.query_id,
        )),
        #[cfg(not(feature = "delta"))]
        SinkTarget::Delta { .. } => {
            return Err(WeirError::Internal(
                "delta sinks are refused at load without the `delta` feature".into(),
            ));
        }
    })
}
