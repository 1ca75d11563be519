//! A query's stateful operators, run one after another on each batch:
//! deduplication, then a window aggregation, then a window aggregation over
//! its windows, or a stateful function.
//!
//! Each operator runs with the watermarks the step before it lets through
//! (Spark 3.4+'s `WatermarkPropagator`): the query's watermarks enter the
//! stream-stream join, if any, and each step hands on its output
//! watermark ([`Operator::output_watermark`]). So an aggregation after a
//! join judges late rows by how old a joined row can still be, and a
//! window aggregation over another's windows receives each window once the
//! watermark closes it, and not as late.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

use super::tasks::{on_tasks, open_task_state, task_count};
use crate::checkpoint::Checkpoint;
use crate::config::{Pipeline, StreamJoinConfig};
use crate::error::{Result, WeirError};
use crate::operator::{
    Deduplicate, Operator, OperatorContext, OperatorQuarantine, StatefulFunction, WINDOW_TIME,
    Watermarks, WindowAggregate, with_window_time,
};
use crate::quarantine::QuarantinedRow;
use crate::query::StageProgress;
use crate::state::{KeyGroups, KeyedState, StateMetrics, split_by_group};

/// One stateful operator: a task per range of key groups, each with its
/// own instance of the operator and the state of its key groups.
pub(super) struct Stateful {
    tasks: Vec<Task>,
    /// The columns rows are placed in key groups by.
    key: Vec<String>,
    /// Whether the rows reaching it get a `window_time` column: it is a
    /// window aggregation over the windows of the one before it.
    window_time: bool,
}

/// One task of an operator.
struct Task {
    operator: Box<dyn Operator>,
    state: KeyedState,
}

/// What a task's key groups emitted, dropped and set aside in a batch.
#[derive(Default)]
struct TaskOutput {
    emitted: Vec<RecordBatch>,
    dropped: u64,
    quarantine: OperatorQuarantine,
}

impl Task {
    /// Runs each key group of the task: its rows of the batch, if any,
    /// then the end of the batch, with the group's state. A stateful
    /// function's set-aside rows are numbered within their key group's
    /// input (`input` is the key group).
    fn run(
        &mut self,
        batch_id: u64,
        watermarks: Watermarks,
        batch_time_ms: i64,
        rows: &BTreeMap<u16, Vec<RecordBatch>>,
        recorded: &[QuarantinedRow],
    ) -> Result<TaskOutput> {
        self.operator.start_batch();
        let mut out = TaskOutput::default();
        for group in self.state.range() {
            let mut ctx = OperatorContext {
                batch_id,
                watermark_ms: watermarks.eviction_ms,
                late_rows_watermark_ms: watermarks.late_rows_ms,
                batch_time_ms,
                state: self.state.group_mut(group),
                rows_dropped_by_watermark: 0,
                quarantine: OperatorQuarantine {
                    recorded: recorded
                        .iter()
                        .filter(|q| q.input == usize::from(group))
                        .map(|q| QuarantinedRow {
                            input: 0,
                            ..q.clone()
                        })
                        .collect(),
                    ..OperatorQuarantine::default()
                },
            };
            for batch in rows.get(&group).into_iter().flatten() {
                out.emitted
                    .extend(self.operator.process_batch(batch, &mut ctx)?);
            }
            out.emitted
                .extend(self.operator.handle_batch_end(&mut ctx)?);
            out.dropped += ctx.rows_dropped_by_watermark;
            let set_aside = ctx.quarantine;
            out.quarantine
                .rows
                .extend(set_aside.rows.into_iter().map(|q| QuarantinedRow {
                    input: usize::from(group),
                    ..q
                }));
            out.quarantine.dead_letters.extend(set_aside.dead_letters);
        }
        Ok(out)
    }
}

