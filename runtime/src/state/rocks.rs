use rocksdb::{DB, Direction, IteratorMode, Options, WriteOptions};

use super::StateBackend;
use crate::error::{Result, WeirError};

/// Operator state in RocksDB, in a scratch directory removed on drop. The
/// write-ahead log is off: durability comes from the checkpoint's deltas.
pub struct RocksBackend {
    db: DB,
    write: WriteOptions,
    _dir: tempfile::TempDir,
}

impl RocksBackend {
    /// A fresh, empty database in a new scratch directory.
    pub fn open_scratch() -> Result<RocksBackend> {
        let dir = tempfile::Builder::new()
            .prefix("weir-state-")
            .tempdir()
            .map_err(|source| WeirError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
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
