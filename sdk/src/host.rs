//! Services the host offers every plugin: structured logging and counters.
//! Outside a Weir host (native tests, benchmarks) they do nothing.

use crate::bindings::weir::plugin::host as wit;

pub use wit::Level;

/// Writes a record to the host log, tagged with this plugin's id.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    if cfg!(target_family = "wasm") {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wit::log(level, message, &fields);
    }
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message, &[]);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message, &[]);
}

/// Adds `delta` to this plugin's named counter, reported with progress.
pub fn counter_add(name: &str, delta: i64) {
    if cfg!(target_family = "wasm") {
        wit::counter_add(name, delta);
    }
}