impl Stateful {
    /// Runs one batch's rows through the operator, each key group's on the
    /// task that owns it; returns the rows it emits (in key-group order,
    /// whatever the parallelism) and how many input rows were too late.
    /// A stateful function also sets rows aside: `recorded` are those a
    /// first attempt set aside (a replay).
    fn run(
        &mut self,
        batch_id: u64,
        watermarks: Watermarks,
        batch_time_ms: i64,
        batches: &[RecordBatch],
        recorded: Vec<QuarantinedRow>,
    ) -> Result<(Vec<RecordBatch>, u64, OperatorQuarantine)> {
        let with_time;
        let batches = match self.window_time {
            true => {
                with_time = batches
                    .iter()
                    .filter(|b| b.num_rows() > 0)
                    .map(with_window_time)
                    .collect::<Result<Vec<_>>>()?;
                &with_time
            }
            false => batches,
        };
        let rows = split_by_group(self.tasks[0].state.groups(), batches, &self.key)?;
        let outputs = on_tasks(&mut self.tasks, |task| {
            task.run(batch_id, watermarks, batch_time_ms, &rows, &recorded)
        })?;
        let mut emitted = Vec::new();
        let mut dropped = 0;
        let mut set_aside = OperatorQuarantine::default();
        for output in outputs {
            emitted.extend(output.emitted);
            dropped += output.dropped;
            set_aside.rows.extend(output.quarantine.rows);
            set_aside
                .dead_letters
                .extend(output.quarantine.dead_letters);
        }
        Ok((one_batch(emitted), dropped, set_aside))
    }

    /// What the operator's plugin did in the latest batch, over all tasks.
    fn stage_progress(&self) -> Option<StageProgress> {
        self.tasks
            .iter()
            .filter_map(|t| t.operator.stage_progress())
            .reduce(|mut all, task| {
                all.calls += task.calls;
                all.duration += task.duration;
                for (name, value) in task.counters {
                    *all.counters.entry(name).or_default() += value;
                }
                all.memory_bytes += task.memory_bytes;
                all.quarantined_rows += task.quarantined_rows;
                all
            })
    }
}

/// Key groups emit small batches: the sink gets one where their columns agree.
fn one_batch(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if batches.len() < 2 {
        return batches;
    }
    match arrow::compute::concat_batches(&batches[0].schema(), &batches) {
        Ok(one) => vec![one],
        Err(_) => batches,
    }
}

