//! Key groups: the fixed partitions of a stateful operator's keys.
//!
//! A row belongs to key group `xxhash64(key) mod count`, where `count` is
//! fixed when the query first starts and recorded in its checkpoint (Flink's
//! max parallelism, Spark's shuffle partitions). State is kept per key group
//! (a task's file holds its groups' entries apart), and a task owns a
//! contiguous range of them, so a restart with another parallelism hands
//! key groups to other tasks without rewriting any state.
//!
//! The hash must never change: a key's state lives in its group's files.
//! Values are hashed in a canonical form that does not depend on Arrow's
//! physical type, so the two sides of a join whose keys are `Int32` and
//! `Int64`, or `Utf8` and `LargeUtf8`, agree on where a key lives.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::DataType;
use twox_hash::XxHash64;

use crate::error::{Result, WeirError};

/// The default number of key groups of a new query (Flink's default max
/// parallelism): enough to spread over any plausible number of tasks.
pub const DEFAULT_KEY_GROUPS: u16 = 128;

/// The most key groups a query may have: a group id is stored in two bytes.
pub const MAX_KEY_GROUPS: u16 = 32_768;

/// A stable seed, so that a key's group never depends on the process.
const SEED: u64 = 0x5745_4952; // "WEIR"

/// How many key groups a query has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroups {
    count: u16,
}

impl KeyGroups {
    /// `count` key groups (1 ..= [`MAX_KEY_GROUPS`]).
    pub fn try_new(count: u16) -> Result<KeyGroups> {
        if count == 0 || count > MAX_KEY_GROUPS {
            return Err(WeirError::Internal(format!(
                "key groups must be 1..={MAX_KEY_GROUPS}, not {count}"
            )));
        }
        Ok(KeyGroups { count })
    }

    /// One key group: every key together (checkpoints from before key groups).
    pub fn single() -> KeyGroups {
        KeyGroups { count: 1 }
    }

    /// How many there are.
    pub fn count(self) -> u16 {
        self.count
    }

    /// The key groups task `task` of `tasks` owns: contiguous, as even as
    /// they can be (Flink's `computeKeyGroupRangeForOperatorIndex`).
    pub fn range_of_task(self, task: usize, tasks: usize) -> Range<u16> {
        let count = self.count as usize;
        let start = task * count / tasks;
        let end = (task + 1) * count / tasks;
        start as u16..end as u16
    }

    /// The key group of each row of `batch`, by the columns `key`.
    pub fn of_rows(self, batch: &RecordBatch, key: &[String]) -> Result<Vec<u16>> {
        let rows = batch.num_rows();
        if self.count == 1 {
            return Ok(vec![0; rows]);
        }
        let mut hashers: Vec<XxHash64> = (0..rows).map(|_| XxHash64::with_seed(SEED)).collect();
        for name in key {
            let column = batch.column_by_name(name).ok_or_else(|| {
                WeirError::Internal(format!(
                    "key column `{name}` missing from the operator's input"
                ))
            })?;
            hash_column(column, &mut hashers)?;
        }
        Ok(hashers
            .iter()
            .map(|h| (h.finish() % u64::from(self.count)) as u16)
            .collect())
    }
}

/// `batches`' rows by key group (keyed by the columns `key`): each group
/// that has rows, ascending, with its rows in their order.
pub fn split_by_group(
    groups: KeyGroups,
    batches: &[RecordBatch],
    key: &[String],
) -> Result<BTreeMap<u16, Vec<RecordBatch>>> {
    let mut split: BTreeMap<u16, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        if groups.count() == 1 {
            split.entry(0).or_default().push(batch.clone());
            continue;
        }
        let of_rows = groups.of_rows(batch, key)?;
        let mut rows_of: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for (row, group) in of_rows.into_iter().enumerate() {
            rows_of.entry(group).or_default().push(row as u32);
        }
        // One `take` puts the rows in group order; each group is a slice of it.
        let order = UInt32Array::from_iter_values(rows_of.values().flatten().copied());
        let ordered = take_record_batch(batch, &order)
            .map_err(|e| WeirError::Internal(format!("splitting rows by key group: {e}")))?;
        let mut offset = 0;
        for (group, rows) in rows_of {
            split
                .entry(group)
                .or_default()
                .push(ordered.slice(offset, rows.len()));
            offset += rows.len();
        }
    }
    Ok(split)
}

