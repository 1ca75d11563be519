//! Parallel tasks: a stateful operator runs as one task per range of key
//! groups, each on its own thread for the batch (the first on the
//! caller's), with its own operator instance and state. A batch's rows
//! are split by key group (each input by its own key columns: the
//! in-process shuffle), every task runs its groups, and the groups'
//! outputs are put back together in key-group order, whatever the
//! parallelism.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::checkpoint::Checkpoint;
use crate::config::Pipeline;
use crate::error::{Result, WeirError};
use crate::operator::{
    Operator, OperatorContext, OperatorQuarantine, Watermarks, with_window_time,
};
use crate::quarantine::QuarantinedRow;
use crate::query::StageProgress;
use crate::state::{KeyGroups, KeyedState, StateMetrics, split_by_group};

/// One stateful operator (a window aggregation, a deduplication, a
/// stateful function, a stream-stream join) as tasks over key groups.
pub(super) struct OperatorTasks {
    tasks: Vec<Task>,
    /// Per input, the columns its rows are placed in key groups by.
    keys: Vec<Vec<String>>,
    /// Whether the rows reaching it get a `window_time` column: it is a
    /// window aggregation over the windows of the one before it.
    window_time: bool,
}

/// One task of an operator: its instance and its key groups' state.
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

/// A batch's rows of each input, split by key group.
type SplitInputs = Vec<BTreeMap<u16, Vec<RecordBatch>>>;