/// The operators `pipeline` declares, in the order rows reach them, each
/// with its kind and whether it reads `window_time` (`function`: its
/// `[stateful]` function, built).
fn operators_of(
    pipeline: &Pipeline,
    function: Option<StatefulFunction>,
) -> Vec<(Box<dyn Operator>, &'static str, bool)> {
    let mut operators: Vec<(Box<dyn Operator>, &'static str, bool)> = Vec::new();
    if let Some(config) = &pipeline.deduplicate {
        let operator = Box::new(Deduplicate::new(config.clone()));
        operators.push((operator, "deduplication", false));
    }
    if let Some(config) = &pipeline.aggregate {
        let operator = Box::new(WindowAggregate::new(config.clone()));
        operators.push((operator, "window aggregation", false));
    }
    if let Some(config) = &pipeline.then_aggregate {
        let window_time = config.time_column == WINDOW_TIME;
        let operator = Box::new(WindowAggregate::new(config.clone()));
        operators.push((operator, "window aggregation", window_time));
    }
    if let Some(function) = function {
        operators.push((Box::new(function), "stateful function", false));
    }
    operators
}

/// The stateful operators of a query, in the order rows reach them.
pub(super) struct Chain {
    pub(super) operators: Vec<Stateful>,
}

impl Chain {
    /// The operators `pipeline` declares, each with its state as version
    /// `version` left it (state `0` is the first operator's, `1` the
    /// next's), partitioned into `groups` and run as `functions.len()`
    /// tasks when the query has a stateful function (one instance per
    /// task), else as the pipeline's parallelism; a running query's states
    /// keep `retain` versions, and its operators must be those the
    /// checkpoint's state belongs to.
    pub(super) async fn open(
        checkpoint: &Checkpoint,
        pipeline: &Pipeline,
        functions: Vec<StatefulFunction>,
        groups: KeyGroups,
        version: u64,
        retain: Option<u64>,
    ) -> Result<Chain> {
        let tasks = match pipeline.stateful {
            Some(_) if functions.is_empty() => {
                return Err(WeirError::Internal(
                    "a stateful function's tasks came without instances".into(),
                ));
            }
            Some(_) => functions.len(),
            None => task_count(pipeline, groups),
        };
        let mut functions = functions.into_iter();
        let per_task: Vec<_> = (0..tasks)
            .map(|_| operators_of(pipeline, functions.next()))
            .collect();
        let kinds: Vec<(&'static str, bool)> = per_task
            .first()
            .into_iter()
            .flatten()
            .map(|(_, kind, window_time)| (*kind, *window_time))
            .collect();
        let mut per_task: Vec<_> = per_task.into_iter().map(Vec::into_iter).collect();
        if retain.is_some() && !kinds.is_empty() {
            let names: Vec<String> = kinds.iter().map(|(k, _)| k.to_string()).collect();
            checkpoint.check_operators(&names).await?;
        }
        let mut operators = Vec::new();
        for (index, (_, window_time)) in kinds.into_iter().enumerate() {
            let mut task_list = Vec::with_capacity(tasks);
            for (task, declared) in per_task.iter_mut().enumerate() {
                let (operator, _, _) = declared.next().ok_or_else(|| {
                    WeirError::Internal("a task lacks an instance of an operator".into())
                })?;
                let state = open_task_state(
                    checkpoint,
                    pipeline,
                    &index.to_string(),
                    groups,
                    (task, tasks),
                    version,
                    retain,
                )
                .await?;
                task_list.push(Task { operator, state });
            }
            let key = task_list
                .first()
                .map(|t| t.operator.key_columns())
                .unwrap_or_default();
            operators.push(Stateful {
                tasks: task_list,
                key,
                window_time,
            });
        }
        Ok(Chain { operators })
    }

    /// No operators (a placeholder while the chain runs off the async runtime).
    pub(super) fn empty() -> Chain {
        Chain {
            operators: Vec::new(),
        }
    }

    /// Whether the query has no stateful operator.
    pub(super) fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// The watermarks each operator runs with, when the query's are
    /// `query` and `join` (if any) comes first.
    pub(super) fn watermarks(
        &self,
        join: Option<&StreamJoinConfig>,
        query: Watermarks,
    ) -> Vec<Watermarks> {
        let mut current = match join {
            Some(join) => query.through(|w| Some(join.output_watermark(w))),
            None => query,
        };
        let mut each = Vec::with_capacity(self.operators.len());
        for stateful in &self.operators {
            each.push(current);
            let operator = &stateful.tasks[0].operator;
            current = current.through(|w| operator.output_watermark(w));
        }
        each
    }

    /// Runs a batch's rows through every operator, each taking what the
    /// one before emitted; returns the last one's rows, the rows all of
    /// them dropped as late, and what a stateful function set aside
    /// (`recorded`: what a first attempt set aside).
    pub(super) fn run(
        &mut self,
        watermarks: &[Watermarks],
        batch_id: u64,
        batch_time_ms: i64,
        mut batches: Vec<RecordBatch>,
        mut recorded: Vec<QuarantinedRow>,
    ) -> Result<(Vec<RecordBatch>, u64, OperatorQuarantine)> {
        let mut dropped = 0;
        let mut set_aside = OperatorQuarantine::default();
        for (stateful, watermarks) in self.operators.iter_mut().zip(watermarks) {
            let (emitted, late, quarantine) = stateful.run(
                batch_id,
                *watermarks,
                batch_time_ms,
                &batches,
                std::mem::take(&mut recorded),
            )?;
            batches = emitted;
            dropped += late;
            set_aside.rows.extend(quarantine.rows);
            set_aside.dead_letters.extend(quarantine.dead_letters);
        }
        Ok((batches, dropped, set_aside))
    }

    /// Commits every operator's state as version `version`.
    pub(super) async fn commit(&mut self, version: u64) -> Result<()> {
        for stateful in &mut self.operators {
            for task in &mut stateful.tasks {
                task.state.commit(version).await?;
            }
        }
        Ok(())
    }

    /// Whether some operator needs a batch without new input (see
    /// `Runner::needs_no_data_batch`): `watermarks` are each operator's,
    /// late rows' being the last batch's and eviction's the next's.
    pub(super) fn needs_no_data_batch(
        &self,
        watermarks: &[Watermarks],
        now_ms: Option<i64>,
    ) -> Result<bool> {
        for (stateful, w) in self.operators.iter().zip(watermarks) {
            let moved = matches!(
                (w.eviction_ms, w.late_rows_ms),
                (Some(next), Some(last)) if next > last
            );
            for task in &stateful.tasks {
                if moved && task.operator.evicts_by_watermark() {
                    return Ok(true);
                }
                for (_, state) in task.state.iter() {
                    if task.operator.has_work_at(state, w.eviction_ms, now_ms)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The rows and bytes every operator's state holds.
    pub(super) fn state_metrics(&self) -> Option<StateMetrics> {
        self.operators
            .iter()
            .flat_map(|s| &s.tasks)
            .map(|t| t.state.metrics())
            .reduce(|a, b| a + b)
    }

    /// What each operator's plugin did in the latest batch, if it runs one.
    pub(super) fn stage_progress(&self) -> impl Iterator<Item = StageProgress> + '_ {
        self.operators.iter().filter_map(Stateful::stage_progress)
    }
}
