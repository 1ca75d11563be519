//! `weir checkpoint inspect`: what a checkpoint holds, read without taking
//! its lock (safe beside a running query): which batches are logged and
//! committed, where a restart would resume, the last watermark, and the
//! files and bytes of each part.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde::Serialize;

use super::{CommitEntry, OffsetEntry, QueryMetadata};
use crate::error::{Result, WeirError};
use crate::storage::{Location, get_if_exists};

/// Files and bytes of one part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The batch ids of one numbered log (`offsets/`, `commits/`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogSpan {
    /// Entries.
    pub entries: u64,
    /// Lowest batch id, if any.
    pub first: Option<u64>,
    /// Highest batch id, if any.
    pub last: Option<u64>,
}

impl LogSpan {
    fn add(&mut self, id: u64) {
        self.entries += 1;
        self.first = Some(self.first.map_or(id, |f| f.min(id)));
        self.last = Some(self.last.map_or(id, |l| l.max(id)));
    }
}

/// A checkpoint's contents.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// Where it is.
    pub location: String,
    /// The query's identity (`None`: no `metadata` yet).
    pub metadata: Option<QueryMetadata>,
    /// `offsets/N` entries.
    pub offsets: LogSpan,
    /// `commits/N` entries.
    pub commits: LogSpan,
    /// A batch logged but not committed: a restart replays it.
    pub in_flight: Option<u64>,
    /// The id a restart gives its next new batch.
    pub next_batch: Option<u64>,
    /// Why a restart would fail, if it would.
    pub problem: Option<String>,
    /// When the last committed batch was planned (ms since the epoch).
    pub last_batch_timestamp_ms: Option<i64>,
    /// The watermark the next batch uses (ms), if the query has one.
    pub watermark_ms: Option<i64>,
    /// Each operator's state versions: snapshots and deltas on disk.
    pub state: BTreeMap<String, StateVersions>,
    /// Per source (`sources/<i>`): the batch its newest compact entry
    /// covers through, where a restart starts reading plans after.
    pub source_compacts: BTreeMap<String, u64>,
    /// Files and bytes by top-level part (`offsets`, `sources`, `state`, ...).
    pub usage: BTreeMap<String, Usage>,
    /// Everything together.
    pub total: Usage,
}

/// The versions of one operator's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateVersions {
    /// Versions with a full snapshot.
    pub snapshots: Vec<u64>,
    /// Versions with a delta.
    pub deltas: Vec<u64>,
}

