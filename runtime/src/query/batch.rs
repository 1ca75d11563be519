//! One micro-batch, start to end: log the plan, read, join, transform,
//! run the stateful operators, write, commit, report progress.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::chain::Chain;
use super::dead_letters::Record;
use super::watermark::max_event_time;
use super::{
    BatchProgress, PhaseDurations, QuarantineRecord, Runner, now_ms, off_runtime, versions,
};
use crate::checkpoint::{CommitEntry, OffsetEntry};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::operator::Watermarks;
use crate::sink::CommitOutcome;
use crate::source::EventTimeProgress;

impl Runner {
    pub(super) async fn run_batch(
        &mut self,
        batch_id: u64,
        plans: Vec<Value>,
        replay: bool,
    ) -> Result<()> {
        // Waiting for a core is not the batch's time: taken before the clock starts.
        let _core =
            match &self.cores {
                Some(cores) => Some(cores.clone().acquire_owned().await.map_err(|_| {
                    WeirError::Internal("the tenant's core share was closed".into())
                })?),
                None => None,
            };
        let units = self.plan_units(&plans);
        let inputs: usize = units.iter().sum();
        let started = Instant::now();
        let started_at_ms = now_ms();
        let since_previous = self.last_batch_start.map(|t| started.duration_since(t));
        self.last_batch_start = Some(started);
        let mut durations = PhaseDurations::default();

        // A replay judges late rows as its first run did, whatever the
        // configuration says now.
        let (batch_time_ms, watermarks) = if replay {
            let logged = self.checkpoint.offsets(batch_id).await?;
            let watermarks = Watermarks {
                late_rows_ms: logged.late_rows_watermark(),
                eviction_ms: self.watermark_ms,
            };
            (logged.batch_timestamp_ms, watermarks)
        } else {
            (now_ms(), self.watermarks())
        };
        if !replay {
            crash_point("before-offsets", batch_id);
            for (index, plan) in plans.iter().enumerate() {
                self.checkpoint
                    .write_source_log(index, batch_id, plan)
                    .await?;
            }
            crash_point("after-source-log", batch_id);
            let entry = OffsetEntry {
                batch_id,
                batch_timestamp_ms: batch_time_ms,
                source_files: units,
                watermark_ms: self.watermark_ms,
                late_rows_watermark_ms: watermarks.late_rows_ms,
            };
            self.checkpoint.write_offsets(&entry).await?;
            crash_point("after-offsets", batch_id);
        }
        for (input, plan) in self.inputs.iter_mut().zip(&plans) {
            input.source.advance(plan)?;
        }
        durations.plan = started.elapsed();

        let phase = Instant::now();
        let mut per_input = Vec::with_capacity(self.inputs.len());
        let mut progress = Vec::with_capacity(self.inputs.len());
        let mut bad_records = 0;
        for (index, decoded) in self.read_inputs(&plans).await?.into_iter().enumerate() {
            bad_records += decoded.bad_records.len() as u64;
            progress.push(decoded.event_time);
            self.write_dead_letters(index, batch_id, &decoded.bad_records)
                .await?;
            per_input.push(decoded.batches);
        }
        let input_rows: u64 = per_input
            .iter()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum();
        // With several inputs each watermark follows its own input's rows;
        // a single input's follows the rows reaching the operators.
        let input_max_ms = self.max_event_times_per_input(&per_input)?;
        let mut dropped = 0;
        let joined = match (self.stream_join.take(), &self.pipeline.stream_join) {
            (Some(mut join), Some(config)) => {
                let left = std::mem::take(&mut per_input[config.left]);
                let right = std::mem::take(&mut per_input[config.right]);
                // Its tasks run on threads of their own: off the async runtime.
                let (join, result) = off_runtime(move || {
                    let result = join.run(
                        batch_id,
                        watermarks,
                        batch_time_ms,
                        &[&left, &right],
                        Vec::new(),
                    );
                    Ok((join, result))
                })
                .await?;
                self.stream_join = Some(join);
                let (rows, late, _) = result?;
                dropped += late;
                rows
            }
            _ => per_input.into_iter().flatten().collect(),
        };
        durations.read = phase.elapsed();
        crash_point("after-read", batch_id);
        // The next batch is read while this one is transformed and written.
        self.start_read_ahead().await?;

        let phase = Instant::now();
        // A replay runs the plugin versions that first ran the batch, if
        // its transforms completed then; a new batch takes in versions
        // swapped in since the last.
        let (put_back, logged) = if replay {
            self.use_logged_versions(batch_id).await?
        } else {
            self.apply_swaps();
            (Vec::new(), false)
        };
        let recorded = if replay {
            self.checkpoint.quarantine_of(batch_id).await?
        } else {
            None
        };
        let stages_batch = versions::StagesBatch {
            id: batch_id,
            time_ms: batch_time_ms,
            recorded: recorded.clone().unwrap_or_default(),
        };
        let transformed = self.transform(joined, stages_batch).await;
        for (index, current) in put_back {
            self.stages[index].replace(current);
        }
        let mut transformed = transformed?;
        if !logged {
            self.log_versions(batch_id).await?;
        }
        let mut batches = std::mem::take(&mut transformed.batches);
        if let Some(join) = &mut self.static_join {
            join.refresh_if_due().await?;
            batches = batches
                .iter()
                .filter(|b| b.num_rows() > 0)
                .map(|b| join.join(b))
                .collect::<Result<_>>()?;
        }
        let max_event_ms = match (
            self.inputs.len(),
            &self.inputs[0].watermark,
            progress.as_slice(),
        ) {
            // A source that knows better (a repartition topic's partition)
            // vouches for how far its input has got.
            (1, Some(_), [EventTimeProgress::Vouched(max)]) => vec![*max],
            (1, Some(w), _) => vec![max_event_time(&w.column, &batches)?],
            _ => input_max_ms,
        };
        let watermark_ms = self.watermark_ms;
        let operators_started = Instant::now();
        if !self.operators.is_empty() {
            let stage = self
                .pipeline
                .stateful
                .as_ref()
                .map(|s| s.stage.name.clone());
            let recorded = stage
                .as_ref()
                .and_then(|name| recorded.as_ref()?.get(name).cloned())
                .unwrap_or_default();
            let each = self.operator_watermarks(watermarks);
            let mut operators = std::mem::replace(&mut self.operators, Chain::empty());
            // Operators may call plugins: off the async runtime too.
            let (operators, result) = off_runtime(move || {
                let result = operators.run(&each, batch_id, batch_time_ms, batches, recorded);
                Ok((operators, result))
            })
            .await?;
            self.operators = operators;
            let (late, set_aside);
            (batches, late, set_aside) = result?;
            dropped += late;
            if let (Some(stage), false) = (stage, set_aside.rows.is_empty()) {
                transformed
                    .quarantined
                    .insert(stage.clone(), set_aside.rows);
                transformed
                    .dead_letters
                    .push((stage, set_aside.dead_letters));
            }
        }
        durations.operator = operators_started.elapsed();
        // A foreachBatch sink runs its plugin now, so that the rows it sets
        // aside are logged with the stages' before anything is written.
        let sink_started = Instant::now();
        self.sink.begin_batch(batch_id, batch_time_ms);
        let none_recorded = QuarantineRecord::new();
        let sink_recorded = recorded.as_ref().unwrap_or(&none_recorded);
        if let Some(set) = self.sink.prepare(batch_id, &batches, sink_recorded).await? {
            transformed.quarantined.insert(set.stage.clone(), set.rows);
            transformed.dead_letters.push((set.stage, set.dead_letters));
        }
        let sink_plugin = sink_started.elapsed();
        let quarantined = self
            .set_aside(batch_id, &transformed, Record::Logged(recorded))
            .await?;
        durations.transform = phase
            .elapsed()
            .saturating_sub(sink_plugin + durations.operator);
        crash_point("after-transform", batch_id);

        let phase = Instant::now();
        // The sink's write and the state's are independent (a restart
        // loads the state of the last batch in `commits/`, whichever got
        // written): they overlap, each waiting on its own fsyncs.
        let (sink, operators, join) = (&mut self.sink, &mut self.operators, &mut self.stream_join);
        let state = async {
            operators.commit(batch_id + 1).await?;
            if let Some(join) = join {
                join.commit(batch_id + 1).await?;
            }
            Ok(())
        };
        let (outcome, ()) = tokio::try_join!(sink.commit(batch_id, &batches), state)?;
        durations.sink = phase.elapsed() + sink_plugin;
        crash_point("before-commit", batch_id);

        let phase = Instant::now();
        let output_rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let (next_input_watermarks, next_watermark_ms) = self.next_watermarks(&max_event_ms);
        self.checkpoint
            .write_commit(&CommitEntry {
                batch_id,
                output_rows,
                next_watermark_ms,
                next_input_watermarks_ms: if self.inputs.len() > 1 {
                    next_input_watermarks.clone()
                } else {
                    Vec::new()
                },
                sink_commit: self.sink.commit_token(batch_id),
            })
            .await?;
        self.advance_watermarks(next_input_watermarks, next_watermark_ms);
        crash_point("after-commit", batch_id);
        self.after_commit(batch_id, &plans).await?;
        durations.commit = phase.elapsed();

        durations.total = started.elapsed();
        self.batches_run += 1;
        let rate = |d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                input_rows as f64 / d.as_secs_f64()
            }
        };
        let progress = BatchProgress {
            batch_id,
            started_at_ms,
            replay,
            input_files: inputs,
            input_rows,
            bad_records,
            quarantined_rows: quarantined,
            output_rows,
            sink_skipped: outcome == CommitOutcome::AlreadyCommitted,
            input_rows_per_second: rate(since_previous.unwrap_or(durations.total)),
            processed_rows_per_second: rate(durations.total),
            watermark_ms,
            rows_dropped_by_watermark: dropped,
            state: self
                .stream_join
                .as_ref()
                .map(|j| j.metrics())
                .into_iter()
                .chain(self.operators.state_metrics())
                .reduce(|a, b| a + b),
            partitioning: Some(self.partitioning)
                .filter(|_| self.stream_join.is_some() || !self.operators.is_empty()),
            retries: self.retries.take(),
            plugin_events: std::mem::take(&mut self.events),
            durations,
            stages: self
                .stages
                .iter()
                .map(|s| s.last.clone())
                .chain(self.operators.stage_progress())
                .chain(self.sink.stage_progress())
                .collect(),
        };
        tracing::debug!(?progress, "batch committed");
        if let Some(listener) = &mut self.listener {
            listener(&progress);
        }
        Ok(())
    }
}
