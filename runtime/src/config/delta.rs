//! Delta Lake outputs: `[sink] kind = "delta"` and foreachBatch outputs
//! `kind = "delta"`.
//!
//! ```toml
//! [sink]
//! kind = "delta"
//! path = "s3://lake/events"        # or a local directory
//! merge_schema = true              # new columns widen the table
//! partition_by = ["country"]
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
    /// New columns widen the table.
    pub merge_schema: bool,
    /// Partition columns when the output creates the table.
    pub partition_by: Vec<String>,
}

/// Whether this build has the Delta Lake writer.
pub(super) const DELTA_BUILT: bool = cfg!(feature = "delta");
