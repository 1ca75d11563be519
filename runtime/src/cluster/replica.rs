//! One replica: it joins the query's group, runs the shards the group
//! assigns it, and stops the ones it revokes at a batch boundary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use super::Shard;
use super::membership::{Change, Membership};
use super::repartition::ensure_topic;
use super::shard::{ShardQuery, repartitions, source_topics};
use super::status::Reporter;
use crate::config::{ClusterConfig, ConfigError, Pipeline, is_kafka_name};
use crate::error::{Result, WeirError};
use crate::plugin::PluginEngine;
use crate::query::BatchProgress;

/// How long a shard waits before trying a lease its previous owner still
/// holds again (it expires within the session timeout).
const LEASE_RETRY: Duration = Duration::from_millis(500);

type ProgressFn = Box<dyn FnMut(&Shard, &BatchProgress) + Send>;
/// The replica's progress callback, shared by its shards.
type Listener = Arc<Mutex<ProgressFn>>;

/// A replica of a `[cluster]` query.
pub struct Replica {
    pipeline: Pipeline,
    cluster: ClusterConfig,
    engine: PluginEngine,
    id: String,
    stop: Option<watch::Receiver<bool>>,
    listener: Option<ProgressFn>,
}

/// What a replica did before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaOutcome {
    /// Batches its shards committed, replays included.
    pub batches: u64,
}

/// A replica's id when none is given: `$WEIR_REPLICA_ID`, else the host
/// name (a StatefulSet pod's name).
pub fn default_replica_id() -> String {
    std::env::var("WEIR_REPLICA_ID").unwrap_or_else(|_| crate::checkpoint::host_name())
}

impl Replica {
    /// Replica `id` of `pipeline`, which must declare `[cluster]`. The id
    /// is its static group membership: a replica restarted with the same
    /// id within the session timeout gets its shards back.
    pub fn new(
        pipeline: Pipeline,
        engine: PluginEngine,
        id: &str,
    ) -> std::result::Result<Replica, ConfigError> {
        let refuse =
            |message: String, hint: &str| ConfigError::unplaced(&pipeline.name, message).hint(hint);
        let Some(cluster) = pipeline.cluster.clone() else {
            return Err(refuse(
                format!("query `{}` declares no [cluster]", pipeline.name),
                "add [cluster] with a group_id to run the query as replicas",
            ));
        };
        if !is_kafka_name(id, 200) {
            return Err(refuse(
                format!("invalid replica id {id:?}"),
                "up to 200 letters, digits, `_`, `-` and `.` (a StatefulSet's pod name fits)",
            ));
        }
        Ok(Replica {
            pipeline,
            cluster,
            engine,
            id: id.to_string(),
            stop: None,
            listener: None,
        })
    }

    /// Stops the replica (each shard after its batch) once `stop` turns true.
    pub fn with_stop_signal(mut self, stop: watch::Receiver<bool>) -> Replica {
        self.stop = Some(stop);
        self
    }

