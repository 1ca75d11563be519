//! Where a replicated query's work runs. Each replica reports the shards it
//! holds to `<checkpoint>/replicas/<replica id>.json` — when the group
//! changes its assignment, after its shards' batches, and every third of
//! the session timeout as a heartbeat — and `weir status PIPELINE.toml`
//! reads the reports. A report says what a replica last saw; it decides
//! nothing (the group assigns, the leases fence).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Shard;
use crate::config::{ClusterConfig, Pipeline};
use crate::error::{Result, WeirError};
use crate::query::{BatchProgress, now_ms};

/// Folder of the reports, inside the query's checkpoint.
const REPORTS: &str = "replicas";
/// A larger report is not one Weir wrote: skipped, and said so.
const MAX_REPORT_BYTES: u64 = 1 << 20;
/// How long a stopping replica waits for its last report to be written.
const LAST_REPORT_WAIT: Duration = Duration::from_secs(10);
/// At most this many reports are read (a hostile bucket cannot make the
/// command read forever).
const MAX_REPORTS: usize = 10_000;

/// What one replica reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaReport {
    /// The replica's id (its group membership).
    pub replica: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The Weir version it runs.
    pub version: String,
    /// When it started (ms since the Unix epoch).
    pub started_ms: i64,
    /// When it wrote this report.
    pub updated_ms: i64,
    /// It stopped (and left the group) when it wrote this report.
    pub stopped: bool,
    /// The shards it runs, by name.
    pub shards: Vec<ShardReport>,
}

/// One shard a replica runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardReport {
    /// `<topic>-<partition>`.
    pub shard: String,
    /// `source` (a source partition through the transforms, into the
    /// repartition topic), `state` (a repartition partition through the
    /// stateful operator) or `query` (a stateless query's partition).
    pub role: String,
    /// A state shard's key groups, first and last.
    pub key_groups: Option<[u16; 2]>,
    /// Batches it committed on this replica.
    pub batches: u64,
    /// The last of them.
    pub last_batch_id: Option<u64>,
    /// When that batch started (ms since the Unix epoch).
    pub last_batch_ms: Option<i64>,
    /// Its event-time watermark after that batch.
    pub watermark_ms: Option<i64>,
}

