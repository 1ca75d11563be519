//! Delta Lake tables as outputs, exactly once.
//!
//! Every write is one Delta commit that also records an *application
//! transaction* (`txn` action): the writer's app id (`weir:<query id>:<sink or
//! output>`) and the micro-batch id as its version. Before writing batch N
//! the sink reads the table's latest version for its app id; N at or below
//! it was committed before (a replay after a crash) and is skipped. That is
//! how Spark's Delta sink achieves exactly-once, and any Delta reader can
//! check it (`txn` actions in `_delta_log`).
//!
//! Tables live on local disk or S3. S3 goes through the same object store
//! Weir uses elsewhere (conditional create, so two writers can never both
//! commit version V), registered with `deltalake` for the `s3://` scheme.

mod append;
mod merge;

use std::sync::{Arc, Once};

use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::logstore::{
    LogStore, LogStoreFactory, StorageConfig, default_logstore, logstore_factories,
};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use url::Url;

pub use append::DeltaSink;
pub use merge::DeltaMergeOutput;

use crate::error::{Result, WeirError};
use crate::storage::Location;

/// A Delta table location with the app id this query writes it under.
#[derive(Debug, Clone)]
pub(crate) struct DeltaTarget {
    /// Where the table is (for messages).
    pub location: Location,
    /// Who writes: `sink` or `output `name``, for messages.
    pub writer: String,
    /// The application-transaction id.
    pub app_id: String,
}

impl DeltaTarget {
    pub(crate) fn new(
        location: Location,
        query_id: &str,
        writer_name: &str,
        writer: String,
    ) -> Self {
        DeltaTarget {
            location,
            writer,
            app_id: format!("weir:{query_id}:{writer_name}"),
        }
    }

    /// Opens the table, loading its latest version if it exists (a table
    /// not yet created is returned unloaded).
    pub(crate) async fn open(&self) -> Result<DeltaTable> {
        let (url, root) = table_url(&self.location)?;
        let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(|e| self.error(e))?;
        if let Some(root) = root {
            register_s3();
            builder = builder.with_storage_backend(root, url);
        }
        let mut table = builder.build().map_err(|e| self.error(e))?;
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The latest batch id this writer committed to `table`, if any.
    pub(crate) async fn committed_version(&self, table: &DeltaTable) -> Result<Option<u64>> {
        let Ok(state) = table.snapshot() else {
            return Ok(None); // no table yet
        };
        let version = state
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| self.error(e))?;
        Ok(version.map(|v| v as u64))
    }

    /// Commit properties carrying batch `batch_id`'s application transaction.
    pub(crate) fn commit_properties(&self, batch_id: u64) -> CommitProperties {
        CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, batch_id as i64))
    }

    /// Rows that do not fit the table: the user's to fix, the query stops.
    pub(crate) fn schema_error(&self, reason: impl Into<String>) -> WeirError {
        WeirError::Schema {
            context: format!("{} (delta table {})", self.writer, self.location),
            reason: reason.into(),
        }
    }

    /// A schema `change` (see [`schema_change`]) refused without `merge_schema`.
    pub(crate) fn unfit(&self, change: &str) -> WeirError {
        self.schema_error(format!(
            "the rows do not fit the table: {change}; set merge_schema = true to add new columns"
        ))
    }

    pub(crate) fn error(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::Sink {
            sink: format!("{} (delta table {})", self.writer, self.location),
            reason: e.to_string(),
        }
    }
}

