//! Stream-static join: every batch is joined with a table read from files
//! at start (and again every `refresh`), on equality keys, inner or left.
//!
//! The table is indexed by its keys (Arrow's row format) once per read, so
//! a batch costs one key conversion and one `take` per column. As in Spark,
//! null keys match nothing, and a batch sees the table as last read — a
//! replayed batch may see a refreshed table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::config::{JoinHow, StaticJoinConfig};
use crate::error::{Result, WeirError};
use crate::source::FileSource;

/// The join and its current copy of the table.
pub struct StaticJoin {
    config: StaticJoinConfig,
    table: Option<Table>,
}

struct Table {
    rows: RecordBatch,
    /// Table rows by key.
    index: HashMap<OwnedRow, Vec<u32>>,
    converter: RowConverter,
    /// Table columns the output gets (all but the keys).
    carried: Vec<usize>,
    read_at: Instant,
}

impl StaticJoin {
    /// A join that reads its table on first use.
    pub fn new(config: StaticJoinConfig) -> StaticJoin {
        StaticJoin {
            config,
            table: None,
        }
    }

    /// Reads the table if it was never read or its `refresh` time passed.
    pub async fn refresh_if_due(&mut self) -> Result<()> {
        let due = match (&self.table, self.config.refresh) {
            (None, _) => true,
            (Some(table), Some(every)) => table.read_at.elapsed() >= every,
            (Some(_), None) => false,
        };
        if due {
            self.table = Some(self.read().await?);
        }
        Ok(())
    }

    async fn read(&self) -> Result<Table> {
        let source = FileSource::open(self.config.table.clone())?;
        let files = source.list_new().await?;
        let decoded = source.read(&files).await?;
        if let Some(bad) = decoded.bad_records.first() {
            return Err(WeirError::BadRecord {
                file: bad.file.clone(),
                line: bad.line,
                reason: format!("in the static join's table: {}", bad.reason),
            });
        }
        let schema = self.config.table.schema.clone();
        let rows = concat_batches(&schema, &decoded.batches)
            .map_err(|e| WeirError::Internal(format!("static join table: {e}")))?;
        let keys: Vec<usize> = self
            .config
            .on
            .iter()
            .map(|k| schema.index_of(k).expect("keys checked at load"))
            .collect();
        let converter = RowConverter::new(
            keys.iter()
                .map(|&k| SortField::new(schema.field(k).data_type().clone()))
                .collect(),
        )
        .map_err(|e| WeirError::Internal(format!("static join keys: {e}")))?;
        let key_columns: Vec<ArrayRef> = keys.iter().map(|&k| rows.column(k).clone()).collect();
        let converted = converter
            .convert_columns(&key_columns)
            .map_err(|e| WeirError::Internal(format!("static join keys: {e}")))?;
        let mut index: HashMap<OwnedRow, Vec<u32>> = HashMap::new();
        for (row, key) in converted.iter().enumerate() {
            if key_columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            index.entry(key.owned()).or_default().push(row as u32);
        }
        let carried = (0..schema.fields().len())
            .filter(|i| !keys.contains(i))
            .collect();
        tracing::info!(
            rows = rows.num_rows(),
            files = files.len(),
            path = %self.config.table.path,
            "static join: table read"
        );
        Ok(Table {
            rows,
            index,
            converter,
            carried,
            read_at: Instant::now(),
        })
    }

    /// Joins one batch with the table (read it first with
    /// [`StaticJoin::refresh_if_due`]).
    pub fn join(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let table = self
            .table
            .as_ref()
            .ok_or_else(|| WeirError::Internal("static join table not read".into()))?;
        let schema = self.output_schema(&batch.schema(), table)?;
        let mut key_columns = Vec::new();
        for key in &self.config.on {
            let column = batch.column_by_name(key).ok_or_else(|| WeirError::Schema {
                context: "static join".into(),
                reason: format!("the stream has no join key column `{key}`"),
            })?;
            key_columns.push(column.clone());
        }
        let converted =
            table
                .converter
                .convert_columns(&key_columns)
                .map_err(|e| WeirError::Schema {
                    context: "static join".into(),
                    reason: format!(
                        "the stream's keys {:?} cannot be compared with the table's: {e}",
                        self.config.on
                    ),
                })?;
        let mut left = Vec::new();
        let mut right: Vec<Option<u32>> = Vec::new();
        for (row, key) in converted.iter().enumerate() {
            let null_key = key_columns.iter().any(|c| c.is_null(row));
            match table.index.get(&key.owned()).filter(|_| !null_key) {
                Some(matches) => {
                    for &m in matches {
                        left.push(row as u32);
                        right.push(Some(m));
                    }
                }
                None if self.config.how == JoinHow::Left => {
                    left.push(row as u32);
                    right.push(None);
                }
                None => {}
            }
        }
        let left = UInt32Array::from(left);
        let right = UInt32Array::from(right);
        let mut columns = Vec::new();
        for column in batch.columns() {
            columns.push(take(column, &left, None).map_err(internal)?);
        }
        for &c in &table.carried {
            columns.push(take(table.rows.column(c), &right, None).map_err(internal)?);
        }
        RecordBatch::try_new(schema, columns).map_err(internal)
    }

    fn output_schema(&self, stream: &SchemaRef, table: &Table) -> Result<SchemaRef> {
        let mut fields: Vec<Field> = stream.fields().iter().map(|f| f.as_ref().clone()).collect();
        let table_schema = table.rows.schema();
        for &c in &table.carried {
            let field = table_schema.field(c);
            if stream.field_with_name(field.name()).is_ok() {
                return Err(WeirError::Schema {
                    context: "static join".into(),
                    reason: format!(
                        "the stream and the table both have a column `{}` that is not a join key; \
                         rename one",
                        field.name()
                    ),
                });
            }
            let nullable = field.is_nullable() || self.config.how == JoinHow::Left;
            fields.push(field.clone().with_nullable(nullable));
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

fn internal(e: arrow::error::ArrowError) -> WeirError {
    WeirError::Internal(format!("static join: {e}"))
}
