//! Rows a plugin stage set aside (`on_error = "quarantine"`): how they are
//! recorded in the checkpoint (`quarantine/N`) and written as dead letters.
//! Transform stages (`query::stage`), stateful functions
//! (`operator::stateful_fn`) and foreachBatch sinks (`sink::foreach_batch`)
//! share both.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Result, WeirError};

/// A row a stage set aside: where it was in the stage's input, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedRow {
    /// Which of the stage's input batches held it (a stateful function's
    /// input is one batch: 0).
    pub input: usize,
    /// Its row number in that batch.
    pub row: usize,
    /// What the plugin did with it alone.
    pub error: String,
}

/// `quarantine/N`: the rows each stage set aside in batch N, by stage.
pub type QuarantineRecord = BTreeMap<String, Vec<QuarantinedRow>>;

/// The rows one stage set aside in a batch.
#[derive(Debug, Clone)]
pub struct StageSetAside {
    /// The stage.
    pub stage: String,
    /// The rows, in input order (those a first attempt recorded included).
    pub rows: Vec<QuarantinedRow>,
    /// The rows as dead-letter records (JSON lines).
    pub dead_letters: Vec<u8>,
}

/// Why quarantine gave up when more than `limit` rows of batch `batch_id`
/// failed (`first` is the first row's failure).
fn over_limit_reason(limit: usize, batch_id: u64, first: &str) -> String {
    format!(
        "more than {limit} rows of batch {batch_id} failed \
         (max_quarantined_rows_per_batch = {limit}); the first: {first}"
    )
}

/// Why quarantine gave up when a call over `rows` rows failed but no row
/// failed alone.
fn unnarrowed_reason(rows: usize, batch_id: u64) -> String {
    format!(
        "a call over {rows} rows of batch {batch_id} failed, but no row fails alone: the \
         plugin fails on a combination of rows, which quarantine cannot set aside"
    )
}

/// What a stage's dead-letter record says besides the row.
pub struct DeadLetterSource<'a> {
    /// The batch id.
    pub batch_id: u64,
    /// The stage.
    pub stage: &'a str,
    /// The plugin version's digest.
    pub plugin: &'a str,
}

