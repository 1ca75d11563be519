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

/// [`json_lines`] encoded by up to `tasks` threads, each a contiguous run
/// of the rows: the bytes are one writer's (a line is a row, so the runs'
/// encodings simply follow each other). Runs are at least
/// [`MIN_ROWS_PER_ENCODER`] rows; fewer rows take one thread.
pub(crate) fn json_lines_by(
    tasks: usize,
    batches: &[RecordBatch],
    context: &str,
) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let tasks = tasks.min(rows / MIN_ROWS_PER_ENCODER).max(1);
    if tasks == 1 {
        return json_lines(batches, context);
    }
    let runs = split_rows(batches, rows.div_ceil(tasks));
    let encoded = std::thread::scope(|scope| {
        let others: Vec<_> = runs[1..]
            .iter()
            .map(|run| scope.spawn(move || json_lines(run, context)))
            .collect();
        let mut encoded = vec![json_lines(&runs[0], context)];
        for other in others {
            encoded.push(other.join().unwrap_or_else(|_| {
                Err(WeirError::Internal(format!(
                    "{context}: an encoder panicked"
                )))
            }));
        }
        encoded
    });
    Ok(encoded.into_iter().collect::<Result<Vec<_>>>()?.concat())
}

/// Rows an encoding thread gets at least.
const MIN_ROWS_PER_ENCODER: usize = 8192;

/// `batches` cut into runs of `per_run` rows (the last may be shorter),
/// without copying (slices).
fn split_rows(batches: &[RecordBatch], per_run: usize) -> Vec<Vec<RecordBatch>> {
    let mut runs = vec![Vec::new()];
    let mut room = per_run;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if room == 0 {
                runs.push(Vec::new());
                room = per_run;
            }
            let take = room.min(batch.num_rows() - offset);
            runs.last_mut()
                .expect("one run at least")
                .push(batch.slice(offset, take));
            offset += take;
            room -= take;
        }
    }
    runs
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
    /// Threads a file sink may encode a batch with (the query's parallelism).
    pub tasks: usize,
}

/// Opens the sink a pipeline declares: loads a foreachBatch sink's plugin
/// (off the async runtime), connects a Kafka sink, opens a file sink's log.
pub async fn open(config: &SinkConfig, cx: SinkContext) -> Result<Box<dyn Sink>> {
    Ok(match &config.target {
        SinkTarget::Files(files) => Box::new(
            FileSink::open(&files.path, files.kind, cx.retention)?
                .with_target_file_size(files.target_file_size)
                .with_encoders(cx.tasks),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// Batches of uneven sizes (nulls included) holding `rows` rows.
    fn batches(rows: usize) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]));
        let (mut out, mut start, mut size) = (Vec::new(), 0, 1);
        while start < rows {
            let end = (start + size).min(rows);
            let ids: Vec<i64> = (start as i64..end as i64).collect();
            let names: Vec<Option<String>> = ids
                .iter()
                .map(|i| (i % 3 != 0).then(|| format!("n\"{i}\\")))
                .collect();
            let amounts: Vec<Option<f64>> = ids
                .iter()
                .map(|i| (i % 5 != 0).then(|| *i as f64 / 7.0))
                .collect();
            out.push(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(ids)),
                        Arc::new(StringArray::from(names)),
                        Arc::new(Float64Array::from(amounts)),
                    ],
                )
                .unwrap(),
            );
            start = end;
            size = size * 3 + 1;
        }
        out
    }

    #[test]
    fn json_lines_by_several_threads_are_one_writers_bytes() {
        for rows in [0, 1, 8191, 8192 * 2, 100_003] {
            let batches = batches(rows);
            let one = json_lines(&batches, "test").unwrap();
            for tasks in [1, 2, 3, 8] {
                assert_eq!(
                    json_lines_by(tasks, &batches, "test").unwrap(),
                    one,
                    "{rows} rows, {tasks} threads"
                );
            }
        }
    }

    #[test]
    fn rows_split_into_runs_of_the_asked_size_in_order() {
        let batches = batches(1000);
        let runs = split_rows(&batches, 300);
        let sizes: Vec<usize> = runs
            .iter()
            .map(|run| run.iter().map(RecordBatch::num_rows).sum())
            .collect();
        assert_eq!(sizes, [300, 300, 300, 100]);
        let ids: Vec<i64> = runs
            .iter()
            .flatten()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().to_vec()
            })
            .collect();
        assert_eq!(ids, (0..1000).collect::<Vec<i64>>());
    }
}
