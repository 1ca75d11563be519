//! A directory of files read as a stream: each trigger picks up files not
//! seen before, in a deterministic order (modification time then path, or
//! path alone with `order = "name"`),
//! capped by `max_files_per_trigger` / `max_bytes_per_trigger`.
//!
//! As in Spark, `max_file_age` bounds what is remembered: files older than
//! the newest seen file by more than the age are ignored and forgotten, so
//! the compacted seen-files log stays bounded. `clean_source` deletes or
//! archives a file once the batch that read it is committed.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::decode::{Decoded, decode};
use crate::config::{CleanSource, FileOrder, FileSourceConfig};
use crate::error::{Result, WeirError};

/// One input file, as recorded in the checkpoint's source log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the source directory.
    pub path: String,
    /// Size in bytes when planned.
    pub size: u64,
    /// Modification time when planned (ms since the epoch).
    pub modified_ms: i64,
}

/// `sources/0/N` for the file source: the files of batch N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLogEntry {
    /// Files, in read order.
    pub files: Vec<FileEntry>,
}

/// `sources/<i>/N.compact` for the file source: the files remembered as
/// read through batch N.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFiles {
    /// Path → modification time (ms since the epoch).
    pub files: std::collections::BTreeMap<String, i64>,
    /// Files modified before this are ignored (`max_file_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten_before_ms: Option<i64>,
}

/// The file source.
pub struct FileSource {
    config: Arc<FileSourceConfig>,
    store: Arc<dyn ObjectStore>,
    /// How many of a batch's files are fetched and decoded at once.
    readers: usize,
    /// Files read, by path, with their modification times.
    seen: HashMap<String, i64>,
    /// The newest modification time seen.
    newest_ms: Option<i64>,
    /// With `max_file_age`: files modified before this are ignored.
    forgotten_before_ms: Option<i64>,
    /// With a draining trigger: the files present at start.
    end: Option<Vec<FileEntry>>,
}

impl FileSource {
    /// Opens the source directory (created when missing, so a query can
    /// start before its first file arrives).
    pub fn open(config: FileSourceConfig) -> Result<FileSource> {
        let store = config.path.open()?;
        Ok(FileSource {
            config: Arc::new(config),
            store,
            readers: 1,
            seen: HashMap::new(),
            newest_ms: None,
            forgotten_before_ms: None,
            end: None,
        })
    }

    /// Fetches and decodes up to `readers` of a batch's files at once, on
    /// threads of their own (a query's `parallelism`); the rows keep the
    /// files' order.
    pub fn with_readers(mut self, readers: usize) -> FileSource {
        self.readers = readers.max(1);
        self
    }

    /// The source's settings.
    pub fn config(&self) -> &FileSourceConfig {
        &self.config
    }

