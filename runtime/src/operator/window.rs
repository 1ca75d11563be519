//! Windowed aggregation over event time: tumbling and sliding windows,
//! grouped by columns, in Spark's three output modes.
//!
//! State rows are keyed `0x01 | window end | window start | group key`
//! (sortable encodings), so the windows a watermark closes are a prefix scan:
//! emitting and evicting costs O(windows due), not O(state).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

mod session;

use self::session::{SESSION_INDEX, Session, load_sessions, merge_session};
use super::accumulate::{Acc, AggregateFn, Family, Input, build_column};
use super::{
    Operator, OperatorContext, StoredField, decode_i64, earliest_time, encode_i64, load_field,
    load_type, store_field,
};
use crate::config::OutputMode;
use crate::error::{Result, WeirError};
use crate::state::StateStore;

const LAYOUT_KEY: &[u8] = b"\x00layout";
const WINDOW_PREFIX: u8 = 0x01;

/// Window shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// Session windows per group: each row opens `[t, t + gap_ms)` and
    /// sessions that overlap or touch merge, across batches.
    Session {
        /// Inactivity gap that closes a session.
        gap_ms: i64,
    },
}

impl WindowKind {
    /// The `[start, end)` windows containing time `t`, latest first.
    fn windows(self, t: i64) -> impl Iterator<Item = (i64, i64)> {
        let (size, slide) = match self {
            WindowKind::Tumbling { size_ms } => (size_ms, size_ms),
            WindowKind::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            WindowKind::Session { gap_ms } => (gap_ms, gap_ms),
        };
        let last_start = t - t.rem_euclid(slide);
        (0..)
            .map(move |i| last_start - i * slide)
            .take_while(move |start| *start > t - size)
            .map(move |start| (start, start + size))
    }
}

/// One aggregate of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    /// The function.
    pub function: AggregateFn,
    /// Its input column (`None`: `count` of rows).
    pub column: Option<String>,
    /// Output column name.
    pub name: String,
}

/// What to aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowAggregateConfig {
    /// Grouping columns (besides the window).
    pub group_by: Vec<String>,
    /// Event-time column the windows are over.
    pub time_column: String,
    /// Window shape.
    pub window: WindowKind,
    /// Aggregates, in output order.
    pub aggregates: Vec<AggregateSpec>,
    /// What each batch emits.
    pub output_mode: OutputMode,
}

/// Input column names and types the state was built for, kept in the state
/// itself so a restarted query can emit before it has seen any input.
#[derive(Serialize, Deserialize)]
struct StoredLayout {
    group: Vec<StoredField>,
    aggregate_types: Vec<Option<String>>,
}

struct Layout {
    converter: RowConverter,
    families: Vec<Family>,
    schema: SchemaRef,
}

/// The windowed aggregation operator.
pub struct WindowAggregate {
    config: WindowAggregateConfig,
    layout: Option<Layout>,
    /// Accumulators touched in the running batch.
    touched: BTreeMap<Vec<u8>, Vec<Acc>>,
    /// Session windows: the sessions of each group touched in the running
    /// batch, and the starts of the sessions this batch changed.
    sessions: BTreeMap<Vec<u8>, (Vec<Session>, std::collections::BTreeSet<i64>)>,
}

