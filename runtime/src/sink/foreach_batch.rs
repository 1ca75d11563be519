//! foreachBatch: a Wasm plugin sees each micro-batch whole and writes
//! through named outputs the pipeline declares. The plugin cannot reach
//! the outside world itself: the host queues its writes during the call
//! and, once the call succeeded, commits every output for the epoch, each
//! one idempotently (file outputs by their `_weir_log`, PostgreSQL by its
//! epoch ledger, Delta by its application transaction). A replayed epoch therefore changes nothing, and an epoch
//! whose call fails writes nothing at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use super::postgres::PostgresOutput;
use super::{CommitOutcome, FileSink, Sink};
use crate::config::{ForeachBatchConfig, OutputConfig};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::plugin::{BatchSinkInstance, OutputCheck, PluginEngine};
use crate::query::StageProgress;

enum Output {
    Files(Box<FileSink>),
    Postgres(Box<PostgresOutput>),
    #[cfg(feature = "delta")]
    Delta(Box<super::DeltaMergeOutput>),
}

/// The foreachBatch sink.
pub struct ForeachBatchSink {
    stage: String,
    instance: Arc<Mutex<BatchSinkInstance>>,
    outputs: BTreeMap<String, Output>,
    last: StageProgress,
    /// Seeds the plugin's random stream, with the batch id.
    query_id: uuid::Uuid,
}

impl ForeachBatchSink {
    /// Loads and initialises the plugin (blocking: call it off the async
    /// runtime) and opens the outputs for query `query_id`.
    pub fn open(
        engine: &PluginEngine,
        config: &ForeachBatchConfig,
        query_id: &str,
        retention: crate::config::Retention,
    ) -> Result<ForeachBatchSink> {
        let mut outputs = BTreeMap::new();
        let mut checks: BTreeMap<String, OutputCheck> = BTreeMap::new();
        for (name, output) in &config.outputs {
            let (output, check): (Output, OutputCheck) = match output {
                OutputConfig::Files { kind, path } => (
                    Output::Files(Box::new(FileSink::open(path, *kind, retention)?)),
                    Box::new(|_| Ok(())),
                ),
                OutputConfig::Postgres(pg) => {
                    let rules = pg.clone();
                    (
                        Output::Postgres(Box::new(PostgresOutput::new(
                            pg.clone(),
                            query_id.to_string(),
                            name.clone(),
                        ))),
                        Box::new(move |batch| PostgresOutput::check(&rules, batch)),
                    )
                }
                #[cfg(feature = "delta")]
                OutputConfig::Delta(delta) => {
                    let rules = delta.clone();
                    (
                        Output::Delta(Box::new(super::DeltaMergeOutput::new(
                            delta.clone(),
                            query_id,
                            name,
                        ))),
                        Box::new(move |batch| super::DeltaMergeOutput::check(&rules, batch)),
                    )
                }
                #[cfg(not(feature = "delta"))]
                OutputConfig::Delta(_) => {
                    return Err(WeirError::Internal(
                        "delta outputs are refused at load without the `delta` feature".into(),
                    ));
                }
            };
            outputs.insert(name.clone(), output);
            checks.insert(name.clone(), check);
        }
        let stage = &config.stage;
        let instance = engine
            .load_batch_sink(&stage.name, &stage.plugin)?
            .instantiate(&stage.config_json, stage.limits, checks)?;
        Ok(ForeachBatchSink {
            stage: stage.name.clone(),
            instance: Arc::new(Mutex::new(instance)),
            outputs,
            last: StageProgress::default(),
            query_id: query_id.parse().unwrap_or_default(),
        })
    }
}

#[async_trait::async_trait]
impl Sink for ForeachBatchSink {
    fn stage_progress(&self) -> Option<StageProgress> {
        Some(self.last.clone())
    }

    fn begin_batch(&mut self, batch_id: u64, batch_time_ms: i64) {
        let env = crate::plugin::BatchEnv::for_batch(
            &self.query_id,
            &self.stage,
            batch_id,
            batch_time_ms,
        );
        if let Ok(mut instance) = self.instance.lock() {
            instance.begin_batch(env);
        }
    }

    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let started = std::time::Instant::now();
        self.last = StageProgress {
            name: self.stage.clone(),
            ..StageProgress::default()
        };
        let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(CommitOutcome::Written);
        };
        let rows = concat_batches(&first.schema(), batches).map_err(|e| WeirError::Schema {
            context: format!("input of foreach_batch sink `{}`", self.stage),
            reason: e.to_string(),
        })?;
        let instance = self.instance.clone();
        // The plugin call is synchronous and may take long: off the runtime.
        let (written, counters) = tokio::task::spawn_blocking(move || {
            let mut instance = instance
                .lock()
                .map_err(|_| WeirError::Internal("a previous plugin call panicked".into()))?;
            let written = instance.write_batch(batch_id, &rows)?;
            Ok::<_, WeirError>((written, instance.counters().clone()))
        })
        .await
        .map_err(|e| WeirError::Internal(format!("plugin task failed: {e}")))??;
        self.last.calls = 1;
        self.last.counters = counters;
        let mut skipped = 0;
        for (name, output) in &mut self.outputs {
            let Some(rows) = written.get(name) else {
                continue;
            };
            let outcome = match output {
                Output::Files(files) => files.commit(batch_id, rows).await?,
                Output::Postgres(pg) => pg.commit(batch_id, rows).await?,
                #[cfg(feature = "delta")]
                Output::Delta(delta) => delta.commit(batch_id, rows).await?,
            };
            if outcome == CommitOutcome::AlreadyCommitted {
                skipped += 1;
            }
            crash_point("sink-after-output", batch_id);
        }
        self.last.duration = started.elapsed();
        Ok(if skipped > 0 && skipped == written.len() {
            CommitOutcome::AlreadyCommitted
        } else {
            CommitOutcome::Written
        })
    }
}
