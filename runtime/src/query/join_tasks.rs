//! A stream-stream join as parallel tasks: both inputs' rows are placed in
//! key groups by their join keys, so a key's rows from either side meet in
//! one group's state, on the task that owns it.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

use super::tasks::{on_tasks, open_task_state, task_count};
use crate::checkpoint::Checkpoint;
use crate::config::Pipeline;
use crate::error::Result;
use crate::operator::{StreamJoin, Watermarks};
use crate::state::{KeyGroups, KeyedState, StateMetrics, split_by_group};

/// One task: its instance of the join and its key groups' state.
struct JoinTask {
    join: StreamJoin,
    state: KeyedState,
}

/// A query's stream-stream join, as tasks over key groups.
pub(super) struct JoinTasks {
    tasks: Vec<JoinTask>,
    keys: [Vec<String>; 2],
}

impl JoinTasks {
    /// The join `pipeline` declares, if any, with its state as version
    /// `version` left it; a running query's state keeps `retain` versions.
    pub(super) async fn open(
        checkpoint: &Checkpoint,
        pipeline: &Pipeline,
        groups: KeyGroups,
        version: u64,
        retain: Option<u64>,
    ) -> Result<Option<JoinTasks>> {
        let Some(config) = &pipeline.stream_join else {
            return Ok(None);
        };
        let count = task_count(pipeline, groups);
        let mut tasks = Vec::with_capacity(count);
        for task in 0..count {
            let join = super::stream_join_of(pipeline).expect("the pipeline declares a join");
            let state = open_task_state(
                checkpoint,
                pipeline,
                "join",
                groups,
                (task, count),
                version,
                retain,
            )
            .await?;
            tasks.push(JoinTask { join, state });
        }
        // Each side's columns, from whichever key group recorded them: a
        // task must know both sides' even if its groups never held one.
        let mut known = [None, None];
        for task in &tasks {
            for (_, state) in task.state.iter() {
                for (side, columns) in StreamJoin::stored_columns(state)?.into_iter().enumerate() {
                    if known[side].is_none() {
                        known[side] = columns;
                    }
                }
            }
        }
        let mut joins = JoinTasks {
            tasks,
            keys: [config.left_on.clone(), config.right_on.clone()],
        };
        for (side, columns) in known.iter().enumerate() {
            if let Some(columns) = columns {
                joins.know_columns(side, columns)?;
            }
        }
        Ok(Some(joins))
    }

    fn know_columns(&mut self, side: usize, columns: &arrow::datatypes::SchemaRef) -> Result<()> {
        for task in &mut self.tasks {
            task.join.know_columns(side, columns)?;
        }
        Ok(())
    }

    /// Joins one batch of both inputs, each key group on its task; returns
    /// the joined rows (in key-group order) and the input rows dropped as late.
    pub(super) fn process(
        &mut self,
        batch_id: u64,
        watermarks: Watermarks,
        left: &[RecordBatch],
        right: &[RecordBatch],
    ) -> Result<(Vec<RecordBatch>, u64)> {
        // Every task learns the columns of rows any task receives, as one
        // join instance would have before evicting.
        for (side, rows) in [left, right].into_iter().enumerate() {
            if let Some(first) = rows.iter().find(|b| b.num_rows() > 0) {
                self.know_columns(side, &first.schema())?;
            }
        }
        let groups = self.tasks[0].state.groups();
        let left = split_by_group(groups, left, &self.keys[0])?;
        let right = split_by_group(groups, right, &self.keys[1])?;
        let outputs = on_tasks(&mut self.tasks, |task| {
            let mut emitted = Vec::new();
            let mut dropped = 0;
            for group in task.state.range() {
                let (rows, late) = task.join.process(
                    task.state.group_mut(group),
                    batch_id,
                    watermarks,
                    rows_of(&left, group),
                    rows_of(&right, group),
                )?;
                emitted.extend(rows);
                dropped += late;
            }
            Ok((emitted, dropped))
        })?;
        let mut emitted = Vec::new();
        let mut dropped = 0;
        for (rows, late) in outputs {
            emitted.extend(rows.into_iter().filter(|b| b.num_rows() > 0));
            dropped += late;
        }
        Ok((emitted, dropped))
    }

    /// Whether the join evicts buffered rows by the watermark.
    pub(super) fn evicts_by_watermark(&self) -> bool {
        self.tasks.iter().any(|t| t.join.evicts_by_watermark())
    }

    /// Whether the watermark lets some key group evict (and so maybe emit) rows.
    pub(super) fn has_work_at(&self, watermark_ms: Option<i64>) -> Result<bool> {
        for task in &self.tasks {
            for (_, state) in task.state.iter() {
                if task.join.has_work_at(state, watermark_ms)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Commits every key group's changes as `version`.
    pub(super) async fn commit(&mut self, version: u64) -> Result<()> {
        for task in &mut self.tasks {
            task.state.commit(version).await?;
        }
        Ok(())
    }

    /// Rows and bytes the join's state holds.
    pub(super) fn metrics(&self) -> StateMetrics {
        self.tasks
            .iter()
            .map(|t| t.state.metrics())
            .fold(StateMetrics::default(), |a, b| a + b)
    }
}

/// Key group `group`'s rows of a split input (none if it has none).
fn rows_of(split: &BTreeMap<u16, Vec<RecordBatch>>, group: u16) -> &[RecordBatch] {
    split.get(&group).map_or(&[], Vec::as_slice)
}
