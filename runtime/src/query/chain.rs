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

use crate::checkpoint::Checkpoint;
use crate::config::{Pipeline, StreamJoinConfig};
use crate::error::Result;
use crate::operator::{
    Deduplicate, Operator, OperatorContext, OperatorQuarantine, StatefulFunction, WINDOW_TIME,
    Watermarks, WindowAggregate, with_window_time,
};
use crate::quarantine::QuarantinedRow;
use crate::state::{StateMetrics, StateStore};

/// One stateful operator and its state.
pub(super) struct Stateful {
    pub(super) operator: Box<dyn Operator>,
    pub(super) state: StateStore,
    /// Whether the rows reaching it get a `window_time` column: it is a
    /// window aggregation over the windows of the one before it.
    window_time: bool,
}

impl Stateful {
    /// Runs one batch's rows through the operator; returns the rows it
    /// emits and how many input rows were too late.
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
        let mut ctx = OperatorContext {
            batch_id,
            watermark_ms: watermarks.eviction_ms,
            late_rows_watermark_ms: watermarks.late_rows_ms,
            batch_time_ms,
            state: &mut self.state,
            rows_dropped_by_watermark: 0,
            quarantine: OperatorQuarantine {
                recorded,
                ..OperatorQuarantine::default()
            },
        };
        let mut emitted = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let batch = match self.window_time {
                true => &with_window_time(batch)?,
                false => batch,
            };
            emitted.extend(self.operator.process_batch(batch, &mut ctx)?);
        }
        emitted.extend(self.operator.handle_batch_end(&mut ctx)?);
        Ok((emitted, ctx.rows_dropped_by_watermark, ctx.quarantine))
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
    /// next's); a running query's states keep `retain` versions, and its
    /// operators must be those the checkpoint's state belongs to.
    pub(super) async fn open(
        checkpoint: &Checkpoint,
        pipeline: &Pipeline,
        function: Option<StatefulFunction>,
        version: u64,
        retain: Option<u64>,
    ) -> Result<Chain> {
        let declared = operators_of(pipeline, function);
        if retain.is_some() && !declared.is_empty() {
            let kinds: Vec<String> = declared.iter().map(|(_, k, _)| k.to_string()).collect();
            checkpoint.check_operators(&kinds).await?;
        }
        let mut operators = Vec::new();
        for (index, (operator, _, window_time)) in declared.into_iter().enumerate() {
            let mut state = StateStore::open(
                checkpoint.store(),
                &index.to_string(),
                pipeline.state_store,
                version,
            )
            .await?;
            if let Some(retain) = retain {
                state = state.retaining(retain);
            }
            operators.push(Stateful {
                operator,
                state,
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
            current = current.through(|w| stateful.operator.output_watermark(w));
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
            stateful.state.commit(version).await?;
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
            if moved && stateful.operator.evicts_by_watermark()
                || stateful
                    .operator
                    .has_work_at(&stateful.state, w.eviction_ms, now_ms)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The rows and bytes every operator's state holds.
    pub(super) fn state_metrics(&self) -> Option<StateMetrics> {
        self.operators
            .iter()
            .map(|s| s.state.metrics())
            .reduce(|a, b| a + b)
    }
}