/// Feeds every value of `column` to its row's hasher in canonical form:
/// a tag byte (null, integer, float, string/binary, boolean), then the
/// value in little-endian bytes (the same on every machine).
fn hash_column(column: &ArrayRef, hashers: &mut [XxHash64]) -> Result<()> {
    let canonical = canonical(column)?;
    let tag = |h: &mut XxHash64, t: u8| h.write_u8(t);
    match canonical.data_type() {
        DataType::Int64 => {
            let values = canonical.as_primitive::<arrow::datatypes::Int64Type>();
            for (row, h) in hashers.iter_mut().enumerate() {
                if values.is_null(row) {
                    tag(h, 0);
                } else {
                    tag(h, 1);
                    h.write(&values.value(row).to_le_bytes());
                }
            }
        }
        DataType::Float64 => {
            let values = canonical.as_primitive::<arrow::datatypes::Float64Type>();
            for (row, h) in hashers.iter_mut().enumerate() {
                if values.is_null(row) {
                    tag(h, 0);
                } else {
                    tag(h, 2);
                    h.write(&canonical_f64_bits(values.value(row)).to_le_bytes());
                }
            }
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            let values = canonical.as_binary_opt::<i64>();
            let strings = canonical.as_string_opt::<i64>();
            for (row, h) in hashers.iter_mut().enumerate() {
                if canonical.is_null(row) {
                    tag(h, 0);
                    continue;
                }
                let bytes = match (values, strings) {
                    (Some(v), _) => v.value(row),
                    (None, Some(s)) => s.value(row).as_bytes(),
                    (None, None) => unreachable!("a large string or binary array"),
                };
                tag(h, 3);
                h.write(&(bytes.len() as u64).to_le_bytes());
                h.write(bytes);
            }
        }
        DataType::Boolean => {
            let values = canonical.as_boolean();
            for (row, h) in hashers.iter_mut().enumerate() {
                if values.is_null(row) {
                    tag(h, 0);
                } else {
                    tag(h, 4);
                    h.write_u8(values.value(row) as u8);
                }
            }
        }
        other => {
            return Err(WeirError::Internal(format!(
                "cannot group by a {other} column"
            )));
        }
    }
    Ok(())
}

/// `column` as one of the four types keys are hashed in: integers, times
/// and decimals' unscaled values as Int64, floats as Float64, strings and
/// binaries as their large form, booleans as they are.
fn canonical(column: &ArrayRef) -> Result<ArrayRef> {
    use DataType::*;
    let target = match column.data_type() {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Int64,
        Timestamp(..) | Date32 | Date64 | Time32(_) | Time64(_) | Duration(_) => Int64,
        Float16 | Float32 | Float64 => Float64,
        Utf8 | LargeUtf8 | Utf8View => LargeUtf8,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => LargeBinary,
        Boolean => Boolean,
        Dictionary(_, values) => return canonical(&cast(column, values).map_err(cast_error)?),
        Null => Int64,
        other => {
            return Err(WeirError::Internal(format!(
                "cannot group by a {other} column"
            )));
        }
    };
    if column.data_type() == &target {
        return Ok(column.clone());
    }
    let source = match column.data_type() {
        // Times cast to Int64 only through their own width's integer.
        Date32 | Time32(_) => cast(column, &Int32).map_err(cast_error)?,
        Timestamp(..) | Date64 | Time64(_) | Duration(_) => {
            cast(column, &Int64).map_err(cast_error)?
        }
        _ => column.clone(),
    };
    // Unsigned 64-bit values above i64::MAX wrap rather than fail: the
    // hash only needs the same bits for the same value.
    let options = arrow::compute::CastOptions {
        safe: true,
        ..Default::default()
    };
    match (source.data_type(), &target) {
        (UInt64, Int64) => {
            let values = source.as_primitive::<arrow::datatypes::UInt64Type>();
            Ok(std::sync::Arc::new(arrow::array::Int64Array::from_iter(
                values.iter().map(|v| v.map(|v| v as i64)),
            )))
        }
        _ => arrow::compute::cast_with_options(&source, &target, &options).map_err(cast_error),
    }
}

/// A float's bits with all zeros and all NaNs made one value each.
fn canonical_f64_bits(v: f64) -> u64 {
    if v == 0.0 {
        0
    } else if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

fn cast_error(e: arrow::error::ArrowError) -> WeirError {
    WeirError::Internal(format!("hashing a key column: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array, LargeStringArray, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(column: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("k", column.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    #[test]
    fn a_key_has_one_group_whatever_its_arrow_type() {
        let groups = KeyGroups::try_new(128).unwrap();
        let key = ["k".to_string()];
        let narrow = batch(Arc::new(Int32Array::from(vec![Some(7), None, Some(-3)])));
        let wide = batch(Arc::new(Int64Array::from(vec![Some(7), None, Some(-3)])));
        assert_eq!(
            groups.of_rows(&narrow, &key).unwrap(),
            groups.of_rows(&wide, &key).unwrap()
        );
        let small = batch(Arc::new(StringArray::from(vec!["a", "bb", ""])));
        let large = batch(Arc::new(LargeStringArray::from(vec!["a", "bb", ""])));
        assert_eq!(
            groups.of_rows(&small, &key).unwrap(),
            groups.of_rows(&large, &key).unwrap()
        );
    }

    #[test]
    fn groups_never_change_between_builds() {
        // The checkpoint's state is laid out by these: a change here moves
        // every key away from its state.
        let groups = KeyGroups::try_new(128).unwrap();
        let keys = batch(Arc::new(StringArray::from(vec![
            "ad-1", "ad-2", "ad-3", "u1",
        ])));
        assert_eq!(
            groups.of_rows(&keys, &["k".to_string()]).unwrap(),
            vec![GOLDEN[0], GOLDEN[1], GOLDEN[2], GOLDEN[3]]
        );
    }
    const GOLDEN: [u16; 4] = [22, 35, 2, 11];

    #[test]
    fn tasks_own_every_group_once() {
        let groups = KeyGroups::try_new(128).unwrap();
        for tasks in [1, 2, 3, 4, 7, 128] {
            let ranges: Vec<_> = (0..tasks).map(|t| groups.range_of_task(t, tasks)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[tasks - 1].end, 128);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
