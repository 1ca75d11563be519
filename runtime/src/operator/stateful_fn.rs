//! Wasm stateful functions (Spark's flatMapGroupsWithState): the host
//! groups each batch by key, calls the plugin once per key with the key's
//! rows and its state, then calls it once per key whose timeout fired.
//!
//! State rows:
//!
//! ```text
//! 0x00 "layout"                  key and input column types (JSON)
//! 0x10 | key                     the key's state bytes and timeout
//! 0x11 | timeout (µs) | key      timer index: due timers are a prefix scan
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use serde::{Deserialize, Serialize};

use super::{
    Operator, OperatorContext, StoredField, earliest_time, encode_i64, event_times_ms, load_field,
    store_field,
};
use crate::config::{StateTimeout, StatefulFunctionConfig};
use crate::error::{PluginFailure, Result, WeirError};
use crate::plugin::{BatchEnv, GroupState, StatefulComponent, StatefulInstance};
use crate::quarantine::{kept_rows, take_rows};
use crate::query::StageProgress;
use crate::state::StateStore;

mod quarantine;

const LAYOUT_KEY: &[u8] = b"\x00layout";
const GROUP_PREFIX: u8 = 0x10;
const TIMER_PREFIX: u8 = 0x11;

/// A key's stored state.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct StoredGroup {
    value: Option<Vec<u8>>,
    timeout_us: Option<i64>,
}

/// Column names and types the state was built for, kept in the state so a
/// restarted query can fire timeouts before it has seen any input.
#[derive(Serialize, Deserialize)]
struct StoredLayout {
    key: Vec<StoredField>,
    input: Vec<StoredField>,
}

struct Layout {
    /// The layout as stored.
    stored: Vec<u8>,
    converter: RowConverter,
    key_schema: SchemaRef,
    key_indices: Vec<usize>,
    input_schema: SchemaRef,
}

/// The stateful function operator: a plugin instance plus the grouping.
pub struct StatefulFunction {
    config: StatefulFunctionConfig,
    instance: StatefulInstance,
    layout: Option<Layout>,
    /// Rows of the running batch, grouped when the batch ends.
    pending: Vec<RecordBatch>,
    output_schema: Option<SchemaRef>,
    last: StageProgress,
    /// The query's id: with the batch id, it seeds the plugin's random
    /// stream (see [`crate::plugin::BatchEnv`]).
    query_id: uuid::Uuid,
    /// The component, to start a fresh instance after a trap (quarantine).
    component: Option<Arc<StatefulComponent>>,
    /// The running batch's clock and seed (each key's call derives its own).
    env: Option<BatchEnv>,
}

impl StatefulFunction {
    /// The operator for `config`, calling `instance`.
    pub fn new(config: StatefulFunctionConfig, instance: StatefulInstance) -> StatefulFunction {
        StatefulFunction {
            config,
            instance,
            layout: None,
            pending: Vec::new(),
            output_schema: None,
            last: StageProgress::default(),
            query_id: uuid::Uuid::nil(),
            component: None,
            env: None,
        }
    }

    /// The operator with the component its instance came from: needed by
    /// `on_error = "quarantine"`, which replaces an instance that trapped.
    pub fn with_component(mut self, component: Arc<StatefulComponent>) -> StatefulFunction {
        self.component = Some(component);
        self
    }

    /// The operator of query `query_id`, whose random streams are seeded
    /// from that id (a replay draws the same numbers).
    pub fn for_query(mut self, query_id: uuid::Uuid) -> StatefulFunction {
        self.query_id = query_id;
        self
    }

    fn schema_error(&self, reason: String) -> WeirError {
        WeirError::Schema {
            context: format!("stateful stage `{}`", self.config.stage.name),
            reason,
        }
    }

