//! Running plugins: WebAssembly components over Arrow batches.
//!
//! Small typed handles, as in wasmtime: one [`PluginEngine`] per process
//! (compiler settings, linker with the host imports); a [`TransformComponent`]
//! per plugin file (compiled once, linked once into an `InstancePre`); a
//! [`TransformInstance`] per stage (its own store, reused across batches).
//! Stateful functions have the same pair: [`StatefulComponent`] and
//! [`StatefulInstance`].

mod batch_sink;
mod bindings;
mod cache;
mod convert;
mod inspect;
mod log_pipe;
mod replayable;
mod stateful;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

use crate::config::PluginLimits;
use crate::error::{PluginFailure, Result, WeirError};
pub use batch_sink::{BatchSinkComponent, BatchSinkInstance};
use bindings::{ErrorKind, PluginError, PluginState, TransformPlugin, TransformPluginPre};
pub use bindings::{GroupState, OutputCheck};
pub use cache::{CacheOutcome, CompileCache};
pub use inspect::PluginInfo;
pub use replayable::BatchEnv;
pub use stateful::{GroupCall, StatefulComponent, StatefulInstance};

/// How a [`PluginEngine`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Per-call time limits through epoch interruption (on by default; off
    /// only to measure what they cost — a looping plugin then hangs).
    pub epoch_deadlines: bool,
    /// Wasmtime's pooling allocator: instance slots reserved up front, so
    /// instantiating is cheaper (memory limits up to 1 GiB per plugin).
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            epoch_deadlines: true,
            pooling: false,
        }
    }
}

/// The compiler and linker shared by all plugins of a process.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    /// Host imports of the `transform-plugin` world.
    linker: Arc<Linker<PluginState>>,
    /// Host imports of the `stateful-plugin` world.
    stateful_linker: Arc<Linker<PluginState>>,
    /// Host imports of the `batch-sink-plugin` world.
    batch_sink_linker: Arc<Linker<PluginState>>,
    /// Compiled components kept on disk across restarts, if enabled.
    cache: Option<CompileCache>,
}

impl PluginEngine {
    /// An engine with the host imports (`weir:plugin/host` and WASI
    /// without ambient capabilities) linked, and the compile cache
    /// [`CompileCache::from_env`] names.
    pub fn new() -> Result<PluginEngine> {
        PluginEngine::with_cache(CompileCache::from_env())
    }

    /// Like [`PluginEngine::new`], with `cache` (or none) for compiled
    /// components.
    pub fn with_cache(cache: Option<CompileCache>) -> Result<PluginEngine> {
        PluginEngine::with_options(cache, EngineOptions::default())
    }

    /// An engine with `options` (for benchmarks and hosts that tune
    /// instantiation), and `cache` for compiled components.
    pub fn with_options(
        cache: Option<CompileCache>,
        options: EngineOptions,
    ) -> Result<PluginEngine> {
        let mut config = Config::new();
        // Async component calls are not used; leaving concurrency support on
        // makes every host->guest call several times slower (wasmtime #12836).
        config.concurrency_support(false);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        // Time limits: a ticker bumps the epoch; each call gets a deadline
        // in ticks. The check compiled into loops is a load and a compare.
        config.epoch_interruption(options.epoch_deadlines);
        if options.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_component_instances(256)
                .total_core_instances(1024)
                .total_memories(512)
                .total_tables(512)
                .max_memories_per_component(4)
                .max_memory_size(1 << 30);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(internal)?;
        if options.epoch_deadlines {
            start_epoch_ticker(&engine)?;
        }
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(internal)?;
        let mut stateful_linker = linker.clone();
        let mut batch_sink_linker = linker.clone();
        bindings::batch_sink::BatchSinkPlugin::add_to_linker::<_, HasSelf<PluginState>>(
            &mut batch_sink_linker,
            |state| state,
        )
        .map_err(internal)?;
        TransformPlugin::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |state| state)
            .map_err(internal)?;
        bindings::stateful::StatefulPlugin::add_to_linker::<_, HasSelf<PluginState>>(
            &mut stateful_linker,
            |state| state,
        )
        .map_err(internal)?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            stateful_linker: Arc::new(stateful_linker),
            batch_sink_linker: Arc::new(batch_sink_linker),
            cache,
        })
    }

    /// Compiles the component at `path` for stage `stage` and checks it
    /// implements the `transform-plugin` world.
    pub fn load_transform(&self, stage: &str, path: &Path) -> Result<TransformComponent> {
        let wasm = read_wasm(stage, path)?;
        self.load_transform_wasm(stage, path, wasm)
    }

    /// Like [`PluginEngine::load_transform`], for component bytes already
    /// read (`origin` names them in errors).
    pub fn load_transform_wasm(
        &self,
        stage: &str,
        origin: &Path,
        wasm: Vec<u8>,
    ) -> Result<TransformComponent> {
        if !wasm.starts_with(b"\0asm") {
            return Err(load_error(
                stage,
                origin,
                "it is not a WebAssembly file".into(),
            ));
        }
        let component = self.compile_wasm(stage, origin, &wasm)?;
        let pre = self.link(
            &self.linker,
            stage,
            origin,
            &component,
            "transform-plugin",
            TransformPluginPre::new,
        )?;
        Ok(TransformComponent {
            engine: self.engine.clone(),
            stage: stage.to_string(),
            pre,
            digest: digest(&wasm),
            wasm: Arc::new(wasm),
        })
    }
}

