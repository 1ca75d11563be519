//! `weir replay`: recorded batches run again offline, and their output
//! compared with what the sink committed.
//!
//! Each batch is rebuilt from the checkpoint alone: its input from the
//! plans logged in `sources/<i>/N` (the file source re-reads the files the
//! plan names), its clock and seed from `offsets/N` and `metadata`, the
//! plugin versions it ran from `versions/N` (their components are kept in
//! `plugins/`), and the rows it quarantined from `quarantine/N`. A stateful
//! operator (window, dedup, `[stateful]` function) and a stream-stream join
//! start each batch from the state version the batch found (`state/…`,
//! version N), with the watermark `offsets/N` logged. One stage (a
//! transform or the stateful function) may run a candidate component
//! instead, to see what a new version would have made of the same batches
//! before it takes traffic. Nothing is
//! written: the checkpoint is read without taking its lock, so a running
//! query can be replayed beside itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::chain::Chain;
use super::stage::Stage;
use super::{StageVersions, off_runtime};
use crate::checkpoint::Checkpoint;
use crate::config::{Pipeline, SinkTarget, StatefulFunctionConfig};
use crate::error::{Result, WeirError};
use crate::operator::{StatefulFunction, Watermarks};
use crate::plugin::{BatchEnv, PluginEngine, StatefulComponent, TransformComponent};
use crate::quarantine::QuarantineRecord;
use crate::retry::Retries;
use crate::storage::Location;

/// A component to run in one stage instead of the version that ran.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The stage.
    pub stage: String,
    /// The component file.
    pub plugin: PathBuf,
    /// Its `config` as JSON (default: the config the batch ran with).
    pub config_json: Option<String>,
}

/// One batch run again, beside what the sink committed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayedBatch {
    /// The batch id.
    pub batch_id: u64,
    /// The rows the sink committed for the batch, as JSON objects.
    pub committed: Vec<Value>,
    /// The rows the replay produced.
    pub replayed: Vec<Value>,
    /// Rows the replay quarantined (a candidate's included).
    pub quarantined: usize,
}

/// How two row lists differ, as multisets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowDiff {
    /// Rows in both.
    pub same: usize,
    /// Rows committed that the replay did not produce.
    pub removed: Vec<Value>,
    /// Rows the replay produced that were not committed.
    pub added: Vec<Value>,
}

impl ReplayedBatch {
    /// The row-level difference between the committed rows and the replay.
    pub fn diff(&self) -> RowDiff {
        diff_rows(&self.committed, &self.replayed)
    }
}

/// How `after` differs from `before`, as multisets of rows.
pub(super) fn diff_rows(before: &[Value], after: &[Value]) -> RowDiff {
    let key = |v: &Value| v.to_string();
    let mut remaining: BTreeMap<String, (usize, &Value)> = BTreeMap::new();
    for row in before {
        remaining.entry(key(row)).or_insert((0, row)).0 += 1;
    }
    let mut diff = RowDiff::default();
    for row in after {
        match remaining.get_mut(&key(row)) {
            Some((n, _)) if *n > 0 => {
                *n -= 1;
                diff.same += 1;
            }
            _ => diff.added.push(row.clone()),
        }
    }
    // In `before`'s order, so a diff reads like the output.
    for row in before {
        if let Some((n, _)) = remaining.get_mut(&key(row))
            && *n > 0
        {
            *n -= 1;
            diff.removed.push(row.clone());
        }
    }
    diff
}

