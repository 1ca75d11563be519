use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;

use super::{CommitOutcome, Sink};
use crate::error::{Result, WeirError};

/// Prints each batch as a table on standard output, as Spark's console
/// sink does. At-least-once: a replayed batch is printed again.
pub struct ConsoleSink;

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let table = pretty_format_batches(batches)
            .map_err(|e| WeirError::format(format!("console sink, batch {batch_id}"), e))?;
        let rule = "-".repeat(43);
        println!("{rule}\nBatch: {batch_id}\n{rule}\n{table}");
        Ok(CommitOutcome::Written)
    }
}
