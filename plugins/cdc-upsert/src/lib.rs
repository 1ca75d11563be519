//! Example foreachBatch sink, the CDC pattern of the reference: Debezium-
//! style change rows (`op` c/u/d, a key, `ts_ms`) are reduced to the latest
//! change per key within the batch and written to an upsert output; the
//! output's `newer_than` guard and delete marker make older changes from
//! later batches lose. Optionally every raw change also goes to an archive
//! output (fan-out).
//!
//! ```toml
//! [sink]
//! kind = "foreach_batch"
//! name = "cdc"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_cdc_upsert.wasm"
//! config = { key = "user_id", output = "users", archive = "raw" }
//!
//! [sink.outputs.users]
//! kind = "postgres"
//! url = "${DATABASE_URL}"
//! table = "users"
//! mode = "upsert"
//! key = ["user_id"]
//! newer_than = "ts_ms"
//! delete_when = { column = "op", equals = "d" }
//!
//! [sink.outputs.raw]
//! kind = "parquet"
//! path = "out/raw-changes"
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_schema::DataType;
use serde::Deserialize;
use weir_sdk::{BatchSink, Config, Error};

/// Configuration of the `cdc-upsert` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// Key column (int64 or string).
    pub key: String,
    /// Change time column (int64 ms), default `ts_ms`.
    #[serde(default = "ts_ms")]
    pub time_column: String,
    /// Output receiving the latest change per key.
    pub output: String,
    /// Output receiving every raw change, if set.
    pub archive: Option<String>,
}

fn ts_ms() -> String {
    "ts_ms".into()
}

/// The CDC sink.
pub struct CdcUpsert {
    config: CdcConfig,
}

impl BatchSink for CdcUpsert {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(CdcUpsert {
            config: config.parse()?,
        })
    }

    fn write_batch(&mut self, _epoch: u64, rows: RecordBatch) -> Result<(), Error> {
        if let Some(archive) = &self.config.archive {
            weir_sdk::batch_sink::write(archive, &rows)?;
        }
        let latest = self.latest_per_key(&rows)?;
        weir_sdk::batch_sink::write(&self.config.output, &latest)
    }
}

weir_sdk::export_batch_sink!(CdcUpsert);

impl CdcUpsert {
    /// The latest change of each key (greatest time; the later row on a
    /// tie), in first-seen key order.
    pub fn latest_per_key(&self, rows: &RecordBatch) -> Result<RecordBatch, Error> {
        let column = |name: &str| {
            rows.column_by_name(name)
                .ok_or_else(|| Error::input(format!("column `{name}` not found")))
        };
        let keys = column(&self.config.key)?;
        let times = column(&self.config.time_column)?;
        if times.data_type() != &DataType::Int64 {
            return Err(Error::input(format!(
                "`{}` must be int64 milliseconds",
                self.config.time_column
            )));
        }
        let times = times.as_primitive::<Int64Type>();
        let key_text = |i: usize| -> Result<Option<String>, Error> {
            if keys.is_null(i) {
                return Ok(None);
            }
            Ok(Some(match keys.data_type() {
                DataType::Int64 => keys.as_primitive::<Int64Type>().value(i).to_string(),
                DataType::Utf8 => keys.as_string::<i32>().value(i).to_string(),
                other => return Err(Error::input(format!("key type {other} is not supported"))),
            }))
        };
        // A change without a key cannot be applied: it is passed on so the
        // output refuses it loudly rather than dropped here.
        enum Slot {
            Key(String),
            Keyless(usize),
        }
        let mut best: HashMap<String, usize> = HashMap::new();
        let mut slots = Vec::new();
        for i in 0..rows.num_rows() {
            match key_text(i)? {
                None => slots.push(Slot::Keyless(i)),
                Some(key) => match best.entry(key) {
                    Entry::Occupied(mut seen) => {
                        if times.value(i) >= times.value(*seen.get()) {
                            *seen.get_mut() = i;
                        }
                    }
                    Entry::Vacant(new) => {
                        slots.push(Slot::Key(new.key().clone()));
                        new.insert(i);
                    }
                },
            }
        }
        let picked: Vec<u32> = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Key(key) => best[&key] as u32,
                Slot::Keyless(i) => i as u32,
            })
            .collect();
        Ok(arrow_select::take::take_record_batch(
            rows,
            &UInt32Array::from(picked),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn keeps_the_latest_change_per_key() {
        let rows = RecordBatch::try_from_iter(vec![
            (
                "op",
                Arc::new(StringArray::from(vec!["c", "u", "c", "d", "u"])) as _,
            ),
            (
                "user_id",
                Arc::new(Int64Array::from(vec![1, 1, 2, 1, 2])) as _,
            ),
            (
                "ts_ms",
                Arc::new(Int64Array::from(vec![10, 30, 5, 20, 7])) as _,
            ),
        ])
        .unwrap();
        let sink =
            CdcUpsert::new(Config::from_json(r#"{"key":"user_id","output":"users"}"#)).unwrap();
        let latest = sink.latest_per_key(&rows).unwrap();
        let ts = latest
            .column_by_name("ts_ms")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ts.values().to_vec(), vec![30, 7]);
    }
}