/// Runs committed batches `batches` of `pipeline` again (with `candidate`
/// in its stage, if given) and returns each beside its committed rows.
pub async fn replay(
    pipeline: &Pipeline,
    engine: &PluginEngine,
    batches: std::ops::RangeInclusive<u64>,
    candidate: Option<Candidate>,
) -> Result<Vec<ReplayedBatch>> {
    refuse_unsupported(pipeline)?;
    let stateful_stage = pipeline.stateful.as_ref().map(|s| s.stage.name.as_str());
    if let Some(c) = &candidate
        && !pipeline.transforms.iter().any(|t| t.name == c.stage)
        && stateful_stage != Some(c.stage.as_str())
    {
        return Err(unsupported(format!(
            "the pipeline has no transform or stateful stage `{}`",
            c.stage
        )));
    }
    let checkpoint = Checkpoint::open_read_only(&pipeline.checkpoint).await?;
    // The `[stateful]` function: the pipeline's component (it is never
    // swapped, so the one that ran), or the candidate.
    let stateful_fn = match &pipeline.stateful {
        Some(config) => {
            let mut config = config.clone();
            if let Some(c) = candidate.as_ref().filter(|c| c.stage == config.stage.name) {
                config.stage.plugin = c.plugin.clone();
                if let Some(json) = &c.config_json {
                    config.stage.config_json = json.clone();
                }
            }
            let (engine, stage) = (engine.clone(), config.stage.clone());
            let component =
                off_runtime(move || engine.load_stateful(&stage.name, &stage.plugin)).await?;
            Some((config, Arc::new(component)))
        }
        None => None,
    };
    let candidate_stage = candidate.as_ref().map(|c| c.stage.clone());
    let candidate = match candidate {
        Some(c) if stateful_stage != Some(c.stage.as_str()) => {
            let (engine, name, path) = (engine.clone(), c.stage.clone(), c.plugin.clone());
            let loaded = off_runtime(move || engine.load_transform(&name, &path)).await?;
            Some((c, Arc::new(loaded)))
        }
        _ => None,
    };

    let retries = Retries::default();
    let mut sources = pipeline
        .inputs
        .iter()
        .map(|input| crate::source::open(&input.source, &retries, pipeline.parallelism.tasks))
        .collect::<Result<Vec<_>>>()?;
    // For the operator, which runs off the async runtime.
    let shared = Arc::new(pipeline.clone());
    // Each version is compiled once, however many batches ran it.
    let mut loaded: BTreeMap<String, Arc<TransformComponent>> = BTreeMap::new();
    let mut replayed = Vec::new();
    for batch_id in batches {
        checkpoint.commit_entry(batch_id).await.map_err(|_| {
            unsupported(format!(
                "batch {batch_id} is not committed, or retention deleted its log entries \
                 (`weir checkpoint inspect` lists the batches kept)"
            ))
        })?;
        let offsets = checkpoint.offsets(batch_id).await?;
        let watermarks = Watermarks {
            late_rows_ms: offsets.late_rows_watermark(),
            eviction_ms: offsets.watermark_ms,
        };
        let time_ms = offsets.batch_timestamp_ms;
        let mut per_input = Vec::new();
        for (index, source) in sources.iter_mut().enumerate() {
            let plan: Value = checkpoint.source_log(index, batch_id).await?;
            per_input.push(source.read_committed(&plan).await?.batches);
        }
        let groups = checkpoint.recorded_key_groups().await?;
        // The join's state as batch N found it: version N.
        let join =
            super::open::open_stream_join(&checkpoint, pipeline, groups, batch_id, None).await?;
        let input = match (&pipeline.stream_join, join) {
            (Some(config), Some(mut join)) => {
                let left = std::mem::take(&mut per_input[config.left]);
                let right = std::mem::take(&mut per_input[config.right]);
                off_runtime(move || {
                    join.run(batch_id, watermarks, time_ms, &[&left, &right], Vec::new())
                })
                .await?
                .0
            }
            _ => per_input.into_iter().flatten().collect(),
        };
        let versions: StageVersions = checkpoint.versions_of(batch_id).await?.unwrap_or_default();
        let recorded: QuarantineRecord = checkpoint
            .quarantine_of(batch_id)
            .await?
            .unwrap_or_default();
        let mut stages = Vec::new();
        for t in &pipeline.transforms {
            let (component, config_json) = match &candidate {
                Some((c, loaded)) if c.stage == t.name => {
                    let logged = versions.get(&t.name).map(|v| v.config_json.clone());
                    let config = c.config_json.clone().or(logged);
                    (loaded.clone(), config.unwrap_or(t.config_json.clone()))
                }
                _ => match versions.get(&t.name) {
                    Some(version) => {
                        let component = match loaded.get(&version.digest) {
                            Some(component) => component.clone(),
                            None => {
                                let wasm = checkpoint.plugin(&version.object_name()).await?;
                                let (engine, name) = (engine.clone(), t.name.clone());
                                let origin = PathBuf::from(version.object_name());
                                let component = Arc::new(
                                    off_runtime(move || {
                                        engine.load_transform_wasm(&name, &origin, wasm)
                                    })
                                    .await?,
                                );
                                loaded.insert(version.digest.clone(), component.clone());
                                component
                            }
                        };
                        (component, version.config_json.clone())
                    }
                    None => {
                        let (engine, name, path) =
                            (engine.clone(), t.name.clone(), t.plugin.clone());
                        let component =
                            off_runtime(move || engine.load_transform(&name, &path)).await?;
                        (Arc::new(component), t.config_json.clone())
                    }
                },
            };
            stages.push((t.clone(), component, config_json));
        }
        // What the stateful function set aside; a candidate there does not
        // reuse the running version's rows.
        let known = match (&stateful_fn, &candidate_stage) {
            (Some((config, _)), Some(c)) if *c == config.stage.name => Vec::new(),
            (Some((config, _)), _) => recorded
                .get(&config.stage.name)
                .cloned()
                .unwrap_or_default(),
            (None, _) => Vec::new(),
        };
        let query_id = checkpoint.metadata().id;
        let stage_run = candidate_stage.clone();
        let (rows, mut quarantined) = off_runtime(move || {
            run_stages(
                stages,
                input,
                batch_id,
                time_ms,
                &query_id,
                &recorded,
                stage_run.as_deref(),
            )
        })
        .await?;
        // The stateful operators, if any (without, the rows pass as they are).
        let operators = OperatorRun {
            pipeline: shared.clone(),
            function: stateful_fn.clone(),
            query_id,
            batch_id,
            watermarks,
            time_ms,
        };
        let (rows, set_aside) = operators.run(&checkpoint, rows, known).await?;
        quarantined += set_aside;
        replayed.push(ReplayedBatch {
            batch_id,
            committed: committed_rows(pipeline, batch_id).await?,
            replayed: json_rows(&rows)?,
            quarantined,
        });
    }
    Ok(replayed)
}

