//! `weir checkpoint compact`: what a running query does every
//! `compact_interval` batches, done offline on a stopped query — each
//! source's position written as a compact entry at the last committed
//! batch, the checkpoint trimmed to the retained batches, and a file
//! sink's log compacted.

use crate::checkpoint::Checkpoint;
use crate::config::{Pipeline, SinkTarget};
use crate::error::Result;
use crate::retry::Retries;
use crate::sink::FileSink;

/// What an offline compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The last committed batch, which the compact entries stand for
    /// (`None`: nothing committed, nothing done).
    pub batch: Option<u64>,
    /// Checkpoint files deleted.
    pub deleted: u64,
}

/// Compacts `pipeline`'s checkpoint (and its file sink's log), taking the
/// checkpoint's lock: the query must not be running.
pub async fn compact(pipeline: &Pipeline) -> Result<Compacted> {
    let checkpoint = Checkpoint::open(&pipeline.checkpoint, &pipeline.name).await?;
    let recovery = checkpoint.recover().await?;
    // An in-flight batch stays as it is, for its replay.
    let committed = recovery.replay.unwrap_or(recovery.next_batch);
    let Some(batch) = committed.checked_sub(1) else {
        checkpoint.release().await;
        return Ok(Compacted {
            batch: None,
            deleted: 0,
        });
    };
    let until_committed = crate::checkpoint::Recovery {
        replay: None,
        next_batch: committed,
    };
    let retries = Retries::default();
    for (index, input) in pipeline.inputs.iter().enumerate() {
        let mut source = crate::source::open(&input.source, &retries, 1)?;
        super::inputs::restore_source(&checkpoint, index, source.as_mut(), until_committed).await?;
        checkpoint
            .write_source_compact(index, batch, &source.position())
            .await?;
    }
    let purged = checkpoint
        .purge(batch, pipeline.retention, pipeline.inputs.len())
        .await?;
    if let SinkTarget::Files(files) = &pipeline.sink.target {
        FileSink::open(&files.path, files.kind, pipeline.retention)?
            .with_target_file_size(files.target_file_size)
            .compact(batch)
            .await?;
    }
    checkpoint.release().await;
    Ok(Compacted {
        batch: Some(batch),
        deleted: purged.files,
    })
}