    /// Remembers files as processed (from the checkpoint, or once planned),
    /// then forgets those `max_file_age` lets go.
    pub fn mark_seen<'a>(&mut self, files: impl IntoIterator<Item = &'a FileEntry>) {
        for file in files {
            self.seen.insert(file.path.clone(), file.modified_ms);
            self.newest_ms = Some(
                self.newest_ms
                    .map_or(file.modified_ms, |n| n.max(file.modified_ms)),
            );
        }
        if let (Some(age), Some(newest)) = (self.config.max_file_age, self.newest_ms) {
            let before = newest.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
            if self.forgotten_before_ms.is_none_or(|b| before > b) {
                self.forgotten_before_ms = Some(before);
                self.seen.retain(|_, modified| *modified >= before);
            }
        }
    }

    /// Whether a listed file is new: not read before, and not too old.
    fn is_new(&self, path: &str, modified_ms: i64) -> bool {
        self.forgotten_before_ms.is_none_or(|b| modified_ms >= b) && !self.seen.contains_key(path)
    }

    /// How many files are remembered as read.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Files not processed yet, oldest first. Hidden files (`.x`, `_x`) and
    /// files still being written by the object store (`x#n`) are ignored.
    pub async fn list_new(&self) -> Result<Vec<FileEntry>> {
        let local = match self.config.path.local_dir() {
            Some(dir) => self.list_local_new(dir)?,
            None => None,
        };
        let mut files = match local {
            Some(files) => files,
            None => self.list_store_new().await?,
        };
        match self.config.order {
            FileOrder::Modified => {
                files.sort_by(|a, b| (a.modified_ms, &a.path).cmp(&(b.modified_ms, &b.path)))
            }
            FileOrder::Name => files.sort_by(|a, b| a.path.cmp(&b.path)),
        }
        Ok(files)
    }

    /// New files of a local directory: names from the directory itself, a
    /// `stat` only for names not seen yet. (The object store's listing stats
    /// every file, so each look cost O(files ever written): 4.7 ms at 500
    /// files in a debug build, on the continuous trigger's every poll.)
    /// `None` when a name needs the object store's path encoding: then the
    /// store lists.
    fn list_local_new(&self, root: &std::path::Path) -> Result<Option<Vec<FileEntry>>> {
        let plain = |name: &str| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-=+,@".contains(&b))
        };
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| WeirError::Io { path, source }
        };
        let mut found = Vec::new();
        let mut dirs = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str().filter(|n| plain(n)) else {
                    return Ok(None);
                };
                if name.starts_with('.') || name.starts_with('_') {
                    continue;
                }
                let relative = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                let path = entry.path();
                let mut kind = entry.file_type().map_err(io(&path))?;
                if kind.is_symlink() {
                    // Followed, as the object store's listing does.
                    match std::fs::metadata(&path) {
                        Ok(meta) => kind = meta.file_type(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io(&path)(e)),
                    }
                }
                if kind.is_dir() {
                    dirs.push((path, relative));
                    continue;
                }
                if self.seen.contains_key(&relative) {
                    continue;
                }
                let meta = match std::fs::metadata(&path) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path)(e)),
                };
                let modified: chrono::DateTime<chrono::Utc> =
                    meta.modified().map_err(io(&path))?.into();
                if !self.is_new(&relative, modified.timestamp_millis()) {
                    continue;
                }
                found.push(FileEntry {
                    path: relative,
                    size: meta.len(),
                    modified_ms: modified.timestamp_millis(),
                });
            }
        }
        Ok(Some(found))
    }

    /// New files, from the object store's listing.
    async fn list_store_new(&self) -> Result<Vec<FileEntry>> {
        let listed: Vec<_> = self
            .store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| WeirError::storage(&self.config.path, e))?;
        let files: Vec<FileEntry> = listed
            .into_iter()
            .filter(|meta| {
                meta.location.parts().all(|part| {
                    let s = part.as_ref();
                    !s.starts_with('.') && !s.starts_with('_') && !s.contains('#')
                })
            })
            .map(|meta| FileEntry {
                path: meta.location.to_string(),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            })
            .filter(|f| self.is_new(&f.path, f.modified_ms))
            .collect();
        Ok(files)
    }

    /// The next batch's files from `candidates` (in order): all of them when
    /// `capped` is false, else as many as the per-trigger limits allow (and
    /// always at least one, so a large file cannot stall the stream).
    pub fn select(&self, candidates: &[FileEntry], capped: bool) -> Vec<FileEntry> {
        if !capped {
            return candidates.to_vec();
        }
        let max_files = self.config.max_files_per_trigger.unwrap_or(usize::MAX);
        let max_bytes = self.config.max_bytes_per_trigger.unwrap_or(u64::MAX);
        let mut bytes = 0u64;
        let mut planned = Vec::new();
        for file in candidates.iter().take(max_files) {
            if !planned.is_empty() && bytes.saturating_add(file.size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(file.size);
            planned.push(file.clone());
        }
        planned
    }

    /// Reads and decodes `files` against the declared schema.
    pub async fn read(&self, files: &[FileEntry]) -> Result<Decoded> {
        self.reader().read_files(files, false).await
    }

    /// A handle reading this source's planned batches.
    pub fn reader(&self) -> FileReader {
        FileReader {
            config: self.config.clone(),
            store: self.store.clone(),
            readers: self.readers,
        }
    }

    /// Reads `files`, which a committed batch read, again (`weir replay`):
    /// from the source directory, or from the archive where
    /// `clean_source = "archive"` moved them.
    pub async fn read_committed(&self, files: &[FileEntry]) -> Result<Decoded> {
        self.reader().read_files(files, true).await
    }
}

