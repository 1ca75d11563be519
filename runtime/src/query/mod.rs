//! The micro-batch loop: plan → log offsets → read → transform → sink →
//! log commit, repeated as the trigger says.
//!
//! Exactly-once comes from three parts working together: the source is
//! replayable (a batch's files are logged in `sources/0/N` before it runs),
//! the checkpoint tells on restart which batch was in flight, and the sink
//! is idempotent per batch id.

mod chain;
mod compact;
mod continuous;
mod dead_letters;
mod join_tasks;
mod plan;
mod progress;
mod replay;
mod shadow;
mod stage;
mod swap;
mod tasks;
mod versions;

use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use tokio::sync::watch;

pub use crate::quarantine::{QuarantineRecord, QuarantinedRow};
pub use compact::{Compacted, compact};
pub use plan::{Edge, Plan, Step};
pub use progress::{BatchProgress, PhaseDurations, StageProgress, StatePartitioning};
pub use replay::{Candidate, ReplayedBatch, RowDiff, replay};
pub use shadow::ShadowReport;
pub use stage::{TrialRun, trial_run};
pub use swap::{QueryControl, StageVersion, StageVersions, SwapAccepted};

use std::sync::Arc;

use chain::Chain;
use dead_letters::Record;
use stage::{PluginVersion, Stage};
use swap::{StageSettings, SwapRequest};

use crate::checkpoint::{Checkpoint, CommitEntry, OffsetEntry, Recovery};
use crate::config::{InputConfig, Pipeline, SourceConfig, Trigger, WatermarkPolicy};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::operator::{StatefulFunction, StaticJoin, StreamJoin, Watermarks};
use crate::plugin::PluginEngine;
use crate::retry::Retries;
use crate::sink::{self, CommitOutcome, Sink};
use crate::source::{FileSource, KafkaSource, Source};
use join_tasks::JoinTasks;
use serde_json::Value;

/// How often a back-to-back query with no new input looks again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How a query run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutcome {
    /// A draining trigger (`available_now`, `once`) processed all input.
    Drained {
        /// Batches run in this process, replays included.
        batches: u64,
    },
    /// The stop signal arrived; the last batch completed first.
    Stopped {
        /// Batches run in this process, replays included.
        batches: u64,
    },
}

type ProgressListener = Box<dyn FnMut(&BatchProgress) + Send>;

/// A streaming query, built from a checked [`Pipeline`].
pub struct Query {
    pipeline: Pipeline,
    engine: PluginEngine,
    listener: Option<ProgressListener>,
    stop: Option<watch::Receiver<bool>>,
    swaps: Option<tokio::sync::mpsc::UnboundedReceiver<SwapRequest>>,
    cores: Option<Arc<tokio::sync::Semaphore>>,
}

impl Query {
    /// A query running `pipeline`'s plugins on `engine`.
    pub fn new(pipeline: Pipeline, engine: PluginEngine) -> Query {
        Query {
            pipeline,
            engine,
            listener: None,
            stop: None,
            swaps: None,
            cores: None,
        }
    }

    /// Runs each batch holding one permit of `cores`: queries sharing it
    /// run at most that many batches at once (`weir serve` gives each
    /// tenant one, its CPU share).
    pub fn with_cores(mut self, cores: Arc<tokio::sync::Semaphore>) -> Query {
        self.cores = Some(cores);
        self
    }

    /// A handle to swap this query's transform plugins while it runs.
    pub fn control(&mut self) -> QueryControl {
        let stages = self
            .pipeline
            .transforms
            .iter()
            .map(|t| StageSettings {
                name: t.name.clone(),
                config_json: t.config_json.clone(),
                limits: t.limits,
            })
            .collect();
        let (control, receiver) = QueryControl::new(self.engine.clone(), stages);
        self.swaps = Some(receiver);
        control
    }

