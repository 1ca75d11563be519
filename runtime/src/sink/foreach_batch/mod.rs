//! foreachBatch: a Wasm plugin sees each micro-batch whole and writes
//! through named outputs the pipeline declares. The plugin cannot reach
//! the outside world itself: the host queues its writes during the call
//! and, once the call succeeded, commits every output for the epoch, each
//! one idempotently (file outputs by their `_weir_log`, PostgreSQL by its
//! epoch ledger, Delta by its application transaction). A replayed epoch
//! therefore changes nothing, and an epoch whose call fails writes nothing
//! at all. With `on_error = "quarantine"` the rows the plugin fails on are
//! set aside first ([`plugin`]), and logged by the runner before any output
//! is written, so a replay leaves out the same rows.

mod plugin;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use super::postgres::PostgresOutput;
use super::{CommitOutcome, FileSink, Sink};
use crate::config::{ForeachBatchConfig, OutputConfig};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::plugin::{BatchEnv, PluginEngine};
use crate::quarantine::{QuarantineRecord, StageSetAside};
use crate::query::StageProgress;
use plugin::{Prepared, SinkPlugin};

enum Output {
    Files(Box<FileSink>),
    Postgres(Box<PostgresOutput>),
    #[cfg(feature = "delta")]
    Delta(Box<super::DeltaMergeOutput>),
}

/// The foreachBatch sink.
pub struct ForeachBatchSink {
    stage: String,
    plugin: Arc<Mutex<SinkPlugin>>,
    outputs: BTreeMap<String, Output>,
    last: StageProgress,
    /// Seeds the plugin's random stream, with the batch id.
    query_id: uuid::Uuid,
    /// The running batch's clock and seed ([`Sink::begin_batch`]).
    env: Option<BatchEnv>,
    /// What the plugin made of the running batch, not yet written.
    prepared: Option<Prepared>,
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
        for (name, output) in &config.outputs {
            let output = match output {
                OutputConfig::Files { kind, path } => {
                    Output::Files(Box::new(FileSink::open(path, *kind, retention)?))
                }
                OutputConfig::Postgres(pg) => Output::Postgres(Box::new(PostgresOutput::new(
                    pg.clone(),
                    query_id.to_string(),
                    name.clone(),
                ))),
                #[cfg(feature = "delta")]
                OutputConfig::Delta(delta) => Output::Delta(Box::new(
                    super::DeltaMergeOutput::new(delta.clone(), query_id, name),
                )),
                #[cfg(not(feature = "delta"))]
                OutputConfig::Delta(_) => {
                    return Err(WeirError::Internal(
                        "delta outputs are refused at load without the `delta` feature".into(),
                    ));
                }
            };
            outputs.insert(name.clone(), output);
        }
        let stage = &config.stage;
        let component = engine.load_batch_sink(&stage.name, &stage.plugin)?;
        let digest = component.digest().to_string();
        let plugin = SinkPlugin::start(stage.clone(), component, config.outputs.clone())?;
        Ok(ForeachBatchSink {
            stage: stage.name.clone(),
            plugin: Arc::new(Mutex::new(plugin)),
            outputs,
            last: StageProgress {
                name: stage.name.clone(),
                digest,
                ..StageProgress::default()
            },
            query_id: query_id.parse().unwrap_or_default(),
            env: None,
            prepared: None,
        })
    }
}

#[async_trait::async_trait]
impl Sink for ForeachBatchSink {
    fn stage_progress(&self) -> Option<StageProgress> {
        Some(self.last.clone())
    }

    fn begin_batch(&mut self, batch_id: u64, batch_time_ms: i64) {
        self.env = Some(BatchEnv::for_batch(
            &self.query_id,
            &self.stage,
            batch_id,
            batch_time_ms,
        ));
    }

    async fn prepare(
        &mut self,
        batch_id: u64,
        batches: &[RecordBatch],
        recorded: &QuarantineRecord,
    ) -> Result<Option<StageSetAside>> {
        let started = std::time::Instant::now();
        self.prepared = None;
        self.last = StageProgress {
            name: self.stage.clone(),
            digest: std::mem::take(&mut self.last.digest),
            ..StageProgress::default()
        };
        let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        let rows = concat_batches(&first.schema(), batches).map_err(|e| WeirError::Schema {
            context: format!("input of foreach_batch sink `{}`", self.stage),
            reason: e.to_string(),
        })?;
        let env = self.env.ok_or_else(|| {
            WeirError::Internal("a foreach_batch sink prepared a batch it was not told of".into())
        })?;
        let recorded = recorded.get(&self.stage).cloned().unwrap_or_default();
        let plugin = self.plugin.clone();
        // The plugin calls are synchronous and may take long: off the runtime.
        let mut prepared = tokio::task::spawn_blocking(move || {
            let mut plugin = plugin
                .lock()
                .map_err(|_| WeirError::Internal("a previous plugin call panicked".into()))?;
            plugin.prepare(batch_id, &rows, env, &recorded)
        })
        .await
        .map_err(|e| WeirError::Internal(format!("plugin task failed: {e}")))??;
        self.last.calls = prepared.calls;
        self.last.tasks = usize::from(prepared.calls > 0);
        self.last.counters = prepared.counters.clone();
        self.last.quarantined_rows = prepared.quarantined.len() as u64;
        self.last.duration = started.elapsed();
        let set_aside = (!prepared.quarantined.is_empty()).then(|| StageSetAside {
            stage: self.stage.clone(),
            rows: std::mem::take(&mut prepared.quarantined),
            dead_letters: std::mem::take(&mut prepared.dead_letters),
        });
        self.prepared = Some(prepared);
        Ok(set_aside)
    }

    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let prepared = match self.prepared.take() {
            Some(prepared) if prepared.batch_id == batch_id => prepared,
            _ => {
                // A caller that logs no quarantine record: rows may not be
                // set aside here, where no replay would find them.
                if self
                    .prepare(batch_id, batches, &QuarantineRecord::new())
                    .await?
                    .is_some()
                {
                    return Err(WeirError::Internal(format!(
                        "foreach_batch sink `{}` set rows aside in a batch whose record is \
                         not logged",
                        self.stage
                    )));
                }
                match self.prepared.take() {
                    Some(prepared) => prepared,
                    None => return Ok(CommitOutcome::Written),
                }
            }
        };
        let started = std::time::Instant::now();
        let written = prepared.written;
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
        self.last.duration += started.elapsed();
        Ok(if skipped > 0 && skipped == written.len() {
            CommitOutcome::AlreadyCommitted
        } else {
            CommitOutcome::Written
        })
    }
}
