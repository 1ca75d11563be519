//! Host bindings generated from the one WIT package in `wit/`, and the
//! per-instance state that implements the host imports.

use std::collections::BTreeMap;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "transform-plugin",
    path: "../wit",
    // Arguments are lowered straight from borrowed Arrow buffers (types
    // `*Param<'a>`); results are owned (`*Result`).
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::weir::plugin::types::{ErrorKind, PluginError};

/// Bytes of plugin stderr kept to explain a trap (panic messages land there).
const STDERR_CAPTURE: usize = 64 * 1024;

/// Caps an instance's linear memory and remembers when it refused growth,
/// so the resulting trap can be reported as running out of memory.
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Whether a growth request was refused.
    pub refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.refused |= desired > self.max_bytes;
        Ok(desired <= self.max_bytes)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Everything one plugin instance's store holds.
pub struct PluginState {
    /// Stage name, used to tag the plugin's log records.
    pub stage: String,
    /// The memory cap.
    pub limiter: MemoryLimiter,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    /// Counters the plugin reported with `counter-add`.
    pub counters: BTreeMap<String, i64>,
}

impl PluginState {
    /// State with no ambient capabilities: no files, network, environment or
    /// arguments; stdout is discarded and stderr kept to explain traps.
    pub fn new(stage: &str, max_memory_bytes: u64) -> PluginState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        PluginState {
            stage: stage.to_string(),
            limiter: MemoryLimiter {
                max_bytes: usize::try_from(max_memory_bytes).unwrap_or(usize::MAX),
                refused: false,
            },
            wasi,
            table: ResourceTable::new(),
            stderr,
            counters: BTreeMap::new(),
        }
    }

    /// What the plugin wrote to stderr so far (its panic message, after a trap).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl weir::plugin::types::Host for PluginState {}

impl weir::plugin::host::Host for PluginState {
    fn log(
        &mut self,
        level: weir::plugin::host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        use self::weir::plugin::host::Level;
        let stage = self.stage.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin = stage, ?fields, "{message}"),
            Level::Debug => tracing::debug!(plugin = stage, ?fields, "{message}"),
            Level::Info => tracing::info!(plugin = stage, ?fields, "{message}"),
            Level::Warn => tracing::warn!(plugin = stage, ?fields, "{message}"),
            Level::Error => tracing::error!(plugin = stage, ?fields, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: i64) {
        *self.counters.entry(name).or_default() += delta;
    }
}
