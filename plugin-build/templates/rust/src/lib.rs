//! `{{name}}`: a Weir transform. `weir plugin build` turns this crate into a
//! WebAssembly component; a pipeline runs it with
//!
//! ```toml
//! [[transform]]
//! name = "{{name}}"
//! plugin = "target/wasm/{{artifact}}"
//! config = {}
//! ```

use weir_sdk::{Config, Error, RecordBatch, Transform, host};

/// The transform's state, made once per instance from the stage's `config`.
pub struct Plugin;

impl Transform for Plugin {
    fn new(_config: Config) -> Result<Self, Error> {
        // `config.parse::<T>()` reads the stage's `config` table into a
        // serde type; a bad config is `Error::config(...)`.
        Ok(Plugin)
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error> {
        host::counter_add("rows", batch.num_rows() as i64);
        // Change the batch here: filter rows, add or drop columns, split it.
        Ok(vec![batch])
    }
}

weir_sdk::export_transform!(Plugin);