    /// Calls `listener` after each committed batch.
    pub fn on_progress(mut self, listener: impl FnMut(&BatchProgress) + Send + 'static) -> Query {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Stops the query between batches once `stop` turns true.
    pub fn with_stop_signal(mut self, stop: watch::Receiver<bool>) -> Query {
        self.stop = Some(stop);
        self
    }

    /// Runs until the trigger has drained the input or the stop signal.
    pub async fn run(self) -> Result<QueryOutcome> {
        let Query {
            pipeline,
            engine,
            listener,
            stop,
            swaps,
            cores,
        } = self;
        let engine_for_runner = engine.clone();
        let checkpoint = Checkpoint::open(&pipeline.checkpoint, &pipeline.name).await?;
        let transforms = pipeline.transforms.clone();
        let stateful_config = pipeline.stateful.clone();
        let foreach_batch = pipeline.sink.foreach_batch.clone();
        let retention = pipeline.retention;
        let query_uuid = checkpoint.metadata().id;
        let query_id = query_uuid.to_string();
        let query_id_for_sink = query_id.clone();
        let retries = Retries::default();
        let recovery = checkpoint.recover().await?;
        let has_run = recovery.next_batch > 0 || recovery.replay.is_some();
        let key_groups = checkpoint
            .key_groups(pipeline.parallelism.key_groups, has_run)
            .await?;
        let operator_tasks = tasks::task_count(&pipeline, key_groups);
        let (stages, stateful_fns, plugin_sink) = off_runtime(move || {
            let stages = transforms
                .iter()
                .map(|t| {
                    let component = Arc::new(engine.load_transform(&t.name, &t.plugin)?);
                    let instance = component.instantiate(&t.config_json, t.limits)?;
                    let mut stage = Stage::new(
                        &t.name,
                        component,
                        instance,
                        t.config_json.clone(),
                        t.limits,
                        t.on_error.clone(),
                    );
                    stage.on_failure = t.on_swap_failure;
                    Ok(stage)
                })
                .collect::<Result<Vec<_>>>()?;
            // A stateful function runs as one instance per task.
            let mut stateful_fns = Vec::new();
            if let Some(config) = stateful_config {
                let stage = &config.stage;
                let component = Arc::new(engine.load_stateful(&stage.name, &stage.plugin)?);
                for _ in 0..operator_tasks {
                    let instance = component.instantiate(&stage.config_json, stage.limits)?;
                    stateful_fns.push(
                        StatefulFunction::new(config.clone(), instance)
                            .for_query(query_uuid)
                            .with_component(component.clone()),
                    );
                }
            }
            let plugin_sink: Option<Box<dyn Sink>> = match foreach_batch {
                Some(config) => Some(Box::new(sink::ForeachBatchSink::open(
                    &engine, &config, &query_id, retention,
                )?)),
                None => None,
            };
            Ok((stages, stateful_fns, plugin_sink))
        })
        .await?;
        let first_batch = recovery.replay.unwrap_or(recovery.next_batch);
        let operators = Chain::open(
            &checkpoint,
            &pipeline,
            stateful_fns,
            key_groups,
            first_batch,
            Some(pipeline.retention.min_batches_to_retain),
        )
        .await?;
        let watermark_ms = restored_watermark(&checkpoint, recovery).await?;
        let late_rows_watermark_ms =
            restored_late_rows_watermark(&checkpoint, recovery, watermark_ms).await?;
        let input_watermarks = restored_input_watermarks(&checkpoint, recovery).await?;
        let mut inputs = Vec::new();
        for (index, input) in pipeline.inputs.iter().enumerate() {
            let source = open_source(input, &retries)?;
            inputs.push(Input {
                name: input.name.clone(),
                source,
                watermark: input.watermark.as_ref().map(|config| EventTime {
                    column: config.column.clone(),
                    delay_ms: config.delay.as_millis() as i64,
                    current_ms: input_watermarks
                        .get(index)
                        .copied()
                        .flatten()
                        .unwrap_or(watermark_ms),
                }),
            });
        }
        let has_watermark = inputs.iter().any(|i| i.watermark.is_some());
        let stream_join = JoinTasks::open(
            &checkpoint,
            &pipeline,
            key_groups,
            first_batch,
            Some(pipeline.retention.min_batches_to_retain),
        )
        .await?;
        let mut runner = Runner {
            inputs,
            sink: match (plugin_sink, &pipeline.sink.kafka) {
                (Some(plugin_sink), _) => plugin_sink,
                (None, Some(config)) => Box::new(
                    sink::KafkaSink::open(
                        config,
                        &query_id_for_sink,
                        checkpoint.store(),
                        retries.clone(),
                    )
                    .await?,
                ),
                #[cfg(feature = "delta")]
                (None, None) if pipeline.sink.kind == crate::config::SinkKind::Delta => {
                    Box::new(sink::DeltaSink::new(
                        pipeline
                            .sink
                            .path
                            .clone()
                            .expect("config checks give a delta sink a path"),
                        pipeline.sink.delta.clone().unwrap_or_default(),
                        pipeline.sink.output_mode,
                        &query_id_for_sink,
                    ))
                }
                (None, None) => sink::open(&pipeline.sink, pipeline.retention)?,
            },
            checkpoint,
            pipeline,
            stages,
            operators,
            stream_join,
            watermark_ms: has_watermark.then_some(watermark_ms),
            late_rows_watermark_ms: has_watermark.then_some(late_rows_watermark_ms),
            listener,
            stop,
            cores,
            batches_run: 0,
            last_batch_start: None,
            retries,
            engine: engine_for_runner,
            swaps,
            stored_plugins: Default::default(),
            events: Vec::new(),
            static_join: None,
            partitioning: StatePartitioning {
                tasks: operator_tasks,
                key_groups: key_groups.count(),
            },
        };
        if let Some(config) = &runner.pipeline.static_join {
            let mut join = StaticJoin::new(config.clone());
            // Read at start, so a broken table stops the query before batch 0.
            join.refresh_if_due().await?;
            runner.static_join = Some(join);
        }
        let outcome = runner.run(recovery).await;
        runner.checkpoint.release().await;
        outcome
    }
}

/// The stream-stream join `pipeline` declares, if any, without its state.
fn stream_join_of(pipeline: &Pipeline) -> Option<StreamJoin> {
    let config = pipeline.stream_join.as_ref()?;
    let side = |i: usize| &pipeline.inputs[i];
    let column = |i: usize| side(i).watermark.as_ref().map(|w| w.column.clone());
    Some(StreamJoin::new(
        config.clone(),
        [
            side(config.left).name.clone(),
            side(config.right).name.clone(),
        ],
        [column(config.left), column(config.right)],
    ))
}

/// One input of the query.
struct Input {
    name: String,
    source: Box<dyn Source>,
    watermark: Option<EventTime>,
}

/// Restores source `index`'s position from the checkpoint: its newest
/// compact entry, then the plans logged after it. Returns the plan of the
/// batch to replay, if one is in flight.
async fn restore_source(
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
async fn commit_plan(source: &mut dyn Source, plan: &Value) -> Result<()> {
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

/// Opens input `input`'s source.
fn open_source(input: &InputConfig, retries: &Retries) -> Result<Box<dyn Source>> {
    Ok(match &input.source {
        SourceConfig::File(config) => Box::new(FileSource::open((**config).clone())?),
        SourceConfig::Kafka(config) => {
            Box::new(KafkaSource::open(config.clone(), retries.clone())?)
        }
    })
}

/// An input's event-time watermark.
struct EventTime {
    column: String,
    delay_ms: i64,
    /// The watermark the next batch uses.
    current_ms: i64,
}

/// The watermark of the first batch this run executes: the replayed batch's
/// own (from `offsets/N`), else what the last commit computed, else Spark's
/// initial 0.
async fn restored_watermark(checkpoint: &Checkpoint, recovery: Recovery) -> Result<i64> {
    Ok(match recovery {
        Recovery {
            replay: Some(batch),
            ..
        } => checkpoint.offsets(batch).await?.watermark_ms,
        Recovery { next_batch: 0, .. } => None,
        Recovery { next_batch, .. } => {
            checkpoint
                .commit_entry(next_batch - 1)
                .await?
                .next_watermark_ms
        }
    }
    .unwrap_or(0))
}

/// The watermark the next new batch judges late rows by: the one the batch
/// before it used (`offsets/N-1`). A replayed batch reads its own from
/// `offsets/N` when it runs.
async fn restored_late_rows_watermark(
    checkpoint: &Checkpoint,
    recovery: Recovery,
    watermark_ms: i64,
) -> Result<i64> {
    let logged = match recovery.next_batch {
        0 => None,
        next => checkpoint.offsets(next - 1).await?.watermark_ms,
    };
    Ok(logged.unwrap_or(watermark_ms))
}

/// With several inputs, each input's watermark before the first batch this
/// run executes (from the previous batch's commit); empty otherwise.
async fn restored_input_watermarks(
    checkpoint: &Checkpoint,
    recovery: Recovery,
) -> Result<Vec<Option<i64>>> {
    let first = recovery.replay.unwrap_or(recovery.next_batch);
    if first == 0 {
        return Ok(Vec::new());
    }
    Ok(checkpoint
        .commit_entry(first - 1)
        .await?
        .next_input_watermarks_ms)
}

struct Runner {
    pipeline: Pipeline,
    checkpoint: Checkpoint,
    inputs: Vec<Input>,
    stages: Vec<Stage>,
    /// The stateful operators, in the order rows reach them.
    operators: Chain,
    stream_join: Option<JoinTasks>,
    /// The watermark the next batch uses, if any input declares one.
    watermark_ms: Option<i64>,
    /// The watermark the previous batch used: the next batch's late rows
    /// are judged by it (Spark 3.4+).
    late_rows_watermark_ms: Option<i64>,
    sink: Box<dyn Sink>,
    listener: Option<ProgressListener>,
    stop: Option<watch::Receiver<bool>>,
    /// Held through each batch: the tenant's share of the machine's cores.
    cores: Option<Arc<tokio::sync::Semaphore>>,
    batches_run: u64,
    last_batch_start: Option<Instant>,
    /// Outages the connectors retried since the last batch.
    retries: Retries,
    engine: PluginEngine,
    /// Plugin versions swapped in while running, applied between batches.
    swaps: Option<tokio::sync::mpsc::UnboundedReceiver<SwapRequest>>,
    /// Digests whose components the checkpoint already holds.
    stored_plugins: std::collections::BTreeSet<String>,
    /// Swaps and rollbacks since the last batch's progress.
    events: Vec<String>,
    /// The join with a table read from files, if the pipeline has one.
    static_join: Option<StaticJoin>,
    /// How the stateful operators' state is spread.
    partitioning: StatePartitioning,
}

impl Runner {
    async fn run(&mut self, recovery: Recovery) -> Result<QueryOutcome> {
        let restored_at = Instant::now();
        let mut replay_plans = Vec::with_capacity(self.inputs.len());
        for index in 0..self.inputs.len() {
            replay_plans.push(self.restore_input(index, recovery).await?);
        }
        tracing::info!(
            next_batch = recovery.next_batch,
            millis = restored_at.elapsed().as_millis() as u64,
            "restored the sources' positions from the checkpoint"
        );
        self.clean_last_committed(recovery).await?;
        if let Some(batch) = recovery.replay
            && let Some(plans) = replay_plans[0].as_ref().and_then(continuous::epoch_plans)
        {
            // Logged after its rows reached the sink: only the commit is missing.
            let rows = replay_plans[0]
                .as_ref()
                .map_or(0, |p| p["rows"].as_u64().unwrap_or(0));
            tracing::info!(
                epoch = batch,
                batches = plans.len(),
                "completing a continuous epoch"
            );
            self.commit_epoch(batch, rows).await?;
            self.after_commit(
                batch,
                &replay_plans.into_iter().flatten().collect::<Vec<_>>(),
            )
            .await?;
        } else if let Some(batch) = recovery.replay {
            let plans: Vec<Value> = replay_plans.into_iter().flatten().collect();
            tracing::info!(
                batch,
                inputs = self.plan_units(&plans).iter().sum::<usize>(),
                "replaying the batch that was in flight"
            );
            self.run_batch(batch, plans, true).await?;
        }
        let mut next = recovery.next_batch;
        let trigger = self.pipeline.trigger.clone();
        match trigger {
            Trigger::Continuous(interval) => self.run_continuous(interval, next).await,
            Trigger::AvailableNow | Trigger::Once => {
                if trigger == Trigger::Once {
                    tracing::warn!(
                        "trigger `once` is deprecated (as in Spark); use `available_now = true`"
                    );
                }
                // Only what is present now; input arriving later waits for the next run.
                for input in &mut self.inputs {
                    input.source.fix_end().await?;
                }
                while let Some(plan) = self.plan(trigger == Trigger::AvailableNow).await? {
                    if self.stopped() {
                        return Ok(QueryOutcome::Stopped {
                            batches: self.batches_run,
                        });
                    }
                    self.run_batch(next, plan, false).await?;
                    next += 1;
                }
                // Let the watermark close what it can, as Spark's no-data batches do.
                while self.needs_no_data_batch(false)? && !self.stopped() {
                    let plan = self.empty_plan();
                    self.run_batch(next, plan, false).await?;
                    next += 1;
                }
                Ok(QueryOutcome::Drained {
                    batches: self.batches_run,
                })
            }
            Trigger::BackToBack | Trigger::ProcessingTime(_) => loop {
                if self.stopped() {
                    return Ok(QueryOutcome::Stopped {
                        batches: self.batches_run,
                    });
                }
                let started = Instant::now();
                let plan = match self.plan(true).await? {
                    Some(plan) => Some(plan),
                    None if self.needs_no_data_batch(true)? => Some(self.empty_plan()),
                    None => None,
                };
                let ran = plan.is_some();
                if let Some(plan) = plan {
                    self.run_batch(next, plan, false).await?;
                    next += 1;
                }
                let wait = match trigger {
                    // Fixed cadence; a batch that overran its interval is followed at once.
                    Trigger::ProcessingTime(interval) => interval.saturating_sub(started.elapsed()),
                    _ if ran => Duration::ZERO,
                    _ => IDLE_POLL,
                };
                self.sleep(wait).await;
            },
        }
    }

    /// Restores input `index`'s position (see [`restore_source`]).
    async fn restore_input(&mut self, index: usize, recovery: Recovery) -> Result<Option<Value>> {
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
    async fn clean_last_committed(&mut self, recovery: Recovery) -> Result<()> {
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
    async fn clean_input_of(
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
    async fn after_commit(&mut self, batch_id: u64, plans: &[Value]) -> Result<()> {
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
    /// data (inputs without new data read nothing in the batch).
    async fn plan(&mut self, capped: bool) -> Result<Option<Vec<Value>>> {
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

    fn empty_plan(&self) -> Vec<Value> {
        self.inputs.iter().map(|i| i.source.empty_plan()).collect()
    }

    fn plan_units(&self, plans: &[Value]) -> Vec<usize> {
        self.inputs
            .iter()
            .zip(plans)
            .map(|(input, plan)| input.source.plan_units(plan))
            .collect()
    }

    /// The watermarks a new batch uses: late rows are judged by the
    /// previous batch's watermark unless `stateful_operator_allow_multiple`
    /// is off, as in Spark.
    fn watermarks(&self) -> Watermarks {
        Watermarks {
            late_rows_ms: if self.pipeline.stateful_operator_allow_multiple {
                self.late_rows_watermark_ms
            } else {
                self.watermark_ms
            },
            eviction_ms: self.watermark_ms,
        }
    }

    async fn run_batch(&mut self, batch_id: u64, plans: Vec<Value>, replay: bool) -> Result<()> {
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
        let mut bad_records = 0;
        for (index, plan) in plans.iter().enumerate() {
            let decoded = self.inputs[index].source.read(plan).await?;
            bad_records += decoded.bad_records.len() as u64;
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
        let input_max_ms = if self.inputs.len() > 1 {
            self.inputs
                .iter()
                .zip(&per_input)
                .map(|(input, batches)| match &input.watermark {
                    Some(w) => max_event_time(&w.column, batches),
                    None => Ok(None),
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut dropped = 0;
        let joined = match self.stream_join.take() {
            Some(mut join) => {
                let config = self.pipeline.stream_join.as_ref().expect("a join");
                let left = std::mem::take(&mut per_input[config.left]);
                let right = std::mem::take(&mut per_input[config.right]);
                // Its tasks run on threads of their own: off the async runtime.
                let (join, result) = off_runtime(move || {
                    let result = join.process(batch_id, watermarks, &left, &right);
                    Ok((join, result))
                })
                .await?;
                self.stream_join = Some(join);
                let (rows, late) = result?;
                dropped += late;
                rows
            }
            None => per_input.into_iter().flatten().collect(),
        };
        durations.read = phase.elapsed();
        crash_point("after-read", batch_id);

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
        let max_event_ms = match (self.inputs.len(), &self.inputs[0].watermark) {
            (1, Some(w)) => vec![max_event_time(&w.column, &batches)?],
            _ => input_max_ms,
        };
        let watermark_ms = self.watermark_ms;
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
        durations.transform = phase.elapsed().saturating_sub(sink_plugin);
        crash_point("after-transform", batch_id);

        let phase = Instant::now();
        let outcome = self.sink.commit(batch_id, &batches).await?;
        self.operators.commit(batch_id + 1).await?;
        if let Some(join) = &mut self.stream_join {
            join.commit(batch_id + 1).await?;
        }
        durations.sink = phase.elapsed() + sink_plugin;
        crash_point("before-commit", batch_id);

        let phase = Instant::now();
        let output_rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        // Spark: a watermark never moves back; late rows cannot lower it.
        let next_input_watermarks: Vec<Option<i64>> = self
            .inputs
            .iter()
            .zip(max_event_ms.iter().chain(std::iter::repeat(&None)))
            .map(|(input, max)| {
                input
                    .watermark
                    .as_ref()
                    .map(|w| max.map_or(w.current_ms, |max| w.current_ms.max(max - w.delay_ms)))
            })
            .collect();
        let declared = next_input_watermarks.iter().flatten().copied();
        let next_watermark_ms = match self.pipeline.multiple_watermark_policy {
            WatermarkPolicy::Min => declared.min(),
            WatermarkPolicy::Max => declared.max(),
        };
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
        for (input, next) in self.inputs.iter_mut().zip(next_input_watermarks) {
            if let (Some(w), Some(next)) = (&mut input.watermark, next) {
                w.current_ms = next;
            }
        }
        if next_watermark_ms.is_some() {
            self.late_rows_watermark_ms = self.watermark_ms;
            self.watermark_ms = next_watermark_ms;
        }
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

    /// Whether a batch runs without new input: as in Spark, whenever the
    /// watermark moved past the one the last batch ran with and the
    /// operator evicts by it (so batch ids and progress match Spark's);
    /// and whenever the watermark (or, with `now`, processing time) lets
    /// the operator emit, evict or time out.
    fn needs_no_data_batch(&self, now: bool) -> Result<bool> {
        let moved = matches!(
            (self.watermark_ms, self.late_rows_watermark_ms),
            (Some(next), Some(last)) if next > last
        );
        if let Some(join) = &self.stream_join
            && (moved && join.evicts_by_watermark() || join.has_work_at(self.watermark_ms)?)
        {
            return Ok(true);
        }
        // Each operator by the watermarks that reach it.
        let each = self.operator_watermarks(Watermarks {
            late_rows_ms: self.late_rows_watermark_ms,
            eviction_ms: self.watermark_ms,
        });
        self.operators.needs_no_data_batch(&each, now.then(now_ms))
    }

    /// The watermarks each stateful operator runs with when the query's
    /// are `query` (see [`Chain::watermarks`]).
    fn operator_watermarks(&self, query: Watermarks) -> Vec<Watermarks> {
        self.operators
            .watermarks(self.pipeline.stream_join.as_ref(), query)
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|rx| *rx.borrow())
    }

    async fn sleep(&mut self, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        match &mut self.stop {
            Some(rx) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = rx.changed() => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Runs plugin code on tokio's blocking pool. Plugin calls are synchronous,
/// and WASI's synchronous host functions (a plugin writing to stderr, say)
/// must not run on an async worker thread.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| WeirError::Internal(format!("plugin task failed: {e}")))?
}

/// The latest event time in `column` among `batches`, for a watermark.
fn max_event_time(column: &str, batches: &[RecordBatch]) -> Result<Option<i64>> {
    let mut max = None;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| WeirError::Schema {
                context: "watermark".into(),
                reason: format!(
                    "the event-time column `{column}` is not in the rows reaching the watermark"
                ),
            })?;
        let times = crate::operator::event_times_ms(values)?;
        max = max.max(arrow::compute::max(&times));
    }
    Ok(max)
}

fn field_list(schema: &SchemaRef) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
