//! The continuous trigger: rows flow from the source through the transforms
//! to the sink as they arrive, in small batches with no per-batch
//! checkpoint write; every interval the position reached is checkpointed
//! as one *epoch* (`sources/0/E` lists the small batches' plans, then
//! `offsets/E` and `commits/E`).
//!
//! Delivery is at-least-once, as Spark's continuous processing: the sink
//! has a small batch's rows before its epoch is checkpointed, so after a
//! crash the rows since the last epoch are read and written again. Each
//! small batch reaches the sink under its own id — `epoch << 32 | run << 20
//! | n`, `run` counting this checkpoint's starts — so a rerun's batches are
//! never mistaken for the crashed run's and skipped (which would lose rows).

use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;
use serde_json::{Value, json};

use super::{BatchProgress, PhaseDurations, QueryOutcome, Runner, now_ms};
use crate::checkpoint::{CommitEntry, OffsetEntry};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;

/// How long the loop waits when the source has nothing new.
const POLL: Duration = Duration::from_millis(1);

/// At most this many small batches per epoch (their ids' low 20 bits).
const MAX_BATCHES_PER_EPOCH: u64 = 1 << 20;

/// The key of an epoch's plan list in `sources/0/E`.
const EPOCH_PLANS: &str = "continuous_epoch";

/// The small batches' plans of a continuous epoch, if `plan` is one.
pub(super) fn epoch_plans(plan: &Value) -> Option<&Vec<Value>> {
    plan.get(EPOCH_PLANS).and_then(Value::as_array)
}

/// What the current epoch has done so far.
#[derive(Default)]
struct Epoch {
    plans: Vec<Value>,
    input_rows: u64,
    output_rows: u64,
    bad_records: u64,
    quarantined_rows: u64,
    files: usize,
    durations: PhaseDurations,
}

impl Runner {
    /// Runs the continuous loop from epoch `epoch` until the stop signal.
    pub(super) async fn run_continuous(
        &mut self,
        interval: Duration,
        mut epoch: u64,
    ) -> Result<QueryOutcome> {
        let run = self.next_continuous_run().await? & 0xfff;
        let mut current = Epoch::default();
        let mut epoch_started = Instant::now();
        let mut started_at_ms = now_ms();
        loop {
            if self.stopped() {
                self.close_epoch(epoch, current, started_at_ms).await?;
                return Ok(QueryOutcome::Stopped {
                    batches: self.batches_run,
                });
            }
            match self.inputs[0].source.plan(true).await? {
                Some(plan) => {
                    let id = (epoch << 32) | (run << 20) | current.plans.len() as u64;
                    self.run_small_batch(id, &plan, &mut current).await?;
                    current.plans.push(plan);
                }
                None => self.sleep(POLL).await,
            }
            let due = epoch_started.elapsed() >= interval;
            if (due && !current.plans.is_empty())
                || current.plans.len() as u64 >= MAX_BATCHES_PER_EPOCH
            {
                let done = std::mem::take(&mut current);
                self.close_epoch(epoch, done, started_at_ms).await?;
                epoch += 1;
            }
            if due {
                // A new epoch starts (also after an idle interval, which logs nothing).
                epoch_started = Instant::now();
                started_at_ms = now_ms();
            }
        }
    }

    /// Reads, transforms and writes one small batch.
    async fn run_small_batch(&mut self, id: u64, plan: &Value, epoch: &mut Epoch) -> Result<()> {
        let started = Instant::now();
        self.inputs[0].source.advance(plan)?;
        epoch.files += self.inputs[0].source.plan_units(plan);
        let decoded = self.inputs[0].source.read(plan).await?;
        self.write_dead_letters(0, id, &decoded.bad_records).await?;
        epoch.bad_records += decoded.bad_records.len() as u64;
        epoch.input_rows += decoded
            .batches
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>();
        epoch.durations.read += started.elapsed();
        let phase = Instant::now();
        self.apply_swaps();
        // Small batches log no time of their own: the plugins' clock reads
        // the time the batch ran (continuous mode replays no batch whole).
        let stages_batch = super::versions::StagesBatch {
            id,
            time_ms: now_ms(),
            recorded: Default::default(),
        };
        let transformed = self.transform(decoded.batches, stages_batch).await?;
        epoch.quarantined_rows += self
            .set_aside(id, &transformed, super::dead_letters::Record::NotLogged)
            .await?;
        let batches = transformed.batches;
        epoch.durations.transform += phase.elapsed();
        let phase = Instant::now();
        self.sink.commit(id, &batches).await?;
        epoch.durations.sink += phase.elapsed();
        epoch.output_rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        crash_point("continuous-after-sink", id >> 32);
        Ok(())
    }

