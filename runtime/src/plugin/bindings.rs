//! Host bindings generated from the one WIT package in `wit/`, and the
//! per-instance state that implements the host imports.

use std::collections::BTreeMap;

use wasmtime::component::{Resource, ResourceTable};

use super::log_pipe::{MAX_LINE, RateLimit, truncate};
use crate::config::StateTimeout;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "transform-plugin",
    path: "../wit",
    // Arguments are lowered straight from borrowed Arrow buffers (types
    // `*Param<'a>`); results are owned (`*Result`).
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::weir::plugin::types::{ErrorKind, PluginError};

/// Bindings of the `stateful-plugin` world. The interfaces it shares with
/// `transform-plugin` are the same Rust types, so one [`PluginState`]
/// implements the host side of both.
pub mod stateful {
    wasmtime::component::bindgen!({
        world: "stateful-plugin",
        path: "../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "weir:plugin/types": super::weir::plugin::types,
            "weir:plugin/host": super::weir::plugin::host,
            "weir:plugin/keyed-state.group-state": super::GroupState,
        },
        // Resource lookups in the table can fail: let those calls trap.
        imports: { default: trappable },
    });
}

/// Bindings of the `batch-sink-plugin` world (foreachBatch), sharing types
/// and host imports with the other worlds.
pub mod batch_sink {
    wasmtime::component::bindgen!({
        world: "batch-sink-plugin",
        path: "../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "weir:plugin/types": super::weir::plugin::types,
            "weir:plugin/host": super::weir::plugin::host,
        },
    });
}

/// The host side of a `group-state` resource: one key's state during one
/// `process-group` call. The host reads it back after the call.
#[derive(Debug, Clone)]
pub struct GroupState {
    /// The state bytes (after the call: as the plugin left them).
    pub value: Option<Vec<u8>>,
    /// Whether the plugin called `update` or `remove`.
    pub changed: bool,
    /// The timeout the plugin set in this call (µs), if any.
    pub timeout_us: Option<i64>,
    /// Which timeouts the stage allows.
    pub timeout_kind: StateTimeout,
    /// Whether this call is a timeout.
    pub timed_out: bool,
    /// The batch's watermark (µs).
    pub watermark_us: Option<i64>,
    /// The batch's processing time (µs).
    pub batch_time_us: i64,
}

/// Caps what one plugin instance may hold, counted together: every linear
/// memory plus every table (at [`TABLE_ELEMENT_BYTES`] an element) within
/// `memory_limit`, and few instances, memories and tables (a component is a
/// handful of core instances; thousands would be an attack on the host's
/// bookkeeping). Remembers when it refused growth, so the resulting trap is
/// reported as running out of memory.
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Whether a growth request was refused.
    pub refused: bool,
    /// Linear memory the instance holds now, in bytes (all memories).
    pub bytes: usize,
    /// Table elements the instance holds now (all tables).
    table_elements: usize,
}

/// What one table element costs against the memory budget (a pointer and
/// its type information in wasmtime's tables).
pub const TABLE_ELEMENT_BYTES: usize = 16;
/// Core instances one plugin may create.
pub const MAX_INSTANCES: usize = 100;
/// Linear memories one plugin may create.
pub const MAX_MEMORIES: usize = 16;
/// Tables one plugin may create.
pub const MAX_TABLES: usize = 100;