impl WindowAggregate {
    /// An operator for `config`.
    pub fn new(config: WindowAggregateConfig) -> WindowAggregate {
        WindowAggregate {
            config,
            layout: None,
            touched: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    fn build_layout(&self, stored: &StoredLayout) -> Result<Layout> {
        let mut fields = Vec::new();
        let mut sort_fields = Vec::new();
        for stored in &stored.group {
            let field = load_field(stored)?;
            sort_fields.push(SortField::new(field.data_type().clone()));
            fields.push(field);
        }
        let timestamp = DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("+00:00")));
        fields.push(Field::new("window_start", timestamp.clone(), false));
        fields.push(Field::new("window_end", timestamp, false));
        let mut families = Vec::new();
        for (spec, input_type) in self.config.aggregates.iter().zip(&stored.aggregate_types) {
            let family = match input_type {
                None => Family::Rows,
                Some(t) => Family::of(&load_type(t)?).ok_or_else(|| {
                    self.schema_error(format!(
                        "aggregate `{}`: column type {t} cannot be aggregated",
                        spec.name
                    ))
                })?,
            };
            let output = spec
                .function
                .output_type(family)
                .map_err(|e| self.schema_error(format!("aggregate `{}`: {e}", spec.name)))?;
            fields.push(Field::new(
                &spec.name,
                output,
                spec.function != AggregateFn::Count,
            ));
            families.push(family);
        }
        let converter =
            RowConverter::new(sort_fields).map_err(|e| WeirError::format("grouping key", e))?;
        Ok(Layout {
            converter,
            families,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    fn schema_error(&self, reason: String) -> WeirError {
        WeirError::Schema {
            context: "windowed aggregation".into(),
            reason,
        }
    }

    /// The layout, from the state or (first time) from `input`'s schema.
    fn layout(
        &mut self,
        input: Option<&SchemaRef>,
        state: &mut StateStore,
    ) -> Result<Option<&Layout>> {
        if self.layout.is_none() {
            let stored = match state.get(LAYOUT_KEY)? {
                Some(bytes) => {
                    Some(serde_json::from_slice::<StoredLayout>(&bytes).map_err(|e| {
                        WeirError::CheckpointCorrupt {
                            path: "state layout".into(),
                            reason: e.to_string(),
                        }
                    })?)
                }
                None => match input {
                    Some(schema) => {
                        let stored = self.describe(schema)?;
                        state.put(
                            LAYOUT_KEY,
                            &serde_json::to_vec(&stored).expect("serialisable"),
                        )?;
                        Some(stored)
                    }
                    None => None,
                },
            };
            if let Some(stored) = stored {
                self.layout = Some(self.build_layout(&stored)?);
            }
        } else if let Some(schema) = input
            && state.get(LAYOUT_KEY)?.is_none()
        {
            // Every key group with windows records the layout, so a
            // restart can read each group alone.
            let stored = self.describe(schema)?;
            state.put(
                LAYOUT_KEY,
                &serde_json::to_vec(&stored).expect("serialisable"),
            )?;
        }
        Ok(self.layout.as_ref())
    }

    fn describe(&self, schema: &SchemaRef) -> Result<StoredLayout> {
        let field = |name: &str| {
            schema.field_with_name(name).map_err(|_| {
                self.schema_error(format!(
                    "column `{name}` not found in {:?}",
                    schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                ))
            })
        };
        field(&self.config.time_column)?;
        let group = self
            .config
            .group_by
            .iter()
            .map(|g| field(g).map(store_field))
            .collect::<Result<_>>()?;
        let aggregate_types = self
            .config
            .aggregates
            .iter()
            .map(|a| {
                a.column
                    .as_deref()
                    .map(|c| field(c).map(|f| f.data_type().to_string()))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(StoredLayout {
            group,
            aggregate_types,
        })
    }

    fn emit(&self, rows: Vec<(Vec<u8>, Vec<Acc>)>) -> Result<Vec<RecordBatch>> {
        let Some(layout) = &self.layout else {
            return Ok(Vec::new());
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let parser = layout.converter.parser();
        let group_rows = rows.iter().map(|(key, _)| parser.parse(&key[17..]));
        let mut columns = layout
            .converter
            .convert_rows(group_rows)
            .map_err(|e| WeirError::format("grouping key", e))?;
        let window = |offset: usize| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|(key, _)| decode_i64(&key[offset..])),
                )
                .with_timezone("+00:00"),
            )
        };
        columns.push(window(9));
        columns.push(window(1));
        for (i, field) in layout
            .schema
            .fields()
            .iter()
            .skip(self.config.group_by.len() + 2)
            .enumerate()
        {
            columns.push(build_column(
                field.data_type(),
                rows.iter().map(|(_, accs)| accs[i].result()),
            ));
        }
        let batch = RecordBatch::try_new(layout.schema.clone(), columns)
            .map_err(|e| WeirError::format("aggregation output", e))?;
        Ok(vec![batch])
    }
}

/// The column a window aggregation after another one reads: the event
/// time of each window the first emits (Spark's `window_time`).
pub const WINDOW_TIME: &str = "window_time";

/// `batch` (a window aggregation's output) with [`WINDOW_TIME`] added: each
/// window's end less one millisecond, the last instant inside it (Spark's
/// `window_time` is the end less one microsecond; Weir's windows keep
/// milliseconds).
pub fn with_window_time(batch: &RecordBatch) -> Result<RecordBatch> {
    let ends = batch
        .column_by_name("window_end")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or_else(|| WeirError::Schema {
            context: "window_time".into(),
            reason: "the rows have no window_end column of millisecond timestamps".into(),
        })?;
    let times: TimestampMillisecondArray = ends.unary(|end| end - 1);
    let times = times.with_timezone_opt(ends.timezone());
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        WINDOW_TIME,
        times.data_type().clone(),
        false,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(times));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| WeirError::format("window_time", e))
}