/// A replica's reports, kept current and written by a task of its own.
#[derive(Clone)]
pub(super) struct Reporter {
    report: Arc<Mutex<ReplicaReport>>,
    changed: Arc<Notify>,
    /// The task writing the reports: their only writer, so the last one
    /// written is the last one made.
    writer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Reporter {
    /// Starts reporting replica `id` of `pipeline`, every third of the
    /// session timeout and at each change. A report that cannot be written
    /// is logged and tried again: it must never stop the replica.
    pub(super) fn start(pipeline: &Pipeline, cluster: &ClusterConfig, id: &str) -> Result<Self> {
        let store = pipeline.checkpoint.open()?;
        let now = now_ms();
        let reporter = Reporter {
            report: Arc::new(Mutex::new(ReplicaReport {
                replica: id.to_string(),
                host: crate::checkpoint::host_name(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_ms: now,
                updated_ms: now,
                stopped: false,
                shards: Vec::new(),
            })),
            changed: Arc::new(Notify::new()),
            writer: Arc::new(Mutex::new(None)),
        };
        let heartbeat = (cluster.session_timeout / 3).max(Duration::from_secs(1));
        let path = report_path(id);
        let (report, changed) = (reporter.report.clone(), reporter.changed.clone());
        let writer = tokio::spawn(async move {
            loop {
                let (payload, stopped) = {
                    let mut report = report.lock().unwrap_or_else(|p| p.into_inner());
                    report.updated_ms = now_ms();
                    (serde_json::to_vec_pretty(&*report), report.stopped)
                };
                match payload {
                    Ok(bytes) => {
                        if let Err(e) = store.put(&path, bytes.into()).await {
                            tracing::warn!(error = %e, "could not write the replica's status report");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not encode the status report"),
                }
                if stopped {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(heartbeat) => {}
                    _ = changed.notified() => {}
                }
            }
        });
        *reporter.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
        Ok(reporter)
    }

    fn update(&self, change: impl FnOnce(&mut ReplicaReport)) {
        change(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }

    /// `shard` now runs here, in `role`, over `key_groups`.
    pub(super) fn assigned(&self, shard: &Shard, role: &str, key_groups: Option<[u16; 2]>) {
        let name = shard.to_string();
        self.update(|report| {
            report.shards.retain(|s| s.shard != name);
            report.shards.push(ShardReport {
                shard: name,
                role: role.to_string(),
                key_groups,
                batches: 0,
                last_batch_id: None,
                last_batch_ms: None,
                watermark_ms: None,
            });
            report.shards.sort_by(|a, b| a.shard.cmp(&b.shard));
        });
    }

    /// `shards` no longer run here.
    pub(super) fn revoked(&self, shards: &[Shard]) {
        let names: BTreeSet<String> = shards.iter().map(Shard::to_string).collect();
        self.update(|report| report.shards.retain(|s| !names.contains(&s.shard)));
    }

    /// `shard` committed a batch.
    pub(super) fn committed(&self, shard: &Shard, progress: &BatchProgress) {
        let name = shard.to_string();
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = report.shards.iter_mut().find(|s| s.shard == name) {
            s.batches += 1;
            s.last_batch_id = Some(progress.batch_id);
            s.last_batch_ms = Some(progress.started_at_ms);
            s.watermark_ms = progress.watermark_ms;
        }
        // Written with the next heartbeat: a report per batch would be a
        // write per shard per trigger.
    }

    /// The replica stopped: its last report says so, written before this
    /// returns (or given up after [`LAST_REPORT_WAIT`]).
    pub(super) async fn stopped(&self) {
        {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            report.stopped = true;
            report.shards.clear();
        }
        self.changed.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer
            && tokio::time::timeout(LAST_REPORT_WAIT, writer)
                .await
                .is_err()
        {
            tracing::warn!("the replica's last status report was not written in time");
        }
    }
}

fn report_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("{REPORTS}/{id}.json"))
}

/// A replicated query's replicas and shards, as their reports say.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The query's name.
    pub query: String,
    /// Its consumer group.
    pub group_id: String,
    /// The group's session timeout, in ms.
    pub session_timeout_ms: u64,
    /// When this status was read (ms since the Unix epoch).
    pub read_ms: i64,
    /// Every replica that reported, by id.
    pub replicas: Vec<ReplicaStatus>,
    /// Shards with a checkpoint that no live replica reports running.
    pub unheld_shards: Vec<String>,
    /// Reports that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// One replica as its last report has it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Reported within the session timeout and not stopped.
    pub live: bool,
    /// Its last report.
    #[serde(flatten)]
    pub report: ReplicaReport,
}

/// Reads the reports of replicated `pipeline`'s replicas (and its shards'
/// checkpoint folders, to name the shards no live replica runs).
pub async fn cluster_status(pipeline: &Pipeline) -> Result<ClusterStatus> {
    let Some(cluster) = &pipeline.cluster else {
        return Err(WeirError::Config(
            crate::config::ConfigError::unplaced(
                &pipeline.name,
                format!(
                    "query `{}` declares no [cluster]: it has no replicas",
                    pipeline.name
                ),
            )
            .hint("`weir status` of a pipeline file shows a [cluster] query's replicas"),
        ));
    };
    let store = pipeline.checkpoint.open()?;
    let read_ms = now_ms();
    let fresh_ms = cluster.session_timeout.as_millis() as i64;
    let mut replicas = Vec::new();
    let mut unreadable = Vec::new();
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&ObjectPath::from(REPORTS)))
        .take(MAX_REPORTS)
        .try_collect()
        .await
        .map_err(|e| storage_error(pipeline, e))?;
    for meta in listed {
        let name = meta.location.to_string();
        if !name.ends_with(".json") {
            continue;
        }
        if meta.size > MAX_REPORT_BYTES {
            unreadable.push(format!("{name}: {} bytes, too large", meta.size));
            continue;
        }
        let parsed = match store.get(&meta.location).await {
            Ok(got) => match got.bytes().await {
                Ok(bytes) => serde_json::from_slice::<ReplicaReport>(&bytes)
                    .map_err(|e| format!("{name}: not a replica report ({e})")),
                Err(e) => Err(format!("{name}: {e}")),
            },
            Err(e) => Err(format!("{name}: {e}")),
        };
        match parsed {
            Ok(report) => replicas.push(ReplicaStatus {
                live: !report.stopped && read_ms - report.updated_ms <= fresh_ms,
                report,
            }),
            Err(why) => unreadable.push(why),
        }
    }
    replicas.sort_by(|a, b| a.report.replica.cmp(&b.report.replica));
    let held: BTreeSet<&str> = replicas
        .iter()
        .filter(|r| r.live)
        .flat_map(|r| r.report.shards.iter().map(|s| s.shard.as_str()))
        .collect();
    let folders = store
        .list_with_delimiter(Some(&ObjectPath::from("shards")))
        .await
        .map_err(|e| storage_error(pipeline, e))?;
    let unheld_shards = folders
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|shard| !held.contains(shard.as_str()))
        .collect();
    Ok(ClusterStatus {
        query: pipeline.name.clone(),
        group_id: cluster.group_id.clone(),
        session_timeout_ms: cluster.session_timeout.as_millis() as u64,
        read_ms,
        replicas,
        unheld_shards,
        unreadable,
    })
}

