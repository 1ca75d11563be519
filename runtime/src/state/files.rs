//! The files that make a stateful operator's state durable: one per task
//! and version, holding the key groups of the task's range.
//!
//! ```text
//! state/<operator>/<V>.<first>-<last>.delta     the changes batch V-1 made, per key group
//! state/<operator>/<V>.<first>-<last>.snapshot  every row of groups first..=last at version V
//! state/<operator>/<g>/<V>.delta|snapshot      key group g alone (written before tasks shared files)
//! ```
//!
//! A task writes one file per batch, not one per key group: on a local disk
//! each file costs an inode and two fsyncs, on S3 a PUT. A restart with
//! another parallelism reads the files whose ranges meet its own and keeps
//! their entries for its key groups, so state moves between tasks without
//! being rewritten (as Flink reads key-group ranges out of its tasks'
//! checkpoint files).

use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::Change;
use crate::error::{Result, WeirError};

/// One state file of an operator.
#[derive(Debug, Clone)]
pub(super) struct StateFile {
    /// The state version it holds (a delta: the changes that made it).
    pub version: u64,
    /// Every row of its groups, or only the changes.
    pub snapshot: bool,
    /// The key groups it covers.
    pub groups: RangeInclusive<u16>,
    pub path: ObjectPath,
    /// One key group's file from before tasks shared files: its entries
    /// are that group's changes, not (group, changes) pairs.
    pub single: bool,
}

impl StateFile {
    /// Whether it covers any of `range`.
    pub fn meets(&self, range: &Range<u16>) -> bool {
        *self.groups.start() < range.end && *self.groups.end() >= range.start
    }
}

/// The directory of `operator`'s state.
fn dir(operator: &str) -> ObjectPath {
    ObjectPath::from(format!("state/{operator}"))
}

/// Every state file of `operator`, by version, snapshots after deltas of
/// the same version. Files whose names are not state files are left out.
pub(super) async fn list(
    checkpoint: &Arc<dyn ObjectStore>,
    operator: &str,
) -> Result<Vec<StateFile>> {
    let prefix = dir(operator);
    let listed: Vec<_> = checkpoint
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| WeirError::storage(&prefix, e))?;
    let mut files: Vec<StateFile> = listed
        .into_iter()
        .filter_map(|meta| {
            let rest: Vec<String> = meta
                .location
                .prefix_match(&prefix)?
                .map(|part| part.as_ref().to_string())
                .collect();
            parse(&rest, meta.location)
        })
        .collect();
    files.sort_by_key(|f| (f.version, f.snapshot, *f.groups.start()));
    Ok(files)
}

/// A state file's version, kind and groups from its path below the
/// operator's directory (see the module docs).
pub(super) fn parse(rest: &[String], path: ObjectPath) -> Option<StateFile> {
    let kind = |kind: &str| match kind {
        "snapshot" => Some(true),
        "delta" => Some(false),
        _ => None,
    };
    match rest {
        [name] => {
            let mut parts = name.split('.');
            let (version, groups, snapshot) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let (first, last) = groups.split_once('-')?;
            let (first, last): (u16, u16) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last).then_some(())?;
            Some(StateFile {
                version: version.parse().ok()?,
                snapshot: kind(snapshot)?,
                groups: first..=last,
                path,
                single: false,
            })
        }
        [group, name] => {
            let group: u16 = group.parse().ok()?;
            let (version, snapshot) = name.split_once('.')?;
            Some(StateFile {
                version: version.parse().ok()?,
                snapshot: kind(snapshot)?,
                groups: group..=group,
                path,
                single: true,
            })
        }
        _ => None,
    }
}

/// The path of the file of `groups` at `version`.
pub(super) fn path(
    operator: &str,
    version: u64,
    groups: &Range<u16>,
    snapshot: bool,
) -> ObjectPath {
    let kind = if snapshot { "snapshot" } else { "delta" };
    let last = groups.end.saturating_sub(1).max(groups.start);
    ObjectPath::from(format!(
        "state/{operator}/{version}.{}-{last}.{kind}",
        groups.start
    ))
}

/// Writes `entries` (key group, its changes or rows) as the file `path`.
pub(super) async fn write(
    checkpoint: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    entries: &[(u16, Vec<Change>)],
) -> Result<()> {
    let bytes = postcard::to_stdvec(entries)
        .map_err(|e| WeirError::Internal(format!("encoding state: {e}")))?;
    checkpoint
        .put(path, PutPayload::from(bytes))
        .await
        .map(drop)
        .map_err(|e| WeirError::storage(path, e))
}

/// A file's entries: (key group, changes or rows).
pub(super) async fn read(
    checkpoint: &Arc<dyn ObjectStore>,
    file: &StateFile,
) -> Result<Vec<(u16, Vec<Change>)>> {
    let path = &file.path;
    let bytes = match checkpoint.get(path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| WeirError::storage(path, e))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(WeirError::CheckpointCorrupt {
                path: path.to_string(),
                reason: "the file vanished while the state was read".into(),
            });
        }
        Err(e) => return Err(WeirError::storage(path, e)),
    };
    let corrupt = |reason: String| WeirError::CheckpointCorrupt {
        path: path.to_string(),
        reason,
    };
    let entries: Vec<(u16, Vec<Change>)> = if file.single {
        let changes = postcard::from_bytes(&bytes)
            .map_err(|e| corrupt(format!("cannot decode state: {e}")))?;
        vec![(*file.groups.start(), changes)]
    } else {
        postcard::from_bytes(&bytes).map_err(|e| corrupt(format!("cannot decode state: {e}")))?
    };
    if let Some((group, _)) = entries.iter().find(|(g, _)| !file.groups.contains(g)) {
        return Err(corrupt(format!(
            "it holds key group {group}, outside its groups {}-{}",
            file.groups.start(),
            file.groups.end()
        )));
    }
    Ok(entries)
}

/// Deletes `files` (one already gone is fine).
pub(super) async fn remove<'a>(
    checkpoint: &Arc<dyn ObjectStore>,
    files: impl Iterator<Item = &'a StateFile>,
) -> Result<()> {
    for file in files {
        match checkpoint.delete(&file.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(WeirError::storage(&file.path, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(rest: &[&str]) -> Option<(u64, bool, RangeInclusive<u16>, bool)> {
        let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        parse(&rest, ObjectPath::from("x")).map(|f| (f.version, f.snapshot, f.groups, f.single))
    }

    #[test]
    fn names_parse_to_versions_kinds_and_groups() {
        assert_eq!(parsed(&["7.0-63.delta"]), Some((7, false, 0..=63, false)));
        assert_eq!(
            parsed(&["10.64-127.snapshot"]),
            Some((10, true, 64..=127, false))
        );
        assert_eq!(parsed(&["5", "3.delta"]), Some((3, false, 5..=5, true)));
        for bad in [
            &["7.63-0.delta"][..],
            &["7.0-63"],
            &["7.0-63.delta.tmp"],
            &["x.0-1.delta"],
            &["7.0-1.other"],
            &["7.0-70000.delta"],
            &["a", "3.delta"],
            &["1", "2", "3.delta"],
        ] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_tasks_files_are_named_by_its_groups() {
        assert_eq!(
            path("0", 3, &(0..64), false).as_ref(),
            "state/0/3.0-63.delta"
        );
        assert_eq!(
            path("join", 10, &(64..128), true).as_ref(),
            "state/join/10.64-127.snapshot"
        );
    }
}