impl MemoryLimiter {
    /// A budget of `max_bytes` for memories and tables together.
    pub fn new(max_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            refused: false,
            bytes: 0,
            table_elements: 0,
        }
    }

    /// Whether `memory` bytes and `elements` table elements (`None`: past
    /// `usize`) fit the budget together; a refusal is remembered.
    fn fits(&mut self, memory: Option<usize>, elements: Option<usize>) -> bool {
        let total = memory
            .zip(elements)
            .and_then(|(m, e)| e.checked_mul(TABLE_ELEMENT_BYTES)?.checked_add(m));
        let fits = total.is_some_and(|t| t <= self.max_bytes);
        self.refused |= !fits;
        fits
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for a memory's initial size too (`current` = 0).
        let memory = self.bytes.saturating_sub(current).checked_add(desired);
        let fits = self.fits(memory, Some(self.table_elements));
        if let (true, Some(memory)) = (fits, memory) {
            self.bytes = memory;
        }
        Ok(fits)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = self
            .table_elements
            .saturating_sub(current)
            .checked_add(desired);
        let fits = self.fits(Some(self.bytes), elements);
        if let (true, Some(elements)) = (fits, elements) {
            self.table_elements = elements;
        }
        Ok(fits)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Distinct counters one plugin instance may report.
pub const MAX_COUNTERS: usize = 64;
/// Longest counter name, in bytes.
pub const MAX_COUNTER_NAME: usize = 64;
/// Fields kept per `log` record, and the longest key or value.
const MAX_LOG_FIELDS: usize = 16;
const MAX_FIELD_BYTES: usize = 256;

/// Everything one plugin instance's store holds.
pub struct PluginState {
    /// Stage name, used to tag the plugin's log records.
    pub stage: String,
    /// The memory cap.
    pub limiter: MemoryLimiter,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: super::log_pipe::LogPipe,
    /// Counters the plugin reported with `counter-add`.
    pub counters: BTreeMap<String, i64>,
    counters_refused: bool,
    log_rate: RateLimit,
    /// A foreachBatch plugin's outputs and the rows queued for them.
    pub outputs: OutputQueue,
    /// What the plugin's clocks and random streams read (set per batch).
    pub env: super::replayable::EnvHandle,
}

/// Checks one output applies to rows before it accepts them.
pub type OutputCheck = Box<dyn Fn(&arrow::record_batch::RecordBatch) -> Result<(), String> + Send>;

/// The outputs a foreachBatch plugin may write to, and what it wrote in
/// the running call.
#[derive(Default)]
pub struct OutputQueue {
    /// Declared outputs, each with the check its rows must pass.
    pub declared: BTreeMap<String, OutputCheck>,
    /// Rows queued per output in the running call.
    pub queued: BTreeMap<String, Vec<arrow::record_batch::RecordBatch>>,
    /// The first write the host refused in the running call: the epoch
    /// fails even if the plugin ignored the refusal.
    pub refused: Option<String>,
    /// What the running call may still queue, in output cost (the stage's
    /// `output_limit` for the whole call, see [`super::output_cost`]).
    pub budget: u64,
}

impl PluginState {
    /// State with no ambient capabilities: no files, network, environment or
    /// arguments; stdout and stderr go to the host log, rate-limited (the
    /// end of stderr is also kept to explain traps).
    pub fn new(stage: &str, max_memory_bytes: u64) -> PluginState {
        let stderr = super::log_pipe::LogPipe::new(stage, "stderr");
        let env = super::replayable::EnvHandle::new(stage);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(super::log_pipe::LogPipe::new(stage, "stdout"))
            .stderr(stderr.clone());
        env.install(&mut wasi, stage);
        let wasi = wasi.build();
        PluginState {
            stage: stage.to_string(),
            limiter: MemoryLimiter::new(max_memory_bytes),
            wasi,
            table: ResourceTable::new(),
            stderr,
            counters: BTreeMap::new(),
            counters_refused: false,
            log_rate: RateLimit::default(),
            outputs: OutputQueue::default(),
            env,
        }
    }

    /// The end of what the plugin wrote to stderr (its panic message,
    /// after a trap).
    pub fn stderr_text(&self) -> String {
        self.stderr.tail_text()
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
        // The plugin controls every byte here: rate, size and field count
        // are bounded as for its stdout.
        let stage = self.stage.as_str();
        if !self.log_rate.admit(stage, format_args!("log records")) {
            return;
        }
        let message = truncate(message, MAX_LINE);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| (truncate(k, MAX_FIELD_BYTES), truncate(v, MAX_FIELD_BYTES)))
            .collect();
        match level {
            Level::Trace => tracing::trace!(plugin = stage, ?fields, "{message}"),
            Level::Debug => tracing::debug!(plugin = stage, ?fields, "{message}"),
            Level::Info => tracing::info!(plugin = stage, ?fields, "{message}"),
            Level::Warn => tracing::warn!(plugin = stage, ?fields, "{message}"),
            Level::Error => tracing::error!(plugin = stage, ?fields, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: i64) {
        // Names and their number are bounded (they reach metrics labels and
        // progress records); sums saturate instead of overflowing.
        let known = self.counters.contains_key(&name);
        if !known && (name.len() > MAX_COUNTER_NAME || self.counters.len() >= MAX_COUNTERS) {
            if !self.counters_refused {
                self.counters_refused = true;
                tracing::warn!(
                    plugin = self.stage,
                    "counter ignored: at most {MAX_COUNTERS} counters, names of at most \
                     {MAX_COUNTER_NAME} bytes"
                );
            }
            return;
        }
        let sum = self.counters.entry(name).or_default();
        *sum = sum.saturating_add(delta);
    }
}

impl stateful::weir::plugin::keyed_state::Host for PluginState {}

impl stateful::weir::plugin::keyed_state::HostGroupState for PluginState {
    fn get(&mut self, this: Resource<GroupState>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.table.get(&this)?.value.clone())
    }

    fn update(&mut self, this: Resource<GroupState>, value: Vec<u8>) -> wasmtime::Result<()> {
        let state = self.table.get_mut(&this)?;
        state.value = Some(value);
        state.changed = true;
        Ok(())
    }

    fn remove(&mut self, this: Resource<GroupState>) -> wasmtime::Result<()> {
        let state = self.table.get_mut(&this)?;
        state.value = None;
        state.timeout_us = None;
        state.changed = true;
        Ok(())
    }

    fn set_timeout_timestamp(
        &mut self,
        this: Resource<GroupState>,
        at: i64,
    ) -> wasmtime::Result<Result<(), String>> {
        let state = self.table.get_mut(&this)?;
        if state.timeout_kind != StateTimeout::EventTime {
            return Ok(Err(format!(
                "set-timeout-timestamp needs state_timeout = \"event_time\" (the stage has {:?})",
                state.timeout_kind
            )));
        }
        if let Some(watermark) = state.watermark_us
            && at < watermark
        {
            return Ok(Err(format!(
                "timeout timestamp {at} is earlier than the current watermark {watermark}"
            )));
        }
        state.timeout_us = Some(at);
        Ok(Ok(()))
    }

    fn set_timeout_duration(
        &mut self,
        this: Resource<GroupState>,
        after: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        let state = self.table.get_mut(&this)?;
        if state.timeout_kind != StateTimeout::ProcessingTime {
            return Ok(Err(format!(
                "set-timeout-duration needs state_timeout = \"processing_time\" (the stage has {:?})",
                state.timeout_kind
            )));
        }
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        state.timeout_us = Some(state.batch_time_us.saturating_add(after));
        Ok(Ok(()))
    }

    fn has_timed_out(&mut self, this: Resource<GroupState>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.timed_out)
    }

    fn watermark(&mut self, this: Resource<GroupState>) -> wasmtime::Result<Option<i64>> {
        Ok(self.table.get(&this)?.watermark_us)
    }

    fn batch_time(&mut self, this: Resource<GroupState>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.batch_time_us)
    }

    fn drop(&mut self, _this: Resource<GroupState>) -> wasmtime::Result<()> {
        // The host created the resource and takes it back after the call.
        Ok(())
    }
}

