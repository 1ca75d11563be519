//! Where pipeline data lives: every path (source, sink, checkpoint) is an
//! object-store location, so remote stores slot in without touching callers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::error::{Result, WeirError};

/// A directory-like location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (absolute).
    Local(PathBuf),
}

impl Location {
    /// Parses a path or `file://` URL, resolving relative paths against `base`.
    pub fn parse(raw: &str, base: &Path) -> Result<Location, String> {
        if let Some(rest) = raw.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(format!(
                "`{scheme}://` locations are not supported yet; use a local path or file:// URL"
            ));
        }
        let path = Path::new(raw);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(Location::Local(absolute))
    }

    /// Opens the location as an object store rooted at it, creating a local
    /// directory when missing.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>> {
        match self {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| WeirError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| WeirError::storage(dir.display(), e))?;
                Ok(Arc::new(fs))
            }
        }
    }

    /// A sub-location.
    pub fn join(&self, child: &str) -> Location {
        match self {
            Location::Local(dir) => Location::Local(dir.join(child)),
        }
    }

    /// The local directory, for things that only exist locally (file locks).
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Location::Local(dir) => Some(dir),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(dir) => write!(f, "{}", dir.display()),
        }
    }
}
