//! `[sink] kind = "foreach_batch"`: a Wasm plugin that sees each
//! micro-batch whole and writes through named, host-provided outputs.
//!
//! ```toml
//! [sink]
//! kind = "foreach_batch"
//! name = "cdc"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_cdc_upsert.wasm"
//! config = { output = "users" }
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    kind: Spanned<OutputKind>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    mode: Option<Spanned<PostgresMode>>,
    key: Option<Spanned<Vec<String>>>,
    newer_than: Option<Spanned<String>>,
    delete_when: Option<Spanned<DeleteMarker>>,
    ledger_table: Option<Spanned<String>>,
}

/// The plugin part of a `[sink]` table.
pub(super) struct RawForeachBatch<'a> {
    pub name: Option<&'a Spanned<String>>,
    pub plugin: Option<&'a Spanned<String>>,
    pub config: Option<&'a toml::Table>,
    pub timeout: Option<&'a Spanned<String>>,
    pub memory_limit: Option<&'a Spanned<ByteCount>>,
    pub outputs: Option<&'a Spanned<BTreeMap<String, Spanned<RawOutput>>>>,
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
        let stage = self.plugin_stage(
            name,
            plugin,
            raw.config.unwrap_or(&empty),
            raw.timeout,
            raw.memory_limit,
        )?;
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
        let postgres_only = [
            ("url", raw.url.as_ref().map(|s| s.span())),
            ("table", raw.table.as_ref().map(|s| s.span())),
            ("mode", raw.mode.as_ref().map(|s| s.span())),
            ("key", raw.key.as_ref().map(|s| s.span())),
            ("newer_than", raw.newer_than.as_ref().map(|s| s.span())),
            ("delete_when", raw.delete_when.as_ref().map(|s| s.span())),
            ("ledger_table", raw.ledger_table.as_ref().map(|s| s.span())),
        ];
        if kind != OutputKind::Postgres {
            if let Some((key, Some(span))) = postgres_only.iter().find(|(_, s)| s.is_some()) {
                return Err(self
                    .err_at(
                        span.clone(),
                        format!("`{key}` applies to postgres outputs only"),
                    )
                    .hint("file outputs take `kind` and `path`"));
            }
            let Some(path) = &raw.path else {
                return Err(self
                    .err(spanned, "a file output needs a `path`")
                    .hint("path = \"out/archive\" (a directory)"));
            };
            let kind = if kind == OutputKind::Parquet {
                SinkKind::Parquet
            } else {
                SinkKind::Json
            };
            return Ok(OutputConfig::Files {
                kind,
                path: self.location(path)?,
            });
        }
        if let Some(path) = &raw.path {
            return Err(self.err(
                path,
                "a postgres output takes `url` and `table`, not `path`",
            ));
        }
        let (Some(url), Some(table)) = (&raw.url, &raw.table) else {
            return Err(self
                .err(spanned, "a postgres output needs `url` and `table`")
                .hint("url = \"${DATABASE_URL}\", table = \"users\""));
        };
        let mode = raw
            .mode
            .as_ref()
            .map(|m| *m.get_ref())
            .unwrap_or(PostgresMode::Append);
        let key = raw
            .key
            .as_ref()
            .map(|k| k.get_ref().clone())
            .unwrap_or_default();
        if mode == PostgresMode::Upsert && key.is_empty() {
            let span = raw.key.as_ref().map_or(spanned.span(), |k| k.span());
            return Err(self
                .err_at(span, "an upsert output needs `key` columns")
                .hint("key = [\"user_id\"] (with a primary key or unique index on them)"));
        }
        if mode == PostgresMode::Append {
            let upsert_only = [
                ("key", raw.key.as_ref().map(|s| s.span())),
                ("newer_than", raw.newer_than.as_ref().map(|s| s.span())),
                ("delete_when", raw.delete_when.as_ref().map(|s| s.span())),
            ];
            if let Some((name, Some(span))) = upsert_only.iter().find(|(_, s)| s.is_some()) {
                return Err(self
                    .err_at(
                        span.clone(),
                        format!("`{name}` applies to mode = \"upsert\" only"),
                    )
                    .hint("set mode = \"upsert\", or remove it"));
            }
        }
        Ok(OutputConfig::Postgres(PostgresOutputConfig {
            url: self.expand(url)?,
            table: table.get_ref().clone(),
            mode,
            key,
            newer_than: raw.newer_than.as_ref().map(|n| n.get_ref().clone()),
            delete_when: raw.delete_when.as_ref().map(|d| d.get_ref().clone()),
            ledger_table: raw
                .ledger_table
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| "weir_epochs".to_string()),
        }))
    }
}
