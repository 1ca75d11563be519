//! Test stateful function. Per call it emits one row: the key (as text),
//! the rows of this call, the key's running total, whether the call is a
//! timeout, and the watermark. Chosen keys misbehave on purpose.
//!
//! Config (all optional):
//! - `event_timeout_ms`: after each data call, time the key out when the
//!   watermark passes its latest event time (`time_column`, int64 ms) + this;
//!   on the timeout the state is removed.
//! - `processing_timeout_ms`: time the key out this long after the batch.
//! - `fail_key`, `trap_key`: return an error / panic for that key.
//! - `trap_on_ts_multiple_of`: panic when a row's `ts` is divisible by it
//!   (poison rows, for quarantine).
//! - `corrupt_key`: store bytes that are not JSON; the next call fails to
//!   decode them.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::Deserialize;
use weir_sdk::{Config, Error, GroupState, StatefulFunction};

/// Configuration: see the crate documentation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedConfig {
    #[serde(default = "ts")]
    time_column: String,
    event_timeout_ms: Option<i64>,
    processing_timeout_ms: Option<u64>,
    fail_key: Option<String>,
    trap_key: Option<String>,
    trap_on_ts_multiple_of: Option<i64>,
    corrupt_key: Option<String>,
}

fn ts() -> String {
    "ts".into()
}

/// The test function.
pub struct KeyedTestkit {
    config: KeyedConfig,
}

impl StatefulFunction for KeyedTestkit {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(KeyedTestkit {
            config: config.parse()?,
        })
    }

    fn process_group(
        &mut self,
        key: &RecordBatch,
        rows: RecordBatch,
        state: &mut GroupState<'_>,
    ) -> Result<Vec<RecordBatch>, Error> {
        let key_text = key_text(key)?;
        if self.config.fail_key.as_deref() == Some(&key_text) {
            return Err(Error::input(format!("refusing key {key_text}")));
        }
        if self.config.trap_key.as_deref() == Some(&key_text) {
            panic!("keyed-testkit: trapping on key {key_text}");
        }
        if let Some(n) = self.config.trap_on_ts_multiple_of
            && rows.num_rows() > 0
        {
            let column = rows
                .column_by_name(&self.config.time_column)
                .and_then(|c| c.as_primitive_opt::<Int64Type>());
            if let Some(times) = column
                && times.iter().flatten().any(|t| t % n == 0)
            {
                panic!("keyed-testkit: a poison row for key {key_text}");
            }
        }
        let total: i64 = state.get()?.unwrap_or(0) + rows.num_rows() as i64;
        let timed_out = state.has_timed_out();
        if self.config.corrupt_key.as_deref() == Some(&key_text) {
            state.update_bytes(b"\xffnot json");
        } else if timed_out {
            state.remove();
        } else {
            state.update(&total)?;
            if let Some(after) = self.config.event_timeout_ms {
                let latest = self.latest_event_ms(&rows)?;
                state.set_timeout_timestamp((latest + after) * 1000)?;
            }
            if let Some(after) = self.config.processing_timeout_ms {
                state.set_timeout_duration(Duration::from_millis(after))?;
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("total", DataType::Int64, false),
            Field::new("timed_out", DataType::Boolean, false),
            Field::new("watermark_ms", DataType::Int64, true),
        ]));
        let watermark_ms = state.watermark().map(|w| w / 1000);
        Ok(vec![RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![key_text])),
                Arc::new(Int64Array::from(vec![rows.num_rows() as i64])),
                Arc::new(Int64Array::from(vec![total])),
                Arc::new(BooleanArray::from(vec![timed_out])),
                Arc::new(Int64Array::from(vec![watermark_ms])),
            ],
        )?])
    }
}

weir_sdk::export_stateful!(KeyedTestkit);

impl KeyedTestkit {
    /// The latest event time among `rows` (ms).
    pub fn latest_event_ms(&self, rows: &RecordBatch) -> Result<i64, Error> {
        let column = rows
            .column_by_name(&self.config.time_column)
            .filter(|c| c.data_type() == &DataType::Int64)
            .ok_or_else(|| Error::input("expected an int64 `ts` column"))?;
        Ok(column
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .max()
            .unwrap_or(0))
    }
}

/// The first key column as text (strings and int64s).
pub fn key_text(key: &RecordBatch) -> Result<String, Error> {
    let column = key.column(0);
    match column.data_type() {
        DataType::Utf8 => Ok(column.as_string::<i32>().value(0).to_string()),
        DataType::Int64 => Ok(column.as_primitive::<Int64Type>().value(0).to_string()),
        other => Err(Error::input(format!("key type {other} is not supported"))),
    }
}