fn window_key(start: i64, end: i64, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + group.len());
    key.push(WINDOW_PREFIX);
    key.extend_from_slice(&encode_i64(end));
    key.extend_from_slice(&encode_i64(start));
    key.extend_from_slice(group);
    key
}

fn decode_accs(bytes: &[u8]) -> Result<Vec<Acc>> {
    postcard::from_bytes(bytes).map_err(|e| WeirError::CheckpointCorrupt {
        path: "aggregation state".into(),
        reason: e.to_string(),
    })
}

/// Event times of `column` in ms since the epoch (timestamps, dates, or
/// int64 already in ms).
pub fn event_times_ms(column: &ArrayRef) -> Result<Int64Array> {
    let as_ms = match column.data_type() {
        DataType::Int64 => column.clone(),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .and_then(|ts| cast(&ts, &DataType::Int64))
                .map_err(|e| WeirError::format("event time", e))?
        }
        other => {
            return Err(WeirError::Schema {
                context: "event time".into(),
                reason: format!(
                    "type {other} is not a time; use a timestamp, date or int64 (ms) column"
                ),
            });
        }
    };
    Ok(as_ms
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .expect("int64"))
}

impl Operator for WindowAggregate {
    fn key_columns(&self) -> Vec<String> {
        self.config.group_by.clone()
    }

    fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let schema = batch.schema();
        self.layout(Some(&schema), ctx.state)?;
        let layout = self.layout.as_ref().expect("layout was just built");
        let times = event_times_ms(
            batch
                .column_by_name(&self.config.time_column)
                .expect("checked by the layout"),
        )?;
        let groups: Vec<ArrayRef> = self
            .config
            .group_by
            .iter()
            .map(|g| batch.column_by_name(g).expect("checked").clone())
            .collect();
        let group_rows = layout
            .converter
            .convert_columns(&groups)
            .map_err(|e| WeirError::format("grouping key", e))?;
        // Rows of no columns are no rows at all: without group keys, every
        // row has the one empty key.
        let group_key = |row: usize| -> &[u8] {
            if groups.is_empty() {
                &[]
            } else {
                group_rows.row(row).data()
            }
        };
        let inputs = self
            .config
            .aggregates
            .iter()
            .zip(&layout.families)
            .map(|(spec, family)| {
                Input::read(
                    spec.column.as_ref().and_then(|c| batch.column_by_name(c)),
                    *family,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // Spark drops a late row for a window aggregate only when every
        // window it belongs to has ended by the watermark (not in complete mode).
        let late_before = match self.config.output_mode {
            OutputMode::Complete => None,
            _ => ctx.late_rows_watermark_ms,
        };
        if let WindowKind::Session { gap_ms } = self.config.window {
            for row in 0..batch.num_rows() {
                if times.is_null(row) {
                    continue;
                }
                let t = times.value(row);
                // A row is late when its own session would already be closed.
                if late_before.is_some_and(|wm| t + gap_ms <= wm) {
                    ctx.rows_dropped_by_watermark += 1;
                    continue;
                }
                let group = group_key(row).to_vec();
                let (sessions, changed) = match self.sessions.get_mut(&group) {
                    Some(entry) => entry,
                    None => {
                        let loaded = load_sessions(ctx.state, &group)?;
                        self.sessions
                            .entry(group)
                            .or_insert((loaded, Default::default()))
                    }
                };
                let mut accs: Vec<Acc> = self
                    .config
                    .aggregates
                    .iter()
                    .map(|a| a.function.empty())
                    .collect();
                for (acc, input) in accs.iter_mut().zip(&inputs) {
                    acc.update(input, row, t);
                }
                let start = merge_session(
                    sessions,
                    Session {
                        start: t,
                        end: t + gap_ms,
                        accs,
                    },
                );
                changed.insert(start);
            }
            return Ok(Vec::new());
        }
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                continue;
            }
            let t = times.value(row);
            let mut kept = false;
            for (start, end) in self.config.window.windows(t) {
                if late_before.is_some_and(|wm| end <= wm) {
                    continue;
                }
                kept = true;
                let key = window_key(start, end, group_key(row));
                let accs = match self.touched.get_mut(&key) {
                    Some(accs) => accs,
                    None => {
                        let loaded = match ctx.state.get(&key)? {
                            Some(bytes) => decode_accs(&bytes)?,
                            None => self
                                .config
                                .aggregates
                                .iter()
                                .map(|a| a.function.empty())
                                .collect(),
                        };
                        self.touched.entry(key).or_insert(loaded)
                    }
                };
                for (acc, input) in accs.iter_mut().zip(&inputs) {
                    acc.update(input, row, t);
                }
            }
            if !kept {
                ctx.rows_dropped_by_watermark += 1;
            }
        }
        Ok(Vec::new())
    }

