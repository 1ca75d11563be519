//! `weir serve`: one long-running host for many tenants' queries.
//!
//! Each query lives in `<state dir>/tenants/<tenant>/<name>/`: its
//! `pipeline.toml` (relative paths in it — the checkpoint, say — resolve
//! there, so every query has its own namespace), a `progress.jsonl` log
//! and, once stopped by an operator, a `stopped` marker. When the host
//! starts it resumes every query without the marker from its checkpoint.
//! The HTTP admin API over this is in [`api`].

pub mod access;
pub mod api;
pub mod console;
pub mod events;
pub mod local;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Confinement, Pipeline};
use crate::error::{Result, WeirError};
use crate::metrics::QueryMetrics;
use crate::plugin::PluginEngine;
use crate::query::{Query, QueryControl, QueryOutcome, SwapAccepted};
use crate::storage::write_file_durably;
use access::{Access, PolicyDefaults, TenantPolicy};
use events::{EventHub, EventKind, HostEvent};

/// How many progress events each query keeps for the API.
const RECENT_PROGRESS: usize = 100;

/// Settings of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where queries and their state live.
    pub state_dir: PathBuf,
    /// The operator's access file: tokens, tenants' quotas, connections
    /// (see [`access`]).
    pub access_file: Option<PathBuf>,
    /// At most this many queries may run per tenant (unless the access
    /// file says otherwise).
    pub max_queries_per_tenant: usize,
    /// At most this much plugin memory per tenant: the sum of the
    /// `memory_limit`s of its running queries' plugins (reserved, not
    /// measured, so a tenant can never take more).
    pub max_memory_per_tenant: Option<u64>,
}

/// The largest plugin upload any tenant may send.
pub const MAX_PLUGIN_UPLOAD: usize = 256 << 20;

/// Why a host request was refused (mapped to HTTP statuses by [`api`]).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The request is wrong (a bad pipeline, an unknown stage, ...).
    #[error("{0}")]
    Invalid(String),
    /// No such query.
    #[error("no query {0}")]
    NotFound(String),
    /// A query of that name runs already.
    #[error("query {0} is running already")]
    Conflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The tenant's quota is used up.
    #[error("tenant {tenant} is at its quota: {reason}")]
    Quota {
        /// The tenant.
        tenant: String,
        /// Which quota, and how much is used.
        reason: String,
    },
    /// Anything else.
    #[error(transparent)]
    Weir(#[from] WeirError),
}

/// A query's state as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "error")]
pub enum Status {
    /// Running batches.
    Running,
    /// Stopped by an operator (or by the host shutting down).
    Stopped,
    /// A draining trigger processed all input.
    Finished,
    /// Failed with this error; other queries go on.
    Failed(String),
}

/// A query in the API's lists.
#[derive(Debug, Clone, Serialize)]
pub struct QueryInfo {
    /// `<tenant>/<name>`.
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// Pipeline name.
    pub name: String,
    /// State.
    pub status: Status,
    /// Batches committed since the host started it.
    pub batches: u64,
    /// Transform stages (names for swaps).
    pub stages: Vec<String>,
    /// Rows its stages quarantined since the host started it.
    pub quarantined_rows: u64,
    /// The latest shadow run's report, if one ran.
    pub shadow: Option<crate::query::ShadowReport>,
}

