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

use super::foreach_batch::DeleteMarker;
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
    pub retention: std::time::Duration,
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
    merge_schema: Option<&toml::Spanned<bool>>,
    partition_by: Option<&toml::Spanned<Vec<String>>>,
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