    fn handle_batch_end(&mut self, ctx: &mut OperatorContext<'_>) -> Result<Vec<RecordBatch>> {
        if let WindowKind::Session { .. } = self.config.window {
            return self.end_session_batch(ctx);
        }
        let touched = std::mem::take(&mut self.touched);
        for (key, accs) in &touched {
            let bytes =
                postcard::to_stdvec(accs).map_err(|e| WeirError::Internal(e.to_string()))?;
            ctx.state.put(key, &bytes)?;
        }
        self.layout(None, ctx.state)?;
        let watermark = ctx.watermark_ms;
        let due = |state: &StateStore, only_due: bool| -> Result<Vec<(Vec<u8>, Vec<Acc>)>> {
            let mut rows = Vec::new();
            let mut failed = None;
            state.scan_from(&[WINDOW_PREFIX], &mut |key, value| {
                if key[0] != WINDOW_PREFIX
                    || (only_due && watermark.is_none_or(|wm| decode_i64(&key[1..]) > wm))
                {
                    return false;
                }
                match decode_accs(value) {
                    Ok(accs) => rows.push((key.to_vec(), accs)),
                    Err(e) => failed = Some(e),
                }
                failed.is_none()
            })?;
            failed.map_or(Ok(rows), Err)
        };
        match self.config.output_mode {
            OutputMode::Complete => self.emit(due(ctx.state, false)?),
            OutputMode::Update => {
                for (key, _) in due(ctx.state, true)? {
                    ctx.state.delete(&key)?;
                }
                self.emit(touched.into_iter().collect())
            }
            OutputMode::Append => {
                let closed = due(ctx.state, true)?;
                for (key, _) in &closed {
                    ctx.state.delete(key)?;
                }
                self.emit(closed)
            }
        }
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
        if self.config.output_mode == OutputMode::Complete {
            return Ok(false);
        }
        let prefix = match self.config.window {
            WindowKind::Session { .. } => SESSION_INDEX,
            _ => WINDOW_PREFIX,
        };
        Ok(earliest_time(state, prefix)?.is_some_and(|end| end <= watermark_ms))
    }

    fn evicts_by_watermark(&self) -> bool {
        // Spark: in append and update modes (complete keeps every window).
        self.config.output_mode != OutputMode::Complete
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        self.layout.as_ref().map(|l| l.schema.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_cover_the_time() {
        let w = WindowKind::Sliding {
            size_ms: 10,
            slide_ms: 5,
        };
        assert_eq!(w.windows(12).collect::<Vec<_>>(), vec![(10, 20), (5, 15)]);
        assert_eq!(w.windows(10).collect::<Vec<_>>(), vec![(10, 20), (5, 15)]);
        assert_eq!(w.windows(-3).collect::<Vec<_>>(), vec![(-5, 5), (-10, 0)]);
        let t = WindowKind::Tumbling { size_ms: 300_000 };
        assert_eq!(
            t.windows(420_000).collect::<Vec<_>>(),
            vec![(300_000, 600_000)]
        );
    }
}
