//! Example stateful function: session windows with a gap timeout, the
//! flatMapGroupsWithState example of the reference, as a Wasm plugin.
//!
//! Each row at time `t` opens the session `[t, t + gap)`; sessions of a key
//! that overlap or touch merge. A session is emitted — key columns,
//! `window_start`, `window_end`, `count` — once the watermark reaches its
//! end, and its state is dropped. The output matches the built-in
//! `window = { session = { gap = ... } }` aggregation with `count`.
//!
//! ```toml
//! [watermark]
//! column = "ts"
//! delay = "10m"
//!
//! [stateful]
//! name = "sessions"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_sessionize.wasm"
//! key = ["user"]
//! state_timeout = "event_time"
//! config = { time_column = "ts", gap = "30m" }
//! ```

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};
use weir_sdk::{Config, Error, GroupState, StatefulFunction};

/// Configuration of the `sessionize` function.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionizeConfig {
    /// Event-time column: a timestamp, or int64 milliseconds.
    time_column: String,
    /// Inactivity gap that closes a session, e.g. "30m".
    gap: String,
}

/// One open session of a key: `[start, end)` in ms, and its row count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// First event time (ms).
    pub start: i64,
    /// Last event time + gap (ms, exclusive).
    pub end: i64,
    /// Rows in the session.
    pub count: i64,
}

/// The sessionize function.
pub struct Sessionize {
    time_column: String,
    gap_ms: i64,
}

impl StatefulFunction for Sessionize {
    fn new(config: Config) -> Result<Self, Error> {
        let config: SessionizeConfig = config.parse()?;
        let gap = humantime::parse_duration(&config.gap)
            .map_err(|e| Error::config(format!("invalid gap {:?}: {e}", config.gap)))?;
        if gap.is_zero() {
            return Err(Error::config("the gap must be positive"));
        }
        Ok(Sessionize {
            time_column: config.time_column,
            gap_ms: gap.as_millis() as i64,
        })
    }

    fn process_group(
        &mut self,
        key: &RecordBatch,
        rows: RecordBatch,
        state: &mut GroupState<'_>,
    ) -> Result<Vec<RecordBatch>, Error> {
        let mut sessions: Vec<Session> = state.get()?.unwrap_or_default();
        for t in self.event_times(&rows)? {
            merge(
                &mut sessions,
                Session {
                    start: t,
                    end: t + self.gap_ms,
                    count: 1,
                },
            );
        }
        // A session is complete once the watermark reaches its end.
        let watermark_ms = state.watermark().map(|w| w.div_euclid(1000));
        let (closed, open): (Vec<Session>, Vec<Session>) = sessions
            .into_iter()
            .partition(|s| watermark_ms.is_some_and(|wm| s.end <= wm));
        match open.iter().map(|s| s.end).min() {
            Some(first_end) => {
                state.update(&open)?;
                // The host fires when the watermark passes the timeout, so
                // the timeout is the session's last included microsecond.
                state.set_timeout_timestamp(first_end * 1000 - 1)?;
            }
            None => state.remove(),
        }
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![session_rows(key, &closed)?])
    }
}

weir_sdk::export_stateful!(Sessionize);

impl Sessionize {
    /// The rows' event times in milliseconds.
    fn event_times(&self, rows: &RecordBatch) -> Result<Vec<i64>, Error> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let column = rows
            .column_by_name(&self.time_column)
            .ok_or_else(|| Error::input(format!("time column `{}` not found", self.time_column)))?;
        let (values, to_ms): (Vec<Option<i64>>, ToMillis) = match column.data_type() {
            DataType::Int64 => (column.as_primitive::<Int64Type>().iter().collect(), |v| v),
            DataType::Timestamp(TimeUnit::Second, _) => (
                column
                    .as_primitive::<TimestampSecondType>()
                    .iter()
                    .collect(),
                |v| v * 1000,
            ),
            DataType::Timestamp(TimeUnit::Millisecond, _) => (
                column
                    .as_primitive::<TimestampMillisecondType>()
                    .iter()
                    .collect(),
                |v| v,
            ),
            DataType::Timestamp(TimeUnit::Microsecond, _) => (
                column
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .collect(),
                |v| v.div_euclid(1000),
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => (
                column
                    .as_primitive::<TimestampNanosecondType>()
                    .iter()
                    .collect(),
                |v| v.div_euclid(1_000_000),
            ),
            other => {
                return Err(Error::input(format!(
                    "time column `{}` has type {other}; expected a timestamp or int64 ms",
                    self.time_column
                )));
            }
        };
        // Rows without an event time belong to no session (as in Spark).
        Ok(values.into_iter().flatten().map(to_ms).collect())
    }
}

/// Converts a time value of the column's unit to milliseconds.
type ToMillis = fn(i64) -> i64;

/// Adds `new` to `sessions`, merging every session it overlaps or touches.
pub fn merge(sessions: &mut Vec<Session>, mut new: Session) {
    while let Some(i) = sessions
        .iter()
        .position(|s| s.start <= new.end && new.start <= s.end)
    {
        let other = sessions.swap_remove(i);
        new.start = new.start.min(other.start);
        new.end = new.end.max(other.end);
        new.count += other.count;
    }
    sessions.push(new);
    sessions.sort_by_key(|s| s.start);
}

/// Output rows: the key columns repeated, then the session's bounds and count.
fn session_rows(key: &RecordBatch, sessions: &[Session]) -> Result<RecordBatch, Error> {
    let repeat = UInt32Array::from(vec![0; sessions.len()]);
    let mut fields: Vec<Field> = key
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = key
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c, &repeat, None))
        .collect::<Result<_, _>>()?;
    let utc: Arc<str> = Arc::from("+00:00");
    let time_type = DataType::Timestamp(TimeUnit::Millisecond, Some(utc.clone()));
    fields.push(Field::new("window_start", time_type.clone(), false));
    fields.push(Field::new("window_end", time_type, false));
    fields.push(Field::new("count", DataType::Int64, false));
    let starts = TimestampMillisecondArray::from_iter_values(sessions.iter().map(|s| s.start))
        .with_timezone(utc.clone());
    let ends = TimestampMillisecondArray::from_iter_values(sessions.iter().map(|s| s.end))
        .with_timezone(utc);
    columns.push(Arc::new(starts));
    columns.push(Arc::new(ends));
    columns.push(Arc::new(Int64Array::from_iter_values(
        sessions.iter().map(|s| s.count),
    )));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::LocalGroupState;

    fn rows(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(times.to_vec()))]).unwrap()
    }

    fn key() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "user",
            DataType::Int64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![7]))]).unwrap()
    }

    #[test]
    fn sessions_merge_and_close_at_the_watermark() {
        let mut f =
            Sessionize::new(Config::from_json(r#"{"time_column":"ts","gap":"10ms"}"#)).unwrap();
        let mut local = LocalGroupState {
            watermark_us: Some(0),
            ..Default::default()
        };
        let out = f
            .process_group(
                &key(),
                rows(&[100, 105, 130]),
                &mut GroupState::local(&mut local),
            )
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(local.timeout_us, Some(114_999));

        local.watermark_us = Some(120_000);
        local.timed_out = true;
        let out = f
            .process_group(&key(), rows(&[]), &mut GroupState::local(&mut local))
            .unwrap();
        let counts = out[0]
            .column_by_name("count")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(counts.values().to_vec(), vec![2]);
        assert_eq!(
            local.timeout_us,
            Some(139_999),
            "the open session [130, 140) remains"
        );
    }
}
