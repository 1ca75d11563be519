//! Event-time watermarks: each input's, the query's (Spark's global
//! watermark over inputs), the ones late rows are judged by, and where a
//! restart takes them from.

use arrow::record_batch::RecordBatch;

use super::Runner;
use crate::checkpoint::{Checkpoint, Recovery};
use crate::config::WatermarkPolicy;
use crate::error::{Result, WeirError};
use crate::operator::Watermarks;

/// An input's event-time watermark.
pub(super) struct EventTime {
    pub(super) column: String,
    pub(super) delay_ms: i64,
    /// The watermark the next batch uses.
    pub(super) current_ms: i64,
}

/// The watermark of the first batch this run executes: the replayed batch's
/// own (from `offsets/N`), else what the last commit computed, else Spark's
/// initial 0.
pub(super) async fn restored_watermark(checkpoint: &Checkpoint, recovery: Recovery) -> Result<i64> {
    Ok(match recovery {
        Recovery {
            replay: Some(batch),
            ..
        } => checkpoint.offsets(batch).await?.watermark_ms,
        Recovery { next_batch: 0, .. } => None,
        Recovery { next_batch, .. } => {
            checkpoint
                .commit_entry(next_batch - 1)
                .await?
                .next_watermark_ms
        }
    }
    .unwrap_or(0))
}

/// The watermark the next new batch judges late rows by: the one the batch
/// before it used (`offsets/N-1`). A replayed batch reads its own from
/// `offsets/N` when it runs.
pub(super) async fn restored_late_rows_watermark(
    checkpoint: &Checkpoint,
    recovery: Recovery,
    watermark_ms: i64,
) -> Result<i64> {
    let logged = match recovery.next_batch {
        0 => None,
        next => checkpoint.offsets(next - 1).await?.watermark_ms,
    };
    Ok(logged.unwrap_or(watermark_ms))
}

/// With several inputs, each input's watermark before the first batch this
/// run executes (from the previous batch's commit); empty otherwise.
pub(super) async fn restored_input_watermarks(
    checkpoint: &Checkpoint,
    recovery: Recovery,
) -> Result<Vec<Option<i64>>> {
    let first = recovery.replay.unwrap_or(recovery.next_batch);
    if first == 0 {
        return Ok(Vec::new());
    }
    Ok(checkpoint
        .commit_entry(first - 1)
        .await?
        .next_input_watermarks_ms)
}

/// The latest event time in `column` among `batches`, for a watermark.
pub(crate) fn max_event_time(column: &str, batches: &[RecordBatch]) -> Result<Option<i64>> {
    let mut max = None;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| WeirError::Schema {
                context: "watermark".into(),
                reason: format!(
                    "the event-time column `{column}` is not in the rows reaching the watermark"
                ),
            })?;
        let times = crate::operator::event_times_ms(values)?;
        max = max.max(arrow::compute::max(&times));
    }
    Ok(max)
}

impl Runner {
    /// The watermarks a new batch uses: late rows are judged by the
    /// previous batch's watermark unless `stateful_operator_allow_multiple`
    /// is off, as in Spark.
    pub(super) fn watermarks(&self) -> Watermarks {
        Watermarks {
            late_rows_ms: if self.pipeline.stateful_operator_allow_multiple {
                self.late_rows_watermark_ms
            } else {
                self.watermark_ms
            },
            eviction_ms: self.watermark_ms,
        }
    }

    /// The watermarks each stateful operator runs with when the query's
    /// are `query` (see [`Chain::watermarks`]).
    pub(super) fn operator_watermarks(&self, query: Watermarks) -> Vec<Watermarks> {
        self.operators
            .watermarks(self.pipeline.stream_join.as_ref(), query)
    }

    /// The latest event time in each input's rows, with several inputs
    /// (each input's watermark follows its own rows); empty with one (its
    /// watermark follows the rows reaching the operators).
    pub(super) fn max_event_times_per_input(
        &self,
        per_input: &[Vec<RecordBatch>],
    ) -> Result<Vec<Option<i64>>> {
        if self.inputs.len() <= 1 {
            return Ok(Vec::new());
        }
        self.inputs
            .iter()
            .zip(per_input)
            .map(|(input, batches)| match &input.watermark {
                Some(w) => max_event_time(&w.column, batches),
                None => Ok(None),
            })
            .collect()
    }

    /// Each input's watermark after a batch whose rows reached
    /// `max_event_ms` (per input), and the query's by the
    /// `multiple_watermark_policy`. A watermark never moves back: late
    /// rows cannot lower it (Spark).
    pub(super) fn next_watermarks(
        &self,
        max_event_ms: &[Option<i64>],
    ) -> (Vec<Option<i64>>, Option<i64>) {
        let per_input: Vec<Option<i64>> = self
            .inputs
            .iter()
            .zip(max_event_ms.iter().chain(std::iter::repeat(&None)))
            .map(|(input, max)| {
                input
                    .watermark
                    .as_ref()
                    .map(|w| max.map_or(w.current_ms, |max| w.current_ms.max(max - w.delay_ms)))
            })
            .collect();
        let declared = per_input.iter().flatten().copied();
        let query = match self.pipeline.multiple_watermark_policy {
            WatermarkPolicy::Min => declared.min(),
            WatermarkPolicy::Max => declared.max(),
        };
        (per_input, query)
    }

    /// Once a batch is committed: the next batch runs with the watermarks
    /// [`Runner::next_watermarks`] computed, and judges late rows by the
    /// one this batch ran with.
    pub(super) fn advance_watermarks(&mut self, per_input: Vec<Option<i64>>, query: Option<i64>) {
        for (input, next) in self.inputs.iter_mut().zip(per_input) {
            if let (Some(w), Some(next)) = (&mut input.watermark, next) {
                w.current_ms = next;
            }
        }
        if query.is_some() {
            self.late_rows_watermark_ms = self.watermark_ms;
            self.watermark_ms = query;
        }
    }
}
