//! The query's inputs: restoring each source's position from the
//! checkpoint, planning batches across inputs, and cleaning up what
//! committed batches read.

use serde_json::Value;

use super::watermark::EventTime;
use super::{Runner, continuous};
use crate::checkpoint::{Checkpoint, Recovery};
use crate::config::Trigger;
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::source::{Decoded, Source};

/// One input of the query.
pub(super) struct Input {
    pub(super) name: String,
    pub(super) source: Box<dyn Source>,
    pub(super) watermark: Option<EventTime>,
}

/// The next batch, planned and being read while the one before runs.
pub(super) struct ReadAhead {
    plans: Vec<Value>,
    reads: Reads,
}

/// Each input's rows of a batch, being read.
pub(super) type Reads = tokio::task::JoinHandle<Result<Vec<Decoded>>>;

/// Restores source `index`'s position from the checkpoint: its newest
/// compact entry, then the plans logged after it. Returns the plan of the
/// batch to replay, if one is in flight.
pub(super) async fn restore_source(
    checkpoint: &Checkpoint,
    index: usize,
    source: &mut dyn Source,
    recovery: Recovery,
) -> Result<Option<Value>> {
    let compact = checkpoint
        .latest_source_compact(index, recovery.next_batch)
        .await?;
    let first = match compact {
        Some((batch, position)) => {
            source.restore_position(&position)?;
            batch + 1
        }
        None => 0,
    };
    let mut replay = None;
    for batch in first..recovery.next_batch {
        let plan = checkpoint.source_log::<Value>(index, batch).await?;
        // A continuous epoch logs the plans of its small batches.
        match continuous::epoch_plans(&plan) {
            Some(plans) => plans.iter().try_for_each(|p| source.advance(p))?,
            None => source.advance(&plan)?,
        }
        if recovery.replay == Some(batch) {
            replay = Some(plan);
        }
    }
    Ok(replay)
}

/// Tells `source` the batch that read `plan` is committed (each small
/// batch of a continuous epoch).
pub(super) async fn commit_plan(source: &mut dyn Source, plan: &Value) -> Result<()> {
    match continuous::epoch_plans(plan) {
        Some(small) => {
            for plan in small {
                source.handle_commit(plan).await?;
            }
            Ok(())
        }
        None => source.handle_commit(plan).await,
    }
}

impl Runner {
    /// Restores input `index`'s position (see [`restore_source`]).
    pub(super) async fn restore_input(
        &mut self,
        index: usize,
        recovery: Recovery,
    ) -> Result<Option<Value>> {
        restore_source(
            &self.checkpoint,
            index,
            self.inputs[index].source.as_mut(),
            recovery,
        )
        .await
    }

    /// A crash between a commit and its cleanup leaves the input the last
    /// committed batch read (or, with a `replay_window`, the batch that
    /// left the window then): cleaned up now (cleaning is idempotent).
    pub(super) async fn clean_last_committed(&mut self, recovery: Recovery) -> Result<()> {
        let first = recovery.replay.unwrap_or(recovery.next_batch);
        let Some(last) = first.checked_sub(1) else {
            return Ok(());
        };
        for index in 0..self.inputs.len() {
            if self.inputs[index].source.cleans_up() {
                self.clean_input_of(index, last, None).await?;
            }
        }
        Ok(())
    }

    /// Input `index` cleans up what batch `committed` read (`plan`, if
    /// given), or with a `replay_window` of W, what batch `committed - W`
    /// read, from the source log.
    pub(super) async fn clean_input_of(
        &mut self,
        index: usize,
        committed: u64,
        plan: Option<&Value>,
    ) -> Result<()> {
        let window = self.pipeline.inputs[index].source.replay_window();
        let logged;
        let plan = match (window, plan) {
            (0, Some(plan)) => plan,
            _ => {
                let Some(batch) = committed.checked_sub(window) else {
                    return Ok(());
                };
                logged = self.checkpoint.source_log::<Value>(index, batch).await?;
                &logged
            }
        };
        commit_plan(self.inputs[index].source.as_mut(), plan).await
    }