fn storage_error(pipeline: &Pipeline, source: object_store::Error) -> WeirError {
    WeirError::Storage {
        path: pipeline.checkpoint.to_string(),
        source,
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live = self.replicas.iter().filter(|r| r.live).count();
        writeln!(
            f,
            "query `{}`: group `{}` (session timeout {}), {live} live replica(s)",
            self.query,
            self.group_id,
            humantime::format_duration(Duration::from_millis(self.session_timeout_ms)),
        )?;
        for replica in &self.replicas {
            let r = &replica.report;
            let seen = ago(self.read_ms, r.updated_ms);
            let state = match (replica.live, r.stopped) {
                (true, _) => format!("live, reported {seen}"),
                (false, true) => format!("stopped {seen}"),
                (false, false) => format!("silent since {seen}: gone or stalled"),
            };
            writeln!(
                f,
                "\nreplica {} on {} (pid {}, weir {}): {state}",
                r.replica, r.host, r.pid, r.version
            )?;
            let mut by_role: BTreeMap<&str, Vec<&ShardReport>> = BTreeMap::new();
            for shard in &r.shards {
                by_role.entry(shard.role.as_str()).or_default().push(shard);
            }
            for (role, shards) in by_role {
                writeln!(f, "  {role} shards:")?;
                for s in shards {
                    let groups = s
                        .key_groups
                        .map(|[a, b]| format!(" key groups {a}-{b},"))
                        .unwrap_or_default();
                    let last = match (s.last_batch_id, s.last_batch_ms) {
                        (Some(id), Some(ms)) => {
                            format!(" last batch {id} {}", ago(self.read_ms, ms))
                        }
                        _ => " no batch yet".to_string(),
                    };
                    let watermark = s
                        .watermark_ms
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(|ms| {
                            let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                            format!(", watermark {}", humantime::format_rfc3339_millis(at))
                        })
                        .unwrap_or_default();
                    writeln!(
                        f,
                        "    {}:{groups} {} batch(es) here,{last}{watermark}",
                        s.shard, s.batches
                    )?;
                }
            }
        }
        if !self.unheld_shards.is_empty() {
            writeln!(
                f,
                "\nshards no live replica runs: {}",
                self.unheld_shards.join(", ")
            )?;
        }
        for why in &self.unreadable {
            writeln!(f, "unreadable report {why}")?;
        }
        Ok(())
    }
}

/// "1.2s ago" for `then_ms` seen at `now_ms`.
fn ago(now_ms: i64, then_ms: i64) -> String {
    let ms = (now_ms - then_ms).max(0);
    format!("{:.1}s ago", ms as f64 / 1000.0)
}