    /// Calls `listener` after each batch a shard commits.
    pub fn on_progress(
        mut self,
        listener: impl FnMut(&Shard, &BatchProgress) + Send + 'static,
    ) -> Replica {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Runs the shards the group assigns until the stop signal, or until a
    /// shard fails (then every shard stops and the error is returned: the
    /// group hands this replica's shards to the others, which meet the same
    /// input — a failing query fails everywhere, as in one process).
    pub async fn run(self) -> Result<ReplicaOutcome> {
        let (servers, topics) = match source_topics(&self.pipeline) {
            Some((kafka, topics)) => (kafka.bootstrap_servers.clone(), topics.clone()),
            None => {
                return Err(WeirError::Internal(
                    "checked at load: one kafka source naming its topics".into(),
                ));
            }
        };
        let (changes_tx, mut changes) = mpsc::unbounded_channel();
        let mut memberships = vec![Membership::join(
            &servers,
            &self.cluster.group_id,
            &topics,
            &self.cluster,
            &self.id,
            changes_tx.clone(),
        )?];
        if repartitions(&self.pipeline) {
            // State shards are the repartition topic's partitions, handed
            // out by a group of their own: an assignor balances the sum of
            // a member's partitions over its topics, which could leave one
            // replica all the source shards.
            let (topic, partitions) = (
                &self.cluster.repartition_topic,
                self.cluster.repartition_partitions,
            );
            ensure_topic(&servers, topic, partitions).await?;
            memberships.push(Membership::join(
                &servers,
                &format!("{}-state", self.cluster.group_id),
                std::slice::from_ref(topic),
                &self.cluster,
                &self.id,
                changes_tx,
            )?);
        } else {
            drop(changes_tx);
        }
        let reporter = Reporter::start(&self.pipeline, &self.cluster, &self.id)?;
        let listener: Listener = {
            let mut user = self.listener;
            let reporter = reporter.clone();
            Arc::new(Mutex::new(Box::new(
                move |shard: &Shard, progress: &BatchProgress| {
                    reporter.committed(shard, progress);
                    if let Some(user) = &mut user {
                        user(shard, progress);
                    }
                },
            )))
        };
        let (failed_tx, mut failed) = mpsc::unbounded_channel::<(Shard, WeirError)>();
        let batches = Arc::new(AtomicU64::new(0));
        let mut running: BTreeMap<Shard, RunningShard> = BTreeMap::new();
        let mut stop = self.stop.clone();
        tracing::info!(
            replica = self.id,
            group = self.cluster.group_id,
            "joining the group"
        );
        let result = loop {
            tokio::select! {
                Some(change) = changes.recv() => match change {
                    Change::Assigned(shards) => {
                        for shard in shards {
                            if running.contains_key(&shard) {
                                continue;
                            }
                            let Some(query) = ShardQuery::new(&shard, &self.pipeline, &self.cluster)
                            else {
                                tracing::warn!(%shard, "the group assigned a partition this query does not read");
                                continue;
                            };
                            let (role, key_groups) = query.describe();
                            reporter.assigned(&shard, role, key_groups);
                            let started = RunningShard::start(
                                shard.clone(),
                                query,
                                self.engine.clone(),
                                listener.clone(),
                                failed_tx.clone(),
                                batches.clone(),
                            );
                            running.insert(shard, started);
                        }
                    }
                    Change::Revoked { shards, done } => {
                        let stopping: Vec<RunningShard> =
                            shards.iter().filter_map(|s| running.remove(s)).collect();
                        stop_all(stopping).await;
                        reporter.revoked(&shards);
                        let _ = done.send(());
                    }
                },
                Some((shard, error)) = failed.recv() => {
                    tracing::error!(%shard, %error, "shard failed: the replica stops");
                    break Err(error);
                }
                stopped = stop_requested(&mut stop) => {
                    if stopped {
                        break Ok(());
                    }
                }
            }
        };
        stop_all(running.into_values().collect()).await;
        // A revocation the group member still waits on is answered by the
        // closed channel; leaving the group joins its thread.
        drop(changes);
        tokio::task::spawn_blocking(move || drop(memberships))
            .await
            .map_err(|e| WeirError::Internal(format!("group thread: {e}")))?;
        reporter.stopped().await;
        result.map(|()| ReplicaOutcome {
            batches: batches.load(Ordering::Relaxed),
        })
    }
}

/// Resolves to true once the stop signal is on; never without a signal.
async fn stop_requested(stop: &mut Option<watch::Receiver<bool>>) -> bool {
    let Some(receiver) = stop else {
        return std::future::pending().await;
    };
    if *receiver.borrow() {
        return true;
    }
    match receiver.changed().await {
        Ok(()) => *receiver.borrow(),
        Err(_) => std::future::pending().await,
    }
}

/// A shard's query running on this replica.
struct RunningShard {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningShard {
    fn start(
        shard: Shard,
        query: ShardQuery,
        engine: PluginEngine,
        listener: Listener,
        failed: mpsc::UnboundedSender<(Shard, WeirError)>,
        batches: Arc<AtomicU64>,
    ) -> RunningShard {
        let (stop, stopped) = watch::channel(false);
        // A query's future is not `Send` (its state and plugin handles stay
        // on one thread): each shard is driven on a thread of the blocking
        // pool, sharing the runtime's timers and I/O.
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                let ran = std::panic::AssertUnwindSafe(run_shard(
                    &shard, query, engine, stopped, listener, batches,
                ))
                .catch_unwind()
                .await;
                let error = match ran {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => error,
                    Err(panic) => WeirError::Internal(format!(
                        "shard {shard} panicked: {}",
                        crate::error::panic_message(&*panic)
                    )),
                };
                let _ = failed.send((shard, error));
            })
        });
        RunningShard { stop, task }
    }
}

/// Stops `shards` at their batch boundaries, all at once.
async fn stop_all(shards: Vec<RunningShard>) {
    for shard in &shards {
        let _ = shard.stop.send(true);
    }
    for shard in shards {
        let _ = shard.task.await;
    }
}

/// Runs `shard`'s query until `stop`, counting its commits in `batches`.
/// A lease still held by the shard's previous owner (stalled, or gone
/// without releasing it) is waited for: it expires within the session
/// timeout. A lease lost to another replica (this one stalled, and the
/// group gave the shard away) stops the query before it commits anything
/// more; the shard then waits as a newcomer would, until the group
/// revokes it from this replica or its lease comes free again.
async fn run_shard(
    shard: &Shard,
    shard_query: ShardQuery,
    engine: PluginEngine,
    mut stop: watch::Receiver<bool>,
    listener: Listener,
    batches: Arc<AtomicU64>,
) -> Result<()> {
    let mut waiting = false;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let listener = listener.clone();
        let counted = batches.clone();
        let this = shard.clone();
        let query = shard_query
            .query(&engine)?
            .with_stop_signal(stop.clone())
            .on_progress(move |progress| {
                counted.fetch_add(1, Ordering::Relaxed);
                let mut listener = listener.lock().unwrap_or_else(|p| p.into_inner());
                listener(&this, progress);
            });
        match query.run().await {
            Ok(_) => return Ok(()),
            Err(WeirError::CheckpointLeased { holder, .. }) => {
                if !waiting {
                    tracing::info!(%shard, holder, "waiting for the shard's lease");
                    waiting = true;
                }
            }
            Err(
                error @ (WeirError::CheckpointLeaseLost { .. } | WeirError::CheckpointRaced { .. }),
            ) => {
                tracing::warn!(%shard, %error, "the shard was taken over: it stops here");
                waiting = false;
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RETRY) => {}
            _ = stop.changed() => {}
        }
    }
}