    /// Once batch `batch_id` is committed: the sources clean up what it
    /// read (or what left their `replay_window`), and every
    /// `compact_interval` batches the checkpoint is compacted and trimmed
    /// to the retained batches.
    pub(super) async fn after_commit(&mut self, batch_id: u64, plans: &[Value]) -> Result<()> {
        for (index, plan) in plans.iter().enumerate() {
            if self.inputs[index].source.cleans_up() {
                self.clean_input_of(index, batch_id, Some(plan)).await?;
            }
        }
        let retention = self.pipeline.retention;
        if !retention.compacts_at(batch_id) {
            return Ok(());
        }
        for (index, input) in self.inputs.iter().enumerate() {
            self.checkpoint
                .write_source_compact(index, batch_id, &input.source.position())
                .await?;
        }
        crash_point("after-compact", batch_id);
        let purged = self
            .checkpoint
            .purge(batch_id, retention, self.inputs.len())
            .await?;
        tracing::debug!(batch_id, files = purged.files, "checkpoint trimmed");
        Ok(())
    }

    /// The next batch's plan per input, or `None` when no input has new
    /// data (inputs without new data read nothing in the batch): the plans
    /// read ahead, if the batch before started reading them.
    pub(super) async fn plan(&mut self, capped: bool) -> Result<Option<Vec<Value>>> {
        if let Some(ahead) = self.read_ahead.take() {
            self.prefetched = Some(ahead.reads);
            return Ok(Some(ahead.plans));
        }
        self.plan_sources(capped).await
    }

    /// Whether the next batch is planned and read while this one runs:
    /// with back-to-back batches and `available_now`, when every input can
    /// be read apart from its source. (A processing-time trigger plans at
    /// its interval, as Spark; a file arriving while a batch runs waits one
    /// batch more.)
    fn reads_ahead(&self) -> bool {
        matches!(
            self.pipeline.trigger,
            Trigger::BackToBack | Trigger::AvailableNow
        )
    }

    /// Plans the next batch and starts reading it on the async runtime,
    /// while this one goes on (its plans are logged when it starts).
    pub(super) async fn start_read_ahead(&mut self) -> Result<()> {
        if !self.reads_ahead() || self.read_ahead.is_some() {
            return Ok(());
        }
        let Some(readers) = self
            .inputs
            .iter()
            .map(|input| input.source.reader())
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(());
        };
        let Some(plans) = self.plan_sources(true).await? else {
            return Ok(());
        };
        let to_read = plans.clone();
        let reads = tokio::spawn(async move {
            let mut decoded = Vec::with_capacity(readers.len());
            for (reader, plan) in readers.iter().zip(&to_read) {
                decoded.push(reader.read(plan).await?);
            }
            Ok(decoded)
        });
        self.read_ahead = Some(ReadAhead { plans, reads });
        Ok(())
    }

    /// Each input's rows of a batch: read ahead, or read now.
    pub(super) async fn read_inputs(&mut self, plans: &[Value]) -> Result<Vec<Decoded>> {
        if let Some(reads) = self.prefetched.take() {
            let decoded = reads
                .await
                .map_err(|e| WeirError::Internal(format!("reading ahead failed: {e}")))??;
            if decoded.len() != plans.len() {
                return Err(WeirError::Internal(
                    "the rows read ahead are not the batch's inputs".into(),
                ));
            }
            return Ok(decoded);
        }
        let mut decoded = Vec::with_capacity(plans.len());
        for (input, plan) in self.inputs.iter_mut().zip(plans) {
            decoded.push(input.source.read(plan).await?);
        }
        Ok(decoded)
    }

    /// The next batch's plan per input, from the sources.
    async fn plan_sources(&mut self, capped: bool) -> Result<Option<Vec<Value>>> {
        let mut plans = Vec::with_capacity(self.inputs.len());
        let mut any = false;
        for input in &mut self.inputs {
            match input.source.plan(capped).await? {
                Some(plan) => {
                    any = true;
                    plans.push(plan);
                }
                None => plans.push(input.source.empty_plan()),
            }
        }
        Ok(any.then_some(plans))
    }

    pub(super) fn empty_plan(&self) -> Vec<Value> {
        self.inputs.iter().map(|i| i.source.empty_plan()).collect()
    }

    pub(super) fn plan_units(&self, plans: &[Value]) -> Vec<usize> {
        self.inputs
            .iter()
            .zip(plans)
            .map(|(input, plan)| input.source.plan_units(plan))
            .collect()
    }
}
