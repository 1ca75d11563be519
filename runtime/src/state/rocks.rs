use std::path::Path;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteOptions};

use super::StateBackend;
use crate::error::{Result, WeirError};

/// Operator state in RocksDB, in a scratch directory removed on drop. The
/// write-ahead log is off: durability comes from the checkpoint's deltas.
///
/// Scratch directories live in `$TMPDIR/weir-state/<pid>-<random>`; a
/// process killed with SIGKILL cannot remove its own, so opening a new one
/// also removes those whose process is gone.
pub struct RocksBackend {
    db: DB,
    write: WriteOptions,
    _dir: tempfile::TempDir,
}

impl RocksBackend {
    /// A fresh, empty database in a new scratch directory.
    pub fn open_scratch() -> Result<RocksBackend> {
        let root = std::env::temp_dir().join("weir-state");
        let io = |source| WeirError::Io {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        remove_orphans(&root);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(&root)
            .map_err(io)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir.path()).map_err(rocks)?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(RocksBackend {
            db,
            write,
            _dir: dir,
        })
    }
}

/// Removes scratch directories of processes that no longer exist (best
/// effort; only where `/proc` tells which processes are alive).
fn remove_orphans(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn rocks(e: rocksdb::Error) -> WeirError {
    WeirError::Internal(format!("RocksDB: {e}"))
}

impl StateBackend for RocksBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(rocks)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put_opt(key, value, &self.write).map_err(rocks)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.db.delete_opt(key, &self.write).map_err(rocks)
    }

    fn scan_from(&self, start: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for item in self
            .db
            .iterator(IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(rocks)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_of_dead_processes_are_removed() {
        let root = std::env::temp_dir().join("weir-state");
        std::fs::create_dir_all(&root).unwrap();
        // Above Linux's pid_max, so no live process owns it.
        let stale = root.join("999999999-stale");
        std::fs::create_dir_all(stale.join("sub")).unwrap();
        let mut backend = RocksBackend::open_scratch().unwrap();
        assert!(!stale.exists());
        backend.put(b"k", b"v").unwrap();
        assert_eq!(backend.get(b"k").unwrap(), Some(b"v".to_vec()));
        let mine = backend._dir.path().to_path_buf();
        assert!(mine.starts_with(&root) && mine.exists());
        drop(backend);
        assert!(!mine.exists());
    }
}
