//! Sources: where rows come from. Each source kind gets a module — files
//! (`file.rs`, with the format decoders in `decode.rs`) and Kafka
//! (`kafka.rs`) — behind the [`Source`] trait.
//!
//! A source is *replayable*: it describes each batch as a plan (which
//! files, which offset ranges) that the query logs in `sources/0/N` before
//! the batch runs, and reading a plan again gives the same rows.

mod decode;
mod file;
mod kafka;

use std::sync::Arc;

use serde_json::Value;

pub use decode::{BadRecord, Decoded, EventTimeProgress};
pub use file::{FileEntry, FileReader, FileSource, SourceLogEntry};
pub use kafka::KafkaSource;

use crate::config::SourceConfig;
use crate::error::Result;
use crate::retry::Retries;

/// Opens the source `config` declares: a file source decodes up to
/// `parallelism` files at once; connector outages are counted in `retries`.
pub fn open(
    config: &SourceConfig,
    retries: &Retries,
    parallelism: usize,
) -> Result<Box<dyn Source>> {
    Ok(match config {
        SourceConfig::File(config) => {
            Box::new(FileSource::open((**config).clone())?.with_readers(parallelism))
        }
        SourceConfig::Kafka(config) => {
            Box::new(KafkaSource::open(config.clone(), retries.clone())?)
        }
    })
}

/// A replayable input.
#[async_trait::async_trait]
pub trait Source: Send {
    /// Restores the position after the batches already run, from their
    /// logged plans, in batch order.
    fn restore(&mut self, logged: &[Value]) -> Result<()> {
        logged.iter().try_for_each(|plan| self.advance(plan))
    }

    /// For draining triggers: the input ends at what is available now.
    async fn fix_end(&mut self) -> Result<()>;

    /// The next batch's plan, or `None` when nothing new is available.
    /// With `capped`, per-trigger limits apply.
    async fn plan(&mut self, capped: bool) -> Result<Option<Value>>;

    /// The plan of a batch that reads nothing (a no-data batch).
    fn empty_plan(&self) -> Value;

    /// Moves the position past a planned batch.
    fn advance(&mut self, plan: &Value) -> Result<()>;

    /// Reads a planned batch (also when it is replayed).
    async fn read(&mut self, plan: &Value) -> Result<Decoded>;

    /// Reads a committed batch again, outside the query (`weir replay`):
    /// also where the source moved its input since.
    async fn read_committed(&mut self, plan: &Value) -> Result<Decoded> {
        self.read(plan).await
    }

    /// How many input units (files, partitions) a plan covers.
    fn plan_units(&self, plan: &Value) -> usize;

    /// Everything the position depends on, after the plans advanced so
    /// far, in one value: the checkpoint's compact entry, which stands for
    /// all those plans on restart.
    fn position(&self) -> Value;

    /// Restores a [`Source::position`] (then later plans are advanced).
    fn restore_position(&mut self, position: &Value) -> Result<()>;

    /// Called once the batch that read `plan` is committed, so the input
    /// it read may be cleaned up (again after a restart: it must be
    /// idempotent).
    async fn handle_commit(&mut self, _plan: &Value) -> Result<()> {
        Ok(())
    }

    /// Whether [`Source::handle_commit`] does anything.
    fn cleans_up(&self) -> bool {
        false
    }

    /// A handle that reads planned batches apart from the source, so the
    /// next batch is read while the one before runs; `None` when reading
    /// needs the source itself (a Kafka consumer).
    fn reader(&self) -> Option<Arc<dyn PlanReader>> {
        None
    }
}

/// Reads planned batches of a source, apart from it (see [`Source::reader`]).
#[async_trait::async_trait]
pub trait PlanReader: Send + Sync {
    /// Reads a planned batch, as [`Source::read`] would.
    async fn read(&self, plan: &Value) -> Result<Decoded>;
}

/// Decodes a logged plan, naming it when it is not what the source wrote.
pub(crate) fn parse_plan<T: serde::de::DeserializeOwned>(plan: &Value) -> Result<T> {
    serde_json::from_value(plan.clone()).map_err(|e| crate::error::WeirError::CheckpointCorrupt {
        path: "sources/0".into(),
        reason: format!("a batch plan does not match this source: {e}"),
    })
}