impl Task {
    /// Runs each key group of the task: its rows of the batch, input by
    /// input, then the end of the batch, with the group's state. A
    /// stateful function's set-aside rows are numbered within their key
    /// group's input (`input` is the key group).
    fn run(
        &mut self,
        batch_id: u64,
        watermarks: Watermarks,
        batch_time_ms: i64,
        inputs: &SplitInputs,
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
            for (input, rows) in inputs.iter().enumerate() {
                for batch in rows.get(&group).into_iter().flatten() {
                    out.emitted
                        .extend(self.operator.process_input(input, batch, &mut ctx)?);
                }
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

impl OperatorTasks {
    /// `instances` (one per task) of an operator whose state is kept under
    /// `state/<name>/`, each with its key groups' state as version
    /// `version` left it; a running query's state keeps `retain` versions.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        checkpoint: &Checkpoint,
        pipeline: &Pipeline,
        name: &str,
        instances: Vec<Box<dyn Operator>>,
        groups: KeyGroups,
        version: u64,
        retain: Option<u64>,
        window_time: bool,
    ) -> Result<OperatorTasks> {
        let count = instances.len();
        let mut tasks = Vec::with_capacity(count);
        for (task, operator) in instances.into_iter().enumerate() {
            let state = open_task_state(
                checkpoint,
                pipeline,
                name,
                groups,
                (task, count),
                version,
                retain,
            )
            .await?;
            tasks.push(Task { operator, state });
        }
        let Some(first) = tasks.first() else {
            return Err(WeirError::Internal(format!(
                "operator {name} opened without tasks"
            )));
        };
        let keys = (0..first.operator.inputs())
            .map(|input| first.operator.key_columns_of(input))
            .collect();
        let mut operator = OperatorTasks {
            tasks,
            keys,
            window_time,
        };
        operator.learn_stored_columns()?;
        Ok(operator)
    }

    /// Each input's columns, from whichever key group of whichever task
    /// recorded them, taught to every task.
    fn learn_stored_columns(&mut self) -> Result<()> {
        let mut known: Vec<Option<SchemaRef>> = vec![None; self.keys.len()];
        for task in &self.tasks {
            for (_, state) in task.state.iter() {
                let stored = task.operator.stored_input_columns(state)?;
                for (slot, columns) in known.iter_mut().zip(stored) {
                    if slot.is_none() {
                        *slot = columns;
                    }
                }
            }
        }
        for (input, columns) in known.iter().enumerate() {
            if let Some(columns) = columns {
                self.know_input_columns(input, columns)?;
            }
        }
        Ok(())
    }

    fn know_input_columns(&mut self, input: usize, columns: &SchemaRef) -> Result<()> {
        for task in &mut self.tasks {
            task.operator.know_input_columns(input, columns)?;
        }
        Ok(())
    }

    /// Runs one batch's rows of each input through the operator, each key
    /// group's on the task that owns it; returns the rows it emits (in
    /// key-group order, whatever the parallelism) and how many input rows
    /// were too late. A stateful function also sets rows aside:
    /// `recorded` are those a first attempt set aside (a replay).
    pub(super) fn run(
        &mut self,
        batch_id: u64,
        watermarks: Watermarks,
        batch_time_ms: i64,
        inputs: &[&[RecordBatch]],
        recorded: Vec<QuarantinedRow>,
    ) -> Result<(Vec<RecordBatch>, u64, OperatorQuarantine)> {
        if inputs.len() != self.keys.len() {
            return Err(WeirError::Internal(format!(
                "an operator of {} inputs was given {}",
                self.keys.len(),
                inputs.len()
            )));
        }
        // Every task learns the columns of rows any task receives, as one
        // instance would have.
        for (input, rows) in inputs.iter().enumerate() {
            if let Some(first) = rows.iter().find(|b| b.num_rows() > 0) {
                self.know_input_columns(input, &first.schema())?;
            }
        }
        let groups = self.tasks[0].state.groups();
        let mut split: SplitInputs = Vec::with_capacity(inputs.len());
        for (rows, key) in inputs.iter().zip(&self.keys) {
            let with_time;
            let rows = match self.window_time {
                true => {
                    with_time = rows
                        .iter()
                        .filter(|b| b.num_rows() > 0)
                        .map(with_window_time)
                        .collect::<Result<Vec<_>>>()?;
                    &with_time[..]
                }
                false => *rows,
            };
            split.push(split_by_group(groups, rows, key)?);
        }
        // Rows of key groups no task owns would vanish: a state shard got
        // rows another shard owns (its writers routed by other key groups).
        let owned =
            self.tasks[0].state.range().start..self.tasks.last().map_or(0, |t| t.state.range().end);
        if let Some(stray) = split
            .iter()
            .flat_map(|groups| groups.keys())
            .find(|group| !owned.contains(*group))
        {
            return Err(WeirError::Internal(format!(
                "rows of key group {stray} reached tasks owning key groups {owned:?}"
            )));
        }
        let outputs = on_tasks(&mut self.tasks, |task| {
            task.run(batch_id, watermarks, batch_time_ms, &split, &recorded)
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

    /// The watermark of the rows the operator emits, given the one it
    /// runs with (see [`Operator::output_watermark`]).
    pub(super) fn output_watermark(&self, input_ms: i64) -> Option<i64> {
        self.tasks[0].operator.output_watermark(input_ms)
    }

    /// Whether the operator needs a batch without new input (see
    /// `Runner::needs_no_data_batch`): `watermarks` are its own, late
    /// rows' being the last batch's and eviction's the next's.
    pub(super) fn needs_no_data_batch(
        &self,
        watermarks: Watermarks,
        now_ms: Option<i64>,
    ) -> Result<bool> {
        let moved = matches!(
            (watermarks.eviction_ms, watermarks.late_rows_ms),
            (Some(next), Some(last)) if next > last
        );
        for task in &self.tasks {
            if moved && task.operator.evicts_by_watermark() {
                return Ok(true);
            }
            for (_, state) in task.state.iter() {
                if task
                    .operator
                    .has_work_at(state, watermarks.eviction_ms, now_ms)?
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Commits every key group's changes as `version`.
    pub(super) async fn commit(&mut self, version: u64) -> Result<()> {
        // Each task writes its own file: their writes (and fsyncs) overlap.
        let commits = self.tasks.iter_mut().map(|task| task.state.commit(version));
        futures::future::try_join_all(commits).await.map(drop)
    }

    /// Rows and bytes the operator's state holds.
    pub(super) fn metrics(&self) -> StateMetrics {
        self.tasks
            .iter()
            .map(|t| t.state.metrics())
            .fold(StateMetrics::default(), |a, b| a + b)
    }

    /// What the operator's plugin did in the latest batch, over all tasks.
    pub(super) fn stage_progress(&self) -> Option<StageProgress> {
        self.tasks
            .iter()
            .filter_map(|t| t.operator.stage_progress())
            .map(|mut task| {
                task.tasks = usize::from(task.calls > 0);
                task
            })
            .reduce(|mut all, task| {
                all.calls += task.calls;
                all.tasks += task.tasks;
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

/// Key groups emit small batches: the next step gets one where their
/// columns agree.
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

/// How many tasks each stateful operator of `pipeline` runs as: its
/// `parallelism`, and no more than there are key groups to own.
pub(crate) fn task_count(pipeline: &Pipeline, groups: KeyGroups) -> usize {
    let owned = owned_groups(pipeline, groups);
    pipeline.parallelism.tasks.clamp(1, owned.len().max(1))
}

/// The key groups the query's operators own: all, or a state shard's range.
fn owned_groups(pipeline: &Pipeline, groups: KeyGroups) -> std::ops::Range<u16> {
    match &pipeline.key_group_range {
        Some(range) => range.start.min(groups.count())..range.end.min(groups.count()),
        None => 0..groups.count(),
    }
}

/// The key groups task `task` of `tasks` owns: a contiguous share of the
/// groups the query owns, as even as it can be.
fn task_groups(
    pipeline: &Pipeline,
    groups: KeyGroups,
    (task, tasks): (usize, usize),
) -> std::ops::Range<u16> {
    match pipeline.key_group_range {
        None => groups.range_of_task(task, tasks),
        Some(_) => {
            let owned = owned_groups(pipeline, groups);
            let len = owned.len();
            let at = |t: usize| owned.start + (t * len / tasks) as u16;
            at(task)..at(task + 1)
        }
    }
}

/// Task `task` of `tasks`' state of operator `operator` (its key groups'
/// range) at `version`; a running query's (`retain`: the versions it keeps)
/// first drops what batches that never committed wrote.
pub(crate) async fn open_task_state(
    checkpoint: &Checkpoint,
    pipeline: &Pipeline,
    operator: &str,
    groups: KeyGroups,
    (task, tasks): (usize, usize),
    version: u64,
    retain: Option<u64>,
) -> Result<KeyedState> {
    let mut state = KeyedState::open(
        checkpoint.store(),
        operator,
        pipeline.state_store,
        groups,
        task_groups(pipeline, groups, (task, tasks)),
        version,
    )
    .await?;
    match retain {
        Some(retain) => {
            state.discard_uncommitted().await?;
            Ok(state.retaining(retain))
        }
        None => Ok(state),
    }
}

/// Runs `work` on every task at once and returns their results in task
/// order; the first failure (in task order) is the result. A task that
/// panics fails the batch, not the host.
pub(crate) fn on_tasks<T: Send, R: Send>(
    tasks: &mut [T],
    work: impl Fn(&mut T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let Some((first, rest)) = tasks.split_first_mut() else {
        return Ok(Vec::new());
    };
    if rest.is_empty() {
        return Ok(vec![work(first)?]);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = rest
            .iter_mut()
            .map(|task| scope.spawn(move || work(task)))
            .collect();
        let mut results = vec![work(first)];
        for handle in others {
            results.push(handle.join().unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(WeirError::Internal(format!("a task panicked: {message}")))
            }));
        }
        results.into_iter().collect()
    })
}
