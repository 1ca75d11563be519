//! A replica's membership of the query's consumer group: the group hands
//! out the source partitions (the shards), and a revoked shard is stopped
//! at a batch boundary before the group may give it to another replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as sync_mpsc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use super::Shard;
use crate::config::ClusterConfig;
use crate::error::{Result, WeirError};

/// How long the group waits for revoked shards to finish their batch
/// before it goes on regardless (their leases still fence them).
const REVOKE_WAIT: Duration = Duration::from_secs(240);

/// A change of the shards this replica runs.
pub(super) enum Change {
    /// These shards are now this replica's.
    Assigned(Vec<Shard>),
    /// These shards go elsewhere: stop them, then answer on `done`.
    Revoked {
        /// The shards.
        shards: Vec<Shard>,
        /// Answered once they have stopped.
        done: sync_mpsc::Sender<()>,
    },
}

/// This replica's place in the group, left when dropped.
pub(super) struct Membership {
    leave: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct GroupContext {
    changes: mpsc::UnboundedSender<Change>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let shards = shards_of(list);
        if shards.is_empty() {
            return;
        }
        tracing::info!(shards = %names(&shards), "shards revoked: finishing their batches");
        let (done, stopped) = sync_mpsc::channel();
        if self.changes.send(Change::Revoked { shards, done }).is_ok()
            && stopped.recv_timeout(REVOKE_WAIT).is_err()
        {
            tracing::warn!("revoked shards did not stop in time; their leases fence them");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // The member only holds the partitions; each shard reads its
                // own offset ranges with a consumer of its own.
                if let Err(e) = consumer.pause(list) {
                    tracing::warn!(error = %e, "cannot pause the group member's partitions");
                }
                let shards = shards_of(list);
                if !shards.is_empty() {
                    tracing::info!(shards = %names(&shards), "shards assigned");
                    let _ = self.changes.send(Change::Assigned(shards));
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

impl Membership {
    /// Joins group `group` of `cluster` on `servers` as replica `replica`,
    /// for the partitions of `topics`; changes of this replica's shards
    /// arrive on `changes`.
    pub(super) fn join(
        servers: &str,
        group: &str,
        topics: &[String],
        cluster: &ClusterConfig,
        replica: &str,
        changes: mpsc::UnboundedSender<Change>,
    ) -> Result<Membership> {
        let session_ms = cluster.session_timeout.as_millis();
        let mut settings = ClientConfig::new();
        settings
            .set("bootstrap.servers", servers)
            .set("group.id", group)
            // Only the partitions that move are revoked, so the shards that
            // stay keep running through a rebalance.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_ms / 10).max(100).to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest");
        if cluster.static_membership {
            // A replica restarted within the session timeout gets its
            // shards back without a rebalance.
            settings.set("group.instance.id", replica);
        }
        let consumer: BaseConsumer<GroupContext> = settings
            .create_with_context(GroupContext { changes })
            .map_err(|e| group_error(group, "cannot create the group member", e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| group_error(group, "cannot subscribe", e))?;
        let leave = Arc::new(AtomicBool::new(false));
        let leaving = leave.clone();
        let group = group.to_string();
        let thread = std::thread::Builder::new()
            .name("weir-group".into())
            .spawn(move || {
                let mut last_error = String::new();
                while !leaving.load(Ordering::Relaxed) {
                    // Serves heartbeats' outcomes and rebalance callbacks;
                    // a record fetched before its partition was paused is dropped.
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                        let error = e.to_string();
                        if error != last_error {
                            tracing::warn!(group, error, "consumer group");
                            last_error = error;
                        }
                    }
                }
            })
            .map_err(|e| WeirError::Internal(format!("cannot start the group thread: {e}")))?;
        Ok(Membership {
            leave,
            thread: Some(thread),
        })
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn shards_of(list: &TopicPartitionList) -> Vec<Shard> {
    list.elements()
        .iter()
        .map(|e| Shard {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

fn names(shards: &[Shard]) -> String {
    shards
        .iter()
        .map(Shard::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn group_error(group: &str, what: &str, e: rdkafka::error::KafkaError) -> WeirError {
    WeirError::Unavailable {
        service: format!("kafka consumer group {group}"),
        reason: format!("{what}: {e}"),
    }
}
