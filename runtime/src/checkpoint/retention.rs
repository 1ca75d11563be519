//! Bounded checkpoints: compacted source logs and deletion of old entries.
//!
//! Every `compact_interval` batches, after batch C committed, each source's
//! position (what it has read through C: the file source's seen files, a
//! Kafka source's next offsets) is written as `sources/<i>/C.compact`. A
//! restart loads the newest compact entry and then only the plans after
//! it, so restart time stops growing with the query's age.
//!
//! Then entries of batches older than the last `min_batches_to_retain` are
//! deleted from `offsets/`, `commits/`, `versions/`, `sinks/kafka/` and
//! `sources/<i>/`, and compact entries older than the newest. Deletion
//! runs only once the compact entry covering it is durable, and a crash
//! part-way leaves old entries that no restart reads and the next purge
//! removes: restart never needs a deleted file.

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde_json::Value;

use super::Checkpoint;
use crate::config::Retention;
use crate::error::{Result, WeirError};
use crate::faults::crash_point;

/// Numbered logs a purge trims (besides each source's log).
const TRIMMED_LOGS: &[&str] = &[
    "offsets",
    "commits",
    "versions",
    "quarantine",
    "sinks/kafka",
];

/// What a purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Files deleted.
    pub files: u64,
}

/// A numbered entry's name: `N` or `N.compact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryName {
    Batch(u64),
    Compact(u64),
}

fn entry_name(filename: &str) -> Option<EntryName> {
    match filename.strip_suffix(".compact") {
        Some(id) => id.parse().ok().map(EntryName::Compact),
        None => filename.parse().ok().map(EntryName::Batch),
    }
}

impl Checkpoint {
    /// Writes source `source`'s position after batch `batch`
    /// (`sources/<i>/N.compact`).
    pub async fn write_source_compact(
        &self,
        source: usize,
        batch: u64,
        position: &Value,
    ) -> Result<()> {
        self.check_lease()?;
        let name = format!("sources/{source}/{batch}.compact");
        let bytes = super::to_json(&name, position)?;
        // Rewritten with the same content if a restart repeats it.
        self.store
            .put(
                &ObjectPath::from(name.as_str()),
                object_store::PutPayload::from(bytes),
            )
            .await
            .map(drop)
            .map_err(|e| WeirError::storage(self.describe(&name), e))
    }

    /// The newest compact entry of source `source` for a batch below
    /// `before`: its batch id and the position it holds.
    pub async fn latest_source_compact(
        &self,
        source: usize,
        before: u64,
    ) -> Result<Option<(u64, Value)>> {
        let dir = format!("sources/{source}");
        let newest = self
            .entry_names(&dir)
            .await?
            .into_iter()
            .filter_map(|(_, name)| match name {
                EntryName::Compact(id) if id < before => Some(id),
                _ => None,
            })
            .max();
        match newest {
            Some(id) => Ok(Some((id, self.read(&format!("{dir}/{id}.compact")).await?))),
            None => Ok(None),
        }
    }

    /// Deletes what no restart after batch `committed` needs: entries of
    /// batches before the last `min_batches_to_retain`, and compact
    /// entries older than each source's newest. Call once the newest
    /// compact entries are written.
    pub async fn purge(
        &self,
        committed: u64,
        retention: Retention,
        sources: usize,
    ) -> Result<Purged> {
        self.check_lease()?;
        let keep_from = (committed + 1).saturating_sub(retention.min_batches_to_retain);
        let mut doomed = Vec::new();
        for dir in TRIMMED_LOGS {
            for (path, name) in self.entry_names(dir).await? {
                if matches!(name, EntryName::Batch(id) if id < keep_from) {
                    doomed.push(path);
                }
            }
        }
        for source in 0..sources {
            let entries = self.entry_names(&format!("sources/{source}")).await?;
            let newest_compact = entries
                .iter()
                .filter_map(|(_, name)| match name {
                    EntryName::Compact(id) if *id <= committed => Some(*id),
                    _ => None,
                })
                .max();
            // Without a compact entry every plan is still needed.
            let Some(newest_compact) = newest_compact else {
                continue;
            };
            for (path, name) in entries {
                let old = match name {
                    EntryName::Batch(id) => id < keep_from && id <= newest_compact,
                    EntryName::Compact(id) => id < newest_compact,
                };
                if old {
                    doomed.push(path);
                }
            }
        }
        // Oldest first, so an interrupted purge leaves a contiguous tail.
        doomed.sort_by_key(|path| {
            path.filename()
                .and_then(|f| f.split('.').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        });
        let halfway = doomed.len() / 2;
        for (done, path) in doomed.iter().enumerate() {
            if done == halfway {
                crash_point("purge-halfway", committed);
            }
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(WeirError::storage(self.describe(path.as_ref()), e)),
            }
        }
        Ok(Purged {
            files: doomed.len() as u64,
        })
    }

    /// The numbered entries directly in `dir`, with their paths.
    async fn entry_names(&self, dir: &str) -> Result<Vec<(ObjectPath, EntryName)>> {
        let prefix = ObjectPath::from(dir);
        let listed = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| WeirError::storage(self.describe(dir), e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = entry_name(meta.location.filename()?)?;
                Some((meta.location, name))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_batch_ids_or_compacts() {
        assert_eq!(entry_name("12"), Some(EntryName::Batch(12)));
        assert_eq!(entry_name("19.compact"), Some(EntryName::Compact(19)));
        assert_eq!(entry_name(".12.tmp"), None);
        assert_eq!(entry_name("x.compact"), None);
    }
}
