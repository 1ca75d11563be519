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

use super::FileSourceConfig;

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
