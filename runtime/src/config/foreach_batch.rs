//! `[sink] kind = "foreach_batch"`: a Wasm plugin that sees each
//! micro-batch whole and writes through named, host-provided outputs.
//!
//! ```toml
//! [sink]
//! kind = "foreach_batch"
//! name = "cdc"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_cdc_upsert.wasm"
//! config = { output = "users" }
//! on_error = "quarantine"          # optional: rows the plugin fails on are set aside
//!
//! [sink.outputs.users]
//! kind = "postgres"
//! url = "${DATABASE_URL}"
//! table = "users"
//! mode = "upsert"                  # append | upsert
//! key = ["user_id"]
//! newer_than = "ts_ms"             # only newer rows replace (and delete) older ones
//! delete_when = { column = "op", equals = "d" }
//!
//! [sink.outputs.raw]
//! kind = "parquet"                 # parquet | json: an exactly-once directory
//! path = "out/raw"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::delta::{DELTA_BUILT, DeltaOutputConfig, DeltaOutputMode, table_options};
use super::{ByteCount, ConfigError, Resolver, SinkKind, TransformConfig};
use crate::storage::Location;

/// A checked foreachBatch sink.
#[derive(Debug, Clone)]
pub struct ForeachBatchConfig {
    /// Name, component, config and limits, as for a transform.
    pub stage: TransformConfig,
    /// The outputs the plugin may write to, by name.
    pub outputs: BTreeMap<String, OutputConfig>,
}

/// One named output of a foreachBatch sink.
#[derive(Debug, Clone)]
pub enum OutputConfig {
    /// An exactly-once directory of Parquet or JSON-lines files.
    Files {
        /// `Parquet` or `Json`.
        kind: SinkKind,
        /// The directory.
        path: Location,
    },
    /// A PostgreSQL table.
    Postgres(PostgresOutputConfig),
    /// A Delta Lake table.
    Delta(DeltaOutputConfig),
}

/// How rows are applied to a PostgreSQL table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMode {
    /// Insert every row.
    Append,
    /// Insert or update by key (needs a primary key or unique index on it).
    Upsert,
}

/// A PostgreSQL table output.
#[derive(Debug, Clone)]
pub struct PostgresOutputConfig {
    /// Connection string (`postgresql://...` or `host=... user=...`).
    pub url: String,
    /// Target table, optionally schema-qualified.
    pub table: String,
    /// Append or upsert.
    pub mode: PostgresMode,
    /// Upsert key columns.
    pub key: Vec<String>,
    /// Upsert: a row replaces or deletes the stored one only when this
    /// column is greater (an event-time guard against out-of-order rows).
    pub newer_than: Option<String>,
    /// Upsert: rows whose `column` equals `equals` (as text) delete the key.
    pub delete_when: Option<DeleteMarker>,
    /// Table recording which epochs were applied (created if missing).
    pub ledger_table: String,
}

/// Rows that delete their key instead of upserting it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteMarker {
    /// The marker column.
    pub column: String,
    /// The value (compared as text) that marks a delete.
    pub equals: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OutputKind {
    Parquet,
    Json,
    Postgres,
    Delta,
}

impl OutputKind {
    fn name(self) -> &'static str {
        match self {
            OutputKind::Parquet => "parquet",
            OutputKind::Json => "json",
            OutputKind::Postgres => "postgres",
            OutputKind::Delta => "delta",
        }
    }
}

/// A key of an output table, where it is, and the kinds that take it.
type KeyRule<'a> = (
    &'static str,
    Option<std::ops::Range<usize>>,
    &'a [OutputKind],
);

/// `mode` as written: which ones an output takes depends on its kind.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Append,
    Upsert,
    Merge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    kind: Spanned<OutputKind>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    mode: Option<Spanned<RawMode>>,
    key: Option<Spanned<Vec<String>>>,
    newer_than: Option<Spanned<String>>,
    delete_when: Option<Spanned<DeleteMarker>>,
    ledger_table: Option<Spanned<String>>,
    merge_schema: Option<Spanned<bool>>,
    partition_by: Option<Spanned<Vec<String>>>,
}

