//! Delta Lake outputs: `[sink] kind = "delta"` and foreachBatch outputs
//! `kind = "delta"`.
//!
//! ```toml
//! [sink]
//! kind = "delta"
//! path = "s3://lake/events"        # or a local directory
//! merge_schema = true              # new columns widen the table
//! partition_by = ["country"]
//! optimize_every = 100             # OPTIMIZE (compaction) after every 100th batch
//! target_file_size = "128MiB"
//! vacuum_every = 100               # VACUUM after every 100th batch
//! vacuum_retention = "7d"          # files removed longer ago than this are deleted
//! ```

use std::time::Duration;

use toml::Spanned;

use super::foreach_batch::DeleteMarker;
use super::sink::RawSink;
use super::{ConfigError, Resolver, SinkKind};
use crate::storage::Location;

/// Settings of a Delta table written by appending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaSinkConfig {
    /// New columns in the rows widen the table (old rows read NULL);
    /// without it they stop the query with an error naming them.
    pub merge_schema: bool,
    /// Partition columns, used when the sink creates the table and checked
    /// against an existing one.
    pub partition_by: Vec<String>,
    /// Scheduled OPTIMIZE: small files rewritten into larger ones.
    pub optimize: Option<DeltaOptimize>,
    /// Scheduled VACUUM: files no longer in the table deleted.
    pub vacuum: Option<DeltaVacuum>,
}

/// `optimize_every` and `target_file_size`: Delta's OPTIMIZE (bin-packing
/// compaction) after every `every`-th batch. It commits with
/// `dataChange = false`: readers see the same rows, and the batches'
/// application transactions stay in the table's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaOptimize {
    /// Run after every this many batches.
    pub every: u64,
    /// Files are combined up to this size (deltalake's default: 100 MiB).
    pub target_file_size: Option<u64>,
}

/// `vacuum_every` and `vacuum_retention`: Delta's VACUUM after every
/// `every`-th batch, deleting files removed from the table longer ago than
/// `retention` (readers of older versions need them until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaVacuum {
    /// Run after every this many batches.
    pub every: u64,
    /// How long a removed file is kept.
    pub retention: Duration,
}

/// How a foreachBatch Delta output applies rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutputMode {
    /// Every row appended.
    Append,
    /// Rows applied by key with one MERGE per epoch.
    Merge,
}

/// A foreachBatch output writing a Delta table.
#[derive(Debug, Clone)]
pub struct DeltaOutputConfig {
    /// The table's location.
    pub path: Location,
    /// Append or merge.
    pub mode: DeltaOutputMode,
    /// Merge key columns.
    pub key: Vec<String>,
    /// Merge: a row replaces or deletes the stored one only when this
    /// column is greater.
    pub newer_than: Option<String>,
    /// Merge: rows whose `column` equals `equals` (as text) delete the key;
    /// the marker column is not stored.
    pub delete_when: Option<DeleteMarker>,
    /// Schema evolution and partitioning, as for the sink.
    pub table: DeltaSinkConfig,
}

/// `merge_schema` and `partition_by` as written, for a sink or an output.
pub(super) fn table_options(
    merge_schema: Option<&Spanned<bool>>,
    partition_by: Option<&Spanned<Vec<String>>>,
) -> DeltaSinkConfig {
    DeltaSinkConfig {
        merge_schema: merge_schema.is_some_and(|m| *m.get_ref()),
        partition_by: partition_by
            .map(|p| p.get_ref().clone())
            .unwrap_or_default(),
        optimize: None,
        vacuum: None,
    }
}

/// Whether this build has the Delta Lake writer.
pub(super) const DELTA_BUILT: bool = cfg!(feature = "delta");

impl Resolver<'_> {
    pub(super) fn delta_sink(
        &self,
        s: &Spanned<RawSink>,
    ) -> Result<Option<DeltaSinkConfig>, ConfigError> {
        let raw = s.get_ref();
        if *raw.kind.get_ref() != SinkKind::Delta {
            let delta_only = [
                ("merge_schema", raw.merge_schema.as_ref().map(|v| v.span())),
                ("partition_by", raw.partition_by.as_ref().map(|v| v.span())),
                (
                    "optimize_every",
                    raw.optimize_every.as_ref().map(|v| v.span()),
                ),
                (
                    "target_file_size",
                    raw.target_file_size
                        .as_ref()
                        .filter(|_| !raw.kind.get_ref().is_file())
                        .map(|v| v.span()),
                ),
                ("vacuum_every", raw.vacuum_every.as_ref().map(|v| v.span())),
                (
                    "vacuum_retention",
                    raw.vacuum_retention.as_ref().map(|v| v.span()),
                ),
            ];
            if let Some((key, Some(span))) = delta_only.into_iter().find(|(_, sp)| sp.is_some()) {
                return Err(self.err_at(
                    span,
                    format!("`{key}` applies to kind = \"delta\" sinks only"),
                ));
            }
            return Ok(None);
        }
        if !DELTA_BUILT {
            return Err(self.err(
                &raw.kind,
                "this weir was built without Delta Lake support (the `delta` feature)",
            ));
        }
        let mut options = table_options(raw.merge_schema.as_ref(), raw.partition_by.as_ref());
        let every = |v: &Spanned<i64>, key: &str| {
            u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| self.err(v, format!("{key} must be at least 1 (batches)")))
        };
        match (&raw.optimize_every, &raw.target_file_size) {
            (Some(n), size) => {
                options.optimize = Some(DeltaOptimize {
                    every: every(n, "optimize_every")?,
                    target_file_size: size
                        .as_ref()
                        .map(|s| self.byte_count(s, "target_file_size"))
                        .transpose()?,
                });
            }
            (None, Some(size)) => {
                return Err(self
                    .err(size, "`target_file_size` applies with `optimize_every`")
                    .hint("optimize_every = 100 runs OPTIMIZE after every 100th batch"));
            }
            (None, None) => {}
        }
        match (&raw.vacuum_every, &raw.vacuum_retention) {
            (Some(n), retention) => {
                let retention = match retention {
                    // Delta's default `deletedFileRetentionDuration`.
                    None => Duration::from_secs(7 * 24 * 3600),
                    Some(r) => humantime::parse_duration(r.get_ref()).map_err(|_| {
                        self.err(r, format!("invalid duration {:?}", r.get_ref()))
                            .hint("a duration such as \"7d\", \"168h\" or \"0s\"")
                    })?,
                };
                options.vacuum = Some(DeltaVacuum {
                    every: every(n, "vacuum_every")?,
                    retention,
                });
            }
            (None, Some(r)) => {
                return Err(self
                    .err(r, "`vacuum_retention` applies with `vacuum_every`")
                    .hint("vacuum_every = 100 runs VACUUM after every 100th batch"));
            }
            (None, None) => {}
        }
        Ok(Some(options))
    }
}
