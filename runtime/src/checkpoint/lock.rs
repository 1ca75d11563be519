use std::fs::{File, OpenOptions, TryLockError};

use crate::error::{Result, WeirError};
use crate::storage::Location;

/// An exclusive lock on a checkpoint, released when dropped or when the
/// process dies (an OS file lock, so `kill -9` never leaves it stale).
#[derive(Debug)]
pub struct CheckpointLock {
    _file: Option<File>,
}

impl CheckpointLock {
    /// Takes the lock or reports which checkpoint is busy.
    pub fn acquire(location: &Location) -> Result<CheckpointLock> {
        let Some(dir) = location.local_dir() else {
            return Ok(CheckpointLock { _file: None });
        };
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| WeirError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(CheckpointLock { _file: Some(file) }),
            Err(TryLockError::WouldBlock) => Err(WeirError::CheckpointLocked {
                path: location.to_string(),
            }),
            Err(TryLockError::Error(source)) => Err(WeirError::Io { path, source }),
        }
    }
}
