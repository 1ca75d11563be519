//! `[[transform]]`: plugin stages, their limits and what a failing call does.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ByteCount, ConfigError, Resolver};
use crate::storage::Location;

/// Sandbox limits of one plugin stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Longest a single call may run before it is interrupted.
    pub timeout: Duration,
    /// Most linear memory an instance may grow to, in bytes.
    pub memory_bytes: u64,
    /// Most output one call may return, in bytes of Arrow memory.
    pub output_bytes: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            output_bytes: 256 << 20,
        }
    }
}

/// A plugin stage.
#[derive(Debug, Clone)]
pub struct TransformConfig {
    /// Stage name, used in errors and progress.
    pub name: String,
    /// The component file.
    pub plugin: PathBuf,
    /// The stage's `config` table as JSON, handed to the plugin's `init`.
    pub config_json: String,
    /// Time and memory limits.
    pub limits: PluginLimits,
    /// What happens when a version swapped in fails its first batch.
    pub on_swap_failure: SwapFailure,
    /// What happens when a call fails on some rows (`on_error`).
    pub on_error: OnError,
}

/// What a transform stage does when its plugin traps (or runs out of time
/// or memory) or returns an `input` error on a batch (`on_error`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnError {
    /// Fail the query; the batch is replayed on restart.
    #[default]
    Fail,
    /// Find the rows the call fails on by bisecting the batch, write them
    /// to the dead-letter location and run the rest.
    Quarantine(Quarantine),
}

/// Where a quarantining stage sets rows aside, and how many it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The dead-letter location (`dead_letter_path`; the checkpoint's
    /// `dead_letter/` by default).
    pub dead_letter: Option<Location>,
    /// More quarantined rows than this in one batch fail the query: the
    /// plugin is failing everything (`max_quarantined_rows_per_batch`).
    pub max_rows_per_batch: usize,
}

/// Default of `max_quarantined_rows_per_batch`.
pub const DEFAULT_MAX_QUARANTINED_ROWS: usize = 100;

/// What a stage does when a plugin version swapped into it while running
/// fails its first batch (`on_swap_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapFailure {
    /// Go back to the version before and run the batch with it.
    #[default]
    Rollback,
    /// Fail the query.
    Fail,
}

/// The first of the keys that go with quarantine that is set: where, and
/// its name.
pub(super) fn first_quarantine_key(
    on_error: Option<&Spanned<String>>,
    max_rows: Option<&Spanned<i64>>,
    dead_letter_path: Option<&Spanned<String>>,
) -> Option<(std::ops::Range<usize>, &'static str)> {
    on_error
        .map(|k| (k.span(), "on_error"))
        .or(max_rows.map(|k| (k.span(), "max_quarantined_rows_per_batch")))
        .or(dead_letter_path.map(|k| (k.span(), "dead_letter_path")))
}

/// The keys of a plugin stage that say what a failing call does.
pub(super) struct QuarantineKeys<'a> {
    pub name: &'a Spanned<String>,
    pub on_error: Option<&'a Spanned<String>>,
    pub max_quarantined_rows_per_batch: Option<&'a Spanned<i64>>,
    pub dead_letter_path: Option<&'a Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransform {
    pub(super) name: Spanned<String>,
    pub(super) plugin: Spanned<String>,
    pub(super) on_swap_failure: Option<SwapFailure>,
    pub(super) on_error: Option<Spanned<String>>,
    pub(super) max_quarantined_rows_per_batch: Option<Spanned<i64>>,
    pub(super) dead_letter_path: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) config: toml::Table,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) memory_limit: Option<Spanned<ByteCount>>,
    pub(super) output_limit: Option<Spanned<ByteCount>>,
}

