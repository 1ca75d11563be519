//! Upsert rules shared by the outputs that apply changes by key (the
//! PostgreSQL upsert and the Delta MERGE): which columns the rows need and
//! which row of a batch wins for each key.

use std::collections::HashMap;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::row::{RowConverter, Rows, SortField};
use arrow::util::display::array_value_to_string;

use crate::config::DeleteMarker;

/// How rows are applied by key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpsertRules<'a> {
    /// Key columns.
    pub key: &'a [String],
    /// A row replaces or deletes the stored one only when this is greater.
    pub newer_than: Option<&'a str>,
    /// Rows that delete their key.
    pub delete_when: Option<&'a DeleteMarker>,
}

impl UpsertRules<'_> {
    /// Checks rows before anything is written: they need the key columns
    /// (non-null), the guard and the marker column.
    pub fn check(&self, batch: &RecordBatch) -> Result<(), String> {
        let mut required: Vec<&str> = self.key.iter().map(String::as_str).collect();
        required.extend(self.newer_than);
        required.extend(self.delete_when.map(|d| d.column.as_str()));
        for name in required {
            if batch.column_by_name(name).is_none() {
                return Err(format!(
                    "upsert rows must have column `{name}` (key {:?}); the rows have {:?}",
                    self.key,
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                ));
            }
        }
        for key in self.key {
            let column = batch.column_by_name(key).expect("checked above");
            if column.null_count() > 0 {
                return Err(format!("upsert rows have a null key column `{key}`"));
            }
        }
        Ok(())
    }

    /// The key columns of `batch` in a comparable byte form, one row each.
    pub fn key_rows(&self, batch: &RecordBatch) -> Result<Rows, String> {
        let columns: Vec<_> = self
            .key
            .iter()
            .map(|k| {
                batch
                    .column_by_name(k)
                    .cloned()
                    .ok_or_else(|| format!("no key column `{k}`"))
            })
            .collect::<Result<_, _>>()?;
        comparable(&columns)
    }

    /// The guard column of `batch` in a comparable byte form, if there is one.
    pub fn guard_rows(&self, batch: &RecordBatch) -> Result<Option<Rows>, String> {
        let Some(guard) = self.newer_than else {
            return Ok(None);
        };
        let column = batch
            .column_by_name(guard)
            .cloned()
            .ok_or_else(|| format!("no guard column `{guard}`"))?;
        comparable(&[column]).map(Some)
    }

    /// One row per key — the greatest guard, then the last — split into
    /// upserts and deletes, keys in order of first appearance.
    pub fn latest_per_key(&self, all: &RecordBatch) -> Result<(RecordBatch, RecordBatch), String> {
        let keys = self.key_rows(all)?;
        let guards = self.guard_rows(all)?;
        let mut winner: HashMap<&[u8], usize> = HashMap::new();
        let mut order = Vec::new();
        for i in 0..all.num_rows() {
            match winner.get_mut(keys.row(i).data()) {
                None => {
                    winner.insert(keys.row(i).data(), i);
                    order.push(keys.row(i).data());
                }
                Some(best) => {
                    if guards.as_ref().is_none_or(|g| g.row(i) >= g.row(*best)) {
                        *best = i;
                    }
                }
            }
        }
        let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
        for key in order {
            let i = winner[key];
            if self.is_delete(all, i)? {
                deletes.push(i as u32);
            } else {
                upserts.push(i as u32);
            }
        }
        let pick = |rows: Vec<u32>| {
            take_record_batch(all, &UInt32Array::from(rows)).map_err(|e| e.to_string())
        };
        Ok((pick(upserts)?, pick(deletes)?))
    }

    /// Whether row `i` carries the delete marker (compared as text).
    fn is_delete(&self, batch: &RecordBatch, i: usize) -> Result<bool, String> {
        let Some(marker) = self.delete_when else {
            return Ok(false);
        };
        let column = batch
            .column_by_name(&marker.column)
            .ok_or_else(|| format!("no marker column `{}`", marker.column))?;
        Ok(column.is_valid(i)
            && array_value_to_string(column, i).map_err(|e| e.to_string())? == marker.equals)
    }
}

/// Values in a byte form that compares as the values do. Columns are cast
/// to one type per family first (a key read back from a Delta table may be
/// a string view where the plugin wrote a string) so forms from different
/// batches compare.
fn comparable(columns: &[arrow::array::ArrayRef]) -> Result<Rows, String> {
    use arrow::datatypes::DataType::*;
    let columns = columns
        .iter()
        .map(|c| match c.data_type() {
            LargeUtf8 | Utf8View => arrow::compute::cast(c, &Utf8),
            LargeBinary | BinaryView => arrow::compute::cast(c, &Binary),
            Dictionary(_, value) => arrow::compute::cast(c, value),
            _ => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot compare key or guard values: {e}"))?;
    let columns = columns.as_slice();
    RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .and_then(|c| c.convert_columns(columns))
    .map_err(|e| format!("cannot compare key or guard values: {e}"))
}
