//! `[sink]`: where a query's rows go.

use serde::Deserialize;
use toml::Spanned;

use super::foreach_batch::{self, ForeachBatchConfig};
use super::transform::first_quarantine_key;
use super::{ByteCount, ConfigError, DeltaSinkConfig, KafkaSinkConfig, OutputMode, Resolver};
use crate::storage::Location;

/// Output kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Exactly-once Parquet files.
    Parquet,
    /// Exactly-once newline-delimited JSON files.
    Json,
    /// Rows printed to standard output (at-least-once).
    Console,
    /// A Wasm plugin writing each batch through host outputs (foreachBatch).
    #[serde(rename = "foreach_batch")]
    ForeachBatch,
    /// Records in a Kafka topic (exactly-once with `exactly_once = true`).
    Kafka,
    /// A Delta Lake table (exactly-once: one commit per batch, with the
    /// batch id as its application transaction).
    Delta,
}

impl SinkKind {
    /// Whether the sink writes files with a `_weir_log` (Parquet, JSON).
    pub fn is_file(self) -> bool {
        matches!(self, SinkKind::Parquet | SinkKind::Json)
    }
}

/// The output: where rows go, and what each batch emits.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// What each batch emits.
    pub output_mode: OutputMode,
    /// The sink and its settings.
    pub target: SinkTarget,
}

/// A sink of each kind, with the settings that kind takes.
#[derive(Debug, Clone)]
pub enum SinkTarget {
    /// Exactly-once Parquet or JSON-lines files with a `_weir_log`.
    Files(FileSinkConfig),
    /// Rows printed to standard output (at-least-once).
    Console {
        /// JSON lines instead of a table.
        json: bool,
    },
    /// A Wasm plugin writing each batch through host outputs (foreachBatch).
    ForeachBatch(Box<ForeachBatchConfig>),
    /// Records in a Kafka topic.
    Kafka(KafkaSinkConfig),
    /// A Delta Lake table.
    Delta {
        /// The table's location.
        path: Location,
        /// Schema evolution, partitioning and maintenance.
        options: DeltaSinkConfig,
    },
}

/// `kind = "parquet"` or `kind = "json"`: an exactly-once directory.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkConfig {
    /// [`SinkKind::Parquet`] or [`SinkKind::Json`].
    pub kind: SinkKind,
    /// The directory.
    pub path: Location,
    /// The rows of consecutive batches are rolled into files of about
    /// this size at each compaction (`target_file_size`).
    pub target_file_size: Option<u64>,
}

impl SinkConfig {
    /// The sink's kind, as the pipeline names it.
    pub fn kind(&self) -> SinkKind {
        match &self.target {
            SinkTarget::Files(files) => files.kind,
            SinkTarget::Console { .. } => SinkKind::Console,
            SinkTarget::ForeachBatch(_) => SinkKind::ForeachBatch,
            SinkTarget::Kafka(_) => SinkKind::Kafka,
            SinkTarget::Delta { .. } => SinkKind::Delta,
        }
    }