/// A batch through the pipeline's stateful operator, outside the query.
struct OperatorRun {
    pipeline: Arc<Pipeline>,
    /// The `[stateful]` function's config and component, if it has one.
    function: Option<(StatefulFunctionConfig, Arc<StatefulComponent>)>,
    query_id: uuid::Uuid,
    batch_id: u64,
    watermarks: Watermarks,
    time_ms: i64,
}

impl OperatorRun {
    /// Runs `rows` through fresh operators on their states as the batch
    /// found them (version N), leaving out the rows `known` says a
    /// stateful function set aside; returns what the last emitted and how
    /// many rows were set aside.
    async fn run(
        self,
        checkpoint: &Checkpoint,
        rows: Vec<RecordBatch>,
        known: Vec<crate::quarantine::QuarantinedRow>,
    ) -> Result<(Vec<RecordBatch>, usize)> {
        let query_id = self.query_id;
        let groups = checkpoint.recorded_key_groups().await?;
        let tasks = super::tasks::task_count(&self.pipeline, groups);
        let functions = match self.function {
            Some((config, component)) => {
                off_runtime(move || {
                    let stage = &config.stage;
                    (0..tasks)
                        .map(|_| {
                            let instance =
                                component.instantiate(&stage.config_json, stage.limits)?;
                            Ok(StatefulFunction::new(config.clone(), instance)
                                .for_query(query_id)
                                .with_component(component.clone()))
                        })
                        .collect()
                })
                .await?
            }
            None => Vec::new(),
        };
        let mut chain = Chain::open(
            checkpoint,
            &self.pipeline,
            functions,
            groups,
            self.batch_id,
            None,
        )
        .await?;
        let each = chain.watermarks(self.pipeline.stream_join.as_ref(), self.watermarks);
        let (batch_id, time_ms) = (self.batch_id, self.time_ms);
        let (emitted, _late, set_aside) =
            off_runtime(move || chain.run(&each, batch_id, time_ms, rows, known)).await?;
        Ok((emitted, set_aside.rows.len()))
    }
}

