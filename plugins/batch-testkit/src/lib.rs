//! Test foreachBatch sink: writes each batch's rows to the output named
//! `output`, and
//!
//! - with `stamp = true`, appends two int64 columns: `now_us`, the wall
//!   clock read once per row, and `random`, a random number per row (both
//!   through WASI, for deterministic replay);
//! - with `trap_on_id_multiple_of = N`, traps on any batch holding an `id`
//!   divisible by N, and with `error_on_id_multiple_of = N` returns an
//!   `input` error instead (poison rows, for quarantine).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::Deserialize;
use weir_sdk::{BatchSink, Config, Error};

/// Configuration of the test sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchTestkitConfig {
    /// The output every row goes to.
    pub output: String,
    #[serde(default)]
    stamp: bool,
    trap_on_id_multiple_of: Option<i64>,
    error_on_id_multiple_of: Option<i64>,
}

/// The test sink.
pub struct BatchTestkit {
    config: BatchTestkitConfig,
}

impl BatchSink for BatchTestkit {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(BatchTestkit {
            config: config.parse()?,
        })
    }

    fn write_batch(&mut self, _epoch: u64, rows: RecordBatch) -> Result<(), Error> {
        let c = &self.config;
        if c.trap_on_id_multiple_of.is_some() || c.error_on_id_multiple_of.is_some() {
            let ids = rows
                .column_by_name("id")
                .and_then(|ids| ids.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| Error::input("no int64 column `id`"))?;
            let holds = |n: Option<i64>| {
                n.filter(|n| *n != 0)
                    .is_some_and(|n| ids.iter().flatten().any(|id| id % n == 0))
            };
            if holds(c.trap_on_id_multiple_of) {
                panic!("batch-testkit: trap_on_id matched");
            }
            if holds(c.error_on_id_multiple_of) {
                return Err(Error::input("batch-testkit: error_on_id matched"));
            }
        }
        let rows = if c.stamp { stamp(&rows)? } else { rows };
        weir_sdk::batch_sink::write(&c.output, &rows)
    }
}

weir_sdk::export_batch_sink!(BatchTestkit);

/// `rows` with `now_us` and `random` appended, one reading per row.
fn stamp(rows: &RecordBatch) -> Result<RecordBatch, Error> {
    let mut now_us = Vec::with_capacity(rows.num_rows());
    let mut random = Vec::with_capacity(rows.num_rows());
    for _ in 0..rows.num_rows() {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error::internal(e.to_string()))?
            .as_micros();
        now_us.push(i64::try_from(us).map_err(|e| Error::internal(e.to_string()))?);
        random.push(getrandom::u64().map_err(|e| Error::internal(e.to_string()))? as i64);
    }
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("now_us", DataType::Int64, false));
    fields.push(Field::new("random", DataType::Int64, false));
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(now_us)));
    columns.push(Arc::new(Int64Array::from(random)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::internal(e.to_string()))
}
