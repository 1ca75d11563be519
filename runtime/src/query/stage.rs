//! Transform stages: a plugin run over a batch's rows by `tasks` tasks,
//! each with an instance of its own.
//!
//! A batch reaches a stage as a list of input batches (parts); task `t` of
//! `n` runs parts `t`, `t + n`, ... (so which instance sees which rows is
//! fixed too) and the outputs are kept in the parts' order.
//! Each part is a call of its own with a clock and random stream of its
//! own ([`BatchEnv::for_part`]), so a part's output is the same whichever
//! task runs it: the rows are the same with one task or eight, in a replay
//! or a `weir plugin test`.
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
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Tasks a batch's parts are spread over.
    pub tasks: usize,
    /// The instances of tasks 2, 3, ... (task 1 runs `instance`), made
    /// when a batch first needs them and dropped with their version.
    helpers: Vec<TransformInstance>,
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
            tasks: 1,
            helpers: Vec::new(),
        }
    }

    /// Puts `next` in, returning the version that ran until now. (Another
    /// version may emit other columns: its first output sets the schema.)
    pub fn replace(&mut self, next: PluginVersion) -> PluginVersion {
        self.schema = None;
        self.helpers.clear();
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
        let (mut calls, mut busy) = (0, 0);
        let outputs = loop {
            let failed = match self.run_inputs(inputs, &quarantined, env, &mut calls, &mut busy) {
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
            let part_env = env.for_part(failed.input);
            let found = self.failing_rows(&batch, failed.error, part_env, budget, &mut calls)?;
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
        let mut counters = self.instance.counters().clone();
        for helper in &self.helpers {
            for (name, value) in helper.counters() {
                let sum = counters.entry(name.clone()).or_default();
                *sum = sum.saturating_add(*value);
            }
        }
        self.last = StageProgress {
            name: self.name.clone(),
            digest: self.version.digest.clone(),
            calls,
            tasks: busy,
            duration: started.elapsed(),
            counters,
            memory_bytes: std::iter::once(&self.instance)
                .chain(&self.helpers)
                .map(TransformInstance::memory_bytes)
                .sum(),
            quarantined_rows: quarantined.len() as u64,
        };
        Ok(StageRun {
            outputs,
            quarantined,
            dead_letters,
        })
    }

    /// One pass over the inputs without the rows set aside, the parts
    /// spread over the stage's tasks; the failing call of the lowest part
    /// stops it (as one task going through the parts in order would).
    fn run_inputs(
        &mut self,
        inputs: &[RecordBatch],
        quarantined: &[QuarantinedRow],
        env: BatchEnv,
        calls: &mut u64,
        busy: &mut usize,
    ) -> std::result::Result<Vec<RecordBatch>, CallFailed> {
        let tasks = self.tasks.clamp(1, inputs.len().max(1));
        self.add_helpers(tasks - 1)
            .map_err(|error| CallFailed { input: 0, error })?;
        let caller = Caller {
            component: &self.component,
            config_json: &self.version.config_json,
            limits: self.limits,
            fresh_after_trap: matches!(self.on_error, OnError::Quarantine(_)),
        };
        let parts = Parts {
            inputs,
            quarantined,
            env,
            tasks,
            lowest_failed: AtomicUsize::new(usize::MAX),
        };
        let mut results: Vec<Option<Result<Vec<RecordBatch>>>> = Vec::new();
        results.resize_with(inputs.len(), || None);
        let mut pass_busy = 0;
        let mut collect = |(done, task_calls): TaskRun| {
            *calls += task_calls;
            pass_busy += usize::from(task_calls > 0);
            for (index, result) in done {
                results[index] = Some(result);
            }
        };
        if tasks == 1 {
            collect(parts.run(0, &mut self.instance, &caller));
        } else {
            let helpers = &mut self.helpers[..tasks - 1];
            let instance = &mut self.instance;
            let (parts, caller) = (&parts, &caller);
            let runs = std::thread::scope(|scope| {
                let others: Vec<_> = helpers
                    .iter_mut()
                    .enumerate()
                    .map(|(i, helper)| scope.spawn(move || parts.run(i + 1, helper, caller)))
                    .collect();
                let mine = parts.run(0, instance, caller);
                let mut runs = vec![mine];
                for other in others {
                    // A task panicking is a bug of the host's; it fails the
                    // batch, not the process.
                    runs.push(other.join().map_err(|_| CallFailed {
                        input: 0,
                        error: WeirError::Internal(format!(
                            "stage `{}`: a task panicked",
                            self.name
                        )),
                    })?);
                }
                Ok(runs)
            })?;
            runs.into_iter().for_each(&mut collect);
        }
        *busy = (*busy).max(pass_busy);
        let mut outputs = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            let Some(result) = result else { continue };
            let failed = |error| CallFailed {
                input: index,
                error,
            };
            for output in result.map_err(failed)? {
                self.check_schema(&output).map_err(failed)?;
                outputs.push(output);
            }
        }
        Ok(outputs)
    }

    /// Makes sure tasks 2 to `count + 1` have an instance.
    fn add_helpers(&mut self, count: usize) -> Result<()> {
        while self.helpers.len() < count {
            let instance = self
                .component
                .instantiate(&self.version.config_json, self.limits)?;
            self.helpers.push(instance);
        }
        Ok(())
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

    /// One plugin call on the first task's instance.
    fn call(&mut self, input: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let caller = Caller {
            component: &self.component,
            config_json: &self.version.config_json,
            limits: self.limits,
            fresh_after_trap: matches!(self.on_error, OnError::Quarantine(_)),
        };
        caller.call(&mut self.instance, input)
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

/// What a task needs to call the stage's plugin.
struct Caller<'a> {
    component: &'a TransformComponent,
    config_json: &'a str,
    limits: PluginLimits,
    /// Replace an instance a call left unusable (a trap, say) by a fresh
    /// one: when the stage quarantines rows and so goes on after one.
    fresh_after_trap: bool,
}

impl Caller<'_> {
    fn call(
        &self,
        instance: &mut TransformInstance,
        input: &RecordBatch,
    ) -> Result<Vec<RecordBatch>> {
        let result = instance.process(input);
        if let Err(WeirError::Plugin { failure, .. }) = &result
            && failure.leaves_instance_unusable()
            && self.fresh_after_trap
        {
            *instance = self.component.instantiate(self.config_json, self.limits)?;
        }
        result
    }
}

/// A pass's parts, dealt out to the tasks in turn.
struct Parts<'a> {
    inputs: &'a [RecordBatch],
    quarantined: &'a [QuarantinedRow],
    env: BatchEnv,
    tasks: usize,
    /// The lowest part whose call failed so far: parts above it need not run.
    lowest_failed: AtomicUsize,
}

/// The outputs of the parts one task ran (by part), and its calls.
type TaskRun = (Vec<(usize, Result<Vec<RecordBatch>>)>, u64);

impl Parts<'_> {
    /// Runs task `task`'s parts on `instance`, in order, until one fails
    /// or a lower part than the next one failed on another task.
    fn run(&self, task: usize, instance: &mut TransformInstance, caller: &Caller) -> TaskRun {
        let (mut done, mut calls) = (Vec::new(), 0);
        for (index, input) in self
            .inputs
            .iter()
            .enumerate()
            .skip(task)
            .step_by(self.tasks)
        {
            if index > self.lowest_failed.load(Ordering::Acquire) {
                break;
            }
            let kept = kept_rows(input.num_rows(), index, self.quarantined);
            if kept.is_empty() {
                continue;
            }
            let result = if kept.len() == input.num_rows() {
                Ok(input.clone())
            } else {
                take_rows(input, &kept)
            }
            .and_then(|input| {
                calls += 1;
                instance.begin_batch(self.env.for_part(index));
                caller.call(instance, &input)
            });
            let failed = result.is_err();
            done.push((index, result));
            if failed {
                self.lowest_failed.fetch_min(index, Ordering::AcqRel);
                break;
            }
        }
        (done, calls)
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