    /// The layout, from the state or (first time) from `input`'s schema.
    fn layout(&mut self, input: Option<&SchemaRef>, state: &mut StateStore) -> Result<()> {
        if let Some(layout) = &self.layout {
            // Every key group with keys records the layout, so a restart
            // can read each group alone.
            if input.is_some() && state.get(LAYOUT_KEY)?.is_none() {
                state.put(LAYOUT_KEY, &layout.stored)?;
            }
            return Ok(());
        }
        let stored = match (state.get(LAYOUT_KEY)?, input) {
            (Some(bytes), _) => serde_json::from_slice::<StoredLayout>(&bytes).map_err(|e| {
                WeirError::CheckpointCorrupt {
                    path: "stateful function state layout".into(),
                    reason: e.to_string(),
                }
            })?,
            (None, Some(schema)) => {
                let mut key = Vec::new();
                for name in &self.config.key {
                    let field = schema.field_with_name(name).map_err(|_| {
                        self.schema_error(format!(
                            "key column `{name}` not found in {:?}",
                            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                        ))
                    })?;
                    key.push(store_field(field));
                }
                let stored = StoredLayout {
                    key,
                    input: schema.fields().iter().map(|f| store_field(f)).collect(),
                };
                state.put(
                    LAYOUT_KEY,
                    &serde_json::to_vec(&stored).expect("serialisable"),
                )?;
                stored
            }
            (None, None) => return Ok(()),
        };
        let fields =
            |columns: &[StoredField]| columns.iter().map(load_field).collect::<Result<Vec<_>>>();
        let key_fields = fields(&stored.key)?;
        let input_schema = Arc::new(Schema::new(fields(&stored.input)?));
        let key_indices = key_fields
            .iter()
            .map(|f| input_schema.index_of(f.name()))
            .collect::<Result<_, _>>()
            .map_err(|e| WeirError::Internal(format!("stored layout: {e}")))?;
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| WeirError::format("grouping key", e))?;
        self.layout = Some(Layout {
            stored: serde_json::to_vec(&stored).expect("serialisable"),
            converter,
            key_schema: Arc::new(Schema::new(key_fields)),
            key_indices,
            input_schema,
        });
        Ok(())
    }

    /// Calls the plugin for every key of `input`, in key order; `origin`
    /// maps its rows to the batch's (some may have been set aside).
    fn process_groups(
        &mut self,
        input: RecordBatch,
        origin: &[usize],
        ctx: &mut OperatorContext<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.layout(Some(&input.schema()), ctx.state)?;
        let layout = self.layout.as_ref().expect("set above");
        if input.schema().fields() != layout.input_schema.fields() {
            return Err(self.schema_error(format!(
                "the input columns changed: the state was built for {:?}, the batch has {:?}",
                layout.input_schema.fields(),
                input.schema().fields()
            )));
        }
        let keys = input
            .project(&layout.key_indices)
            .map_err(|e| WeirError::Internal(format!("projecting key columns: {e}")))?;
        let rows = layout
            .converter
            .convert_columns(keys.columns())
            .map_err(|e| WeirError::format("grouping key", e))?;
        let mut groups: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
        for i in 0..input.num_rows() {
            groups.entry(rows.row(i).data()).or_default().push(i as u32);
        }
        for (key, indices) in groups {
            let first = indices[0] as usize;
            let rows: Vec<usize> = indices.iter().map(|&i| origin[i as usize]).collect();
            let group = take_record_batch(&input, &UInt32Array::from(indices))
                .map_err(|e| WeirError::Internal(format!("grouping rows: {e}")))?;
            let key_batch = keys.slice(first, 1);
            self.begin_key(key);
            match self.call(key, &key_batch, &group, false, ctx, out) {
                Ok(()) => {}
                Err(e) if self.quarantines() && crate::quarantine::blames_rows(&e) => {
                    self.quarantine_group(key, &key_batch, &group, &rows, e, ctx, out)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Calls the plugin, with no rows, for every key whose timeout is due.
    fn fire_timeouts(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let threshold_us = match self.config.timeout {
            StateTimeout::None => return Ok(()),
            StateTimeout::EventTime => match ctx.watermark_ms {
                Some(wm) => wm.saturating_mul(1000),
                None => return Ok(()),
            },
            StateTimeout::ProcessingTime => ctx.batch_time_ms.saturating_mul(1000),
        };
        // Collected first: firing a timer rewrites the index. A timer set by
        // a call is never due in the same batch (it is >= the watermark or
        // the batch time), so one pass fires each due timer exactly once.
        let mut due = Vec::new();
        ctx.state.scan_from(&[TIMER_PREFIX], &mut |key, _| {
            let is_due = key[0] == TIMER_PREFIX && super::decode_i64(&key[1..9]) < threshold_us;
            if is_due {
                due.push(key[9..].to_vec());
            }
            is_due
        })?;
        if due.is_empty() {
            return Ok(());
        }
        self.layout(None, ctx.state)?;
        let layout = self
            .layout
            .as_ref()
            .ok_or_else(|| WeirError::Internal("timers without a stored layout".into()))?;
        let empty = RecordBatch::new_empty(layout.input_schema.clone());
        let parser = layout.converter.parser();
        let mut timed_out = Vec::with_capacity(due.len());
        for key in &due {
            let columns = layout
                .converter
                .convert_rows([parser.parse(key)])
                .map_err(|e| WeirError::format("grouping key", e))?;
            let key_batch = RecordBatch::try_new(layout.key_schema.clone(), columns)
                .map_err(|e| WeirError::Internal(format!("key batch: {e}")))?;
            timed_out.push(key_batch);
        }
        for (key, key_batch) in due.iter().zip(timed_out) {
            self.begin_key(key);
            self.call(key, &key_batch, &empty, true, ctx, out)?;
        }
        Ok(())
    }

    /// The `group-state` a call gets for a key stored as `stored`.
    fn lend(&self, stored: &StoredGroup, timed_out: bool, ctx: &OperatorContext<'_>) -> GroupState {
        GroupState {
            value: stored.value.clone(),
            changed: false,
            timeout_us: None,
            timeout_kind: self.config.timeout,
            timed_out,
            watermark_us: ctx.watermark_ms.map(|w| w.saturating_mul(1000)),
            batch_time_us: ctx.batch_time_ms.saturating_mul(1000),
        }
    }

    /// Sets the clock and seed of `key`'s call in the running batch.
    fn begin_key(&mut self, key: &[u8]) {
        if let Some(env) = self.env {
            self.instance.begin_batch(env.for_key(key));
        }
    }

    /// The key `key`'s stored state.
    fn stored(
        &self,
        key: &[u8],
        key_batch: &RecordBatch,
        ctx: &OperatorContext<'_>,
    ) -> Result<StoredGroup> {
        let record_key = prefixed(GROUP_PREFIX, &[key]);
        Ok(match ctx.state.get(&record_key)? {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| WeirError::CheckpointCorrupt {
                    path: format!("state of stage `{}`", self.config.stage.name),
                    reason: format!("key {}: {e}", describe_key(key_batch)),
                })?
            }
            None => StoredGroup::default(),
        })
    }

    /// One `process-group` call and what it changes in the state.
    fn call(
        &mut self,
        key: &[u8],
        key_batch: &RecordBatch,
        rows: &RecordBatch,
        timed_out: bool,
        ctx: &mut OperatorContext<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let record_key = prefixed(GROUP_PREFIX, &[key]);
        let stored = self.stored(key, key_batch, ctx)?;
        let lent = self.lend(&stored, timed_out, ctx);
        self.last.calls += 1;
        let call = self
            .instance
            .process_group(key_batch, rows, lent)
            .map_err(|e| with_key(e, key_batch))?;
        for batch in call.outputs {
            match &self.output_schema {
                None => self.output_schema = Some(batch.schema()),
                Some(expected) if *expected != batch.schema() => {
                    return Err(WeirError::PluginKey {
                        stage: self.config.stage.name.clone(),
                        key: describe_key(key_batch),
                        failure: PluginFailure::InvalidOutput {
                            reason: format!(
                                "output schema changed: first {:?}, now {:?}",
                                expected.fields(),
                                batch.schema().fields()
                            ),
                        },
                    });
                }
                Some(_) => {}
            }
            if batch.num_rows() > 0 {
                out.push(batch);
            }
        }
        // Timeouts are reset by every call (Spark): the stored one is
        // whatever this call set.
        let next = StoredGroup {
            value: call.state.value,
            timeout_us: call.state.timeout_us,
        };
        if next == stored {
            return Ok(());
        }
        if let Some(old) = stored.timeout_us {
            ctx.state
                .delete(&prefixed(TIMER_PREFIX, &[&encode_i64(old), key]))?;
        }
        if let Some(new) = next.timeout_us {
            ctx.state
                .put(&prefixed(TIMER_PREFIX, &[&encode_i64(new), key]), &[])?;
        }
        if next == StoredGroup::default() {
            ctx.state.delete(&record_key)
        } else {
            let bytes =
                postcard::to_stdvec(&next).map_err(|e| WeirError::Internal(e.to_string()))?;
            ctx.state.put(&record_key, &bytes)
        }
    }
}

impl Operator for StatefulFunction {
    fn key_columns(&self) -> Vec<String> {
        self.config.key.clone()
    }

    fn start_batch(&mut self) {
        self.last.calls = 0;
        self.last.duration = std::time::Duration::ZERO;
    }

    fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let batch = match (&self.config.event_time_column, ctx.late_rows_watermark_ms) {
            // Spark drops late rows before a function with event-time
            // timeouts sees them: rows at or before the watermark.
            (Some(column), Some(wm)) => {
                let times = event_times_ms(batch.column_by_name(column).ok_or_else(|| {
                    self.schema_error(format!("the event-time column `{column}` is missing"))
                })?)?;
                let keep: BooleanArray = times
                    .iter()
                    .map(|t| Some(t.is_none_or(|t| t > wm)))
                    .collect();
                ctx.rows_dropped_by_watermark += (keep.len() - keep.true_count()) as u64;
                filter_record_batch(batch, &keep)
                    .map_err(|e| WeirError::Internal(format!("dropping late rows: {e}")))?
            }
            _ => batch.clone(),
        };
        if batch.num_rows() > 0 {
            self.pending.push(batch);
        }
        Ok(Vec::new())
    }

    fn handle_batch_end(&mut self, ctx: &mut OperatorContext<'_>) -> Result<Vec<RecordBatch>> {
        let started = Instant::now();
        self.env = Some(BatchEnv::for_batch(
            &self.query_id,
            &self.config.stage.name,
            ctx.batch_id,
            ctx.batch_time_ms,
        ));
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        if let Some(first) = pending.first() {
            let input = concat_batches(&first.schema(), &pending)
                .map_err(|e| self.schema_error(format!("input batches differ: {e}")))?;
            // A replay leaves out the rows the first attempt set aside.
            ctx.quarantine.rows = ctx.quarantine.recorded.clone();
            let kept = kept_rows(input.num_rows(), 0, &ctx.quarantine.rows);
            let rows = if kept.len() == input.num_rows() {
                input.clone()
            } else {
                take_rows(&input, &kept)?
            };
            self.process_groups(rows, &kept, ctx, &mut out)?;
            self.write_dead_letters(&input, ctx)?;
        }
        self.fire_timeouts(ctx, &mut out)?;
        // One call per key gives many small batches: hand the sink one.
        if out.len() > 1 {
            let schema = out[0].schema();
            out =
                vec![concat_batches(&schema, &out).map_err(|e| {
                    WeirError::Internal(format!("joining the stage's outputs: {e}"))
                })?];
        }
        self.last.name = self.config.stage.name.clone();
        self.last.duration += started.elapsed();
        self.last.counters = self.instance.counters().clone();
        Ok(out)
    }

    fn has_work_at(
        &self,
        state: &StateStore,
        watermark_ms: Option<i64>,
        now_ms: Option<i64>,
    ) -> Result<bool> {
        let threshold_ms = match self.config.timeout {
            StateTimeout::None => None,
            StateTimeout::EventTime => watermark_ms,
            StateTimeout::ProcessingTime => now_ms,
        };
        let Some(threshold_ms) = threshold_ms else {
            return Ok(false);
        };
        Ok(earliest_time(state, TIMER_PREFIX)?
            .is_some_and(|due_us| due_us < threshold_ms.saturating_mul(1000)))
    }

    fn evicts_by_watermark(&self) -> bool {
        self.config.timeout == StateTimeout::EventTime
    }

    /// The function emits whatever rows it likes: none of their columns is
    /// bound to the watermark (Spark's `flatMapGroupsWithState` likewise).
    fn output_watermark(&self, _input_ms: i64) -> Option<i64> {
        None
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        self.output_schema.clone()
    }

    fn stage_progress(&self) -> Option<StageProgress> {
        Some(self.last.clone())
    }
}

fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![prefix];
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// `column=value` pairs of a one-row key batch, for error messages.
fn describe_key(key: &RecordBatch) -> String {
    let schema = key.schema();
    let pairs: Vec<String> = schema
        .fields()
        .iter()
        .zip(key.columns())
        .map(|(f, c)| {
            let value = if c.is_null(0) {
                "null".to_string()
            } else {
                array_value_to_string(c, 0).unwrap_or_else(|_| "?".into())
            };
            format!("{}={value}", f.name())
        })
        .collect();
    format!("({})", pairs.join(", "))
}

/// Names the key in a plugin failure.
fn with_key(error: WeirError, key: &RecordBatch) -> WeirError {
    match error {
        WeirError::Plugin { stage, failure } => WeirError::PluginKey {
            stage,
            key: describe_key(key),
            failure,
        },
        other => other,
    }
}
