//! Shadow runs: a candidate plugin version runs beside a stage's live one
//! on the live batches, for a number of batches. Its output is compared
//! with the live output row by row and then dropped, and so are its
//! failures: the query's output and fate stay the live version's. The
//! report says how the outputs differ and what the candidate costs, before
//! anyone promotes it with a swap.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::replay::{diff_rows, json_rows};
use super::stage::Stage;
use crate::plugin::BatchEnv;
use crate::quarantine::QuarantinedRow;

/// Rows of each side of the difference a report keeps as samples.
const SAMPLE_ROWS: usize = 20;

/// How a candidate compared with the live version so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowReport {
    /// The stage.
    pub stage: String,
    /// The live version's digest when the shadow started.
    pub live: String,
    /// The candidate's digest.
    pub candidate: String,
    /// The candidate's `config`, as JSON.
    pub candidate_config: String,
    /// Batches to compare.
    pub batches_wanted: u64,
    /// Batches compared so far (those with rows for the stage).
    pub batches: u64,
    /// Output rows both versions produced.
    pub rows_same: u64,
    /// Live rows the candidate did not produce.
    pub rows_removed: u64,
    /// Candidate rows the live version did not produce.
    pub rows_added: u64,
    /// Up to 20 of each: `- {row}` (live only) and `+ {row}` (candidate only).
    pub samples: Vec<String>,
    /// Rows the candidate quarantined (with the stage's `on_error`).
    pub candidate_quarantined: u64,
    /// Time in the live version over the compared batches, ms.
    pub live_ms: f64,
    /// Time in the candidate over the same batches, ms.
    pub candidate_ms: f64,
    /// The candidate's failure, which ended the shadow early.
    pub error: Option<String>,
    /// Whether the shadow is over (all batches compared, or it failed).
    pub done: bool,
}

/// A report the query fills in while the caller reads it.
#[derive(Debug, Clone, Default)]
pub struct SharedReport(Arc<Mutex<Option<ShadowReport>>>);

impl SharedReport {
    /// The latest shadow's report, if a shadow ran.
    pub fn get(&self) -> Option<ShadowReport> {
        self.lock().clone()
    }

    pub(super) fn set(&self, report: ShadowReport) {
        *self.lock() = Some(report);
    }

    fn update(&self, change: impl FnOnce(&mut ShadowReport)) {
        if let Some(report) = self.lock().as_mut() {
            change(report);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ShadowReport>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A candidate running beside a stage.
pub(super) struct Shadow {
    /// The candidate, as a stage of its own (same name, limits, on_error).
    pub stage: Box<Stage>,
    pub report: SharedReport,
}

impl Shadow {
    /// Runs the candidate over the live stage's `input` for batch
    /// `batch_id` (same clock, seed and recorded rows) and compares with
    /// the live `output`, which took `live` to make. Returns whether the
    /// shadow is over.
    pub fn compare(
        &mut self,
        batch_id: u64,
        input: &[RecordBatch],
        env: BatchEnv,
        recorded: &[QuarantinedRow],
        output: &[RecordBatch],
        live: Duration,
    ) -> bool {
        if input.iter().all(|b| b.num_rows() == 0) {
            return false;
        }
        let started = Instant::now();
        let run = self.stage.process(batch_id, input, env, recorded);
        let elapsed = started.elapsed();
        let compared = run.and_then(|run| {
            let diff = diff_rows(&json_rows(output)?, &json_rows(&run.outputs)?);
            Ok((diff, run.quarantined.len()))
        });
        let mut done = false;
        self.report.update(|report| {
            report.live_ms += live.as_secs_f64() * 1e3;
            report.candidate_ms += elapsed.as_secs_f64() * 1e3;
            match compared {
                Ok((diff, quarantined)) => {
                    report.batches += 1;
                    report.rows_same += diff.same as u64;
                    report.rows_removed += diff.removed.len() as u64;
                    report.rows_added += diff.added.len() as u64;
                    report.candidate_quarantined += quarantined as u64;
                    let removed = diff.removed.iter().map(|r| format!("- {r}"));
                    let added = diff.added.iter().map(|r| format!("+ {r}"));
                    for line in removed.chain(added) {
                        if report.samples.len() < 2 * SAMPLE_ROWS {
                            report.samples.push(line);
                        }
                    }
                    report.done = report.batches >= report.batches_wanted;
                }
                Err(e) => {
                    report.error = Some(format!("batch {batch_id}: {e}"));
                    report.done = true;
                }
            }
            done = report.done;
        });
        done
    }
}
