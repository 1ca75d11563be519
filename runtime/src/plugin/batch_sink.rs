//! foreachBatch plugins (`batch-sink-plugin` world): called once per epoch
//! with the batch's rows; they write through host outputs, which the host
//! queues and commits after the call.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::record_batch::RecordBatch;
use wasmtime::{Engine, Store};

use super::bindings::batch_sink::{BatchSinkPlugin, BatchSinkPluginPre};
use super::bindings::{OutputCheck, PluginState};
use super::{
    PluginEngine, convert, deadline_ticks, guest, instantiate_and_init, new_store, plugin_error,
    trap,
};
use crate::config::PluginLimits;
use crate::error::{PluginFailure, Result, WeirError};

impl PluginEngine {
    /// Compiles the component at `path` for stage `stage` and checks it
    /// implements the `batch-sink-plugin` world.
    pub fn load_batch_sink(&self, stage: &str, path: &Path) -> Result<BatchSinkComponent> {
        let wasm = super::read_wasm(stage, path)?;
        let component = self.compile_wasm(stage, path, &wasm)?;
        let pre = self.link(
            &self.batch_sink_linker,
            stage,
            path,
            &component,
            "batch-sink-plugin",
            BatchSinkPluginPre::new,
        )?;
        Ok(BatchSinkComponent {
            engine: self.engine.clone(),
            stage: stage.to_string(),
            pre,
            digest: super::digest(&wasm),
        })
    }
}

/// A compiled, linked foreachBatch plugin, ready to instantiate.
pub struct BatchSinkComponent {
    engine: Engine,
    stage: String,
    pre: BatchSinkPluginPre<PluginState>,
    /// `sha256:<hex>` of the component bytes.
    digest: String,
}

impl BatchSinkComponent {
    /// The component's digest (`sha256:<hex>`), naming this version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Instantiates the plugin under `limits` with its `outputs` (name and
    /// the check rows for it must pass) and calls `init` with `config_json`.
    pub fn instantiate(
        &self,
        config_json: &str,
        limits: PluginLimits,
        outputs: BTreeMap<String, OutputCheck>,
    ) -> Result<BatchSinkInstance> {
        let mut store = new_store(&self.engine, &self.stage, limits);
        store.data_mut().outputs.declared = outputs;
        let (store, bindings) = instantiate_and_init(
            &self.stage,
            store,
            limits,
            |store| self.pre.instantiate(store),
            |bindings: &BatchSinkPlugin, store| {
                bindings
                    .weir_plugin_batch_sink()
                    .call_init(store, config_json)
            },
        )?;
        Ok(BatchSinkInstance {
            stage: self.stage.clone(),
            store,
            bindings,
            limits,
        })
    }
}

/// One live foreachBatch plugin instance.
pub struct BatchSinkInstance {
    stage: String,
    store: Store<PluginState>,
    bindings: BatchSinkPlugin,
    limits: PluginLimits,
}

impl BatchSinkInstance {
    /// Calls `write-batch(epoch, rows)`; returns the rows the plugin wrote,
    /// per output. A refused write fails the call even if the plugin
    /// ignored the refusal, so no rows are dropped silently.
    pub fn write_batch(
        &mut self,
        epoch: u64,
        rows: &RecordBatch,
    ) -> Result<BTreeMap<String, Vec<RecordBatch>>> {
        {
            let outputs = &mut self.store.data_mut().outputs;
            outputs.queued.clear();
            outputs.refused = None;
            outputs.budget = self.limits.output_bytes;
        }
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout));
        let sink = self.bindings.weir_plugin_batch_sink();
        let store = &mut self.store;
        let called =
            convert::lend_batch(rows, |rows| sink.call_write_batch(&mut *store, epoch, rows))
                .map_err(|reason| WeirError::Schema {
                    context: format!("input of stage `{}`", self.stage),
                    reason,
                })?;
        match called {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(plugin_error(&self.stage, guest(e))),
            Err(e) => return Err(plugin_error(&self.stage, trap(&self.store, self.limits, e))),
        }
        let outputs = &mut self.store.data_mut().outputs;
        if let Some(reason) = outputs.refused.take() {
            return Err(plugin_error(
                &self.stage,
                PluginFailure::InvalidOutput { reason },
            ));
        }
        Ok(std::mem::take(&mut outputs.queued))
    }

    /// Counters the plugin reported through `counter-add`.
    pub fn counters(&self) -> &BTreeMap<String, i64> {
        &self.store.data().counters
    }

    /// Starts a batch: the plugin's clocks and random stream read `env`'s
    /// values from now on.
    pub fn begin_batch(&mut self, env: super::BatchEnv) {
        self.store.data().env.begin(env);
    }
}
