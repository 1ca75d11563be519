//! Streaming deduplication: Spark's `dropDuplicatesWithinWatermark` (state
//! per key until the watermark reaches its first event time + delay) and
//! plain `dropDuplicates` (state forever, or, when the watermark's column is
//! one of the keys, until the watermark reaches the key's event time). The
//! first occurrence wins. As in Spark, a row whose event time is at or
//! before the late-rows watermark is dropped, and a key whose expiry is at
//! or before the eviction watermark is forgotten.
//!
//! State rows: `0x02 | key` → expiry (ms), and for keys that expire an index
//! `0x03 | expiry | key`, so eviction is a prefix scan.

use std::collections::HashSet;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use super::{Operator, OperatorContext, decode_i64, earliest_time, encode_i64, event_times_ms};
use crate::error::{Result, WeirError};
use crate::state::StateStore;

const KEY_PREFIX: u8 = 0x02;
const EXPIRY_PREFIX: u8 = 0x03;

/// What to deduplicate on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeduplicateConfig {
    /// Key columns.
    pub columns: Vec<String>,
    /// `Some((event-time column, delay ms))`: keep each key until the
    /// watermark reaches its event time + delay (`dropDuplicatesWithinWatermark`:
    /// the watermark's delay; plain `dropDuplicates` on keys that include the
    /// watermark's column: 0); `None`: keep keys forever.
    pub expire_after: Option<(String, i64)>,
}

/// The deduplication operator.
pub struct Deduplicate {
    config: DeduplicateConfig,
    converter: Option<RowConverter>,
    schema: Option<SchemaRef>,
}

impl Deduplicate {
    /// An operator for `config`.
    pub fn new(config: DeduplicateConfig) -> Deduplicate {
        Deduplicate {
            config,
            converter: None,
            schema: None,
        }
    }

    fn column(&self, batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| WeirError::Schema {
                context: "deduplication".into(),
                reason: format!("column `{name}` not found"),
            })
    }
}

fn expiry_key(expiry: i64, key: &[u8]) -> Vec<u8> {
    let mut k = vec![EXPIRY_PREFIX];
    k.extend_from_slice(&encode_i64(expiry));
    k.extend_from_slice(key);
    k
}

impl Operator for Deduplicate {
    fn key_columns(&self) -> Vec<String> {
        self.config.columns.clone()
    }

    fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let keys: Vec<ArrayRef> = self
            .config
            .columns
            .iter()
            .map(|c| self.column(batch, c))
            .collect::<Result<_>>()?;
        if self.converter.is_none() {
            let fields = keys
                .iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect();
            self.converter = Some(
                RowConverter::new(fields).map_err(|e| WeirError::format("deduplication key", e))?,
            );
            self.schema = Some(batch.schema());
        }
        let rows = self
            .converter
            .as_ref()
            .expect("set above")
            .convert_columns(&keys)
            .map_err(|e| WeirError::format("deduplication key", e))?;
        let times = match &self.config.expire_after {
            Some((column, _)) => Some(event_times_ms(&self.column(batch, column)?)?),
            None => None,
        };
        let mut seen = HashSet::new();
        let mut keep = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let t = times.as_ref().map(|times| times.value(row));
            if let (Some(t), Some(wm)) = (t, ctx.late_rows_watermark_ms)
                && t <= wm
            {
                ctx.rows_dropped_by_watermark += 1;
                keep.push(false);
                continue;
            }
            let mut key = vec![KEY_PREFIX];
            key.extend_from_slice(rows.row(row).as_ref());
            let duplicate = seen.contains(&key) || ctx.state.get(&key)?.is_some();
            keep.push(!duplicate);
            if !duplicate {
                let expiry = match (&self.config.expire_after, t) {
                    (Some((_, delay)), Some(t)) => t + delay,
                    _ => i64::MAX,
                };
                ctx.state.put(&key, &encode_i64(expiry))?;
                if expiry != i64::MAX {
                    ctx.state.put(&expiry_key(expiry, &key[1..]), &[])?;
                }
                seen.insert(key);
            }
        }
        let kept = filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|e| WeirError::format("deduplication", e))?;
        Ok(vec![kept])
    }

    fn handle_batch_end(&mut self, ctx: &mut OperatorContext<'_>) -> Result<Vec<RecordBatch>> {
        let Some(wm) = ctx.watermark_ms else {
            return Ok(Vec::new());
        };
        let mut expired = Vec::new();
        ctx.state.scan_from(&[EXPIRY_PREFIX], &mut |key, _| {
            let due = key[0] == EXPIRY_PREFIX && decode_i64(&key[1..]) <= wm;
            if due {
                expired.push(key.to_vec());
            }
            due
        })?;
        for index in expired {
            let mut key = vec![KEY_PREFIX];
            key.extend_from_slice(&index[9..]);
            ctx.state.delete(&key)?;
            ctx.state.delete(&index)?;
        }
        Ok(Vec::new())
    }

    fn has_work_at(
        &self,
        state: &StateStore,
        watermark_ms: Option<i64>,
        _now: Option<i64>,
    ) -> Result<bool> {
        let Some(watermark_ms) = watermark_ms else {
            return Ok(false);
        };
        Ok(earliest_time(state, EXPIRY_PREFIX)?.is_some_and(|expiry| expiry <= watermark_ms))
    }

    fn evicts_by_watermark(&self) -> bool {
        // Spark runs the batch for any deduplication in a query with a
        // watermark, even one whose keys never expire.
        true
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        self.schema.clone()
    }
}
