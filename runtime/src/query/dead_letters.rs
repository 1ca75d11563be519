//! Where rows that cannot go on are written: a source's bad records
//! (`on_bad_record = "dead_letter"`) and the rows plugin stages set aside
//! (`on_error = "quarantine"`), each batch's in a file of its own that a
//! replay of the batch rewrites with the same rows.

use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use super::{Runner, versions};
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::quarantine::QuarantineRecord;
use crate::source::BadRecord;
use crate::storage::Location;

/// Whether a batch's quarantined rows are logged in the checkpoint.
pub(super) enum Record {
    /// A micro-batch: logged in `quarantine/N` unless this (what a first
    /// attempt logged) is the same.
    Logged(Option<QuarantineRecord>),
    /// A continuous epoch's small batch: never replayed by its id, so not
    /// logged (its dead letters are still written).
    NotLogged,
}

impl Runner {
    /// Records the rows the stages set aside in batch `batch_id` in
    /// `quarantine/N` (unless a first attempt recorded the same, or the
    /// batch is a continuous epoch's small batch) and writes
    /// them to each stage's dead-letter location, as
    /// `quarantine-<stage>-batch-N.jsonl` (a replay rewrites the same file
    /// with the same rows). Returns how many rows were set aside.
    pub(super) async fn set_aside(
        &self,
        batch_id: u64,
        transformed: &versions::Transformed,
        recorded: Record,
    ) -> Result<u64> {
        if transformed.quarantined.is_empty() {
            return Ok(0);
        }
        if let Record::Logged(recorded) = recorded
            && recorded.as_ref() != Some(&transformed.quarantined)
        {
            self.checkpoint
                .write_quarantine(batch_id, &transformed.quarantined)
                .await?;
            crash_point("after-quarantine-log", batch_id);
        }
        for (stage, lines) in &transformed.dead_letters {
            let location = self
                .pipeline
                .transforms
                .iter()
                .chain(self.pipeline.stateful.as_ref().map(|s| &s.stage))
                .chain(self.pipeline.sink.foreach_batch().map(|f| &f.stage))
                .find(|t| &t.name == stage)
                .and_then(|t| match &t.on_error {
                    crate::config::OnError::Quarantine(q) => q.dead_letter.clone(),
                    crate::config::OnError::Fail => None,
                })
                .unwrap_or_else(|| self.pipeline.checkpoint.join("dead_letter"));
            let name = format!("quarantine-{stage}-batch-{batch_id:06}.jsonl");
            tracing::warn!(batch_id, stage, location = %location, "rows the plugin failed on were quarantined");
            put_lines(&location, &name, lines.clone()).await?;
        }
        Ok(transformed
            .quarantined
            .values()
            .map(|rows| rows.len() as u64)
            .sum())
    }

    /// Writes batch N's bad records to `<dead_letter>/batch-N.jsonl`; a
    /// replay rewrites the same file with the same rows.
    pub(super) async fn write_dead_letters(
        &self,
        input: usize,
        batch_id: u64,
        bad: &[BadRecord],
    ) -> Result<()> {
        if bad.is_empty() {
            return Ok(());
        }
        let location = self.pipeline.inputs[input]
            .source
            .dead_letter()
            .cloned()
            .unwrap_or_else(|| self.pipeline.checkpoint.join("dead_letter"));
        let mut lines = Vec::new();
        for record in bad {
            serde_json::to_writer(&mut lines, record)
                .map_err(|e| WeirError::Internal(e.to_string()))?;
            lines.push(b'\n');
        }
        let name = if self.inputs.len() > 1 {
            format!("batch-{batch_id:06}-{}.jsonl", self.inputs[input].name)
        } else {
            format!("batch-{batch_id:06}.jsonl")
        };
        tracing::warn!(batch_id, count = bad.len(), location = %location, "bad records sent to the dead-letter location");
        put_lines(&location, &name, lines).await
    }
}

/// Writes (or, in a replay, rewrites) dead-letter file `name` at `location`.
async fn put_lines(location: &Location, name: &str, lines: Vec<u8>) -> Result<()> {
    location
        .open()?
        .put(&ObjectPath::from(name), PutPayload::from(lines))
        .await
        .map(drop)
        .map_err(|e| WeirError::storage(format!("{location}/{name}"), e))
}
