//! `[cluster]`: the query runs on several identical replicas
//! (`weir run PIPELINE --replica ID`, on any hosts) that share its work
//! through a Kafka consumer group, with every shard's checkpoint on object
//! storage so that any replica can take any shard over.
//!
//! ```toml
//! [cluster]
//! group_id = "orders-replicas"   # the consumer group the replicas join
//! session_timeout = "10s"        # a replica gone this long loses its shards
//! static_membership = true       # the replica id is its group.instance.id
//! # With a stateful operator: rows go to the replica owning their key
//! # group through a topic Weir creates, one partition per state shard.
//! repartition_topic = "orders-replicas-repartition"   # the default
//! repartition_partitions = 12                         # the default
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError, OutputConfig, Pipeline, Resolver, SinkTarget, SourceConfig, TopicSelection,
    Trigger,
};
use crate::storage::Location;

/// Kafka refuses a session timeout outside its brokers' bounds (6 s to 5
/// min by default), and a shorter one makes replicas drop out on a GC or
/// disk stall.
const SESSION_TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(6), Duration::from_secs(300));

/// Whether `name` is up to `max` of Kafka's name characters (letters,
/// digits, `_`, `-`, `.`): group ids, topic names, replica ids.
pub(crate) fn is_kafka_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A checked `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Kafka consumer group every replica joins (`group.id`).
    pub group_id: String,
    /// How long a replica may go unheard before the group hands its shards
    /// to the others (`session.timeout.ms`); the lease on each shard's
    /// checkpoint lasts as long, so a replaced replica is fenced then.
    pub session_timeout: Duration,
    /// Whether a replica joins with its id as `group.instance.id` (Kafka's
    /// static membership: a replica back within the session timeout keeps
    /// its shards, with no rebalance). On by default; off for brokers that
    /// get it wrong (the test broker, tansu 0.6, assigns a restarted static
    /// member's partitions twice).
    pub static_membership: bool,
    /// The topic carrying rows to their key groups' replicas (with a
    /// stateful operator): `<group_id>-repartition` by default.
    pub repartition_topic: String,
    /// Its partitions: the query's state shards, each owning a range of
    /// key groups; fixed once the topic exists (12 by default).
    pub repartition_partitions: u16,
}

/// State shards by default: a range of key groups each, spread over up to
/// 12 replicas (and evenly over 1, 2, 3, 4 or 6).
const DEFAULT_REPARTITION_PARTITIONS: u16 = 12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    group_id: Spanned<String>,
    session_timeout: Option<Spanned<String>>,
    static_membership: Option<bool>,
    repartition_topic: Option<Spanned<String>>,
    repartition_partitions: Option<Spanned<i64>>,
}

impl Resolver<'_> {
    /// Checks `[cluster]` against the rest of the already checked pipeline.
    pub(super) fn cluster(
        &self,
        spanned: &Spanned<RawCluster>,
        pipeline: &Pipeline,
    ) -> Result<ClusterConfig, ConfigError> {
        let raw = spanned.get_ref();
        let group_id = raw.group_id.get_ref().trim().to_string();
        if !is_kafka_name(&group_id, 200) {
            return Err(self
                .err(&raw.group_id, format!("invalid group_id {group_id:?}"))
                .hint("up to 200 letters, digits, `_`, `-` and `.`"));
        }
        let session_timeout = match &raw.session_timeout {
            Some(d) => {
                let timeout = self.duration(d)?;
                let (low, high) = SESSION_TIMEOUT_BOUNDS;
                if timeout < low || timeout > high {
                    return Err(self
                        .err(d, "session_timeout must be between 6s and 5m")
                        .hint("Kafka brokers refuse others by default"));
                }
                timeout
            }
            None => Duration::from_secs(10),
        };
        let repartition_topic = match &raw.repartition_topic {
            Some(topic) => {
                let name = topic.get_ref();
                let legal = is_kafka_name(name, 249) && name != "." && name != "..";
                if !legal {
                    return Err(self
                        .err(topic, format!("invalid topic name {name:?}"))
                        .hint(
                            "Kafka topic names are up to 249 letters, digits, `_`, `-` and `.`",
                        ));
                }
                name.clone()
            }
            None => format!("{group_id}-repartition"),
        };
        let key_groups = pipeline
            .parallelism
            .key_groups
            .unwrap_or(crate::state::DEFAULT_KEY_GROUPS);
        let repartition_partitions = match &raw.repartition_partitions {
            Some(n) if *n.get_ref() < 1 || *n.get_ref() > i64::from(key_groups) => {
                return Err(self
                    .err(
                        n,
                        format!("repartition_partitions must be 1 to {key_groups}"),
                    )
                    .hint("each partition owns a range of the query's key groups"));
            }
            Some(n) => *n.get_ref() as u16,
            None => DEFAULT_REPARTITION_PARTITIONS.min(key_groups),
        };
        self.check_clusterable(spanned, pipeline)?;
        Ok(ClusterConfig {
            group_id,
            session_timeout,
            static_membership: raw.static_membership.unwrap_or(true),
            repartition_topic,
            repartition_partitions,
        })
    }

    /// What a query across replicas cannot do yet, refused with the reason.
    fn check_clusterable(
        &self,
        spanned: &Spanned<RawCluster>,
        pipeline: &Pipeline,
    ) -> Result<(), ConfigError> {
        let refuse = |message: &str, hint: &str| Err(self.err(spanned, message).hint(hint));
        let [input] = pipeline.inputs.as_slice() else {
            return refuse(
                "a query across replicas reads one [source]",
                "several [[sources]] are not shared between replicas yet",
            );
        };
        match &input.source {
            SourceConfig::Kafka(kafka) if matches!(kafka.topics, TopicSelection::Topics(_)) => {}
            SourceConfig::Kafka(_) => {
                return refuse(
                    "a query across replicas names its topics",
                    "topic_pattern is not shared between replicas yet; list the topics",
                );
            }
            SourceConfig::File(_) => {
                return refuse(
                    "a query across replicas reads a kafka source",
                    "the consumer group hands out Kafka partitions; file sources have none",
                );
            }
        }
        if pipeline.checkpoint.local_dir().is_some() {
            return refuse(
                "a query across replicas keeps its checkpoint on object storage",
                "checkpoint = \"s3://bucket/prefix\": any replica must be able to take over \
                 a shard, and a replica that stalled must be fenced by a lease that expires \
                 (a local file lock never does)",
            );
        }
        if let Some(local) = local_output(&pipeline.sink.target) {
            return refuse(
                &format!(
                    "a query across replicas writes its output to object storage, not to the \
                     local directory {local}"
                ),
                "path = \"s3://bucket/prefix\": a shard that moves to another host must find \
                 its output and that output's log where it left them",
            );
        }
        if matches!(
            pipeline.trigger,
            Trigger::AvailableNow | Trigger::Once | Trigger::Continuous(_)
        ) {
            return refuse(
                "replicas run until stopped: use processing_time or the default trigger",
                "available_now, once and continuous are per-process triggers",
            );
        }
        if pipeline.stream_join.is_some() {
            return refuse(
                "a stream-stream join does not run across replicas yet",
                "run the query in one process (without [cluster])",
            );
        }
        let operators = [
            pipeline.aggregate.is_some(),
            pipeline.then_aggregate.is_some(),
            pipeline.deduplicate.is_some(),
            pipeline.stateful.is_some(),
        ];
        if operators.into_iter().filter(|present| *present).count() > 1 {
            return refuse(
                "across replicas a query has one stateful operator for now",
                "each operator keyed otherwise would need a repartition topic of its own; \
                 chain queries through a topic instead",
            );
        }
        Ok(())
    }
}

/// A file or Delta output of `sink` on a local disk, if any.
fn local_output(sink: &SinkTarget) -> Option<String> {
    let local = |path: &Location| path.local_dir().map(|dir| dir.display().to_string());
    match sink {
        SinkTarget::Files(files) => local(&files.path),
        SinkTarget::Delta { path, .. } => local(path),
        SinkTarget::ForeachBatch(foreach) => {
            foreach.outputs.values().find_map(|output| match output {
                OutputConfig::Files { path, .. } => local(path),
                OutputConfig::Delta(delta) => local(&delta.path),
                OutputConfig::Postgres(_) => None,
            })
        }
        SinkTarget::Console { .. } | SinkTarget::Kafka(_) => None,
    }
}
