//! Building a query's physical plan from its pipeline: checkpoint and
//! recovery, plugin stages, stateful operators as tasks over key groups,
//! sources at their restored positions and watermarks, and the sink.

use std::sync::Arc;

use super::chain::Chain;
use super::inputs::Input;
use super::stage::Stage;
use super::tasks::OperatorTasks;
use super::tasks::task_count;
use super::watermark::{
    EventTime, restored_input_watermarks, restored_late_rows_watermark, restored_watermark,
};
use super::{Query, Runner, StatePartitioning, off_runtime};
use crate::checkpoint::{Checkpoint, Recovery};
use crate::config::Pipeline;
use crate::error::Result;
use crate::operator::{Operator, StatefulFunction, StaticJoin, StreamJoin};
use crate::retry::Retries;
use crate::sink::{self, SinkContext};
use crate::source;
use crate::state::KeyGroups;

impl Runner {
    /// Builds the query's plan from its pipeline: the checkpoint and its
    /// recovery, the plugin stages, the stateful operators as tasks over key
    /// groups, the sources at their restored watermarks, the sink.
    pub(super) async fn open(query: Query) -> Result<(Runner, Recovery)> {
        let Query {
            pipeline,
            engine,
            listener,
            stop,
            swaps,
            cores,
            source: given_source,
            sink: given_sink,
        } = query;
        let engine_for_runner = engine.clone();
        let checkpoint = match &pipeline.cluster {
            Some(cluster) => {
                Checkpoint::open_leased(
                    &pipeline.checkpoint,
                    &pipeline.name,
                    cluster.session_timeout,
                )
                .await?
            }
            None => Checkpoint::open(&pipeline.checkpoint, &pipeline.name).await?,
        };
        let transforms = pipeline.transforms.clone();
        let stateful_config = pipeline.stateful.clone();
        let query_uuid = checkpoint.metadata().id;
        let query_id = query_uuid.to_string();
        let retries = Retries::default();
        let recovery = checkpoint.recover().await?;
        let has_run = recovery.next_batch > 0 || recovery.replay.is_some();
        let key_groups = checkpoint
            .key_groups(pipeline.parallelism.key_groups, has_run)
            .await?;
        let operator_tasks = task_count(&pipeline, key_groups);
        let (stages, stateful_fns) = off_runtime(move || {
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
                    stage.tasks = pipeline.parallelism.tasks;
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
            Ok((stages, stateful_fns))
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
        let mut given_source = given_source;
        for (index, input) in pipeline.inputs.iter().enumerate() {
            let source = match given_source.take() {
                Some(source) if pipeline.inputs.len() == 1 => source,
                Some(_) => {
                    return Err(crate::error::WeirError::Internal(
                        "a source given to a query of several inputs".into(),
                    ));
                }
                None => source::open(&input.source, &retries, pipeline.parallelism.tasks)?,
            };
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
        let stream_join = open_stream_join(
            &checkpoint,
            &pipeline,
            key_groups,
            first_batch,
            Some(pipeline.retention.min_batches_to_retain),
        )
        .await?;
        let sink = match given_sink {
            Some(sink) => sink,
            None => {
                sink::open(
                    &pipeline.sink,
                    SinkContext {
                        engine: engine_for_runner.clone(),
                        query_id,
                        checkpoint: checkpoint.store(),
                        retries: retries.clone(),
                        retention: pipeline.retention,
                        tasks: pipeline.parallelism.tasks,
                    },
                )
                .await?
            }
        };
        let mut runner = Runner {
            inputs,
            sink,
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
            read_ahead: None,
            prefetched: None,
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
        Ok((runner, recovery))
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

/// The stream-stream join `pipeline` declares, if any, as tasks over key
/// groups (state under `state/join/`): both inputs' rows are placed in
/// key groups by their join keys, so a key's rows from either side meet in
/// one group's state, on the task that owns it. Its state is as version
/// `version` left it; a running query's keeps `retain` versions.
pub(super) async fn open_stream_join(
    checkpoint: &Checkpoint,
    pipeline: &Pipeline,
    groups: KeyGroups,
    version: u64,
    retain: Option<u64>,
) -> Result<Option<OperatorTasks>> {
    let tasks = task_count(pipeline, groups);
    let instances: Vec<Box<dyn Operator>> = (0..tasks)
        .filter_map(|_| stream_join_of(pipeline))
        .map(|join| Box::new(join) as Box<dyn Operator>)
        .collect();
    if instances.is_empty() {
        return Ok(None);
    }
    OperatorTasks::open(
        checkpoint, pipeline, "join", instances, groups, version, retain, false,
    )
    .await
    .map(Some)
}