/// `batch` with the types Delta stores: timestamps as microseconds, with a
/// time zone as UTC (`timestamp`) or without one (`timestamp_ntz`).
pub(crate) fn delta_types(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let delta_type = |t: &DataType| match t {
        DataType::Timestamp(_, Some(_)) => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        DataType::Timestamp(unit, None) if *unit != TimeUnit::Microsecond => {
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        }
        _ => None,
    };
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| delta_type(f.data_type()).is_some_and(|t| t != *f.data_type()))
    {
        return Ok(batch);
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match delta_type(field.data_type()) {
            Some(t) => {
                columns.push(arrow::compute::cast(column, &t)?);
                fields.push(field.as_ref().clone().with_data_type(t));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The table's current Arrow schema, if it exists.
pub(crate) fn table_schema(table: &DeltaTable) -> Option<SchemaRef> {
    table.snapshot().ok().map(|s| s.snapshot().arrow_schema())
}

/// How `incoming` differs from the table's `existing` columns: new columns
/// and columns whose type changed, named, or `None` if it fits. Columns the
/// table has and the rows lack are fine (they read NULL, as in Spark).
pub(crate) fn schema_change(existing: &Schema, incoming: &Schema) -> Option<String> {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for field in incoming.fields() {
        match existing.field_with_name(field.name()) {
            Err(_) => added.push(format!("`{}` ({})", field.name(), field.data_type())),
            Ok(old) if !same_type(old.data_type(), field.data_type()) => changed.push(format!(
                "`{}` ({} in the table, {} in the rows)",
                field.name(),
                old.data_type(),
                field.data_type()
            )),
            Ok(_) => {}
        }
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("new column(s) {}", added.join(", ")));
    }
    if !changed.is_empty() {
        parts.push(format!("changed type(s) {}", changed.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Delta stores strings and binaries as one type; Arrow's large and view
/// variants of them are the same column to it.
fn same_type(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    let norm = |t: &DataType| match t {
        Utf8 | LargeUtf8 | Utf8View => Utf8,
        Binary | LargeBinary | BinaryView => Binary,
        other => other.clone(),
    };
    norm(a) == norm(b)
}

/// Every row of `table` (none if it does not exist yet).
pub(crate) async fn read_all(target: &DeltaTarget, table: DeltaTable) -> Result<Vec<RecordBatch>> {
    if table.snapshot().is_err() {
        return Ok(Vec::new());
    }
    let context = SessionContext::new();
    table
        .update_datafusion_session(&context.state())
        .map_err(|e| target.error(e))?;
    let provider = table.table_provider().await.map_err(|e| target.error(e))?;
    context
        .read_table(provider)
        .map_err(|e| target.error(e))?
        .collect()
        .await
        .map_err(|e| target.error(e))
}

/// The table's URL and, for S3, the bucket-root store to reach it through.
fn table_url(location: &Location) -> Result<(Url, Option<Arc<dyn ObjectStore>>)> {
    match location {
        Location::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| WeirError::Io {
                path: dir.clone(),
                source,
            })?;
            let absolute = std::path::absolute(dir).map_err(|source| WeirError::Io {
                path: dir.clone(),
                source,
            })?;
            let url = Url::from_directory_path(&absolute).map_err(|()| {
                WeirError::Internal(format!("{} is not absolute", absolute.display()))
            })?;
            Ok((url, None))
        }
        Location::S3(s3) => {
            let root = Location::S3(crate::storage::S3Location {
                prefix: String::new(),
                ..s3.clone()
            })
            .open()?;
            let url = Url::parse(&format!("s3://{}/{}/", s3.bucket, s3.prefix))
                .map_err(|e| WeirError::Internal(format!("{location}: {e}")))?;
            Ok((url, Some(root)))
        }
    }
}

/// Makes `s3://` tables use the default log store (commits by conditional
/// create, which Weir's S3 store provides) over the store given with
/// `with_storage_backend`, instead of `deltalake`'s AWS integration.
fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let scheme = Url::parse("s3://").expect("a valid URL");
        logstore_factories().insert(scheme, Arc::new(ConditionalPutLogStore));
    });
}

struct ConditionalPutLogStore;

impl LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, TimestampMicrosecondType};

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn schema_changes_name_new_and_retyped_columns_only() {
        let table = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        // Fewer columns, and a string of another Arrow width: the same table.
        let fits = schema(&[("name", DataType::LargeUtf8)]);
        assert_eq!(schema_change(&table, &fits), None);
        let wider = schema(&[
            ("id", DataType::Float64),
            ("name", DataType::Utf8),
            ("country", DataType::Utf8),
        ]);
        assert_eq!(
            schema_change(&table, &wider).unwrap(),
            "new column(s) `country` (Utf8); changed type(s) `id` (Int64 in the table, \
             Float64 in the rows)"
        );
    }

    #[test]
    fn timestamps_become_delta_microseconds_in_utc() {
        let millis =
            TimestampMillisecondArray::from(vec![Some(1_500), None]).with_timezone("+00:00");
        let batch = RecordBatch::try_from_iter([("ts", Arc::new(millis) as _)]).unwrap();
        let converted = delta_types(batch).unwrap();
        let ts = converted.column(0);
        assert_eq!(
            ts.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        assert_eq!((ts.value(0), ts.is_null(1)), (1_500_000, true));
    }
}
