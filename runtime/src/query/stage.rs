//! Transform stages: one plugin instance per stage, run over a batch's rows.
//!
//! A stage with `on_error = "quarantine"` keeps one bad row from failing
//! its batch. When a call traps (or runs out of time or memory) or returns
//! an `input` error, the stage bisects the failing input to the rows that
//! fail alone, sets them aside and runs the batch again without them. The
//! output is then what the plugin makes of the batch minus those rows, in
//! one pass with the batch's clock and seed (`BatchEnv`): exactly what a
//! replay makes when it removes the rows `quarantine/N` recorded, and the
//! same whatever size the source's batches are, for a plugin that maps
//! rows independently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::{StageProgress, StageVersion, field_list};
use crate::config::{OnError, PluginLimits, SwapFailure};
use crate::error::{PluginFailure, Result, WeirError};
use crate::plugin::{BatchEnv, TransformComponent, TransformInstance};
use crate::quarantine::{
    DeadLetterSource, QuarantinedRow, bisect, blames_rows as quarantinable, kept_rows,
    record_found, take_rows,
};

pub(super) struct Stage {
    pub name: String,
    pub instance: TransformInstance,
    /// The schema of this stage's first output; later outputs must match.
    pub schema: Option<SchemaRef>,
    /// What the stage did in the latest batch.
    pub last: StageProgress,
    /// The plugin version running.
    pub version: StageVersion,
    pub component: Arc<TransformComponent>,
    pub limits: PluginLimits,
    pub on_failure: SwapFailure,
    /// What a failing call does: fail the query, or quarantine rows.
    pub on_error: OnError,
    /// After a swap, until the new version completed a batch: the version
    /// before, to roll back to.
    pub previous: Option<Box<PluginVersion>>,
    /// A candidate version running beside this one, if any.
    pub shadow: Option<super::shadow::Shadow>,
}

/// A stage's plugin, swapped out but kept.
pub(super) struct PluginVersion {
    pub instance: TransformInstance,
    pub version: StageVersion,
    pub component: Arc<TransformComponent>,
}

/// What one stage made of a batch.
pub(super) struct StageRun {
    pub outputs: Vec<RecordBatch>,
    /// Every row set aside in this batch (those recorded before included).
    pub quarantined: Vec<QuarantinedRow>,
    /// The rows set aside, as dead-letter records (JSON lines).
    pub dead_letters: Vec<u8>,
}

/// A call that failed on one of the stage's inputs.
struct CallFailed {
    input: usize,
    error: WeirError,
}

impl Stage {
    /// A stage running `instance` of `component` with `config_json`; a
    /// version swapped in that fails is not rolled back unless the caller
    /// sets `on_failure`.
    pub fn new(
        name: &str,
        component: Arc<TransformComponent>,
        instance: TransformInstance,
        config_json: String,
        limits: PluginLimits,
        on_error: OnError,
    ) -> Stage {
        Stage {
            name: name.to_string(),
            instance,
            schema: None,
            last: StageProgress::default(),
            version: StageVersion {
                digest: component.digest().to_string(),
                config_json,
            },
            component,
            limits,
            on_failure: SwapFailure::Fail,
            on_error,
            previous: None,
            shadow: None,
        }
    }

    /// Puts `next` in, returning the version that ran until now. (Another
    /// version may emit other columns: its first output sets the schema.)
    pub fn replace(&mut self, next: PluginVersion) -> PluginVersion {
        self.schema = None;
        let instance = std::mem::replace(&mut self.instance, next.instance);
        let version = std::mem::replace(&mut self.version, next.version);
        let component = std::mem::replace(&mut self.component, next.component);
        PluginVersion {
            instance,
            version,
            component,
        }
    }

    /// Runs batch `batch_id`'s non-empty inputs through the plugin (on a
    /// blocking thread), with `env`'s clock and seed, leaving out the rows
    /// `recorded` says were set aside before (a replay).
    pub fn process(
        &mut self,
        batch_id: u64,
        inputs: &[RecordBatch],
        env: BatchEnv,
        recorded: &[QuarantinedRow],
    ) -> Result<StageRun> {
        let started = Instant::now();
        let mut quarantined = recorded.to_vec();
        let mut calls = 0;
        let outputs = loop {
            self.instance.begin_batch(env);
            let failed = match self.run_inputs(inputs, &quarantined, &mut calls) {
                Ok(outputs) => break outputs,
                Err(failed) => failed,
            };
            let OnError::Quarantine(settings) = &self.on_error else {
                return Err(failed.error);
            };
            if !quarantinable(&failed.error) {
                return Err(failed.error);
            }
            let limit = settings.max_rows_per_batch;
            let kept = kept_rows(inputs[failed.input].num_rows(), failed.input, &quarantined);
            let batch = take_rows(&inputs[failed.input], &kept)?;
            let budget = limit.saturating_sub(quarantined.len());
            let found = self.failing_rows(&batch, failed.error, env, budget, &mut calls)?;
            record_found(
                found,
                failed.input,
                &kept,
                limit,
                batch_id,
                &mut quarantined,
            )
            .map_err(|reason| self.gave_up(reason))?;
        };
        quarantined.sort_by_key(|q| (q.input, q.row));
        let dead_letters = self.dead_letters(batch_id, inputs, &quarantined)?;
        self.last = StageProgress {
            name: self.name.clone(),
            digest: self.version.digest.clone(),
            calls,
            duration: started.elapsed(),
            counters: self.instance.counters().clone(),
            memory_bytes: self.instance.memory_bytes(),
            quarantined_rows: quarantined.len() as u64,
        };
        Ok(StageRun {
            outputs,
            quarantined,
            dead_letters,
        })
    }