/// Entry `name` of the checkpoint, if it exists; a corrupt one is named.
async fn read_json<T: serde::de::DeserializeOwned>(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    location: &Location,
    name: &str,
) -> Result<Option<T>> {
    let path = object_store::path::Path::from(name);
    let describe = || format!("{location}/{name}");
    let Some(bytes) = get_if_exists(store.as_ref(), &path)
        .await
        .map_err(|e| WeirError::storage(describe(), e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| WeirError::CheckpointCorrupt {
            path: describe(),
            reason: e.to_string(),
        })
}

/// Reads what the checkpoint at `location` holds.
pub async fn inspect(location: &Location) -> Result<Inspection> {
    if let Some(dir) = location.local_dir()
        && !dir.is_dir()
    {
        return Err(WeirError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint here"),
        });
    }
    let store = location.open()?;
    let objects: Vec<_> = store
        .list(None)
        .try_collect()
        .await
        .map_err(|e| WeirError::storage(location.to_string(), e))?;
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    let mut total = Usage::default();
    let (mut offsets, mut commits) = (LogSpan::default(), LogSpan::default());
    let mut state: BTreeMap<String, StateVersions> = BTreeMap::new();
    let mut source_compacts: BTreeMap<String, u64> = BTreeMap::new();
    for object in &objects {
        let parts: Vec<String> = object
            .location
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        let top = parts.first().cloned().unwrap_or_default();
        let part = usage.entry(top.clone()).or_default();
        part.files += 1;
        part.bytes += object.size;
        total.files += 1;
        total.bytes += object.size;
        let id = parts.last().and_then(|name| name.parse::<u64>().ok());
        match (top.as_str(), parts.len(), id) {
            ("offsets", 2, Some(id)) => offsets.add(id),
            ("commits", 2, Some(id)) => commits.add(id),
            ("sources", 3, None) => {
                if let Some(id) = parts[2]
                    .strip_suffix(".compact")
                    .and_then(|id| id.parse::<u64>().ok())
                {
                    let newest = source_compacts.entry(parts[1].clone()).or_default();
                    *newest = (*newest).max(id);
                }
            }
            ("state", n, _) if n >= 3 => {
                // `<op>/<V>.<first>-<last>.<kind>`: a task's key groups,
                // reported as `<op>/<first>-<last>`; `<op>/<g>/<V>.<kind>`:
                // one group's, from before tasks shared files, as `<op>/<g>`.
                let file = &parts[n - 1];
                let mut name = file.split('.');
                let (version, middle, kind) = match (name.next(), name.next(), name.next()) {
                    (Some(v), Some(groups), Some(kind)) => (v, Some(groups), kind),
                    (Some(v), Some(kind), None) => (v, None, kind),
                    _ => continue,
                };
                let Ok(version) = version.parse::<u64>() else {
                    continue;
                };
                let owner = match middle {
                    Some(groups) => format!("{}/{groups}", parts[1..n - 1].join("/")),
                    None => parts[1..n - 1].join("/"),
                };
                let versions = state.entry(owner).or_default();
                match kind {
                    "snapshot" => versions.snapshots.push(version),
                    "delta" => versions.deltas.push(version),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for versions in state.values_mut() {
        versions.snapshots.sort_unstable();
        versions.deltas.sort_unstable();
    }
    let metadata: Option<QueryMetadata> = read_json(&store, location, "metadata").await?;
    let (last_commit, last_offsets): (Option<CommitEntry>, Option<OffsetEntry>) = match commits.last
    {
        Some(last) => (
            read_json(&store, location, &format!("commits/{last}")).await?,
            read_json(&store, location, &format!("offsets/{last}")).await?,
        ),
        None => (None, None),
    };
    // As `Checkpoint::recover` decides.
    let (in_flight, next_batch, problem) = match (offsets.last, commits.last) {
        (None, None) => (None, Some(0), None),
        (Some(o), Some(c)) if o == c => (None, Some(o + 1), None),
        (Some(0), None) => (Some(0), Some(1), None),
        (Some(o), Some(c)) if o == c + 1 => (Some(o), Some(o + 1), None),
        (o, c) => (
            None,
            None,
            Some(format!(
                "the logs do not line up: last offsets entry {o:?}, last commit {c:?}"
            )),
        ),
    };
    Ok(Inspection {
        location: location.to_string(),
        metadata,
        offsets,
        commits,
        in_flight,
        next_batch,
        problem,
        last_batch_timestamp_ms: last_offsets.map(|o| o.batch_timestamp_ms),
        watermark_ms: last_commit.and_then(|c| c.next_watermark_ms),
        state,
        source_compacts,
        usage,
        total,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checkpoint {}", self.location)?;
        match &self.metadata {
            Some(m) => writeln!(
                f,
                "query {} (id {}, format {})",
                m.name, m.id, m.format_version
            )?,
            None => writeln!(f, "no metadata: no query has started here")?,
        }
        let span = |s: &LogSpan| match (s.first, s.last) {
            (Some(a), Some(b)) => format!("{} entries, batches {a}..={b}", s.entries),
            _ => "none".to_string(),
        };
        writeln!(f, "offsets: {}", span(&self.offsets))?;
        writeln!(f, "commits: {}", span(&self.commits))?;
        match (&self.problem, self.next_batch, self.in_flight) {
            (Some(why), _, _) => writeln!(f, "a restart fails: {why}")?,
            (None, Some(next), Some(replay)) => writeln!(
                f,
                "a restart replays batch {replay} (in flight), then runs batch {next}"
            )?,
            (None, next, None) => writeln!(f, "a restart runs batch {} next", next.unwrap_or(0))?,
            (None, None, Some(_)) => {}
        }
        if let Some(w) = self.watermark_ms {
            writeln!(f, "watermark: {w} ms")?;
        }
        for (operator, versions) in &self.state {
            writeln!(
                f,
                "state {operator}: snapshots {:?}, deltas {:?}",
                versions.snapshots, versions.deltas
            )?;
        }
        for (source, through) in &self.source_compacts {
            writeln!(f, "sources/{source}: compacted through batch {through}")?;
        }
        for (part, usage) in &self.usage {
            writeln!(f, "{part}: {} files, {} bytes", usage.files, usage.bytes)?;
        }
        write!(
            f,
            "total: {} files, {} bytes",
            self.total.files, self.total.bytes
        )
    }
}
