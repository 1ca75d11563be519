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

use arrow::record_batch::RecordBatch;

use super::tasks::{OperatorTasks, task_count};
use crate::checkpoint::Checkpoint;
use crate::config::{Pipeline, StreamJoinConfig};
use crate::error::{Result, WeirError};
use crate::operator::{
    Deduplicate, Operator, OperatorQuarantine, StatefulFunction, WINDOW_TIME, Watermarks,
    WindowAggregate,
};
use crate::quarantine::QuarantinedRow;
use crate::query::StageProgress;
use crate::state::{KeyGroups, StateMetrics};

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
    pub(super) operators: Vec<OperatorTasks>,
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
            let instances = per_task
                .iter_mut()
                .map(|declared| {
                    declared
                        .next()
                        .map(|(operator, _, _)| operator)
                        .ok_or_else(|| {
                            WeirError::Internal("a task lacks an instance of an operator".into())
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            operators.push(
                OperatorTasks::open(
                    checkpoint,
                    pipeline,
                    &index.to_string(),
                    instances,
                    groups,
                    version,
                    retain,
                    window_time,
                )
                .await?,
            );
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
        for operator in &self.operators {
            each.push(current);
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
        for (operator, watermarks) in self.operators.iter_mut().zip(watermarks) {
            let (emitted, late, quarantine) = operator.run(
                batch_id,
                *watermarks,
                batch_time_ms,
                &[&batches],
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
        for operator in &mut self.operators {
            operator.commit(version).await?;
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
        for (operator, w) in self.operators.iter().zip(watermarks) {
            if operator.needs_no_data_batch(*w, now_ms)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The rows and bytes every operator's state holds.
    pub(super) fn state_metrics(&self) -> Option<StateMetrics> {
        self.operators
            .iter()
            .map(OperatorTasks::metrics)
            .reduce(|a, b| a + b)
    }

    /// What each operator's plugin did in the latest batch, if it runs one.
    pub(super) fn stage_progress(&self) -> impl Iterator<Item = StageProgress> + '_ {
        self.operators
            .iter()
            .filter_map(OperatorTasks::stage_progress)
    }
}
