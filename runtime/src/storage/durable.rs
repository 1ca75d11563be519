//! Local directories that keep what they acknowledge: a write returns only
//! once its file and the directory entries leading to it are on disk.
//!
//! object_store's `LocalFileSystem` writes a staging file and renames it
//! into place: atomic, but not durable. After a power loss a rename may
//! survive while the data it named does not, so a checkpoint's `commits/N`
//! or a sink's `_weir_log/N` could name rows that are gone. Weir always
//! writes a batch's data before the log entry naming it, so syncing each
//! write before returning gives a commit the order it needs: the data, then
//! the entry, then the directory holding the entry.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// A [`LocalFileSystem`] rooted at a directory whose writes are durable
/// when they return (see the module docs).
#[derive(Debug, Clone)]
pub struct DurableLocal {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
    /// Directories whose own entry (in their parent) is known to be on
    /// disk, so a write below them syncs only its nearest directory.
    durable_dirs: Arc<Mutex<HashSet<PathBuf>>>,
}

impl DurableLocal {
    /// Opens `root` (which must exist) and makes its entry, and every
    /// entry above it, durable.
    pub fn new(root: &Path) -> object_store::Result<DurableLocal> {
        // LocalFileSystem resolves its prefix the same way, so the paths it
        // gives back start with this one.
        let root = std::fs::canonicalize(root).map_err(|e| generic("open", root, e))?;
        let store = DurableLocal {
            inner: Arc::new(LocalFileSystem::new_with_prefix(&root)?),
            root: root.clone(),
            durable_dirs: Arc::default(),
        };
        store.sync_ancestors(&root)?;
        Ok(store)
    }

    /// Syncs the file at `location`, its directory, and the entries of any
    /// directories above it not known to be durable yet (new ones).
    async fn sync(&self, location: &ObjectPath) -> object_store::Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            fsync(&file)?;
            let dir = file.parent().unwrap_or(&this.root);
            fsync(dir)?;
            this.sync_ancestors(dir)
        })
        .await
        .map_err(|e| generic("fsync below", &self.root, e))?
    }

    /// Makes `dir`'s entry in its parent durable, then the parent's, and so
    /// on up to the first directory already known durable.
    fn sync_ancestors(&self, mut dir: &Path) -> object_store::Result<()> {
        while !self.durable_dirs().contains(dir) {
            let Some(parent) = dir.parent() else {
                break;
            };
            fsync(parent)?;
            self.durable_dirs().insert(dir.to_path_buf());
            dir = parent;
        }
        Ok(())
    }

    fn durable_dirs(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        // Nothing panics while holding it; a poisoned set is still a set.
        self.durable_dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Replaces `path` with `bytes` atomically and durably: a staging file,
/// fsynced, renamed into place, then the directory fsynced. For the host's
/// own small files (`weir serve`'s stored pipelines and stop marks).
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut staging = tempfile::NamedTempFile::new_in(dir)?;
    staging.write_all(bytes)?;
    staging.as_file().sync_all()?;
    staging.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

fn fsync(path: &Path) -> object_store::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| generic("fsync", path, e))
}

fn generic(
    what: &str,
    path: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("{what} {}: {e}", path.display()).into(),
    }
}

impl fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocal({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            upload,
            store: self.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

/// A multipart upload whose completion is durable.
#[derive(Debug)]
struct DurableUpload {
    upload: Box<dyn MultipartUpload>,
    store: DurableLocal,
    location: ObjectPath,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.upload.complete().await?;
        self.store.sync(&self.location).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    #[tokio::test]
    async fn writes_land_and_new_directories_are_synced_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocal::new(dir.path()).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert!(store.durable_dirs().contains(&root));

        let entry = ObjectPath::from("commits/a/0");
        store
            .put_opts(&entry, PutPayload::from("x"), PutMode::Create.into())
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("commits/a/0")).unwrap(), b"x");
        // The two directories the put created have durable entries now.
        let dirs = store.durable_dirs().clone();
        assert!(dirs.contains(&root.join("commits")), "{dirs:?}");
        assert!(dirs.contains(&root.join("commits/a")), "{dirs:?}");

        // Create-once semantics are the inner store's.
        let again = store
            .put_opts(&entry, PutPayload::from("y"), PutMode::Create.into())
            .await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));

        let mut upload = store
            .put_multipart(&ObjectPath::from("data/part-0"))
            .await
            .unwrap();
        upload.put_part(PutPayload::from("rows")).await.unwrap();
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(root.join("data/part-0")).unwrap(), b"rows");
        assert!(store.durable_dirs().contains(&root.join("data")));

        store
            .rename(
                &ObjectPath::from("data/part-0"),
                &ObjectPath::from("moved/part-0"),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("moved/part-0")).unwrap(), b"rows");
        assert!(store.durable_dirs().contains(&root.join("moved")));
    }
}
