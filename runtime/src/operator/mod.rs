//! Stateful operators: steps that keep keyed state across micro-batches:
//! windowed aggregation, deduplication, Wasm stateful functions
//! (flatMapGroupsWithState) whose state the host keeps, and the
//! stream-stream join (an operator of two inputs).
//!
//! As in Arroyo, an operator has one required method, [`Operator::process_batch`],
//! and default hooks the query loop calls at batch boundaries.

mod accumulate;
mod dedup;
mod stateful_fn;
mod static_join;
mod stream_join;
mod window;

use std::str::FromStr;

use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;

pub use accumulate::AggregateFn;
pub use dedup::{Deduplicate, DeduplicateConfig};
pub use stateful_fn::StatefulFunction;
pub use static_join::StaticJoin;
pub use stream_join::StreamJoin;
pub use window::{
    AggregateSpec, WINDOW_TIME, WindowAggregate, WindowAggregateConfig, WindowKind, event_times_ms,
    with_window_time,
};

use crate::error::{Result, WeirError};
use crate::state::StateStore;

/// What an operator sees of the running batch.
pub struct OperatorContext<'a> {
    /// The batch id.
    pub batch_id: u64,
    /// The event-time watermark this batch uses (ms since the epoch), if the
    /// query declares one: windows and sessions it passed are closed, state
    /// it passed is evicted, event-time timeouts before it fire (Spark's
    /// `eventTimeWatermarkForEviction`).
    pub watermark_ms: Option<i64>,
    /// The watermark that judges which input rows are too late: the
    /// previous batch's (Spark 3.4+'s `eventTimeWatermarkForLateEvents`), or
    /// this batch's with `stateful_operator_allow_multiple = false`.
    pub late_rows_watermark_ms: Option<i64>,
    /// The processing time the batch started at (ms since the epoch; a
    /// replay uses the time of the batch's first run).
    pub batch_time_ms: i64,
    /// The operator's state.
    pub state: &'a mut StateStore,
    /// Input rows dropped because they were too late.
    pub rows_dropped_by_watermark: u64,
    /// Rows a stateful function set aside (`on_error = "quarantine"`).
    pub quarantine: OperatorQuarantine,
}

/// The rows a quarantining operator set aside in a batch.
#[derive(Debug, Default)]
pub struct OperatorQuarantine {
    /// What a first attempt of the batch set aside (a replay): left out
    /// again before the plugin sees the batch.
    pub recorded: Vec<crate::quarantine::QuarantinedRow>,
    /// What this attempt set aside, the recorded rows included.
    pub rows: Vec<crate::quarantine::QuarantinedRow>,
    /// Those rows as dead-letter records (JSON lines).
    pub dead_letters: Vec<u8>,
}

/// A batch's two event-time watermarks. Since Spark 3.4 a stateful
/// operator judges late rows by the watermark of the previous batch and
/// evicts state by the current batch's, so a row that was on time when its
/// batch was planned is not dropped because the same batch moved the
/// watermark past it (which also lets several stateful operators be chained).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Input rows at or before this are late.
    pub late_rows_ms: Option<i64>,
    /// State and windows this passed are evicted and emitted.
    pub eviction_ms: Option<i64>,
}

impl Watermarks {
    /// Both watermarks as a step hands them on (`step`: its output
    /// watermark for an input one; `None` ends event time).
    pub fn through(self, step: impl Fn(i64) -> Option<i64>) -> Watermarks {
        Watermarks {
            late_rows_ms: self.late_rows_ms.and_then(&step),
            eviction_ms: self.eviction_ms.and_then(&step),
        }
    }
}

/// A stateful step of a query.
///
/// State is kept per key group ([`crate::state::KeyGroups`]): the query
/// hands the operator each key group's rows of a batch with that group's
/// state, then calls [`Operator::handle_batch_end`] with it, one group
/// after another (and one instance of the operator per parallel task).
/// So an operator must keep nothing between groups but what it learns of
/// its inputs' columns.
///
/// Most operators read one input. A join reads two ([`Operator::inputs`]):
/// each key group's rows of input 0, then of input 1, reach
/// [`Operator::process_input`], keyed by each input's own columns.
pub trait Operator: Send {
    /// The columns whose values key the operator's state: rows with equal
    /// values meet in one key group (input 0's, for several inputs).
    fn key_columns(&self) -> Vec<String>;

    /// How many inputs the operator reads.
    fn inputs(&self) -> usize {
        1
    }

    /// The columns keying input `input`'s rows: rows of any input with
    /// equal key values meet in one key group.
    fn key_columns_of(&self, _input: usize) -> Vec<String> {
        self.key_columns()
    }

