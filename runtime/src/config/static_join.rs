//! `[static_join]`: join every batch with a table read from files.
//!
//! ```toml
//! [static_join]
//! on = ["customer_id"]        # equality keys, same name on both sides
//! how = "left"                # inner (default) | left
//! refresh = "10m"             # optional: read the table again this often
//!
//! [static_join.table]         # the files, as a file [source] declares them
//! kind = "file"
//! path = "dim/customers"
//! format = "csv"
//! header = true
//! schema = [ { name = "customer_id", type = "string" }, { name = "tier", type = "string" } ]
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::FileSourceConfig;
use super::source::{RawSource, SourceKind};
use super::{ConfigError, Resolver, field_names};

/// Which rows a static join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinHow {
    /// Stream rows with at least one matching table row.
    #[default]
    Inner,
    /// Every stream row; table columns null where nothing matches.
    Left,
}

/// A checked `[static_join]`.
#[derive(Debug, Clone)]
pub struct StaticJoinConfig {
    /// The table's files.
    pub table: FileSourceConfig,
    /// Key columns (named alike in the stream and the table).
    pub on: Vec<String>,
    /// Inner or left.
    pub how: JoinHow,
    /// Re-read the table when this much time has passed since the last read.
    pub refresh: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaticJoin {
    pub(super) on: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) how: JoinHow,
    pub(super) refresh: Option<Spanned<String>>,
    pub(super) table: Spanned<RawSource>,
}

impl Resolver<'_> {
    pub(super) fn static_join(
        &self,
        spanned: &Spanned<RawStaticJoin>,
    ) -> Result<StaticJoinConfig, ConfigError> {
        let raw = spanned.get_ref();
        if *raw.table.get_ref().kind.get_ref() != SourceKind::File {
            return Err(self
                .err(&raw.table, "a static join reads its table from files")
                .hint("kind = \"file\" with path, format and schema"));
        }
        let table = self.file_source(&raw.table)?;
        if raw.on.get_ref().is_empty() {
            return Err(self.err(&raw.on, "a static join needs at least one key in `on`"));
        }
        for key in raw.on.get_ref() {
            if table.schema.field_with_name(key).is_err() {
                return Err(self
                    .err(
                        &raw.on,
                        format!("join key `{key}` is not a column of the table"),
                    )
                    .hint(format!("table columns: {}", field_names(&table.schema))));
            }
        }
        Ok(StaticJoinConfig {
            table,
            on: raw.on.get_ref().clone(),
            how: raw.how,
            refresh: raw.refresh.as_ref().map(|r| self.duration(r)).transpose()?,
        })
    }
}
