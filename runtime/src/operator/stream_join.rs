//! Stream-stream join: Spark's symmetric hash join over two inputs.
//!
//! Every input row is joined with the rows the *other* side has buffered,
//! then buffered itself; the left input goes first, so a pair arriving in
//! one batch is found once (by its right row). Rows at or below the
//! watermark are dropped as late. A buffered row is evicted once the
//! watermark shows no future row of the other side can match it — for
//! `right_time BETWEEN left_time + lower AND left_time + upper`, a left row
//! at `t` when `t + upper <= watermark`, a right row at `t` when
//! `t - lower <= watermark` (future rows are later than the watermark). An
//! outer join emits an evicted row that never matched with the other side's
//! columns null: exactly once, and only after the watermark passed.
//!
//! State layout (one [`StateStore`]):
//!
//! ```text
//! [0, side]                                          -> the side's columns
//! [1 + side, key length, key, time, batch, row]      -> [matched] + row
//! ```
//!
//! Keys and rows are Arrow's row format (`arrow::row`); a key's rows sit
//! together, so a probe is one prefix scan.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, new_null_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use super::{
    Operator, OperatorContext, StoredField, decode_i64, encode_i64, event_times_ms, load_field,
    store_field,
};
use crate::config::{StreamJoinConfig, StreamJoinKind};
use crate::error::{Result, WeirError};
use crate::state::StateStore;

const COLUMNS: u8 = 0;
const ROWS: u8 = 1;

/// One input of the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left = 0,
    Right = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn row_tag(self) -> u8 {
        ROWS + self as u8
    }
}

/// Encoders for one side's rows, made from its columns.
struct SideCodec {
    schema: SchemaRef,
    rows: RowConverter,
    keys: RowConverter,
    key_columns: Vec<usize>,
    time_column: Option<usize>,
    late_column: Option<usize>,
}

/// What one batch of the join produced, still in row format.
#[derive(Default)]
struct Emitted {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    left_only: Vec<Vec<u8>>,
    right_only: Vec<Vec<u8>>,
}

/// A buffered row found by a probe or an eviction scan.
struct Buffered {
    key: Vec<u8>,
    time: i64,
    matched: bool,
    row: Vec<u8>,
}

/// The stream-stream join operator.
pub struct StreamJoin {
    config: StreamJoinConfig,
    /// The inputs' names, for messages.
    names: [String; 2],
    /// Each input's watermark column: its rows at or below the watermark
    /// are late.
    late_columns: [Option<String>; 2],
    codecs: [Option<SideCodec>; 2],
    /// What the key group being run joined so far, built into rows at
    /// its batch end (so a group's rows come out as one join would emit
    /// them: matches in input order, then evicted rows).
    pending: Emitted,
    /// The next row number of each side in the key group being run: a
    /// buffered row's key ends with its batch id and this number.
    seq: [u32; 2],
}

impl StreamJoin {
    /// A join of the inputs named `names` (left, right) whose watermarks
    /// are on `late_columns`.
    pub fn new(
        config: StreamJoinConfig,
        names: [String; 2],
        late_columns: [Option<String>; 2],
    ) -> StreamJoin {
        StreamJoin {
            config,
            names,
            late_columns,
            codecs: [None, None],
            pending: Emitted::default(),
            seq: [0, 0],
        }
    }