    /// The directory or table the sink writes, for sinks that have one.
    pub fn path(&self) -> Option<&Location> {
        match &self.target {
            SinkTarget::Files(files) => Some(&files.path),
            SinkTarget::Delta { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The plugin and outputs of a foreachBatch sink.
    pub fn foreach_batch(&self) -> Option<&ForeachBatchConfig> {
        match &self.target {
            SinkTarget::ForeachBatch(config) => Some(config),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) kind: Spanned<SinkKind>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) output_mode: Option<Spanned<OutputMode>>,
    pub(super) format: Option<Spanned<String>>,
    // foreach_batch only:
    pub(super) name: Option<Spanned<String>>,
    pub(super) plugin: Option<Spanned<String>>,
    pub(super) config: Option<toml::Table>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) memory_limit: Option<Spanned<ByteCount>>,
    pub(super) outputs:
        Option<Spanned<std::collections::BTreeMap<String, Spanned<foreach_batch::RawOutput>>>>,
    pub(super) on_error: Option<Spanned<String>>,
    pub(super) max_quarantined_rows_per_batch: Option<Spanned<i64>>,
    pub(super) dead_letter_path: Option<Spanned<String>>,
    // kafka only:
    pub(super) bootstrap_servers: Option<Spanned<String>>,
    pub(super) topic: Option<Spanned<String>>,
    pub(super) key_column: Option<Spanned<String>>,
    pub(super) value_column: Option<Spanned<String>>,
    pub(super) exactly_once: Option<Spanned<bool>>,
    // delta only:
    pub(super) merge_schema: Option<Spanned<bool>>,
    pub(super) partition_by: Option<Spanned<Vec<String>>>,
    pub(super) optimize_every: Option<Spanned<i64>>,
    pub(super) target_file_size: Option<Spanned<ByteCount>>,
    pub(super) vacuum_every: Option<Spanned<i64>>,
    pub(super) vacuum_retention: Option<Spanned<String>>,
}

impl Resolver<'_> {
    pub(super) fn sink(&self, s: &Spanned<RawSink>) -> Result<SinkConfig, ConfigError> {
        let raw = s.get_ref();
        let kind = *raw.kind.get_ref();
        let foreach_batch = if kind == SinkKind::ForeachBatch {
            Some(self.foreach_batch(
                s,
                foreach_batch::RawForeachBatch {
                    name: raw.name.as_ref(),
                    plugin: raw.plugin.as_ref(),
                    config: raw.config.as_ref(),
                    timeout: raw.timeout.as_ref(),
                    memory_limit: raw.memory_limit.as_ref(),
                    outputs: raw.outputs.as_ref(),
                    on_error: raw.on_error.as_ref(),
                    max_quarantined_rows_per_batch: raw.max_quarantined_rows_per_batch.as_ref(),
                    dead_letter_path: raw.dead_letter_path.as_ref(),
                },
            )?)
        } else {
            if let Some(plugin) = &raw.plugin {
                return Err(self
                    .err(
                        plugin,
                        "`plugin` applies to kind = \"foreach_batch\" sinks only",
                    )
                    .hint("a plugin that writes batches itself is a foreach_batch sink"));
            }
            if let Some(outputs) = &raw.outputs {
                return Err(self.err(
                    outputs,
                    "`outputs` apply to kind = \"foreach_batch\" sinks only",
                ));
            }
            let quarantine_key = first_quarantine_key(
                raw.on_error.as_ref(),
                raw.max_quarantined_rows_per_batch.as_ref(),
                raw.dead_letter_path.as_ref(),
            );
            if let Some((span, key)) = quarantine_key {
                return Err(self
                    .err_at(
                        span,
                        format!("`{key}` applies to kind = \"foreach_batch\" sinks only"),
                    )
                    .hint("a sink without a plugin has no rows a plugin fails on"));
            }
            None
        };
        let kafka = self.kafka_sink(s)?;
        let delta = self.delta_sink(s)?;
        let path = match (kind, &raw.path) {
            (SinkKind::Console | SinkKind::ForeachBatch | SinkKind::Kafka, None) => None,
            (SinkKind::Kafka, Some(p)) => {
                return Err(self
                    .err(p, "a kafka sink takes no path")
                    .hint("name the topic: topic = \"events\""));
            }
            (SinkKind::ForeachBatch, Some(p)) => {
                return Err(self
                    .err(p, "a foreach_batch sink takes no path")
                    .hint("declare where rows go as [sink.outputs.<name>] tables"));
            }
            (SinkKind::Console, Some(p)) => {
                return Err(self.err(p, "the console sink takes no path"));
            }
            (_, Some(p)) => Some(self.location(p)?),
            (_, None) => {
                return Err(self
                    .err(s, "this sink needs a `path`")
                    .hint("path = \"out/my-query\" (a directory)"));
            }
        };
        let console_json = match (&raw.format, kind) {
            (None, _) => false,
            (Some(f), SinkKind::Console) if f.get_ref() == "json" => true,
            (Some(f), SinkKind::Console) if f.get_ref() == "table" => false,
            (Some(f), _) => {
                return Err(self
                    .err(
                        f,
                        "`format` applies to the console sink only, as \"table\" or \"json\"",
                    )
                    .hint("file sinks take their format from `kind`"));
            }
        };
        let target = match kind {
            SinkKind::Parquet | SinkKind::Json => SinkTarget::Files(FileSinkConfig {
                kind,
                path: path.expect("checked above: file sinks have a path"),
                target_file_size: raw
                    .target_file_size
                    .as_ref()
                    .map(|size| self.byte_count(size, "target_file_size"))
                    .transpose()?,
            }),
            SinkKind::Console => SinkTarget::Console { json: console_json },
            SinkKind::ForeachBatch => SinkTarget::ForeachBatch(Box::new(
                foreach_batch.expect("resolved above for a foreach_batch sink"),
            )),
            SinkKind::Kafka => SinkTarget::Kafka(kafka.expect("resolved above for a kafka sink")),
            SinkKind::Delta => SinkTarget::Delta {
                path: path.expect("checked above: a delta sink has a path"),
                options: delta.expect("resolved above for a delta sink"),
            },
        };
        Ok(SinkConfig {
            output_mode: raw
                .output_mode
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or_default(),
            target,
        })
    }
}
