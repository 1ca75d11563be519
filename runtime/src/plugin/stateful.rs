//! Stateful function plugins (`stateful-plugin` world): called once per key
//! group with the key's rows and a `group-state` resource.

use std::path::Path;

use arrow::record_batch::RecordBatch;
use wasmtime::{Engine, Store};

use super::bindings::stateful::{StatefulPlugin, StatefulPluginPre};
use super::bindings::{GroupState, PluginState};
use super::{
    PluginEngine, convert, deadline_ticks, guest, instantiate_and_init, new_store, plugin_error,
    trap,
};
use crate::config::PluginLimits;
use crate::error::{PluginFailure, Result, WeirError};

impl PluginEngine {
    /// Compiles the component at `path` for stage `stage` and checks it
    /// implements the `stateful-plugin` world.
    pub fn load_stateful(&self, stage: &str, path: &Path) -> Result<StatefulComponent> {
        let wasm = super::read_wasm(stage, path)?;
        let component = self.compile_wasm(stage, path, &wasm)?;
        let pre = self.link(
            &self.stateful_linker,
            stage,
            path,
            &component,
            "stateful-plugin",
            StatefulPluginPre::new,
        )?;
        Ok(StatefulComponent {
            engine: self.engine.clone(),
            stage: stage.to_string(),
            pre,
            digest: super::digest(&wasm),
        })
    }
}

/// A compiled, linked stateful function, ready to instantiate.
pub struct StatefulComponent {
    engine: Engine,
    stage: String,
    pre: StatefulPluginPre<PluginState>,
    /// `sha256:<hex>` of the component bytes.
    digest: String,
}

impl StatefulComponent {
    /// The component's digest (`sha256:<hex>`), naming this version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Instantiates the plugin under `limits` and calls its `init` with
    /// `config_json`.
    pub fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<StatefulInstance> {
        let store = new_store(&self.engine, &self.stage, limits);
        let (store, bindings) = instantiate_and_init(
            &self.stage,
            store,
            limits,
            |store| self.pre.instantiate(store),
            |bindings: &StatefulPlugin, store| {
                bindings
                    .weir_plugin_stateful()
                    .call_init(store, config_json)
            },
        )?;
        Ok(StatefulInstance {
            stage: self.stage.clone(),
            store,
            bindings,
            limits,
        })
    }
}

/// What one `process-group` call produced.
pub struct GroupCall {
    /// Rows to emit.
    pub outputs: Vec<RecordBatch>,
    /// The key's state as the plugin left it.
    pub state: GroupState,
}

/// One live stateful plugin instance; groups go through it in order.
pub struct StatefulInstance {
    stage: String,
    store: Store<PluginState>,
    bindings: StatefulPlugin,
    limits: PluginLimits,
}

impl StatefulInstance {
    /// Calls the plugin for one key group. `key` is a one-row batch of the
    /// key columns; `rows` is empty for a timeout. After a trap the
    /// instance must not be used again.
    pub fn process_group(
        &mut self,
        key: &RecordBatch,
        rows: &RecordBatch,
        state: GroupState,
    ) -> Result<GroupCall> {
        let fail =
            |store: &Store<PluginState>, e| plugin_error(&self.stage, trap(store, self.limits, e));
        let handle = self
            .store
            .data_mut()
            .lend_group_state(state)
            .map_err(|e| fail(&self.store, e))?;
        let borrowed = handle.rep();
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout));
        let stateful = self.bindings.weir_plugin_stateful();
        let store = &mut self.store;
        let called = convert::lend_batch(key, |key| {
            convert::lend_batch(rows, |rows| {
                stateful.call_process_group(
                    &mut *store,
                    key,
                    rows,
                    wasmtime::component::Resource::new_borrow(borrowed),
                )
            })
        })
        .and_then(|inner| inner)
        .map_err(|reason| WeirError::Schema {
            context: format!("input of stage `{}`", self.stage),
            reason,
        })?;
        let state = self
            .store
            .data_mut()
            .take_group_state(handle)
            .map_err(|e| fail(&self.store, e))?;
        let outputs = match called {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => return Err(plugin_error(&self.stage, guest(e))),
            Err(e) => return Err(fail(&self.store, e)),
        };
        let outputs = outputs
            .into_iter()
            .map(|out| {
                convert::batch_from_wit(out).map_err(|reason| {
                    plugin_error(&self.stage, PluginFailure::InvalidOutput { reason })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        super::check_output(&self.stage, self.limits, &outputs)?;
        Ok(GroupCall { outputs, state })
    }

    /// Counters the plugin reported through `counter-add`.
    pub fn counters(&self) -> &std::collections::BTreeMap<String, i64> {
        &self.store.data().counters
    }

    /// Starts a batch: the plugin's clocks and random stream read `env`'s
    /// values from now on.
    pub fn begin_batch(&mut self, env: super::BatchEnv) {
        self.store.data().env.begin(env);
    }
}