/// What reading a planned batch needs of a file source, without its
/// position: read ahead, while the batch before runs.
#[derive(Clone)]
pub struct FileReader {
    config: Arc<FileSourceConfig>,
    store: Arc<dyn ObjectStore>,
    readers: usize,
}

impl FileReader {
    async fn read_files(&self, files: &[FileEntry], committed: bool) -> Result<Decoded> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        // Decoding is CPU work: off the async workers, `readers` files at
        // once, in the files' order.
        let reads: Vec<_> = files
            .iter()
            .map(|file| self.read_file(file, committed))
            .collect();
        let decoded: Vec<Decoded> = stream::iter(reads)
            .buffered(self.readers)
            .try_collect()
            .await?;
        let mut all = Decoded::default();
        for file in decoded {
            all.batches.extend(file.batches);
            all.bad_records.extend(file.bad_records);
        }
        Ok(all)
    }
}

impl FileReader {
    /// Fetches one file (a committed batch's where `clean_source` left it)
    /// and decodes it on a blocking thread.
    async fn read_file(&self, file: &FileEntry, committed: bool) -> Result<Decoded> {
        let name = format!("{}/{}", self.config.path, file.path);
        let bytes = match committed {
            false => get_bytes(&self.store, &file.path, &name).await?,
            true => self.committed_bytes(file, &name).await?,
        };
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || decode_guarded(&config, &name, bytes))
            .await
            .map_err(|e| WeirError::Internal(format!("a decoding task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl super::PlanReader for FileReader {
    async fn read(&self, plan: &serde_json::Value) -> Result<Decoded> {
        let entry: SourceLogEntry = super::parse_plan(plan)?;
        self.read_files(&entry.files, false).await
    }
}

#[async_trait::async_trait]
impl super::Source for FileSource {
    async fn fix_end(&mut self) -> Result<()> {
        self.end = Some(self.list_new().await?);
        Ok(())
    }

    async fn plan(&mut self, capped: bool) -> Result<Option<serde_json::Value>> {
        let candidates = match &self.end {
            Some(end) => end
                .iter()
                .filter(|f| self.is_new(&f.path, f.modified_ms))
                .cloned()
                .collect(),
            None => self.list_new().await?,
        };
        let files = self.select(&candidates, capped);
        if files.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::to_value(SourceLogEntry { files }).expect("serialisable"),
        ))
    }

    fn empty_plan(&self) -> serde_json::Value {
        serde_json::to_value(SourceLogEntry { files: Vec::new() }).expect("serialisable")
    }

    fn advance(&mut self, plan: &serde_json::Value) -> Result<()> {
        let entry: SourceLogEntry = super::parse_plan(plan)?;
        self.mark_seen(&entry.files);
        Ok(())
    }

    async fn read(&mut self, plan: &serde_json::Value) -> Result<Decoded> {
        let entry: SourceLogEntry = super::parse_plan(plan)?;
        FileSource::read(self, &entry.files).await
    }

    async fn read_committed(&mut self, plan: &serde_json::Value) -> Result<Decoded> {
        let entry: SourceLogEntry = super::parse_plan(plan)?;
        FileSource::read_committed(self, &entry.files).await
    }

    fn plan_units(&self, plan: &serde_json::Value) -> usize {
        plan["files"].as_array().map_or(0, Vec::len)
    }

    fn reader(&self) -> Option<Arc<dyn super::PlanReader>> {
        Some(Arc::new(FileSource::reader(self)))
    }

    fn position(&self) -> serde_json::Value {
        let seen = SeenFiles {
            files: self.seen.iter().map(|(p, m)| (p.clone(), *m)).collect(),
            forgotten_before_ms: self.forgotten_before_ms,
        };
        serde_json::to_value(seen).expect("serialisable")
    }

    fn restore_position(&mut self, position: &serde_json::Value) -> Result<()> {
        let seen: SeenFiles = super::parse_plan(position)?;
        self.newest_ms = seen.files.values().copied().max();
        self.forgotten_before_ms = seen.forgotten_before_ms;
        self.seen = seen.files.into_iter().collect();
        Ok(())
    }

    fn cleans_up(&self) -> bool {
        self.config.clean_source != CleanSource::Off
    }

    async fn handle_commit(&mut self, plan: &serde_json::Value) -> Result<()> {
        if self.config.clean_source == CleanSource::Off {
            return Ok(());
        }
        let entry: SourceLogEntry = super::parse_plan(plan)?;
        for file in &entry.files {
            // Best effort, as in Spark: a file left behind is still
            // remembered as read, so it is not read twice.
            if let Err(e) = self.clean(&file.path).await {
                tracing::warn!(file = %file.path, error = %e, "could not clean up a processed input file");
            }
        }
        Ok(())
    }
}

/// Whether any part of `relative` below `root` is a symbolic link.
fn through_symlink(root: &std::path::Path, relative: &str) -> bool {
    let mut path = root.to_path_buf();
    relative.split('/').any(|part| {
        path.push(part);
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// The bytes of `relative` in `store` (`name`, for errors).
async fn get_bytes(
    store: &Arc<dyn ObjectStore>,
    relative: &str,
    name: &str,
) -> Result<bytes::Bytes> {
    store
        .get(&ObjectPath::from(relative))
        .await
        .map_err(|e| WeirError::storage(name, e))?
        .bytes()
        .await
        .map_err(|e| WeirError::storage(name, e))
}

impl FileReader {
    /// A committed batch's `file`, where `clean_source` left it; a file
    /// that was deleted, or changed since, is refused with the reason.
    async fn committed_bytes(&self, file: &FileEntry, name: &str) -> Result<bytes::Bytes> {
        let path = ObjectPath::from(file.path.as_str());
        let found = match self.store.get(&path).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| WeirError::storage(name, e))?,
            Err(object_store::Error::NotFound { .. }) => match &self.config.clean_source {
                CleanSource::Archive(archive) => {
                    let archived = format!("{archive}/{}", file.path);
                    get_bytes(&archive.open()?, &file.path, &archived).await?
                }
                CleanSource::Delete | CleanSource::Off => {
                    return Err(WeirError::Replay {
                        reason: format!(
                            "input file {name} is gone (clean_source deleted it, or it was \
                             removed); `replay_window = N` on the source keeps the inputs \
                             of the last N batches"
                        ),
                    });
                }
            },
            Err(e) => return Err(WeirError::storage(name, e)),
        };
        if found.len() as u64 != file.size {
            return Err(WeirError::Replay {
                reason: format!(
                    "input file {name} has {} bytes, not the {} the batch read: it changed \
                     since",
                    found.len(),
                    file.size
                ),
            });
        }
        Ok(found)
    }
}

impl FileSource {
    /// Deletes or archives one processed file.
    async fn clean(&self, relative: &str) -> Result<()> {
        let path = ObjectPath::from(relative);
        let name = format!("{}/{relative}", self.config.path);
        if let Some(root) = self.config.path.local_dir()
            && through_symlink(root, relative)
        {
            // Read through a link, as listings follow them; never deleted
            // or moved through one, which could reach outside the source.
            tracing::warn!(file = %name, "not cleaning up a file reached through a symbolic link");
            return Ok(());
        }
        if let CleanSource::Archive(archive) = &self.config.clean_source {
            let moved = match (self.config.path.local_dir(), archive.local_dir()) {
                (Some(from), Some(to)) => {
                    let target = to.join(relative);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|source| WeirError::Io {
                            path: parent.to_path_buf(),
                            source,
                        })?;
                    }
                    // Fails across file systems: then copied below.
                    std::fs::rename(from.join(relative), &target).is_ok()
                }
                _ => false,
            };
            if moved {
                return Ok(());
            }
            let bytes = match self.store.get(&path).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .map_err(|e| WeirError::storage(&name, e))?,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(WeirError::storage(&name, e)),
            };
            archive
                .open()?
                .put(&path, bytes.into())
                .await
                .map_err(|e| WeirError::storage(format!("{archive}/{relative}"), e))?;
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(WeirError::storage(&name, e)),
        }
    }
}

/// Decodes one file; a decoder panic on a hostile file fails this query,
/// naming the file, instead of unwinding through the host.
fn decode_guarded(config: &FileSourceConfig, name: &str, bytes: bytes::Bytes) -> Result<Decoded> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(config, name, bytes)))
        .unwrap_or_else(|panic| {
            Err(WeirError::format(
                format!("decoding {name}"),
                format!(
                    "the decoder panicked: {}",
                    crate::error::panic_message(&*panic)
                ),
            ))
        })
}
