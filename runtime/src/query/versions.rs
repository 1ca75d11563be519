//! The runner's side of hot swap: applying swapped-in versions between
//! batches, rolling back a version that fails its first batch, recording
//! versions in the checkpoint and running a replay with the logged ones.

use std::path::Path;

use arrow::record_batch::RecordBatch;

use super::shadow::{Shadow, ShadowReport};
use super::stage::Stage;
use super::{PluginVersion, Runner, StageVersion, StageVersions, off_runtime};
use crate::config::SwapFailure;
use crate::error::Result;
use crate::plugin::BatchEnv;
use crate::quarantine::QuarantineRecord;

/// `sha256:0123456789ab` — enough of a digest to tell versions apart in logs.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Which batch the transform stages run, as they need to know it.
#[derive(Clone)]
pub(super) struct StagesBatch {
    pub id: u64,
    /// The batch's logged processing time: the plugins' clock.
    pub time_ms: i64,
    /// Rows set aside by a first attempt of the batch (a replay).
    pub recorded: QuarantineRecord,
}

/// What the transform stages made of a batch.
pub(super) struct Transformed {
    pub batches: Vec<RecordBatch>,
    /// The rows each stage set aside (stages that set none aside absent).
    pub quarantined: QuarantineRecord,
    /// Those rows as dead-letter records, by stage.
    pub dead_letters: Vec<(String, Vec<u8>)>,
}

impl Runner {
    /// Puts in the versions swapped in since the last batch.
    pub(super) fn apply_swaps(&mut self) {
        let Some(requests) = &mut self.swaps else {
            return;
        };
        while let Ok(request) = requests.try_recv() {
            let pause = std::time::Instant::now();
            let Some(stage) = self.stages.iter_mut().find(|s| s.name == request.stage) else {
                continue;
            };
            if let Some((batches, report)) = request.shadow {
                let candidate = Stage::new(
                    &stage.name,
                    request.component,
                    request.instance,
                    request.config_json,
                    stage.limits,
                    stage.on_error.clone(),
                );
                self.events.push(format!(
                    "stage `{}`: shadowing {} with {} for {batches} batches",
                    stage.name,
                    short(&stage.version.digest),
                    short(&candidate.version.digest)
                ));
                report.set(ShadowReport {
                    stage: stage.name.clone(),
                    live: stage.version.digest.clone(),
                    candidate: candidate.version.digest.clone(),
                    candidate_config: candidate.version.config_json.clone(),
                    batches_wanted: batches,
                    ..ShadowReport::default()
                });
                stage.shadow = Some(Shadow {
                    stage: Box::new(candidate),
                    report,
                });
                continue;
            }
            let next = PluginVersion {
                instance: request.instance,
                version: StageVersion {
                    digest: request.component.digest().to_string(),
                    config_json: request.config_json,
                },
                component: request.component,
            };
            let old = stage.replace(next);
            let old_digest = old.version.digest.clone();
            // Roll back to the last version that completed a batch.
            if stage.previous.is_none() {
                stage.previous = Some(Box::new(old));
            }
            let pause = pause.elapsed();
            self.events.push(format!(
                "stage `{}`: swapped {} for {} (paused {:.1} µs)",
                stage.name,
                short(&old_digest),
                short(&stage.version.digest),
                pause.as_secs_f64() * 1e6
            ));
        }
    }

    /// Runs the transform stages; a version swapped in that fails its first
    /// batch is rolled back (unless its stage says `fail`) and the batch
    /// runs again with the version before.
    pub(super) async fn transform(
        &mut self,
        input: Vec<RecordBatch>,
        batch: StagesBatch,
    ) -> Result<Transformed> {
        let first = self.run_stages(input.clone(), batch.clone()).await;
        let error = match first {
            Ok(output) => {
                for stage in &mut self.stages {
                    stage.previous = None;
                }
                return Ok(output);
            }
            Err(error) => error,
        };
        let mut rolled_back = false;
        for stage in &mut self.stages {
            if stage.on_failure != SwapFailure::Rollback {
                continue;
            }
            let Some(previous) = stage.previous.take() else {
                continue;
            };
            let failed = stage.replace(*previous);
            self.events.push(format!(
                "stage `{}`: version {} failed its first batch ({error}); rolled back to {}",
                stage.name,
                short(&failed.version.digest),
                short(&stage.version.digest)
            ));
            tracing::warn!(
                stage = stage.name,
                failed = failed.version.digest,
                back_to = stage.version.digest,
                %error,
                "a swapped-in plugin failed its first batch: rolled back"
            );
            rolled_back = true;
        }
        if !rolled_back {
            return Err(error);
        }
        self.run_stages(input, batch).await
    }