    /// One pass over the inputs without the rows set aside; the first
    /// failing call stops it.
    fn run_inputs(
        &mut self,
        inputs: &[RecordBatch],
        quarantined: &[QuarantinedRow],
        calls: &mut u64,
    ) -> std::result::Result<Vec<RecordBatch>, CallFailed> {
        let mut outputs = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            let failed = |error| CallFailed {
                input: index,
                error,
            };
            let kept = kept_rows(input.num_rows(), index, quarantined);
            if kept.is_empty() {
                continue;
            }
            let input = if kept.len() == input.num_rows() {
                input.clone()
            } else {
                take_rows(input, &kept).map_err(failed)?
            };
            *calls += 1;
            for output in self.call(&input).map_err(failed)? {
                self.check_schema(&output).map_err(failed)?;
                outputs.push(output);
            }
        }
        Ok(outputs)
    }

    /// Finds the rows of `batch` that fail alone; `error` is what the call
    /// over all of `batch` returned. Stops once more than `budget` are found.
    fn failing_rows(
        &mut self,
        batch: &RecordBatch,
        error: WeirError,
        env: BatchEnv,
        budget: usize,
        calls: &mut u64,
    ) -> Result<Vec<(usize, String)>> {
        bisect(batch.num_rows(), error, budget, &mut |start, len| {
            self.instance.begin_batch(env);
            *calls += 1;
            match self.call(&batch.slice(start, len)) {
                Ok(_) => Ok(None),
                Err(e) if quarantinable(&e) => Ok(Some(e)),
                Err(e) => Err(e),
            }
        })
    }

    /// One plugin call; after a trap the instance is replaced by a fresh
    /// one (a trapped instance must not run again).
    fn call(&mut self, input: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let result = self.instance.process(input);
        if let Err(WeirError::Plugin { failure, .. }) = &result
            && failure.leaves_instance_unusable()
            && matches!(self.on_error, OnError::Quarantine(_))
        {
            self.instance = self
                .component
                .instantiate(&self.version.config_json, self.limits)?;
        }
        result
    }

    fn check_schema(&mut self, output: &RecordBatch) -> Result<()> {
        match &self.schema {
            None => self.schema = Some(output.schema()),
            Some(expected) if *expected != output.schema() => {
                return Err(WeirError::Plugin {
                    stage: self.name.clone(),
                    failure: PluginFailure::InvalidOutput {
                        reason: format!(
                            "output schema changed between batches: first {:?}, now {:?}",
                            field_list(expected),
                            field_list(&output.schema())
                        ),
                    },
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The dead-letter records of the rows set aside: one JSON line each,
    /// with the row, the error and the plugin version.
    fn dead_letters(
        &self,
        batch_id: u64,
        inputs: &[RecordBatch],
        quarantined: &[QuarantinedRow],
    ) -> Result<Vec<u8>> {
        let source = DeadLetterSource {
            batch_id,
            stage: &self.name,
            plugin: &self.version.digest,
        };
        let mut lines = Vec::new();
        for q in quarantined {
            lines.extend(source.line(q, &source.row(inputs, q)?, &[])?);
        }
        Ok(lines)
    }

    fn gave_up(&self, reason: String) -> WeirError {
        WeirError::Plugin {
            stage: self.name.clone(),
            failure: PluginFailure::Quarantine { reason },
        }
    }
}

/// What a transform plugin made of some batches, run outside any query
/// (`weir plugin test`).
#[derive(Debug)]
pub struct TrialRun {
    /// Its output batches.
    pub outputs: Vec<RecordBatch>,
    /// With quarantine: the rows set aside, as dead-letter records.
    pub dead_letters: Vec<serde_json::Value>,
    /// Plugin calls made (bisection included).
    pub calls: u64,
    /// Linear memory the instance held at the end, in bytes.
    pub memory_bytes: u64,
    /// The plugin's counters.
    pub counters: BTreeMap<String, i64>,
}

/// Runs `inputs` through a fresh instance of `component` (with `config_json`
/// and `limits`), as a stage named `stage` of a query would: with
/// `quarantine`, the rows it fails on are set aside (at most
/// `max_quarantined_rows_per_batch`'s default) and the rest run. The clock
/// reads `time_ms` and the random stream is seeded as batch 0's of a query
/// with the nil id, so two trials of one input give the same output.
pub fn trial_run(
    stage: &str,
    component: Arc<TransformComponent>,
    config_json: &str,
    limits: PluginLimits,
    inputs: &[RecordBatch],
    quarantine: bool,
    time_ms: i64,
) -> Result<TrialRun> {
    let on_error = if quarantine {
        OnError::Quarantine(crate::config::Quarantine {
            dead_letter: None,
            max_rows_per_batch: crate::config::DEFAULT_MAX_QUARANTINED_ROWS,
        })
    } else {
        OnError::Fail
    };
    let instance = component.instantiate(config_json, limits)?;
    let mut stage = Stage::new(
        stage,
        component,
        instance,
        config_json.to_string(),
        limits,
        on_error,
    );
    let env = BatchEnv::for_batch(&uuid::Uuid::nil(), &stage.name, 0, time_ms);
    let run = stage.process(0, inputs, env, &[])?;
    let dead_letters = run
        .dead_letters
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| WeirError::Internal(format!("a dead-letter record: {e}")))?;
    Ok(TrialRun {
        outputs: run.outputs,
        dead_letters,
        calls: stage.last.calls,
        memory_bytes: stage.last.memory_bytes,
        counters: stage.last.counters,
    })
}