    /// Called once at the start of every batch, before any key group.
    fn start_batch(&mut self) {}

    /// Folds one input batch into state; returns rows to emit at once.
    fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>>;

    /// Folds one batch of input `input` into state; an operator of one
    /// input gets [`Operator::process_batch`].
    fn process_input(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        self.process_batch(batch, ctx)
    }

    /// Takes note of input `input`'s columns, as some task's rows or key
    /// group's state show them: every task of an operator that needs all
    /// its inputs' columns to emit (a join) learns them, even when its own
    /// key groups never held a row of that input.
    fn know_input_columns(&mut self, _input: usize, _columns: &SchemaRef) -> Result<()> {
        Ok(())
    }

    /// The columns of each input that a key group's `state` records, for
    /// [`Operator::know_input_columns`] at a restart (none by default).
    fn stored_input_columns(&self, _state: &StateStore) -> Result<Vec<Option<SchemaRef>>> {
        Ok(Vec::new())
    }

    /// Called once at the end of every batch (data or no-data): emit what the
    /// output mode and watermark allow, and evict state the watermark passed.
    fn handle_batch_end(&mut self, _ctx: &mut OperatorContext<'_>) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Whether a batch with watermark `watermark_ms` starting at processing
    /// time `now_ms` would emit or evict anything; if so the query runs a
    /// batch even without new input. `now_ms` is `None` for draining
    /// triggers, which do not wait for processing time to pass.
    fn has_work_at(
        &self,
        _state: &StateStore,
        _watermark_ms: Option<i64>,
        _now_ms: Option<i64>,
    ) -> Result<bool> {
        Ok(false)
    }

    /// Whether the operator evicts state (or emits, or times out) by the
    /// watermark. Then, as in Spark, a batch runs without new data whenever
    /// the watermark moved past the one the last batch ran with, whether or
    /// not [`Operator::has_work_at`] finds anything to do.
    fn evicts_by_watermark(&self) -> bool {
        false
    }

    /// The watermark of the rows this operator emits, for an operator
    /// after it, given the watermark it ran with (Spark's
    /// `produceOutputWatermark`): the same by default, as windows and
    /// deduplication emit nothing older than the watermark they evict by;
    /// `None` when no column of the output follows event time.
    fn output_watermark(&self, input_ms: i64) -> Option<i64> {
        Some(input_ms)
    }

    /// The schema of the rows this operator emits, when known.
    fn output_schema(&self) -> Option<SchemaRef>;

    /// What the operator's plugin did in the latest batch, if it runs one.
    fn stage_progress(&self) -> Option<crate::query::StageProgress> {
        None
    }
}

/// A column as an operator keeps it in its stored layout: name, Arrow type
/// as text, nullability. Serialised in checkpoints: the form must not change.
pub(crate) type StoredField = (String, String, bool);

/// `field` as a [`StoredField`].
pub(crate) fn store_field(field: &Field) -> StoredField {
    (
        field.name().clone(),
        field.data_type().to_string(),
        field.is_nullable(),
    )
}

/// An Arrow type written by [`store_field`].
pub(crate) fn load_type(text: &str) -> Result<DataType> {
    DataType::from_str(text).map_err(|e| WeirError::Internal(format!("stored type {text}: {e}")))
}

/// The field a [`StoredField`] describes.
pub(crate) fn load_field((name, data_type, nullable): &StoredField) -> Result<Field> {
    Ok(Field::new(name, load_type(data_type)?, *nullable))
}

/// The time in the first state key tagged `prefix` (keys laid out as
/// `prefix | encoded time | ...`): the earliest window end or expiry.
pub(crate) fn earliest_time(state: &StateStore, prefix: u8) -> Result<Option<i64>> {
    let mut earliest = None;
    state.scan_from(&[prefix], &mut |key, _| {
        if key[0] == prefix {
            earliest = Some(decode_i64(&key[1..]));
        }
        false
    })?;
    Ok(earliest)
}

/// Sortable big-endian encoding of an i64 (negative values first).
pub(crate) fn encode_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`encode_i64`].
pub(crate) fn decode_i64(bytes: &[u8]) -> i64 {
    (u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i64_encoding_sorts_like_the_numbers() {
        let values = [i64::MIN, -5, -1, 0, 1, 300_000, i64::MAX];
        let encoded: Vec<_> = values.iter().map(|v| encode_i64(*v)).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        assert!(values.iter().all(|v| decode_i64(&encode_i64(*v)) == *v));
    }
}