    async fn run_stages(
        &mut self,
        input: Vec<RecordBatch>,
        batch: StagesBatch,
    ) -> Result<Transformed> {
        let mut stages = std::mem::take(&mut self.stages);
        let query_id = self.checkpoint.metadata().id;
        let (stages, output) = off_runtime(move || {
            let run = |stages: &mut Vec<Stage>| {
                let mut done = Transformed {
                    batches: input,
                    quarantined: QuarantineRecord::new(),
                    dead_letters: Vec::new(),
                };
                for stage in stages {
                    let env = BatchEnv::for_batch(&query_id, &stage.name, batch.id, batch.time_ms);
                    let recorded = batch
                        .recorded
                        .get(&stage.name)
                        .map_or(&[][..], Vec::as_slice);
                    let started = std::time::Instant::now();
                    let run = stage.process(batch.id, &done.batches, env, recorded)?;
                    if let Some(shadow) = &mut stage.shadow {
                        let live = started.elapsed();
                        let over = shadow.compare(
                            batch.id,
                            &done.batches,
                            env,
                            recorded,
                            &run.outputs,
                            live,
                        );
                        if over {
                            stage.shadow = None;
                        }
                    }
                    done.batches = run.outputs;
                    if !run.quarantined.is_empty() {
                        done.quarantined.insert(stage.name.clone(), run.quarantined);
                        done.dead_letters
                            .push((stage.name.clone(), run.dead_letters));
                    }
                }
                Ok(done)
            };
            let output = run(&mut stages);
            Ok((stages, output))
        })
        .await?;
        self.stages = stages;
        output
    }

    /// Records the stage versions batch `batch_id` ran with, and keeps
    /// each version's component. Written for every batch: its presence
    /// says the batch got past its transforms, so only then must a replay
    /// run these versions (a batch that failed in a plugin is replayed with
    /// the versions of now — a fixed plugin, say).
    pub(super) async fn log_versions(&mut self, batch_id: u64) -> Result<()> {
        if self.stages.is_empty() {
            return Ok(());
        }
        let current: StageVersions = self
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.version.clone()))
            .collect();
        for stage in &self.stages {
            if self.stored_plugins.insert(stage.version.digest.clone()) {
                self.checkpoint
                    .store_plugin(&stage.version.object_name(), stage.component.wasm())
                    .await?;
            }
        }
        self.checkpoint.write_versions(batch_id, &current).await?;
        Ok(())
    }

    /// For a replay: puts in the versions batch `batch_id` first ran with
    /// where they differ from the running ones; returns what to put back,
    /// and whether versions were logged for the batch.
    pub(super) async fn use_logged_versions(
        &mut self,
        batch_id: u64,
    ) -> Result<(Vec<(usize, PluginVersion)>, bool)> {
        let Some(logged) = self
            .checkpoint
            .versions_of::<StageVersions>(batch_id)
            .await?
        else {
            return Ok((Vec::new(), false));
        };
        let mut put_back = Vec::new();
        for index in 0..self.stages.len() {
            let stage = &self.stages[index];
            let Some(version) = logged.get(&stage.name).cloned() else {
                continue;
            };
            if version == stage.version {
                continue;
            }
            let object = version.object_name();
            let wasm = self.checkpoint.plugin(&object).await?;
            let (engine, name, limits) = (self.engine.clone(), stage.name.clone(), stage.limits);
            let config = version.config_json.clone();
            let (component, instance) = off_runtime(move || {
                let component = engine.load_transform_wasm(&name, Path::new(&object), wasm)?;
                let instance = component.instantiate(&config, limits)?;
                Ok((std::sync::Arc::new(component), instance))
            })
            .await?;
            let stage = &mut self.stages[index];
            let current = stage.replace(PluginVersion {
                instance,
                version,
                component,
            });
            self.events.push(format!(
                "stage `{}`: batch {batch_id} replayed with {}, the version that first ran it",
                stage.name,
                short(&stage.version.digest)
            ));
            put_back.push((index, current));
        }
        Ok((put_back, true))
    }
}