    /// The schema of the joined rows, once both inputs' columns are known.
    fn joined_schema(&self) -> Option<SchemaRef> {
        let left = &self.codecs[0].as_ref()?.schema;
        if self.config.kind == StreamJoinKind::LeftSemi {
            return Some(left.clone());
        }
        let right = &self.codecs[1].as_ref()?.schema;
        let nullable_left = self.config.kind == StreamJoinKind::RightOuter;
        let nullable_right = self.config.kind == StreamJoinKind::LeftOuter;
        // Outer joins null the other side's columns (a shared key too: it is
        // filled from the right, whose key may be null).
        let mut fields: Vec<Field> = left
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_nullable(f.is_nullable() || nullable_left)
            })
            .collect();
        for (i, f) in right.fields().iter().enumerate() {
            if self.is_shared_right_column(i) {
                continue;
            }
            fields.push(
                f.as_ref()
                    .clone()
                    .with_nullable(f.is_nullable() || nullable_right),
            );
        }
        Some(Arc::new(Schema::new(fields)))
    }

    /// The key position `k` whose left and right columns are both named
    /// `name` (such a key appears once in the output).
    fn shared_key_index(&self, name: &str) -> Option<usize> {
        self.config
            .left_on
            .iter()
            .zip(&self.config.right_on)
            .position(|(l, r)| l == name && r == name)
    }

    fn is_shared_right_column(&self, index: usize) -> bool {
        let codec = self.codecs[1].as_ref().expect("right columns known");
        self.shared_key_index(codec.schema.field(index).name())
            .is_some()
    }

    /// Takes note of a side's columns on its first rows: stored with the
    /// state (of every key group holding the side's rows), so a restarted
    /// query decodes buffered rows, and checked against what was stored.
    fn learn_columns(
        &mut self,
        state: &mut StateStore,
        side: Side,
        schema: &SchemaRef,
    ) -> Result<()> {
        self.restore_columns(state, side)?;
        self.know(side, schema)?;
        if state.get(&[COLUMNS, side as u8])?.is_none() {
            let stored: Vec<StoredField> = schema.fields().iter().map(|f| store_field(f)).collect();
            let encoded =
                serde_json::to_vec(&stored).map_err(|e| WeirError::Internal(e.to_string()))?;
            state.put(&[COLUMNS, side as u8], &encoded)?;
        }
        Ok(())
    }

    fn know(&mut self, side: Side, schema: &SchemaRef) -> Result<()> {
        let stored: Vec<StoredField> = schema.fields().iter().map(|f| store_field(f)).collect();
        if let Some(codec) = &self.codecs[side.index()] {
            let known: Vec<StoredField> = codec
                .schema
                .fields()
                .iter()
                .map(|f| store_field(f))
                .collect();
            if known != stored {
                return Err(WeirError::Schema {
                    context: format!("join input `{}`", self.names[side.index()]),
                    reason: format!(
                        "its columns changed: first {known:?}, now {stored:?}; a join keeps rows \
                         of one shape"
                    ),
                });
            }
            return Ok(());
        }
        self.codecs[side.index()] = Some(self.codec(side, schema.clone())?);
        self.check_output_names()
    }

    /// The columns of each input (left, right) that `state` records, if it
    /// records them.
    fn stored_columns(state: &StateStore) -> Result<Vec<Option<SchemaRef>>> {
        let mut columns = vec![None, None];
        for (side, slot) in columns.iter_mut().enumerate() {
            let Some(bytes) = state.get(&[COLUMNS, side as u8])? else {
                continue;
            };
            let stored: Vec<StoredField> = serde_json::from_slice(&bytes).map_err(|e| {
                WeirError::Internal(format!("join state: stored columns unreadable: {e}"))
            })?;
            let fields = stored.iter().map(load_field).collect::<Result<Vec<_>>>()?;
            *slot = Some(Arc::new(Schema::new(fields)));
        }
        Ok(columns)
    }

    /// Loads a side's columns from state, if stored and not yet loaded.
    fn restore_columns(&mut self, state: &StateStore, side: Side) -> Result<()> {
        if self.codecs[side.index()].is_some() {
            return Ok(());
        }
        let Some(bytes) = state.get(&[COLUMNS, side as u8])? else {
            return Ok(());
        };
        let stored: Vec<StoredField> = serde_json::from_slice(&bytes).map_err(|e| {
            WeirError::Internal(format!("join state: stored columns unreadable: {e}"))
        })?;
        let fields = stored.iter().map(load_field).collect::<Result<Vec<_>>>()?;
        self.codecs[side.index()] = Some(self.codec(side, Arc::new(Schema::new(fields)))?);
        Ok(())
    }

    fn codec(&self, side: Side, schema: SchemaRef) -> Result<SideCodec> {
        let name = &self.names[side.index()];
        let column = |wanted: &str, role: &str| {
            schema.index_of(wanted).map_err(|_| WeirError::Schema {
                context: format!("join input `{name}`"),
                reason: format!("its {role} column `{wanted}` is not among its columns"),
            })
        };
        let keys = match side {
            Side::Left => &self.config.left_on,
            Side::Right => &self.config.right_on,
        };
        let key_columns = keys
            .iter()
            .map(|k| column(k, "key"))
            .collect::<Result<Vec<_>>>()?;
        let time_column = match &self.config.time {
            Some(t) => Some(column(
                match side {
                    Side::Left => &t.left,
                    Side::Right => &t.right,
                },
                "event-time",
            )?),
            None => None,
        };
        let late_column = match &self.late_columns[side.index()] {
            Some(c) => Some(column(c, "watermark")?),
            None => None,
        };
        let sort_fields = |indices: &mut dyn Iterator<Item = usize>| {
            indices
                .map(|i| SortField::new(schema.field(i).data_type().clone()))
                .collect::<Vec<_>>()
        };
        let rows = RowConverter::new(sort_fields(&mut (0..schema.fields().len())))
            .map_err(|e| WeirError::format("join rows", e))?;
        let keys = RowConverter::new(sort_fields(&mut key_columns.iter().copied()))
            .map_err(|e| WeirError::format("join keys", e))?;
        Ok(SideCodec {
            schema,
            rows,
            keys,
            key_columns,
            time_column,
            late_column,
        })
    }

    /// A column name on both sides (other than a shared key) would be
    /// ambiguous in the output.
    fn check_output_names(&self) -> Result<()> {
        let (Some(left), Some(right)) = (&self.codecs[0], &self.codecs[1]) else {
            return Ok(());
        };
        if self.config.kind == StreamJoinKind::LeftSemi {
            return Ok(());
        }
        for (i, f) in right.schema.fields().iter().enumerate() {
            if !self.is_shared_right_column(i) && left.schema.field_with_name(f.name()).is_ok() {
                return Err(WeirError::Schema {
                    context: "join".into(),
                    reason: format!(
                        "column `{}` is in both `{}` and `{}`; rename it in one of the sources' \
                         schemas (only keys named alike on both sides appear once)",
                        f.name(),
                        self.names[0],
                        self.names[1]
                    ),
                });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn join_input(
        &self,
        state: &mut StateStore,
        side: Side,
        batch: &RecordBatch,
        batch_id: u64,
        seq: &mut u32,
        late_rows_watermark_ms: Option<i64>,
        emitted: &mut Emitted,
    ) -> Result<u64> {
        let codec = self.codecs[side.index()].as_ref().expect("learned above");
        let key_arrays: Vec<ArrayRef> = codec
            .key_columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let keys = codec
            .keys
            .convert_columns(&key_arrays)
            .map_err(|e| WeirError::format("join keys", e))?;
        let rows = codec
            .rows
            .convert_columns(batch.columns())
            .map_err(|e| WeirError::format("join rows", e))?;
        let times: Option<Int64Array> = codec
            .time_column
            .map(|i| event_times_ms(batch.column(i)))
            .transpose()?;
        let late_times: Option<Int64Array> = codec
            .late_column
            .map(|i| event_times_ms(batch.column(i)))
            .transpose()?;
        let kind = self.config.kind;
        let mut dropped = 0;
        for row in 0..batch.num_rows() {
            let null_key = key_arrays.iter().any(|a| a.is_null(row));
            if null_key && !self.preserved(side) {
                // It can never match and is never emitted, late or not:
                // Spark filters such rows out before its join, so they are
                // not counted as dropped by the watermark either.
                continue;
            }
            if let (Some(watermark), Some(late)) = (late_rows_watermark_ms, &late_times)
                && (late.is_null(row) || late.value(row) <= watermark)
            {
                dropped += 1;
                continue;
            }
            let time = match &times {
                Some(t) if t.is_null(row) => {
                    dropped += 1; // no event time: it can never be in range
                    continue;
                }
                Some(t) => t.value(row),
                None => 0,
            };
            let key = keys.row(row);
            let this_row = rows.row(row);
            let mut matched = false;
            if !null_key {
                let mut hits = Vec::new();
                let prefix = row_prefix(side.other(), key.as_ref());
                state.scan_from(&prefix, &mut |k, v| {
                    if !k.starts_with(&prefix) {
                        return false;
                    }
                    let stored = decode_buffered(k, v, prefix.len());
                    if self.in_range(side, time, stored.time) {
                        hits.push(stored);
                    }
                    true
                })?;
                for hit in hits {
                    matched = true;
                    match (kind, side) {
                        (StreamJoinKind::LeftSemi, Side::Left) => break,
                        (StreamJoinKind::LeftSemi, Side::Right) => {
                            // A left row is emitted at its first match, then
                            // no longer needed.
                            emitted.left_only.push(hit.row);
                            state.delete(&hit.key)?;
                        }
                        _ => {
                            let mine = this_row.as_ref().to_vec();
                            emitted.pairs.push(match side {
                                Side::Left => (mine, hit.row.clone()),
                                Side::Right => (hit.row.clone(), mine),
                            });
                            if self.preserved(side.other()) && !hit.matched {
                                let mut value = vec![1];
                                value.extend_from_slice(&hit.row);
                                state.put(&hit.key, &value)?;
                            }
                        }
                    }
                }
            }
            if kind == StreamJoinKind::LeftSemi && side == Side::Left && matched {
                emitted.left_only.push(this_row.as_ref().to_vec());
                continue; // emitted; nothing more can come of it
            }
            let mut stored_key = row_prefix(side, key.as_ref());
            stored_key.extend_from_slice(&encode_i64(time));
            stored_key.extend_from_slice(&batch_id.to_be_bytes());
            stored_key.extend_from_slice(&seq.to_be_bytes());
            *seq += 1;
            let mut value = vec![u8::from(matched)];
            value.extend_from_slice(this_row.as_ref());
            state.put(&stored_key, &value)?;
        }
        Ok(dropped)
    }

    /// Whether `side`'s rows without a match are emitted (null-extended):
    /// the outer side of an outer join.
    fn preserved(&self, side: Side) -> bool {
        matches!(
            (self.config.kind, side),
            (StreamJoinKind::LeftOuter, Side::Left) | (StreamJoinKind::RightOuter, Side::Right)
        )
    }

    /// Whether a row of `side` at `time` and a buffered row of the other
    /// side at `other_time` satisfy the time condition.
    fn in_range(&self, side: Side, time: i64, other_time: i64) -> bool {
        let Some(t) = &self.config.time else {
            return true;
        };
        let (left, right) = match side {
            Side::Left => (time, other_time),
            Side::Right => (other_time, time),
        };
        let gap = right - left;
        t.lower_ms <= gap && gap <= t.upper_ms
    }

    /// Whether no future row of the other side can match a row of `side`
    /// at `time` under `watermark`.
    fn evictable(&self, side: Side, time: i64, watermark: i64) -> bool {
        match (&self.config.time, side) {
            (None, _) => false,
            (Some(t), Side::Left) => time.saturating_add(t.upper_ms) <= watermark,
            (Some(t), Side::Right) => time.saturating_sub(t.lower_ms) <= watermark,
        }
    }

    fn scan_side(
        &self,
        state: &StateStore,
        side: Side,
        visit: &mut dyn FnMut(Buffered) -> bool,
    ) -> Result<()> {
        let tag = side.row_tag();
        state.scan_from(&[tag], &mut |k, v| {
            if k[0] != tag {
                return false;
            }
            let key_len = u32::from_be_bytes(k[1..5].try_into().expect("4 bytes")) as usize;
            visit(decode_buffered(k, v, 5 + key_len))
        })
    }

    fn evict(&self, state: &mut StateStore, watermark: i64, emitted: &mut Emitted) -> Result<()> {
        for side in [Side::Left, Side::Right] {
            let preserved = self.preserved(side);
            // Null-extended rows need the other side's columns: wait for them.
            if preserved && self.codecs[side.other().index()].is_none() {
                continue;
            }
            let mut gone = Vec::new();
            self.scan_side(state, side, &mut |row| {
                if self.evictable(side, row.time, watermark) {
                    gone.push(row);
                }
                true
            })?;
            for row in gone {
                state.delete(&row.key)?;
                if preserved && !row.matched {
                    match side {
                        Side::Left => emitted.left_only.push(row.row),
                        Side::Right => emitted.right_only.push(row.row),
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes a side's rows (row format) into its columns.
    fn decode(&self, side: Side, rows: &[Vec<u8>]) -> Result<Vec<ArrayRef>> {
        let codec = self.codecs[side.index()].as_ref().expect("columns known");
        let parser = codec.rows.parser();
        codec
            .rows
            .convert_rows(rows.iter().map(|r| parser.parse(r)))
            .map_err(|e| WeirError::format("join rows", e))
    }

    fn build(&self, emitted: Emitted) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let no_rows = emitted.pairs.is_empty()
            && emitted.left_only.is_empty()
            && emitted.right_only.is_empty();
        if no_rows {
            return Ok(out);
        }
        let schema = self.joined_schema().ok_or_else(|| {
            WeirError::Internal("join rows emitted before both inputs' columns are known".into())
        })?;
        let make = |columns: Vec<ArrayRef>| {
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| WeirError::format("join output", e))
        };
        if self.config.kind == StreamJoinKind::LeftSemi {
            out.push(make(self.decode(Side::Left, &emitted.left_only)?)?);
            return Ok(out);
        }
        let right_fields = self.codecs[1].as_ref().expect("known").schema.clone();
        // Right columns in the output (shared keys appear once, from the left).
        let right_kept: Vec<usize> = (0..right_fields.fields().len())
            .filter(|i| !self.is_shared_right_column(*i))
            .collect();
        let left_schema = self.codecs[0].as_ref().expect("known").schema.clone();
        if !emitted.pairs.is_empty() {
            let (lefts, rights): (Vec<_>, Vec<_>) = emitted.pairs.into_iter().unzip();
            let mut columns = self.decode(Side::Left, &lefts)?;
            let right = self.decode(Side::Right, &rights)?;
            columns.extend(right_kept.iter().map(|i| right[*i].clone()));
            out.push(make(columns)?);
        }
        if !emitted.left_only.is_empty() {
            let n = emitted.left_only.len();
            let mut columns = self.decode(Side::Left, &emitted.left_only)?;
            columns.extend(
                right_kept
                    .iter()
                    .map(|i| new_null_array(right_fields.field(*i).data_type(), n)),
            );
            out.push(make(columns)?);
        }
        if !emitted.right_only.is_empty() {
            let n = emitted.right_only.len();
            let right = self.decode(Side::Right, &emitted.right_only)?;
            let mut columns: Vec<ArrayRef> = left_schema
                .fields()
                .iter()
                .map(|f| match self.shared_key_index(f.name()) {
                    Some(k) => {
                        let index = right_fields
                            .index_of(&self.config.right_on[k])
                            .expect("checked when learned");
                        right[index].clone()
                    }
                    None => new_null_array(f.data_type(), n),
                })
                .collect();
            columns.extend(right_kept.iter().map(|i| right[*i].clone()));
            out.push(make(columns)?);
        }
        Ok(out)
    }
}

/// Input 0 is the left side, 1 the right.
fn side_of(input: usize) -> Side {
    if input == 0 { Side::Left } else { Side::Right }
}

impl Operator for StreamJoin {
    fn key_columns(&self) -> Vec<String> {
        self.config.left_on.clone()
    }

    fn inputs(&self) -> usize {
        2
    }

    fn key_columns_of(&self, input: usize) -> Vec<String> {
        match side_of(input) {
            Side::Left => self.config.left_on.clone(),
            Side::Right => self.config.right_on.clone(),
        }
    }

    fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        self.process_input(0, batch, ctx)
    }

    /// Joins the rows with what the other side buffered, then buffers
    /// them; the joined rows come out at the key group's batch end.
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let side = side_of(input);
        self.learn_columns(ctx.state, side, &batch.schema())?;
        let mut pending = std::mem::take(&mut self.pending);
        let mut seq = self.seq[side.index()];
        let dropped = self.join_input(
            ctx.state,
            side,
            batch,
            ctx.batch_id,
            &mut seq,
            ctx.late_rows_watermark_ms,
            &mut pending,
        );
        self.pending = pending;
        self.seq[side.index()] = seq;
        ctx.rows_dropped_by_watermark += dropped?;
        Ok(Vec::new())
    }

    /// Evicts what the watermark passed (emitting an outer side's rows
    /// that never matched) and emits the key group's joined rows.
    fn handle_batch_end(&mut self, ctx: &mut OperatorContext<'_>) -> Result<Vec<RecordBatch>> {
        self.seq = [0, 0];
        let mut emitted = std::mem::take(&mut self.pending);
        for side in [Side::Left, Side::Right] {
            self.restore_columns(ctx.state, side)?;
        }
        if let Some(watermark) = ctx.watermark_ms {
            self.evict(ctx.state, watermark, &mut emitted)?;
        }
        self.build(emitted)
    }

    /// Whether the watermark lets the join evict (and so maybe emit) rows.
    fn has_work_at(
        &self,
        state: &StateStore,
        watermark_ms: Option<i64>,
        _now_ms: Option<i64>,
    ) -> Result<bool> {
        let (Some(watermark), Some(_)) = (watermark_ms, &self.config.time) else {
            return Ok(false);
        };
        for side in [Side::Left, Side::Right] {
            let mut found = false;
            self.scan_side(state, side, &mut |row| {
                found = self.evictable(side, row.time, watermark);
                !found
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// With a time bound the join evicts buffered rows by the watermark:
    /// then a batch runs without new data whenever the watermark moves,
    /// as in Spark.
    fn evicts_by_watermark(&self) -> bool {
        self.config.time.is_some()
    }

    fn output_watermark(&self, input_ms: i64) -> Option<i64> {
        Some(self.config.output_watermark(input_ms))
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        self.joined_schema()
    }

    fn know_input_columns(&mut self, input: usize, columns: &SchemaRef) -> Result<()> {
        self.know(side_of(input), columns)
    }

    fn stored_input_columns(&self, state: &StateStore) -> Result<Vec<Option<SchemaRef>>> {
        StreamJoin::stored_columns(state)
    }
}

/// `[1 + side, key length, key]`: where a key's buffered rows start.
fn row_prefix(side: Side, key: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(5 + key.len() + 20);
    prefix.push(side.row_tag());
    prefix.extend_from_slice(&(key.len() as u32).to_be_bytes());
    prefix.extend_from_slice(key);
    prefix
}

/// A buffered row from its state key (time right after `time_at`) and value.
fn decode_buffered(key: &[u8], value: &[u8], time_at: usize) -> Buffered {
    Buffered {
        key: key.to_vec(),
        time: decode_i64(&key[time_at..]),
        matched: value[0] == 1,
        row: value[1..].to_vec(),
    }
}