impl DeadLetterSource<'_> {
    /// The row `q` names, as a one-row batch of `inputs`; a recorded row
    /// the batch does not have means the checkpoint does not match it.
    pub fn row(&self, inputs: &[RecordBatch], q: &QuarantinedRow) -> Result<RecordBatch> {
        match inputs.get(q.input).filter(|b| q.row < b.num_rows()) {
            Some(input) => Ok(input.slice(q.row, 1)),
            None => Err(WeirError::CheckpointCorrupt {
                path: format!("quarantine/{}", self.batch_id),
                reason: format!(
                    "stage `{}` recorded row {} of input {}, which the batch does not have",
                    self.stage, q.row, q.input
                ),
            }),
        }
    }

    /// One JSON line for `q`, whose row is `row` (a one-row batch), with
    /// extra fields (a stateful function's key).
    pub fn line(
        &self,
        q: &QuarantinedRow,
        row: &RecordBatch,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<Vec<u8>> {
        let json = crate::sink::json_lines(std::slice::from_ref(row), "a quarantined row")?;
        let record: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| WeirError::Internal(format!("a quarantined row's JSON: {e}")))?;
        let mut line = serde_json::json!({
            "batch_id": self.batch_id,
            "stage": self.stage,
            "plugin": self.plugin,
            "input": q.input,
            "row": q.row,
            "error": q.error,
            "record": record,
        });
        for (key, value) in extra {
            line[*key] = value.clone();
        }
        let mut bytes =
            serde_json::to_vec(&line).map_err(|e| WeirError::Internal(e.to_string()))?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Adds the rows `found` ([`bisect`]'s answer for a failed call over rows
/// `kept` of input `input`) to `quarantined`. Returns the reason to give up
/// when no row failed alone, or when more than `limit` rows of batch
/// `batch_id` are now set aside.
pub fn record_found(
    found: Vec<(usize, String)>,
    input: usize,
    kept: &[usize],
    limit: usize,
    batch_id: u64,
    quarantined: &mut Vec<QuarantinedRow>,
) -> std::result::Result<(), String> {
    if found.is_empty() {
        return Err(unnarrowed_reason(kept.len(), batch_id));
    }
    quarantined.extend(found.into_iter().map(|(at, error)| QuarantinedRow {
        input,
        row: kept[at],
        error,
    }));
    match quarantined.len() > limit {
        true => Err(over_limit_reason(limit, batch_id, &quarantined[0].error)),
        false => Ok(()),
    }
}

/// Finds which of a failed call's `rows` rows fail alone, by probing
/// halves: `probe(start, len)` makes the call on that slice of the rows
/// and returns its failure if rows may be to blame (`None`: it passed;
/// any other failure is the caller's error). `error` is the failure of the
/// call over all the rows. Stops once more than `budget` rows are found
/// (the stage gives up anyway). Returns each row with its failure, in row
/// order; empty when no row fails alone.
pub fn bisect(
    rows: usize,
    error: WeirError,
    budget: usize,
    probe: &mut dyn FnMut(usize, usize) -> Result<Option<WeirError>>,
) -> Result<Vec<(usize, String)>> {
    let mut found = Vec::new();
    bisect_range(0, rows, error, budget, probe, &mut found)?;
    Ok(found)
}

fn bisect_range(
    start: usize,
    len: usize,
    error: WeirError,
    budget: usize,
    probe: &mut dyn FnMut(usize, usize) -> Result<Option<WeirError>>,
    found: &mut Vec<(usize, String)>,
) -> Result<()> {
    if len == 1 {
        found.push((start, failure_text(&error)));
        return Ok(());
    }
    let half = len / 2;
    for (from, part) in [(start, half), (start + half, len - half)] {
        if found.len() > budget {
            break;
        }
        if let Some(error) = probe(from, part)? {
            bisect_range(from, part, error, budget, probe, found)?;
        }
    }
    Ok(())
}

/// The failure alone, without the stage name a dead-letter record has.
pub fn failure_text(error: &WeirError) -> String {
    match error {
        WeirError::Plugin { failure, .. } | WeirError::PluginKey { failure, .. } => {
            failure.to_string()
        }
        other => other.to_string(),
    }
}

/// Whether rows may be to blame for `error`
/// ([`crate::PluginFailure::blames_rows`]).
pub fn blames_rows(error: &WeirError) -> bool {
    matches!(
        error,
        WeirError::Plugin { failure, .. } | WeirError::PluginKey { failure, .. }
            if failure.blames_rows()
    )
}

/// Row numbers of input `input` (of `rows` rows) not set aside.
pub fn kept_rows(rows: usize, input: usize, quarantined: &[QuarantinedRow]) -> Vec<usize> {
    let mut keep = vec![true; rows];
    for q in quarantined.iter().filter(|q| q.input == input) {
        if let Some(k) = keep.get_mut(q.row) {
            *k = false;
        }
    }
    (0..rows).filter(|&r| keep[r]).collect()
}

/// The rows `rows` (ascending) of `batch`.
pub fn take_rows(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch> {
    let mut mask = vec![false; batch.num_rows()];
    for &r in rows {
        if let Some(m) = mask.get_mut(r) {
            *m = true;
        }
    }
    arrow::compute::filter_record_batch(batch, &arrow::array::BooleanArray::from(mask))
        .map_err(|e| WeirError::Internal(format!("setting quarantined rows aside: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_finds_each_row_that_fails_alone_with_few_probes() {
        let poison = [3usize, 4, 97];
        let fails = |from: usize, len: usize| poison.iter().any(|p| (from..from + len).contains(p));
        let error = |at: usize| WeirError::Internal(format!("row {at}"));
        let mut probes = 0;
        let found = bisect(100, error(0), 10, &mut |from, len| {
            probes += 1;
            Ok(fails(from, len).then(|| error(from)))
        })
        .unwrap();
        let rows: Vec<usize> = found.iter().map(|(row, _)| *row).collect();
        assert_eq!(rows, poison);
        assert_eq!(found[2].1, "internal error (please report): row 97");
        assert!(probes <= 2 * 3 * 7, "{probes} probes");
        // A budget of 1 stops after the second row found.
        let found = bisect(100, error(0), 1, &mut |from, len| {
            Ok(fails(from, len).then(|| error(from)))
        })
        .unwrap();
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn kept_rows_leave_out_the_rows_of_their_own_input() {
        let q = |input, row| QuarantinedRow {
            input,
            row,
            error: String::new(),
        };
        let quarantined = [q(0, 1), q(1, 0), q(0, 3), q(0, 9)];
        assert_eq!(kept_rows(5, 0, &quarantined), vec![0, 2, 4]);
        assert_eq!(kept_rows(2, 1, &quarantined), vec![1]);
        assert_eq!(kept_rows(2, 2, &quarantined), vec![0, 1]);
    }
}