    /// Checkpoints an epoch: its small batches' plans, then `offsets/E`
    /// and `commits/E` (an epoch is already in the sink when logged).
    async fn close_epoch(&mut self, epoch: u64, done: Epoch, started_at_ms: i64) -> Result<()> {
        if done.plans.is_empty() {
            return Ok(());
        }
        let phase = Instant::now();
        let batches = done.plans.len();
        let plan = json!({ EPOCH_PLANS: done.plans, "rows": done.output_rows });
        self.checkpoint.write_source_log(0, epoch, &plan).await?;
        self.checkpoint
            .write_offsets(&OffsetEntry {
                batch_id: epoch,
                batch_timestamp_ms: started_at_ms,
                source_files: vec![done.files],
                watermark_ms: None,
                late_rows_watermark_ms: None,
            })
            .await?;
        crash_point("continuous-after-offsets", epoch);
        self.commit_epoch(epoch, done.output_rows).await?;
        self.after_commit(epoch, std::slice::from_ref(&plan))
            .await?;
        let mut durations = done.durations;
        durations.commit = phase.elapsed();
        durations.total = Duration::from_millis((now_ms() - started_at_ms).max(0) as u64);
        self.batches_run += 1;
        let seconds = durations.total.as_secs_f64().max(1e-3);
        let progress = BatchProgress {
            batch_id: epoch,
            started_at_ms,
            replay: false,
            input_files: done.files,
            input_rows: done.input_rows,
            bad_records: done.bad_records,
            quarantined_rows: done.quarantined_rows,
            output_rows: done.output_rows,
            sink_skipped: false,
            input_rows_per_second: done.input_rows as f64 / seconds,
            processed_rows_per_second: done.input_rows as f64 / seconds,
            durations,
            stages: self.stages.iter().map(|s| s.last.clone()).collect(),
            watermark_ms: None,
            rows_dropped_by_watermark: 0,
            state: None,
            partitioning: None,
            retries: self.retries.take(),
            plugin_events: std::mem::take(&mut self.events),
        };
        tracing::debug!(epoch, batches, "continuous epoch committed");
        if let Some(listener) = &mut self.listener {
            listener(&progress);
        }
        Ok(())
    }

    /// Writes `commits/E` for an epoch whose rows are in the sink.
    pub(super) async fn commit_epoch(&mut self, epoch: u64, output_rows: u64) -> Result<()> {
        self.checkpoint
            .write_commit(&CommitEntry {
                batch_id: epoch,
                output_rows,
                next_watermark_ms: None,
                next_input_watermarks_ms: Vec::new(),
                sink_commit: None,
            })
            .await
    }

    /// Counts this checkpoint's continuous runs (`continuous/runs`).
    async fn next_continuous_run(&self) -> Result<u64> {
        let store = self.checkpoint.store();
        let path = ObjectPath::from("continuous/runs");
        let previous = match crate::storage::get_if_exists(store.as_ref(), &path).await {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(0),
            Ok(None) => 0,
            Err(e) => return Err(WeirError::storage("continuous/runs", e)),
        };
        let run: u64 = previous + 1;
        store
            .put(&path, PutPayload::from(run.to_string().into_bytes()))
            .await
            .map_err(|e| WeirError::storage("continuous/runs", e))?;
        Ok(run)
    }
}
