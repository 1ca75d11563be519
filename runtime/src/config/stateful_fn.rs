//! `[stateful]`: a Wasm stateful function stage (Spark's
//! flatMapGroupsWithState), and Spark's checks on it.
//!
//! ```toml
//! [stateful]
//! name = "sessions"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_sessionize.wasm"
//! key = ["user"]                 # the plugin is called once per key and batch
//! state_timeout = "event_time"   # none (default) | processing_time | event_time
//! config = { time_column = "ts", gap = "30m" }
//! on_error = "quarantine"        # optional: rows a key's call fails on are set aside
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::{ByteCount, ConfigError, OutputMode, Resolver, TransformConfig, WatermarkConfig};

/// Which timeouts a stateful function may set (Spark's `GroupStateTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateTimeout {
    /// No timeouts.
    #[default]
    None,
    /// Timeouts on the batch's processing time (`set-timeout-duration`).
    ProcessingTime,
    /// Timeouts on the event-time watermark (`set-timeout-timestamp`).
    EventTime,
}

/// A checked `[stateful]` stage.
#[derive(Debug, Clone)]
pub struct StatefulFunctionConfig {
    /// Name, component, config and limits, as for a transform.
    pub stage: TransformConfig,
    /// Key columns: the plugin is called once per distinct key and batch.
    pub key: Vec<String>,
    /// Which timeouts the plugin may set.
    pub timeout: StateTimeout,
    /// With event-time timeouts: the watermark's column; input rows at or
    /// before the watermark are dropped as late, as Spark does.
    pub event_time_column: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStateful {
    name: Spanned<String>,
    plugin: Spanned<String>,
    key: Spanned<Vec<String>>,
    #[serde(default)]
    state_timeout: Option<Spanned<StateTimeout>>,
    #[serde(default)]
    config: toml::Table,
    timeout: Option<Spanned<String>>,
    memory_limit: Option<Spanned<ByteCount>>,
    on_error: Option<Spanned<String>>,
    max_quarantined_rows_per_batch: Option<Spanned<i64>>,
    dead_letter_path: Option<Spanned<String>>,
}

impl Resolver<'_> {
    pub(super) fn stateful_function(
        &self,
        spanned: &Spanned<RawStateful>,
        watermark: Option<&WatermarkConfig>,
        mode: OutputMode,
    ) -> Result<StatefulFunctionConfig, ConfigError> {
        let raw = spanned.get_ref();
        if raw.key.get_ref().is_empty() {
            return Err(self
                .err(&raw.key, "no key columns")
                .hint("key = [\"user_id\"]: the plugin is called once per key"));
        }
        if mode == OutputMode::Complete {
            return Err(self
                .err(
                    spanned,
                    "Complete output mode is not supported with a stateful function \
                     (flatMapGroupsWithState)",
                )
                .hint("use output_mode = \"append\" or \"update\""));
        }
        let timeout = raw
            .state_timeout
            .as_ref()
            .map(|t| *t.get_ref())
            .unwrap_or_default();
        let event_time_column = match (timeout, watermark) {
            (StateTimeout::EventTime, Some(w)) => Some(w.column.clone()),
            (StateTimeout::EventTime, None) => {
                return Err(self
                    .err(
                        raw.state_timeout.as_ref().expect("event_time was set"),
                        "Watermark must be specified in the query for using event-time timeout \
                         in a stateful function; event-time timeout is not supported without \
                         watermark",
                    )
                    .hint("add [watermark] column = \"event_time\", delay = \"10m\""));
            }
            _ => None,
        };
        let mut stage = self.plugin_stage(
            &raw.name,
            &raw.plugin,
            &raw.config,
            raw.timeout.as_ref(),
            raw.memory_limit.as_ref(),
        )?;
        stage.on_error = self.on_error(super::transform::QuarantineKeys {
            name: &raw.name,
            on_error: raw.on_error.as_ref(),
            max_quarantined_rows_per_batch: raw.max_quarantined_rows_per_batch.as_ref(),
            dead_letter_path: raw.dead_letter_path.as_ref(),
        })?;
        Ok(StatefulFunctionConfig {
            stage,
            key: raw.key.get_ref().clone(),
            timeout,
            event_time_column,
        })
    }
}