impl PluginEngine {
    /// Links a compiled component and checks it exports what `world` needs.
    fn link<P>(
        &self,
        linker: &Linker<PluginState>,
        stage: &str,
        path: &Path,
        component: &Component,
        world: &str,
        typed: impl FnOnce(wasmtime::component::InstancePre<PluginState>) -> wasmtime::Result<P>,
    ) -> Result<P> {
        let mismatch = || inspect::world_mismatch(&self.engine, component, world);
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| load_error(stage, path, mismatch().unwrap_or_else(|| format!("{e:#}"))))?;
        typed(pre).map_err(|e| {
            let detail = mismatch().map_or_else(|| format!("{e:#}"), |m| format!("{m}; {e:#}"));
            load_error(
                stage,
                path,
                format!("it does not implement the weir:plugin {world} world: {detail}"),
            )
        })
    }
}

impl PluginEngine {
    /// Component bytes `wasm` (from `path`), compiled or loaded from the cache.
    fn compile_wasm(&self, stage: &str, path: &Path, wasm: &[u8]) -> Result<Component> {
        let started = std::time::Instant::now();
        let (component, outcome) = match &self.cache {
            Some(cache) => cache.component(&self.engine, wasm),
            None => Component::new(&self.engine, wasm).map(|c| (c, CacheOutcome::Miss)),
        }
        .map_err(|e| load_error(stage, path, format!("{e:#}")))?;
        let how = if outcome == CacheOutcome::Hit {
            "loaded compiled from cache"
        } else {
            "compiled"
        };
        tracing::info!(
            "plugin stage `{stage}`: {how} in {:.1} ms ({} KiB component)",
            started.elapsed().as_secs_f64() * 1e3,
            wasm.len() / 1024
        );
        Ok(component)
    }
}

/// The bytes of the component at `path`, refusing files that are not
/// WebAssembly at all with a short reason.
fn read_wasm(stage: &str, path: &Path) -> Result<Vec<u8>> {
    let wasm = std::fs::read(path).map_err(|e| load_error(stage, path, e.to_string()))?;
    if !wasm.starts_with(b"\0asm") {
        return Err(load_error(
            stage,
            path,
            "it is not a WebAssembly file (no `\\0asm` header); point `plugin` at a .wasm component".into(),
        ));
    }
    Ok(wasm)
}