impl Resolver<'_> {
    pub(super) fn transform(&self, t: &RawTransform) -> Result<TransformConfig, ConfigError> {
        let mut stage = self.plugin_stage(
            &t.name,
            &t.plugin,
            &t.config,
            t.timeout.as_ref(),
            t.memory_limit.as_ref(),
        )?;
        stage.on_swap_failure = t.on_swap_failure.unwrap_or_default();
        stage.on_error = self.on_error(QuarantineKeys {
            name: &t.name,
            on_error: t.on_error.as_ref(),
            max_quarantined_rows_per_batch: t.max_quarantined_rows_per_batch.as_ref(),
            dead_letter_path: t.dead_letter_path.as_ref(),
        })?;
        if let Some(limit) = &t.output_limit {
            stage.limits.output_bytes = self.byte_count(limit, "output_limit")?;
            if let Some(confine) = self.confine {
                let ceiling = confine.ceilings.output_bytes;
                self.within_ceiling(limit, "output_limit", stage.limits.output_bytes, ceiling)?;
            }
        }
        Ok(stage)
    }

    /// The parts every plugin stage has: name, component, config, limits.
    pub(super) fn plugin_stage(
        &self,
        name: &Spanned<String>,
        plugin: &Spanned<String>,
        config: &toml::Table,
        timeout: Option<&Spanned<String>>,
        memory_limit: Option<&Spanned<ByteCount>>,
    ) -> Result<TransformConfig, ConfigError> {
        let file = self.plugin_file(plugin)?;
        if !file.is_file() {
            if self.confine.is_some() {
                return Err(self
                    .err(
                        plugin,
                        "no plugin with this digest was uploaded by this tenant",
                    )
                    .hint("upload it first: `weir upload <file.wasm>`"));
            }
            return Err(self
                .err(plugin, format!("plugin file {} not found", file.display()))
                .hint("build the example plugins with `./dev plugins`, or point `plugin` at a .wasm component"));
        }
        let config_json = serde_json::to_string(config)
            .map_err(|e| self.err(name, format!("config cannot be passed as JSON: {e}")))?;
        let mut limits = PluginLimits::default();
        if let Some(ceilings) = self.confine.map(|c| c.ceilings) {
            limits.timeout = limits.timeout.min(ceilings.timeout);
            limits.memory_bytes = limits.memory_bytes.min(ceilings.memory_bytes);
            limits.output_bytes = limits.output_bytes.min(ceilings.output_bytes);
        }
        if let Some(timeout) = timeout {
            limits.timeout = self.duration(timeout)?;
            if let Some(confine) = self.confine {
                self.within_ceiling(timeout, "timeout", limits.timeout, confine.ceilings.timeout)?;
            }
        }
        if let Some(memory) = memory_limit {
            limits.memory_bytes = self.byte_count(memory, "memory_limit")?;
            if let Some(confine) = self.confine {
                let ceiling = confine.ceilings.memory_bytes;
                self.within_ceiling(memory, "memory_limit", limits.memory_bytes, ceiling)?;
            }
        }
        Ok(TransformConfig {
            name: name.get_ref().clone(),
            plugin: file,
            config_json,
            limits,
            on_swap_failure: SwapFailure::default(),
            on_error: OnError::Fail,
        })
    }

    /// A plugin stage's `on_error` and the keys that go with quarantine.
    pub(super) fn on_error(&self, t: QuarantineKeys<'_>) -> Result<OnError, ConfigError> {
        let quarantine = match &t.on_error {
            None => false,
            Some(v) if v.get_ref() == "fail" => false,
            Some(v) if v.get_ref() == "quarantine" => true,
            Some(v) => {
                return Err(self
                    .err(v, format!("invalid on_error {:?}", v.get_ref()))
                    .hint("on_error = \"fail\" (the default) or \"quarantine\""));
            }
        };
        if !quarantine {
            let stray =
                first_quarantine_key(None, t.max_quarantined_rows_per_batch, t.dead_letter_path);
            if let Some((span, key)) = stray {
                return Err(self
                    .err_at(
                        span,
                        format!("`{key}` applies with on_error = \"quarantine\" only"),
                    )
                    .hint("on_error = \"quarantine\""));
            }
            return Ok(OnError::Fail);
        }
        let name = t.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self
                .err(
                    t.name,
                    format!("invalid stage name {name:?} for a quarantining stage"),
                )
                .hint("its name names its dead-letter files: use letters, digits, `_` and `-`"));
        }
        let max_rows_per_batch = match t.max_quarantined_rows_per_batch {
            None => DEFAULT_MAX_QUARANTINED_ROWS,
            Some(n) if *n.get_ref() >= 1 => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(self.err(n, "max_quarantined_rows_per_batch must be at least 1"));
            }
        };
        let dead_letter = t.dead_letter_path.map(|p| self.location(p)).transpose()?;
        Ok(OnError::Quarantine(Quarantine {
            dead_letter,
            max_rows_per_batch,
        }))
    }
}