/// The plugin part of a `[sink]` table.
pub(super) struct RawForeachBatch<'a> {
    pub name: Option<&'a Spanned<String>>,
    pub plugin: Option<&'a Spanned<String>>,
    pub config: Option<&'a toml::Table>,
    pub timeout: Option<&'a Spanned<String>>,
    pub memory_limit: Option<&'a Spanned<ByteCount>>,
    pub outputs: Option<&'a Spanned<BTreeMap<String, Spanned<RawOutput>>>>,
    pub on_error: Option<&'a Spanned<String>>,
    pub max_quarantined_rows_per_batch: Option<&'a Spanned<i64>>,
    pub dead_letter_path: Option<&'a Spanned<String>>,
}

impl Resolver<'_> {
    pub(super) fn foreach_batch<T>(
        &self,
        sink: &Spanned<T>,
        raw: RawForeachBatch<'_>,
    ) -> Result<ForeachBatchConfig, ConfigError> {
        let (Some(name), Some(plugin)) = (raw.name, raw.plugin) else {
            return Err(self
                .err(sink, "a foreach_batch sink needs a `name` and a `plugin`")
                .hint("name = \"writer\", plugin = \"${WEIR_PLUGIN_DIR}/my_sink.wasm\""));
        };
        let empty = toml::Table::new();
        let mut stage = self.plugin_stage(
            name,
            plugin,
            raw.config.unwrap_or(&empty),
            raw.timeout,
            raw.memory_limit,
        )?;
        stage.on_error = self.on_error(super::transform::QuarantineKeys {
            name,
            on_error: raw.on_error,
            max_quarantined_rows_per_batch: raw.max_quarantined_rows_per_batch,
            dead_letter_path: raw.dead_letter_path,
        })?;
        let Some(outputs) = raw.outputs.filter(|o| !o.get_ref().is_empty()) else {
            return Err(self
                .err(sink, "a foreach_batch sink needs at least one output")
                .hint("[sink.outputs.out] kind = \"parquet\", path = \"out\""));
        };
        let mut resolved = BTreeMap::new();
        for (output_name, output) in outputs.get_ref() {
            resolved.insert(output_name.clone(), self.output(output)?);
        }
        Ok(ForeachBatchConfig {
            stage,
            outputs: resolved,
        })
    }

    fn output(&self, spanned: &Spanned<RawOutput>) -> Result<OutputConfig, ConfigError> {
        let raw = spanned.get_ref();
        let kind = *raw.kind.get_ref();
        use OutputKind::{Delta, Json, Parquet, Postgres};
        // Which kinds take each key; any other is refused where it is.
        let keys: [KeyRule<'_>; 10] = [
            (
                "path",
                raw.path.as_ref().map(|s| s.span()),
                &[Parquet, Json, Delta],
            ),
            ("url", raw.url.as_ref().map(|s| s.span()), &[Postgres]),
            ("table", raw.table.as_ref().map(|s| s.span()), &[Postgres]),
            (
                "ledger_table",
                raw.ledger_table.as_ref().map(|s| s.span()),
                &[Postgres],
            ),
            (
                "mode",
                raw.mode.as_ref().map(|s| s.span()),
                &[Postgres, Delta],
            ),
            (
                "key",
                raw.key.as_ref().map(|s| s.span()),
                &[Postgres, Delta],
            ),
            (
                "newer_than",
                raw.newer_than.as_ref().map(|s| s.span()),
                &[Postgres, Delta],
            ),
            (
                "delete_when",
                raw.delete_when.as_ref().map(|s| s.span()),
                &[Postgres, Delta],
            ),
            (
                "merge_schema",
                raw.merge_schema.as_ref().map(|s| s.span()),
                &[Delta],
            ),
            (
                "partition_by",
                raw.partition_by.as_ref().map(|s| s.span()),
                &[Delta],
            ),
        ];
        for (key, at, kinds) in keys {
            if let Some(at) = at
                && !kinds.contains(&kind)
            {
                let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                return Err(self.err_at(
                    at,
                    format!(
                        "`{key}` applies to {} outputs only, not {}",
                        names.join(" and "),
                        kind.name()
                    ),
                ));
            }
        }
        let kind_name = kind.name();
        let path = match (&raw.path, kind) {
            (Some(path), _) => Some(self.location(path)?),
            (None, Postgres) => None,
            (None, _) => {
                return Err(self
                    .err(spanned, format!("a {kind_name} output needs a `path`"))
                    .hint("path = \"out/archive\" (a directory)"));
            }
        };
        let mode = raw.mode.as_ref().map(|m| (*m.get_ref(), m.span()));
        let upsert = self.upsert_keys(raw, spanned, mode.clone())?;
        match kind {
            Parquet | Json => Ok(OutputConfig::Files {
                kind: if kind == Parquet {
                    SinkKind::Parquet
                } else {
                    SinkKind::Json
                },
                path: path.expect("checked above"),
            }),
            Delta => {
                if !DELTA_BUILT {
                    return Err(self.err(
                        &raw.kind,
                        "this weir was built without Delta Lake support (the `delta` feature)",
                    ));
                }
                let mode = match mode {
                    None | Some((RawMode::Append, _)) => DeltaOutputMode::Append,
                    Some((RawMode::Merge, _)) => DeltaOutputMode::Merge,
                    Some((RawMode::Upsert, at)) => {
                        return Err(self
                            .err_at(at, "a delta output takes mode = \"append\" or \"merge\"")
                            .hint("mode = \"merge\" applies rows by key"));
                    }
                };
                Ok(OutputConfig::Delta(DeltaOutputConfig {
                    path: path.expect("checked above"),
                    mode,
                    key: upsert.key,
                    newer_than: upsert.newer_than,
                    delete_when: upsert.delete_when,
                    table: table_options(raw.merge_schema.as_ref(), raw.partition_by.as_ref()),
                }))
            }
            Postgres => {
                let (Some(url), Some(table)) = (&raw.url, &raw.table) else {
                    return Err(self
                        .err(spanned, "a postgres output needs `url` and `table`")
                        .hint("url = \"${DATABASE_URL}\", table = \"users\""));
                };
                let mode = match mode {
                    None | Some((RawMode::Append, _)) => PostgresMode::Append,
                    Some((RawMode::Upsert, _)) => PostgresMode::Upsert,
                    Some((RawMode::Merge, at)) => {
                        return Err(self
                            .err_at(
                                at,
                                "a postgres output takes mode = \"append\" or \"upsert\"",
                            )
                            .hint("mode = \"upsert\" applies rows by key"));
                    }
                };
                Ok(OutputConfig::Postgres(PostgresOutputConfig {
                    url: self.endpoint(url, "postgres")?,
                    table: table.get_ref().clone(),
                    mode,
                    key: upsert.key,
                    newer_than: upsert.newer_than,
                    delete_when: upsert.delete_when,
                    ledger_table: raw
                        .ledger_table
                        .as_ref()
                        .map(|t| t.get_ref().clone())
                        .unwrap_or_else(|| "weir_epochs".to_string()),
                }))
            }
        }
    }

    /// The key, guard and delete marker of an upsert or merge output;
    /// refused in append mode, and a key required otherwise.
    fn upsert_keys(
        &self,
        raw: &RawOutput,
        spanned: &Spanned<RawOutput>,
        mode: Option<(RawMode, std::ops::Range<usize>)>,
    ) -> Result<UpsertKeys, ConfigError> {
        let by_key = matches!(mode, Some((RawMode::Upsert | RawMode::Merge, _)));
        if !by_key {
            let keyed_only = [
                ("key", raw.key.as_ref().map(|s| s.span())),
                ("newer_than", raw.newer_than.as_ref().map(|s| s.span())),
                ("delete_when", raw.delete_when.as_ref().map(|s| s.span())),
            ];
            if let Some((name, Some(at))) = keyed_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self
                    .err_at(
                        at,
                        format!("`{name}` applies when rows are applied by key only"),
                    )
                    .hint("set mode = \"upsert\" (postgres) or \"merge\" (delta), or remove it"));
            }
        }
        let key = raw
            .key
            .as_ref()
            .map(|k| k.get_ref().clone())
            .unwrap_or_default();
        if let Some((mode, _)) = mode.filter(|_| by_key && key.is_empty()) {
            let at = raw.key.as_ref().map_or(spanned.span(), |k| k.span());
            let mode = if mode == RawMode::Merge {
                "a merge"
            } else {
                "an upsert"
            };
            return Err(self
                .err_at(at, format!("{mode} output needs `key` columns"))
                .hint("key = [\"user_id\"]"));
        }
        Ok(UpsertKeys {
            key,
            newer_than: raw.newer_than.as_ref().map(|n| n.get_ref().clone()),
            delete_when: raw.delete_when.as_ref().map(|d| d.get_ref().clone()),
        })
    }
}

struct UpsertKeys {
    key: Vec<String>,
    newer_than: Option<String>,
    delete_when: Option<DeleteMarker>,
}