impl PluginState {
    /// Lends `state` to the plugin as a `group-state` resource.
    pub fn lend_group_state(
        &mut self,
        state: GroupState,
    ) -> wasmtime::Result<Resource<GroupState>> {
        Ok(self.table.push(state)?)
    }

    /// Takes the `group-state` resource back after the call.
    pub fn take_group_state(
        &mut self,
        handle: Resource<GroupState>,
    ) -> wasmtime::Result<GroupState> {
        Ok(self.table.delete(handle)?)
    }
}

impl batch_sink::weir::plugin::outputs::Host for PluginState {
    fn write(
        &mut self,
        name: String,
        rows: weir::plugin::types::BatchResult,
    ) -> Result<(), String> {
        let result = self.queue_write(&name, rows);
        if let Err(reason) = &result {
            self.outputs.refused.get_or_insert_with(|| reason.clone());
        }
        result
    }
}

impl PluginState {
    fn queue_write(
        &mut self,
        name: &str,
        rows: weir::plugin::types::BatchResult,
    ) -> Result<(), String> {
        let Some(check) = self.outputs.declared.get(name) else {
            return Err(format!(
                "no output named `{name}`; the sink declares {:?}",
                self.outputs.declared.keys().collect::<Vec<_>>()
            ));
        };
        let batch = super::convert::batch_from_wit(rows)
            .map_err(|e| format!("rows for output `{name}` are invalid: {e}"))?;
        check(&batch).map_err(|e| format!("output `{name}`: {e}"))?;
        let cost = super::output_cost(std::slice::from_ref(&batch));
        self.outputs.budget = self.outputs.budget.checked_sub(cost).ok_or_else(|| {
            format!(
                "output `{name}`: this call's writes are over the stage's output limit \
                 ({cost} more bytes, counting one per row)"
            )
        })?;
        self.outputs
            .queued
            .entry(name.to_string())
            .or_default()
            .push(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        // Two memories of 400 KiB each fit; a third does not.
        assert!(limiter.memory_growing(0, 400 << 10, None).unwrap());
        assert!(limiter.memory_growing(0, 400 << 10, None).unwrap());
        assert!(!limiter.memory_growing(0, 400 << 10, None).unwrap());
        assert!(limiter.refused);
        assert_eq!(limiter.bytes, 800 << 10);
        // Growing one of them counts only the growth.
        assert!(limiter.memory_growing(400 << 10, 500 << 10, None).unwrap());
        // Tables take from the same budget: 1 MiB - 900 KiB = 124 KiB,
        // 7936 elements of 16 bytes.
        assert!(limiter.table_growing(0, 6_000, None).unwrap());
        assert!(!limiter.table_growing(6_000, 8_000, None).unwrap());
        assert!(limiter.table_growing(6_000, 7_936, None).unwrap());
        assert!(!limiter.memory_growing(500 << 10, 600 << 10, None).unwrap());
        // Sizes near usize::MAX cannot wrap around the check.
        assert!(!limiter.table_growing(0, usize::MAX, None).unwrap());
        assert!(!limiter.memory_growing(0, usize::MAX, None).unwrap());
        assert_eq!(limiter.instances(), MAX_INSTANCES);
    }
}
