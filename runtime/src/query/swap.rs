//! Hot swap of transform plugins in a running query.
//!
//! [`QueryControl::swap`] compiles and instantiates the new component off
//! the query's path (a compile error or a failing `init` is the caller's
//! error; the query never notices), then hands it to the query, which puts
//! it in at the next batch boundary. Every version that runs is stored in
//! the checkpoint by digest (`plugins/<hex>.wasm`), and `versions/N`
//! records the versions batch N ran with whenever they change, so a replay
//! of batch N after a crash runs exactly the versions that first ran it.
//! If a new version fails its first batch, the stage rolls back to the one
//! before and the batch runs again with it (no row lost or doubled: nothing
//! of the batch reached the sink yet).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::shadow::{ShadowReport, SharedReport};
use crate::config::PluginLimits;
use crate::error::{Result, WeirError};
use crate::plugin::{PluginEngine, TransformComponent, TransformInstance};

/// Which plugin version a stage runs: its component and its `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageVersion {
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// The `config` handed to `init`, as JSON.
    pub config_json: String,
}

impl StageVersion {
    /// Where the checkpoint keeps this version's component.
    pub fn object_name(&self) -> String {
        format!("plugins/{}.wasm", self.digest.trim_start_matches("sha256:"))
    }
}

/// `versions/N`: the version of every stage, from batch N on.
pub type StageVersions = BTreeMap<String, StageVersion>;

/// A new version on its way into a stage.
pub(crate) struct SwapRequest {
    pub stage: String,
    pub component: Arc<TransformComponent>,
    pub instance: TransformInstance,
    pub config_json: String,
    /// Not a swap but a shadow run for this many batches, reported here.
    pub shadow: Option<(u64, SharedReport)>,
}

/// What a stage needs to know of itself for swaps.
#[derive(Clone)]
pub(crate) struct StageSettings {
    pub name: String,
    pub config_json: String,
    pub limits: PluginLimits,
}

/// A handle to swap a running query's plugins; cheap to clone.
#[derive(Clone)]
pub struct QueryControl {
    engine: PluginEngine,
    stages: Arc<Vec<StageSettings>>,
    requests: mpsc::UnboundedSender<SwapRequest>,
    /// The latest shadow run's report.
    shadow: SharedReport,
}

/// A swap the query accepted: it takes effect at the next batch boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapAccepted {
    /// The stage.
    pub stage: String,
    /// The new version.
    pub version: StageVersion,
}

impl QueryControl {
    pub(crate) fn new(
        engine: PluginEngine,
        stages: Vec<StageSettings>,
    ) -> (QueryControl, mpsc::UnboundedReceiver<SwapRequest>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        let control = QueryControl {
            engine,
            stages: Arc::new(stages),
            requests,
            shadow: SharedReport::default(),
        };
        (control, receiver)
    }

    /// The transform stages, in order.
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    /// Replaces stage `stage`'s plugin with the component at `plugin`
    /// (with `config_json`, or the stage's current `config`). Compiling,
    /// checking the world and `init` happen here; an error leaves the query
    /// untouched.
    pub async fn swap(
        &self,
        stage: &str,
        plugin: &Path,
        config_json: Option<String>,
    ) -> Result<SwapAccepted> {
        self.send(stage, plugin, config_json, None).await
    }

    /// Runs the component at `plugin` beside stage `stage`'s live version
    /// for the next `batches` batches with rows, comparing their outputs
    /// ([`QueryControl::shadow_report`]); the live output is untouched. A
    /// shadow started while another runs replaces it.
    pub async fn shadow(
        &self,
        stage: &str,
        plugin: &Path,
        config_json: Option<String>,
        batches: u64,
    ) -> Result<SwapAccepted> {
        let report = self.shadow.clone();
        self.send(stage, plugin, config_json, Some((batches.max(1), report)))
            .await
    }

    /// Stage `stage`'s memory limit (0 for an unknown stage).
    pub fn stage_memory(&self, stage: &str) -> u64 {
        self.stages
            .iter()
            .find(|s| s.name == stage)
            .map_or(0, |s| s.limits.memory_bytes)
    }

    /// The latest shadow run's report, if one ran.
    pub fn shadow_report(&self) -> Option<ShadowReport> {
        self.shadow.get()
    }

    async fn send(
        &self,
        stage: &str,
        plugin: &Path,
        config_json: Option<String>,
        shadow: Option<(u64, SharedReport)>,
    ) -> Result<SwapAccepted> {
        let settings = self
            .stages
            .iter()
            .find(|s| s.name == stage)
            .cloned()
            .ok_or_else(|| WeirError::Plugin {
                stage: stage.to_string(),
                failure: crate::error::PluginFailure::Load {
                    path: plugin.to_path_buf(),
                    reason: format!(
                        "the query has no transform stage `{stage}` (stages: {})",
                        self.stage_names().join(", ")
                    ),
                },
            })?;
        let engine = self.engine.clone();
        let plugin: PathBuf = plugin.to_path_buf();
        let config_json = config_json.unwrap_or(settings.config_json.clone());
        let (component, instance, config_json) = tokio::task::spawn_blocking(move || {
            let component = engine.load_transform(&settings.name, &plugin)?;
            let instance = component.instantiate(&config_json, settings.limits)?;
            Ok::<_, WeirError>((Arc::new(component), instance, config_json))
        })
        .await
        .map_err(|e| WeirError::Internal(format!("swap task failed: {e}")))??;
        let accepted = SwapAccepted {
            stage: stage.to_string(),
            version: StageVersion {
                digest: component.digest().to_string(),
                config_json: config_json.clone(),
            },
        };
        if let Some((batches, report)) = &shadow {
            // Until the query takes it in, the report says it is pending
            // (an earlier shadow's finished report must not answer for it).
            report.set(ShadowReport {
                stage: stage.to_string(),
                candidate: accepted.version.digest.clone(),
                candidate_config: config_json.clone(),
                batches_wanted: *batches,
                ..ShadowReport::default()
            });
        }
        self.requests
            .send(SwapRequest {
                stage: stage.to_string(),
                component,
                instance,
                config_json,
                shadow,
            })
            .map_err(|_| WeirError::Internal("the query has stopped".into()))?;
        Ok(accepted)
    }
}
