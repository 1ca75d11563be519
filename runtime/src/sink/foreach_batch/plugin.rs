//! A foreachBatch sink's plugin, called once per micro-batch before any
//! output is written. With `on_error = "quarantine"` a call that traps (or
//! runs out of time or memory) or returns an `input` error is bisected to
//! the rows that fail alone; those are set aside and the plugin is called
//! once more, with the batch's clock and seed, on the rest. The probing
//! calls write nothing: the host queues a call's writes and keeps only
//! those of the last call.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

use super::super::postgres::PostgresOutput;
use crate::config::{OnError, OutputConfig, TransformConfig};
use crate::error::{PluginFailure, Result, WeirError};
use crate::plugin::{BatchEnv, BatchSinkComponent, BatchSinkInstance, OutputCheck};
use crate::quarantine::{
    DeadLetterSource, QuarantinedRow, bisect, blames_rows, kept_rows, record_found, take_rows,
};

/// The plugin, and what it takes to start a fresh instance after a trap.
pub(super) struct SinkPlugin {
    pub stage: TransformConfig,
    component: BatchSinkComponent,
    instance: BatchSinkInstance,
    outputs: BTreeMap<String, OutputConfig>,
}

/// What the plugin made of a batch: the writes it queued, not yet made.
pub(super) struct Prepared {
    pub batch_id: u64,
    /// Rows per output.
    pub written: BTreeMap<String, Vec<RecordBatch>>,
    /// Every row set aside in this batch (those recorded before included).
    pub quarantined: Vec<QuarantinedRow>,
    /// The rows set aside, as dead-letter records (JSON lines).
    pub dead_letters: Vec<u8>,
    /// Plugin calls made (bisection included).
    pub calls: u64,
    /// The plugin's counters after the batch.
    pub counters: BTreeMap<String, i64>,
}

impl SinkPlugin {
    /// Instantiates `component` as `stage` says, writing to `outputs`.
    pub fn start(
        stage: TransformConfig,
        component: BatchSinkComponent,
        outputs: BTreeMap<String, OutputConfig>,
    ) -> Result<SinkPlugin> {
        let instance =
            component.instantiate(&stage.config_json, stage.limits, output_checks(&outputs))?;
        Ok(SinkPlugin {
            stage,
            component,
            instance,
            outputs,
        })
    }

    /// Runs batch `batch_id`'s `rows` through the plugin with `env`'s clock
    /// and seed, leaving out the rows `recorded` says were set aside before
    /// (a replay). Blocking: call it off the async runtime.
    pub fn prepare(
        &mut self,
        batch_id: u64,
        rows: &RecordBatch,
        env: BatchEnv,
        recorded: &[QuarantinedRow],
    ) -> Result<Prepared> {
        let mut quarantined = recorded.to_vec();
        let mut calls = 0;
        let written = loop {
            let kept = kept_rows(rows.num_rows(), 0, &quarantined);
            if kept.is_empty() {
                break BTreeMap::new();
            }
            let input = match kept.len() == rows.num_rows() {
                true => rows.clone(),
                false => take_rows(rows, &kept)?,
            };
            self.instance.begin_batch(env);
            calls += 1;
            let error = match self.call(batch_id, &input) {
                Ok(written) => break written,
                Err(error) => error,
            };
            let limit = match &self.stage.on_error {
                OnError::Quarantine(q) if blames_rows(&error) => q.max_rows_per_batch,
                _ => return Err(error),
            };
            let budget = limit.saturating_sub(quarantined.len());
            let found = bisect(input.num_rows(), error, budget, &mut |start, len| {
                self.instance.begin_batch(env);
                calls += 1;
                match self.call(batch_id, &input.slice(start, len)) {
                    Ok(_) => Ok(None),
                    Err(e) if blames_rows(&e) => Ok(Some(e)),
                    Err(e) => Err(e),
                }
            })?;
            record_found(found, 0, &kept, limit, batch_id, &mut quarantined)
                .map_err(|reason| self.gave_up(reason))?;
        };
        quarantined.sort_by_key(|q| q.row);
        let source = DeadLetterSource {
            batch_id,
            stage: &self.stage.name,
            plugin: self.component.digest(),
        };
        let mut dead_letters = Vec::new();
        for q in &quarantined {
            let row = source.row(std::slice::from_ref(rows), q)?;
            dead_letters.extend(source.line(q, &row, &[])?);
        }
        Ok(Prepared {
            batch_id,
            written,
            quarantined,
            dead_letters,
            calls,
            counters: self.instance.counters().clone(),
        })
    }

    /// One `write-batch` call; after a trap the instance is replaced by a
    /// fresh one (a trapped instance must not run again).
    fn call(
        &mut self,
        batch_id: u64,
        rows: &RecordBatch,
    ) -> Result<BTreeMap<String, Vec<RecordBatch>>> {
        let result = self.instance.write_batch(batch_id, rows);
        if let Err(WeirError::Plugin { failure, .. }) = &result
            && failure.leaves_instance_unusable()
            && matches!(self.stage.on_error, OnError::Quarantine(_))
        {
            self.instance = self.component.instantiate(
                &self.stage.config_json,
                self.stage.limits,
                output_checks(&self.outputs),
            )?;
        }
        result
    }

    fn gave_up(&self, reason: String) -> WeirError {
        WeirError::Plugin {
            stage: self.stage.name.clone(),
            failure: PluginFailure::Quarantine { reason },
        }
    }
}

/// What rows each output takes, checked when the plugin writes them, so a
/// refused write fails the call that made it.
fn output_checks(outputs: &BTreeMap<String, OutputConfig>) -> BTreeMap<String, OutputCheck> {
    outputs
        .iter()
        .map(|(name, output)| {
            let check: OutputCheck = match output {
                OutputConfig::Files { .. } => Box::new(|_| Ok(())),
                OutputConfig::Postgres(pg) => {
                    let rules = pg.clone();
                    Box::new(move |batch| PostgresOutput::check(&rules, batch))
                }
                #[cfg(feature = "delta")]
                OutputConfig::Delta(delta) => {
                    let rules = delta.clone();
                    Box::new(move |batch| super::super::DeltaMergeOutput::check(&rules, batch))
                }
                // Refused when the sink opens.
                #[cfg(not(feature = "delta"))]
                OutputConfig::Delta(_) => Box::new(|_| Ok(())),
            };
            (name.clone(), check)
        })
        .collect()
}