fn load_error(stage: &str, path: &Path, reason: String) -> WeirError {
    WeirError::Plugin {
        stage: stage.to_string(),
        failure: PluginFailure::Load {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// A store for one instance of stage `stage`, with its limits applied.
fn new_store(engine: &Engine, stage: &str, limits: PluginLimits) -> Store<PluginState> {
    let mut store = Store::new(engine, PluginState::new(stage, limits.memory_bytes));
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(deadline_ticks(limits.timeout));
    store
}

/// How often the engine's epoch advances: the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| WeirError::Internal(format!("cannot start the epoch ticker: {e}")))
}

/// A compiled, linked transform plugin, ready to instantiate cheaply.
pub struct TransformComponent {
    engine: Engine,
    stage: String,
    pre: TransformPluginPre<PluginState>,
    /// `sha256:<hex>` of the component bytes.
    digest: String,
    wasm: Arc<Vec<u8>>,
}

/// `sha256:<hex>` of component bytes: a plugin version's name.
pub fn digest(wasm: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(wasm);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl TransformComponent {
    /// The component's digest (`sha256:<hex>`), naming this version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component bytes (kept so a checkpoint can store this version).
    pub fn wasm(&self) -> &Arc<Vec<u8>> {
        &self.wasm
    }

    /// Instantiates the plugin under `limits` and calls its `init` with
    /// `config_json`.
    pub fn instantiate(
        &self,
        config_json: &str,
        limits: PluginLimits,
    ) -> Result<TransformInstance> {
        let store = new_store(&self.engine, &self.stage, limits);
        let (store, bindings) = instantiate_and_init(
            &self.stage,
            store,
            limits,
            |store| self.pre.instantiate(store),
            |bindings: &TransformPlugin, store| {
                bindings
                    .weir_plugin_transform()
                    .call_init(store, config_json)
            },
        )?;
        Ok(TransformInstance {
            stage: self.stage.clone(),
            store,
            bindings,
            limits,
        })
    }
}

/// Instantiates a plugin in `store` and calls its `init`, keeping guest
/// errors apart from traps and limits.
fn instantiate_and_init<B>(
    stage: &str,
    mut store: Store<PluginState>,
    limits: PluginLimits,
    instantiate: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<B>,
    init: impl FnOnce(&B, &mut Store<PluginState>) -> wasmtime::Result<Result<(), PluginError>>,
) -> Result<(Store<PluginState>, B)> {
    let bindings =
        instantiate(&mut store).map_err(|e| plugin_error(stage, trap(&store, limits, e)))?;
    store.set_epoch_deadline(deadline_ticks(limits.timeout));
    match init(&bindings, &mut store) {
        Ok(Ok(())) => Ok((store, bindings)),
        Ok(Err(e)) => Err(plugin_error(stage, guest(e))),
        Err(e) => Err(plugin_error(stage, trap(&store, limits, e))),
    }
}

/// One live plugin instance of a stage; batches go through it in order.
pub struct TransformInstance {
    stage: String,
    store: Store<PluginState>,
    bindings: TransformPlugin,
    limits: PluginLimits,
}

impl TransformInstance {
    /// Runs one batch through the plugin and validates what comes back.
    /// After a trap the instance must not be used again.
    pub fn process(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let transform = self.bindings.weir_plugin_transform();
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout));
        let store = &mut self.store;
        let called = convert::lend_batch(batch, |input| transform.call_process(&mut *store, input))
            .map_err(|reason| WeirError::Schema {
                context: format!("input of stage `{}`", self.stage),
                reason,
            })?;
        let outputs = match called {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => return Err(plugin_error(&self.stage, guest(e))),
            Err(e) => return Err(plugin_error(&self.stage, trap(&self.store, self.limits, e))),
        };
        let batches: Vec<RecordBatch> = outputs
            .into_iter()
            .map(|out| {
                convert::batch_from_wit(out).map_err(|reason| {
                    plugin_error(&self.stage, PluginFailure::InvalidOutput { reason })
                })
            })
            .collect::<Result<_>>()?;
        check_output(&self.stage, self.limits, &batches)?;
        Ok(batches)
    }

    /// Counters the plugin reported through `counter-add`.
    pub fn counters(&self) -> &std::collections::BTreeMap<String, i64> {
        &self.store.data().counters
    }

    /// Starts a batch: the plugin's clocks and random stream read `env`'s
    /// values from now on.
    pub fn begin_batch(&mut self, env: BatchEnv) {
        self.store.data().env.begin(env);
    }

    /// Linear memory the instance holds, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.bytes as u64
    }
}

/// What output costs against a stage's `output_limit`: its Arrow memory
/// plus one byte per row, so that a batch of no columns and fifty million
/// rows (no buffers at all) is not free.
pub(crate) fn output_cost(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .map(|b| (b.get_array_memory_size() as u64).saturating_add(b.num_rows() as u64))
        .fold(0, u64::saturating_add)
}

/// Refuses one call's output over the stage's `output_limit`.
fn check_output(stage: &str, limits: PluginLimits, batches: &[RecordBatch]) -> Result<()> {
    let bytes = output_cost(batches);
    if bytes > limits.output_bytes {
        return Err(plugin_error(
            stage,
            PluginFailure::OutputTooLarge {
                bytes,
                limit_bytes: limits.output_bytes,
            },
        ));
    }
    Ok(())
}

fn plugin_error(stage: &str, failure: PluginFailure) -> WeirError {
    WeirError::Plugin {
        stage: stage.to_string(),
        failure,
    }
}

fn guest(e: PluginError) -> PluginFailure {
    let kind = match e.kind {
        ErrorKind::Config => "config",
        ErrorKind::Input => "input",
        ErrorKind::Internal => "internal",
    };
    PluginFailure::Guest {
        kind,
        message: e.message,
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// Classifies a failed call: time limit, memory limit, or another trap
/// (described with what the plugin printed — its panic message — and the
/// Wasm backtrace).
fn trap(store: &Store<PluginState>, limits: PluginLimits, e: wasmtime::Error) -> PluginFailure {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return PluginFailure::Timeout {
            limit: limits.timeout,
        };
    }
    if store.data().limiter.refused {
        return PluginFailure::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        };
    }
    let printed = store.data().stderr_text();
    let mut message = format!("{e:?}");
    if !printed.is_empty() {
        message = format!("{printed}\n{message}");
    }
    PluginFailure::Trap { message }
}

fn internal(e: wasmtime::Error) -> WeirError {
    WeirError::Internal(format!("plugin engine: {e:#}"))
}
