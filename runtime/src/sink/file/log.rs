//! The file sink's log as readers see it: the newest `N.compact` entry,
//! then the batch entries after it.

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

use super::{SinkCompactEntry, SinkLogEntry};
use crate::error::{Result, WeirError};
use crate::storage::Location;

/// A file sink's log as a reader sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct SinkLog {
    /// The newest compact entry.
    pub(super) compact: Option<SinkCompactEntry>,
    /// Batch ids of the other compact entries.
    pub(super) older_compacts: Vec<u64>,
    /// Ids of every batch entry present (some predate the compact entry).
    pub(super) batch_ids: Vec<u64>,
    /// The batch entries after the compact entry, in batch order.
    pub(super) batches: Vec<SinkLogEntry>,
}

pub(super) async fn read_log(store: &dyn ObjectStore, location: &Location) -> Result<SinkLog> {
    let prefix = ObjectPath::from("_weir_log");
    let listed = store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| WeirError::storage(format!("{location}/_weir_log"), e))?;
    let mut compacts = Vec::new();
    let mut batches = Vec::new();
    for meta in listed.objects {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        match name.strip_suffix(".compact") {
            Some(id) => compacts.extend(id.parse::<u64>().ok()),
            None => batches.extend(name.parse::<u64>().ok()),
        }
    }
    compacts.sort_unstable();
    batches.sort_unstable();
    let newest = compacts.pop();
    let read = |path: ObjectPath| async move {
        let bytes = crate::storage::get_if_exists(store, &path)
            .await
            .map_err(|e| WeirError::storage(format!("{location}/{path}"), e))?;
        Ok::<_, WeirError>(bytes.map(|b| (path, b)))
    };
    let compact = match newest {
        Some(id) => read_compact(store, location, id).await?,
        None => None,
    };
    let through = compact.as_ref().map(|c| c.batch_id);
    let mut entries = Vec::new();
    for &id in batches.iter().filter(|id| through.is_none_or(|c| **id > c)) {
        // Deleted since the listing: a compact entry covers it.
        if let Some((path, bytes)) = read(ObjectPath::from(format!("_weir_log/{id}"))).await? {
            entries.push(parse_entry::<SinkLogEntry>(location, &path, &bytes)?);
        }
    }
    Ok(SinkLog {
        compact,
        older_compacts: compacts,
        batch_ids: batches,
        batches: entries,
    })
}

/// `_weir_log/<id>.compact`, if it exists.
pub(super) async fn read_compact(
    store: &dyn ObjectStore,
    location: &Location,
    id: u64,
) -> Result<Option<SinkCompactEntry>> {
    let path = ObjectPath::from(format!("_weir_log/{id}.compact"));
    match crate::storage::get_if_exists(store, &path)
        .await
        .map_err(|e| WeirError::storage(format!("{location}/{path}"), e))?
    {
        Some(bytes) => Ok(Some(parse_entry(location, &path, &bytes)?)),
        None => Ok(None),
    }
}

fn parse_entry<T: serde::de::DeserializeOwned>(
    location: &Location,
    path: &ObjectPath,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| WeirError::CheckpointCorrupt {
        path: format!("{location}/{path}"),
        reason: format!("not a sink log entry: {e}"),
    })
}

/// The data files a file sink at `location` has committed, in commit
/// order: what a reader that must not see uncommitted or half-written
/// files reads. Follows the log across compactions.
pub async fn committed_files(location: &Location) -> Result<Vec<String>> {
    let store = location.open()?;
    let log = read_log(store.as_ref(), location).await?;
    let mut files = log.compact.map(|c| c.files).unwrap_or_default();
    for entry in log.batches {
        files.extend(entry.files);
    }
    Ok(files)
}

/// The data files batch `batch_id` committed to the file sink at
/// `location`, if the log still lists them apart (`_weir_log/N`): `None`
/// once retention deleted the entry.
pub async fn batch_files(location: &Location, batch_id: u64) -> Result<Option<Vec<String>>> {
    let store = location.open()?;
    let path = ObjectPath::from(format!("_weir_log/{batch_id}"));
    let bytes = crate::storage::get_if_exists(store.as_ref(), &path)
        .await
        .map_err(|e| WeirError::storage(format!("{location}/{path}"), e))?;
    match bytes {
        Some(bytes) => Ok(Some(
            parse_entry::<SinkLogEntry>(location, &path, &bytes)?.files,
        )),
        None => Ok(None),
    }
}
