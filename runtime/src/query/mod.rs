//! The micro-batch loop: plan → log offsets → read → transform → sink →
//! log commit, repeated as the trigger says.
//!
//! Exactly-once comes from three parts working together: the source is
//! replayable (a batch's files are logged in `sources/0/N` before it runs),
//! the checkpoint tells on restart which batch was in flight, and the sink
//! is idempotent per batch id.

mod batch;
mod chain;
mod compact;
mod continuous;
mod dead_letters;
mod inputs;
mod open;
mod plan;
mod progress;
mod replay;
mod shadow;
mod stage;
mod swap;
mod tasks;
mod versions;
mod watermark;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use serde_json::Value;
use tokio::sync::watch;

pub use crate::quarantine::{QuarantineRecord, QuarantinedRow};
pub use compact::{Compacted, compact};
pub use plan::{Edge, Plan, Step};
pub use progress::{BatchProgress, PhaseDurations, StageProgress, StatePartitioning};
pub use replay::{Candidate, ReplayedBatch, RowDiff, replay};
pub use shadow::ShadowReport;
pub use stage::{TrialRun, trial_run};
pub use swap::{QueryControl, StageVersion, StageVersions, SwapAccepted};
pub(crate) use watermark::max_event_time;

use chain::Chain;
use inputs::Input;
use stage::{PluginVersion, Stage};
use swap::{StageSettings, SwapRequest};
use tasks::OperatorTasks;

use crate::checkpoint::{Checkpoint, Recovery};
use crate::config::{Pipeline, Trigger};
use crate::error::{Result, WeirError};
use crate::operator::{StaticJoin, Watermarks};
use crate::plugin::PluginEngine;
use crate::retry::Retries;
use crate::sink::Sink;

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
    /// Replaces the pipeline's one source (see [`Query::with_source`]).
    source: Option<Box<dyn crate::source::Source>>,
    /// Replaces the pipeline's sink (see [`Query::with_sink`]).
    sink: Option<Box<dyn Sink>>,
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
            source: None,
            sink: None,
        }
    }

    /// Reads the pipeline's one input from `source` instead of the source
    /// its `[source]` declares (whose watermark still applies): a replica's
    /// state shard reads the repartition topic.
    pub fn with_source(mut self, source: Box<dyn crate::source::Source>) -> Query {
        self.source = Some(source);
        self
    }

    /// Writes to `sink` instead of the pipeline's `[sink]`: a replica's
    /// source shard writes the repartition topic.
    pub fn with_sink(mut self, sink: Box<dyn Sink>) -> Query {
        self.sink = Some(sink);
        self
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
        let (mut runner, recovery) = Runner::open(self).await?;
        let outcome = runner.run(recovery).await;
        runner.checkpoint.release().await;
        outcome
    }
}

struct Runner {
    pipeline: Pipeline,
    checkpoint: Checkpoint,
    inputs: Vec<Input>,
    stages: Vec<Stage>,
    /// The stateful operators, in the order rows reach them.
    operators: Chain,
    /// The stream-stream join of two inputs, before the transforms.
    stream_join: Option<OperatorTasks>,
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
    /// The next batch, planned and being read while one runs.
    read_ahead: Option<inputs::ReadAhead>,
    /// The rows of the batch about to run, read ahead.
    prefetched: Option<inputs::Reads>,
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

    /// Whether a batch runs without new input: as in Spark, whenever the
    /// watermark moved past the one the last batch ran with and the
    /// operator evicts by it (so batch ids and progress match Spark's);
    /// and whenever the watermark (or, with `now`, processing time) lets
    /// the operator emit, evict or time out.
    fn needs_no_data_batch(&self, now: bool) -> Result<bool> {
        let query = Watermarks {
            late_rows_ms: self.late_rows_watermark_ms,
            eviction_ms: self.watermark_ms,
        };
        let now_ms = now.then(now_ms);
        if let Some(join) = &self.stream_join
            && join.needs_no_data_batch(query, now_ms)?
        {
            return Ok(true);
        }
        // Each operator by the watermarks that reach it.
        let each = self.operator_watermarks(query);
        self.operators.needs_no_data_batch(&each, now_ms)
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

fn field_list(schema: &SchemaRef) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

/// Wall-clock milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