/// The stages over one batch, as the query ran them; the candidate's stage
/// does not reuse the rows the running version quarantined.
fn run_stages(
    stages: Vec<(
        crate::config::TransformConfig,
        Arc<TransformComponent>,
        String,
    )>,
    mut batches: Vec<RecordBatch>,
    batch_id: u64,
    batch_time_ms: i64,
    query_id: &uuid::Uuid,
    recorded: &QuarantineRecord,
    candidate: Option<&str>,
) -> Result<(Vec<RecordBatch>, usize)> {
    let mut quarantined = 0;
    for (config, component, config_json) in stages {
        let instance = component.instantiate(&config_json, config.limits)?;
        let mut stage = Stage::new(
            &config.name,
            component,
            instance,
            config_json,
            config.limits,
            config.on_error.clone(),
        );
        let env = BatchEnv::for_batch(query_id, &stage.name, batch_id, batch_time_ms);
        let known = match recorded.get(&stage.name) {
            Some(rows) if candidate != Some(stage.name.as_str()) => rows.as_slice(),
            _ => &[],
        };
        let run = stage.process(batch_id, &batches, env, known)?;
        quarantined += run.quarantined.len();
        batches = run.outputs;
    }
    Ok((batches, quarantined))
}

/// What replay cannot rebuild yet, refused with the reason.
fn refuse_unsupported(pipeline: &Pipeline) -> Result<()> {
    if pipeline.static_join.is_some() {
        return Err(unsupported(
            "the pipeline joins a static table, which may have changed since; replay \
             cannot rebuild the table a batch saw"
                .into(),
        ));
    }
    if !matches!(pipeline.sink.target, SinkTarget::Files(_)) {
        return Err(unsupported(
            "replay compares with a json or parquet file sink's committed files".into(),
        ));
    }
    Ok(())
}

fn unsupported(reason: String) -> WeirError {
    WeirError::Replay { reason }
}

/// The rows batch `batch_id` committed to the pipeline's file sink.
async fn committed_rows(pipeline: &Pipeline, batch_id: u64) -> Result<Vec<Value>> {
    let location: &Location = pipeline
        .sink
        .path()
        .ok_or_else(|| unsupported("the sink has no path".into()))?;
    let files = crate::sink::batch_files(location, batch_id)
        .await?
        .ok_or_else(|| {
            unsupported(format!(
                "the sink log no longer tells batch {batch_id}'s files apart (compacted \
                 into larger files, or deleted by retention)"
            ))
        })?;
    let store = location.open()?;
    let mut rows = Vec::new();
    for file in files {
        let path = object_store::path::Path::from(file.as_str());
        let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &path)
            .await
            .map_err(|e| WeirError::storage(format!("{location}/{file}"), e))?
            .bytes()
            .await
            .map_err(|e| WeirError::storage(format!("{location}/{file}"), e))?;
        if Path::new(&file).extension().is_some_and(|e| e == "parquet") {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| WeirError::Internal(format!("reading {file}: {e}")))?;
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| WeirError::Internal(format!("reading {file}: {e}")))?;
            rows.extend(json_rows(&batches)?);
        } else {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                rows.push(
                    serde_json::from_slice(line).map_err(|e| {
                        WeirError::Internal(format!("a committed row of {file}: {e}"))
                    })?,
                );
            }
        }
    }
    Ok(rows)
}

/// Rows as JSON objects, as the JSON sink writes them.
pub(super) fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Value>> {
    let lines = crate::sink::json_lines(batches, "replayed rows")?;
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| WeirError::Internal(format!("a row: {e}"))))
        .collect()
}
