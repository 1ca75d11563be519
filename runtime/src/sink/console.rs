use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;

use super::{CommitOutcome, Sink};
use crate::error::{Result, WeirError};

/// Prints each batch on standard output under a `Batch: N` header, as a
/// table (as Spark's console sink does) or as JSON lines. At-least-once: a
/// replayed batch is printed again.
pub struct ConsoleSink {
    /// JSON lines instead of a table.
    pub json: bool,
}

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let context = || format!("console sink, batch {batch_id}");
        let body = if self.json {
            String::from_utf8_lossy(&super::json_lines(batches, &context())?)
                .trim_end()
                .to_string()
        } else {
            pretty_format_batches(batches)
                .map_err(|e| WeirError::format(context(), e))?
                .to_string()
        };
        let rule = "-".repeat(43);
        println!("{rule}\nBatch: {batch_id}\n{rule}\n{body}");
        Ok(CommitOutcome::Written)
    }
}