struct Running {
    tenant: String,
    name: String,
    /// The pipeline as checked when it started (for its plan).
    pipeline: Arc<Pipeline>,
    /// Plugin memory the query may use (the sum of its memory limits).
    memory_reserved: u64,
    status: Mutex<Status>,
    stop: watch::Sender<bool>,
    control: QueryControl,
    progress: Mutex<VecDeque<Value>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A lock whose holder panicked still guards usable data here.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Running {
    fn is_running(&self) -> bool {
        *lock(&self.status) == Status::Running
    }

    fn info(&self) -> QueryInfo {
        let progress = lock(&self.progress);
        QueryInfo {
            id: format!("{}/{}", self.tenant, self.name),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            status: lock(&self.status).clone(),
            batches: progress
                .back()
                .map_or(0, |p| p["hostBatches"].as_u64().unwrap_or(0)),
            stages: self.control.stage_names(),
            quarantined_rows: progress
                .back()
                .map_or(0, |p| p["hostQuarantinedRows"].as_u64().unwrap_or(0)),
            shadow: self.control.shadow_report(),
        }
    }
}

/// A host running many queries on one runtime.
pub struct Host {
    config: HostConfig,
    access: Access,
    engine: PluginEngine,
    queries: Mutex<BTreeMap<String, Arc<Running>>>,
    /// Each tenant's share of the cores: (permits, the semaphore).
    cores: Mutex<BTreeMap<String, (usize, Arc<tokio::sync::Semaphore>)>>,
    metrics: Arc<QueryMetrics>,
    registry: Arc<Registry>,
    events: Arc<EventHub>,
}

impl Host {
    /// A host keeping its queries under `config.state_dir`.
    pub fn new(config: HostConfig, engine: PluginEngine) -> Result<Arc<Host>> {
        std::fs::create_dir_all(config.state_dir.join("tenants")).map_err(|source| {
            WeirError::Io {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        let access = Access::load(
            config.access_file.as_deref(),
            &config.state_dir,
            PolicyDefaults {
                max_queries: config.max_queries_per_tenant,
                max_memory: config.max_memory_per_tenant,
            },
        )?;
        let mut registry = Registry::default();
        let metrics = QueryMetrics::new(&mut registry);
        Ok(Arc::new(Host {
            access,
            config,
            engine,
            queries: Mutex::new(BTreeMap::new()),
            cores: Mutex::new(BTreeMap::new()),
            metrics: Arc::new(metrics),
            registry: Arc::new(registry),
            events: Arc::new(EventHub::default()),
        }))
    }

    /// The access rules: who a token is, what a tenant may do.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Every query's progress and state changes, as they happen.
    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// Tells listeners that `running`'s state is what it is now.
    fn announce_status(events: &EventHub, running: &Running) {
        let info = running.info();
        events.publish(HostEvent {
            id: info.id.clone(),
            tenant: info.tenant.clone(),
            kind: EventKind::Status,
            data: serde_json::to_value(&info).unwrap_or(Value::Null),
        });
    }

    /// What `tenant`'s pipelines may reach: its query directories, its
    /// uploaded plugins, its granted connections, its ceilings.
    fn confinement(&self, tenant: &str, policy: &TenantPolicy) -> Result<Confinement, HostError> {
        Ok(Confinement {
            plugins: self.plugins_dir(tenant)?,
            connections: policy.connections.clone(),
            ceilings: policy.ceilings,
        })
    }

    /// `<state>/plugins/<tenant>`: uploads, named by their SHA-256.
    fn plugins_dir(&self, tenant: &str) -> Result<PathBuf, HostError> {
        check_name("tenant", tenant)?;
        Ok(self.config.state_dir.join("plugins").join(tenant))
    }

    /// Stores an uploaded plugin component for `tenant`; returns its
    /// reference, `sha256:<hex>`, for pipelines and swaps.
    pub fn upload_plugin(&self, tenant: &str, wasm: &[u8]) -> Result<String, HostError> {
        let policy = self.access.policy(tenant);
        if wasm.len() as u64 > policy.max_plugin_bytes {
            return Err(HostError::Quota {
                tenant: tenant.to_string(),
                reason: format!(
                    "a plugin of {} bytes is over its {} bytes",
                    wasm.len(),
                    policy.max_plugin_bytes
                ),
            });
        }
        // A component starts `\0asm` then layer 1 (a core module has 0).
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" || wasm[6..8] != [1, 0] {
            return Err(HostError::Invalid(
                "not a WebAssembly component (build with `weir plugin build`)".into(),
            ));
        }
        let dir = self.plugins_dir(tenant)?;
        let reference = crate::plugin::digest(wasm);
        let hex = reference.trim_start_matches("sha256:");
        let file = dir.join(format!("{hex}.wasm"));
        if !file.exists() {
            let stored = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            if stored >= policy.max_plugins {
                return Err(HostError::Quota {
                    tenant: tenant.to_string(),
                    reason: format!("{stored} plugins uploaded (at most {})", policy.max_plugins),
                });
            }
            let io = |source| WeirError::Io {
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            write_file_durably(&file, wasm).map_err(io)?;
        }
        Ok(reference)
    }

    /// The Prometheus registry of all queries.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Starts every stored query that was not stopped by an operator;
    /// returns how many. A query that cannot start is reported as failed.
    pub fn resume(self: &Arc<Self>) -> Result<usize> {
        let mut started = 0;
        for (tenant, name) in self.stored()? {
            let dir = match self.query_dir(&tenant, &name) {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::warn!(tenant, name, "not a query directory: {e}");
                    continue;
                }
            };
            if dir.join("stopped").exists() {
                continue;
            }
            match self.start(&tenant, &name) {
                Ok(()) => started += 1,
                Err(e) => tracing::warn!(tenant, name, "cannot resume query: {e}"),
            }
        }
        Ok(started)
    }

    fn stored(&self) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let tenants = self.config.state_dir.join("tenants");
        let io = |path: &Path, source| WeirError::Io {
            path: path.to_path_buf(),
            source,
        };
        for tenant in std::fs::read_dir(&tenants).map_err(|e| io(&tenants, e))? {
            let tenant = tenant.map_err(|e| io(&tenants, e))?;
            let Ok(queries) = std::fs::read_dir(tenant.path()) else {
                continue;
            };
            for query in queries.flatten() {
                if query.path().join("pipeline.toml").is_file() {
                    found.push((
                        tenant.file_name().to_string_lossy().into_owned(),
                        query.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The one place a tenant and a query name become a path: both are
    /// checked here, so no request (`..`, `/`, encoded or not) and no
    /// stray directory can point outside `<state-dir>/tenants`.
    fn query_dir(&self, tenant: &str, name: &str) -> Result<PathBuf, HostError> {
        check_name("tenant", tenant)?;
        check_name("query name", name)?;
        Ok(self
            .config
            .state_dir
            .join("tenants")
            .join(tenant)
            .join(name))
    }

    /// Checks and stores pipeline `text` for `tenant`, then starts it.
    pub fn submit(self: &Arc<Self>, tenant: &str, text: &str) -> Result<QueryInfo, HostError> {
        let name = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("name").and_then(|n| n.as_str().map(str::to_string)))
            .ok_or_else(|| HostError::Invalid("the pipeline needs a `name`".into()))?;
        let dir = self.query_dir(tenant, &name)?;
        let id = format!("{tenant}/{name}");
        if self.running(&id).is_some() {
            return Err(HostError::Conflict(id));
        }
        let io = |source| WeirError::Io {
            path: dir.clone(),
            source,
        };
        // Checked as if where it will live (relative paths resolve there)
        // before anything is stored.
        let confinement = self.confinement(tenant, &self.access.policy(tenant))?;
        if let Err(e) = Pipeline::parse_confined(text, "pipeline.toml", &dir, &confinement) {
            return Err(HostError::Invalid(e.to_string()));
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        write_file_durably(&dir.join("pipeline.toml"), text.as_bytes()).map_err(io)?;
        let _ = std::fs::remove_file(dir.join("stopped"));
        if let Err(e) = self.start(tenant, &name) {
            // Stored but not running (a quota, say): `weir start` later.
            let _ = write_file_durably(&dir.join("stopped"), b"");
            return Err(e);
        }
        Ok(self.running(&id).map(|r| r.info()).expect("just started"))
    }

    fn running(&self, id: &str) -> Option<Arc<Running>> {
        lock(&self.queries)
            .get(id)
            .cloned()
            .filter(|r| r.is_running())
    }

    /// Starts stored query `<tenant>/<name>`.
    fn start(self: &Arc<Self>, tenant: &str, name: &str) -> Result<(), HostError> {
        let id = format!("{tenant}/{name}");
        let dir = self.query_dir(tenant, name)?;
        let file = dir.join("pipeline.toml");
        let text = std::fs::read_to_string(&file).map_err(|source| WeirError::Io {
            path: file.clone(),
            source,
        })?;
        // Checked again with today's grants: a revoked connection or a
        // lowered ceiling holds on restart too.
        let policy = self.access.policy(tenant);
        let confinement = self.confinement(tenant, &policy)?;
        let mut pipeline = Pipeline::parse_confined(&text, "pipeline.toml", &dir, &confinement)
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        // A tenant's batches run on at most its share of the cores: so do
        // the tasks of one batch.
        pipeline.parallelism.tasks = pipeline.parallelism.tasks.clamp(1, policy.max_cores.max(1));
        let memory_reserved = plugin_memory(&pipeline);
        let (running_for_tenant, memory_for_tenant) = lock(&self.queries)
            .values()
            .filter(|r| r.tenant == tenant && r.is_running())
            .fold((0, 0), |(n, bytes), r| (n + 1, bytes + r.memory_reserved));
        if running_for_tenant >= policy.max_queries {
            return Err(HostError::Quota {
                tenant: tenant.to_string(),
                reason: format!(
                    "{running_for_tenant} running queries (at most {})",
                    policy.max_queries
                ),
            });
        }
        if let Some(max) = policy.max_memory
            && memory_for_tenant + memory_reserved > max
        {
            return Err(HostError::Quota {
                tenant: tenant.to_string(),
                reason: format!(
                    "its running queries' plugins may use {memory_for_tenant} bytes and this one \
                     {memory_reserved} more ({} an instance of each transform and stateful \
                     function), over its {max} bytes (lower the stages' memory_limit, or the \
                     parallelism)",
                    match pipeline.parallelism.tasks {
                        1 => "its one task runs".to_string(),
                        n => format!("each of its {n} tasks runs"),
                    }
                ),
            });
        }
        let (stop, stop_rx) = watch::channel(false);
        let checked = Arc::new(pipeline.clone());
        let mut query = Query::new(pipeline, self.engine.clone())
            .with_stop_signal(stop_rx)
            .with_cores(self.tenant_cores(tenant, policy.max_cores));
        let control = query.control();
        let running = Arc::new(Running {
            tenant: tenant.to_string(),
            name: name.to_string(),
            pipeline: checked,
            memory_reserved,
            status: Mutex::new(Status::Running),
            stop,
            control,
            progress: Mutex::new(VecDeque::new()),
            task: Mutex::new(None),
        });
        let log_path = dir.join("progress.jsonl");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| WeirError::Io {
                path: log_path.clone(),
                source,
            })?;
        let (metrics, label, recent) = (self.metrics.clone(), id.clone(), running.clone());
        let (events, owner) = (self.events.clone(), tenant.to_string());
        let (mut host_batches, mut host_quarantined) = (0u64, 0u64);
        let query = query.on_progress(move |p| {
            host_batches += 1;
            host_quarantined += p.quarantined_rows;
            metrics.observe(&label, p);
            let mut json = p.to_json();
            json["id"] = label.clone().into();
            json["hostBatches"] = host_batches.into();
            json["hostQuarantinedRows"] = host_quarantined.into();
            if let Err(e) = writeln!(log, "{json}") {
                tracing::warn!("cannot write the progress log: {e}");
            }
            let mut progress = lock(&recent.progress);
            if progress.len() == RECENT_PROGRESS {
                progress.pop_front();
            }
            progress.push_back(json.clone());
            drop(progress);
            events.publish(HostEvent {
                id: label.clone(),
                tenant: owner.clone(),
                kind: EventKind::Progress,
                data: json,
            });
        });
        let finished = running.clone();
        let events = self.events.clone();
        // A query's future is not `Send` (its state and plugin handles stay
        // on one thread): each is driven on a thread of the blocking pool,
        // sharing the runtime's timers and I/O.
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                // A panic (a bug, or input no check foresaw) fails this query
                // with its message; the status never stays `running`.
                let outcome = std::panic::AssertUnwindSafe(query.run())
                    .catch_unwind()
                    .await;
                let id = format!("{}/{}", finished.tenant, finished.name);
                let status = match outcome {
                    Ok(Ok(QueryOutcome::Drained { .. })) => Status::Finished,
                    Ok(Ok(QueryOutcome::Stopped { .. })) => Status::Stopped,
                    Ok(Err(e)) => {
                        tracing::warn!(query = %id, "query failed: {e}");
                        Status::Failed(e.to_string())
                    }
                    Err(panic) => {
                        let message = crate::error::panic_message(&*panic);
                        tracing::error!(query = %id, "query panicked: {message}");
                        Status::Failed(format!("internal error: the query panicked: {message}"))
                    }
                };
                *lock(&finished.status) = status;
                Host::announce_status(&events, &finished);
            })
        });
        *lock(&running.task) = Some(task);
        tracing::info!(query = id, "query started");
        lock(&self.queries).insert(id, running.clone());
        Host::announce_status(&self.events, &running);
        Ok(())
    }

    /// The semaphore that gives `tenant` `max_cores` batches at once
    /// (a new one when the operator changed the share).
    fn tenant_cores(&self, tenant: &str, max_cores: usize) -> Arc<tokio::sync::Semaphore> {
        let mut cores = lock(&self.cores);
        let entry = cores
            .entry(tenant.to_string())
            .or_insert_with(|| (max_cores, Arc::new(tokio::sync::Semaphore::new(max_cores))));
        if entry.0 != max_cores {
            *entry = (max_cores, Arc::new(tokio::sync::Semaphore::new(max_cores)));
        }
        entry.1.clone()
    }

    /// Stops a query after its current batch; it stays stopped across
    /// host restarts until started again.
    pub async fn stop(&self, id: &str) -> Result<QueryInfo, HostError> {
        let running = self.known(id)?;
        let dir = self.query_dir(&running.tenant, &running.name)?;
        write_file_durably(&dir.join("stopped"), b"").map_err(|source| WeirError::Io {
            path: dir.clone(),
            source,
        })?;
        let _ = running.stop.send(true);
        let task = lock(&running.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(running.info())
    }

    /// Starts a stopped (or finished, or failed) query again.
    pub fn restart(self: &Arc<Self>, id: &str) -> Result<QueryInfo, HostError> {
        let (tenant, name) = id
            .split_once('/')
            .ok_or_else(|| HostError::NotFound(id.to_string()))?;
        let dir = self.query_dir(tenant, name)?;
        if !dir.join("pipeline.toml").is_file() {
            return Err(HostError::NotFound(id.to_string()));
        }
        if self.running(id).is_some() {
            return Err(HostError::Conflict(id.to_string()));
        }
        let _ = std::fs::remove_file(dir.join("stopped"));
        self.start(tenant, name)?;
        Ok(self.known(id)?.info())
    }

    /// Swaps a stage's plugin in a running query (from its next batch).
    /// `plugin` is `sha256:<hex>` of one of the tenant's uploads.
    pub async fn swap(
        &self,
        id: &str,
        stage: &str,
        plugin: &str,
        config_json: Option<String>,
        shadow: Option<u64>,
    ) -> Result<SwapAccepted, HostError> {
        let running = self
            .running(id)
            .ok_or_else(|| HostError::NotFound(format!("{id} (running)")))?;
        if shadow.is_some() {
            self.check_shadow_memory(&running, stage)?;
        }
        let hex = crate::config::plugin_digest(plugin).ok_or_else(|| {
            HostError::Invalid(
                "name the plugin by the digest of an upload: \"sha256:<64 hex digits>\"".into(),
            )
        })?;
        let file = self
            .plugins_dir(&running.tenant)?
            .join(format!("{hex}.wasm"));
        if !file.is_file() {
            return Err(HostError::Invalid(format!(
                "no plugin {plugin} was uploaded by tenant {}",
                running.tenant
            )));
        }
        match shadow {
            Some(batches) => {
                running
                    .control
                    .shadow(stage, &file, config_json, batches)
                    .await
            }
            None => running.control.swap(stage, &file, config_json).await,
        }
        .map_err(|e| HostError::Invalid(e.to_string()))
    }

    /// A shadow holds a second instance of the stage while it runs: refused
    /// when the tenant's plugin memory quota has no room for it now.
    fn check_shadow_memory(&self, running: &Running, stage: &str) -> Result<(), HostError> {
        let policy = self.access.policy(&running.tenant);
        let Some(max) = policy.max_memory else {
            return Ok(());
        };
        let used: u64 = lock(&self.queries)
            .values()
            .filter(|r| r.tenant == running.tenant && r.is_running())
            .map(|r| r.memory_reserved)
            .sum();
        let extra = running.control.stage_memory(stage);
        if used + extra > max {
            return Err(HostError::Quota {
                tenant: running.tenant.clone(),
                reason: format!(
                    "its running queries' plugins may use {used} bytes and a shadow of `{stage}`                      {extra} more, over its {max} bytes"
                ),
            });
        }
        Ok(())
    }

    /// Every query the host knows, in id order.
    pub fn list(&self) -> Vec<QueryInfo> {
        lock(&self.queries).values().map(|r| r.info()).collect()
    }

    /// One query and its recent progress events (oldest first).
    pub fn get(&self, id: &str) -> Result<(QueryInfo, Vec<Value>), HostError> {
        let running = self.known(id)?;
        let progress = lock(&running.progress).iter().cloned().collect();
        Ok((running.info(), progress))
    }

    /// The physical plan of query `id` (as `weir explain` prints it), with
    /// the key groups its checkpoint recorded.
    pub async fn plan(&self, id: &str) -> Result<crate::query::Plan, HostError> {
        let pipeline = self.known(id)?.pipeline.clone();
        Ok(crate::query::Plan::of_checkpointed(&pipeline).await?)
    }

    fn known(&self, id: &str) -> Result<Arc<Running>, HostError> {
        lock(&self.queries)
            .get(id)
            .cloned()
            .ok_or_else(|| HostError::NotFound(id.to_string()))
    }

    /// Stops every query (after its current batch), as a host shutdown.
    pub async fn shutdown(&self) {
        self.events.close();
        let all: Vec<Arc<Running>> = lock(&self.queries).values().cloned().collect();
        for running in &all {
            let _ = running.stop.send(true);
        }
        for running in all {
            let task = lock(&running.task).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }
}

/// The memory a query's plugins may use: the sum of their limits.
fn plugin_memory(pipeline: &Pipeline) -> u64 {
    // Transform stages and stateful functions run an instance per task.
    let tasks = pipeline.parallelism.tasks as u64;
    let transforms = pipeline
        .transforms
        .iter()
        .map(|t| t.limits.memory_bytes * tasks);
    let stateful = pipeline
        .stateful
        .iter()
        .map(|s| s.stage.limits.memory_bytes * tasks);
    let sink = pipeline
        .sink
        .foreach_batch()
        .map(|f| f.stage.limits.memory_bytes);
    transforms.chain(stateful).chain(sink).sum()
}

/// Tenant and query names become directory names: keep them plain.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), HostError> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(HostError::Invalid(format!(
            "{what} {name:?} must be 1-64 letters, digits, '-' or '_'"
        )))
    }
}
