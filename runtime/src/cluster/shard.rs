//! Shards: the fixed pieces of a replicated query's work, each run as a
//! query of its own with its own checkpoint. A *source shard* reads one
//! partition of the source topics; with a stateful operator it writes the
//! repartition topic, and a *state shard* reads one partition of that
//! topic and runs the operator over the key groups it owns.

use std::collections::BTreeSet;
use std::fmt;

use super::repartition::{RepartitionSink, RepartitionSource, Routing};
use crate::config::{
    ClusterConfig, KafkaSourceConfig, OutputConfig, OutputMode, Pipeline, SinkConfig, SinkTarget,
    SourceConfig, TopicSelection,
};
use crate::error::Result;
use crate::plugin::PluginEngine;
use crate::query::Query;
use crate::state::{DEFAULT_KEY_GROUPS, KeyGroups};

/// One partition the group hands out: of a source topic or of the
/// repartition topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl Shard {
    /// The folder of its checkpoint (under `shards/`) and of its file
    /// output: `<topic>-<partition>`, one path segment whatever the topic
    /// (Kafka's names are letters, digits, `.`, `_` and `-`; anything else
    /// from a broker that allows it is replaced, and the `-<partition>`
    /// suffix keeps it from being `.` or `..`).
    pub fn folder(&self) -> String {
        let topic: String = self
            .topic
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{topic}-{}", self.partition)
    }
}

/// What a shard runs.
#[derive(Clone)]
enum Role {
    /// A stateless query: its partition through the transforms to the sink.
    Whole,
    /// Its partition through the transforms to the repartition topic.
    Source {
        routing: Routing,
        /// The stateful operator's key columns.
        key: Vec<String>,
        /// The event-time column, with a watermark.
        event_time: Option<String>,
    },
    /// Its partition of the repartition topic through the stateful
    /// operator (its key groups) to the sink.
    State {
        /// The source topics: their partitions write the repartition topic.
        sources: Vec<String>,
    },
}

/// A shard's query, made anew at each (re)start.
#[derive(Clone)]
pub(super) struct ShardQuery {
    shard: Shard,
    pipeline: Pipeline,
    servers: String,
    repartition_topic: String,
    role: Role,
}

/// The replicated query's Kafka source and the topics it names (`None`
/// for a pipeline the `[cluster]` checks would refuse).
pub(super) fn source_topics(pipeline: &Pipeline) -> Option<(&KafkaSourceConfig, &Vec<String>)> {
    let [input] = pipeline.inputs.as_slice() else {
        return None;
    };
    let SourceConfig::Kafka(kafka) = &input.source else {
        return None;
    };
    match &kafka.topics {
        TopicSelection::Topics(topics) => Some((kafka, topics)),
        TopicSelection::Pattern(_) => None,
    }
}

/// Whether rows go through the repartition topic: the query has a
/// stateful operator.
pub(super) fn repartitions(pipeline: &Pipeline) -> bool {
    operator_key(pipeline).is_some()
}

/// The key columns of the query's one stateful operator, if it has one.
fn operator_key(pipeline: &Pipeline) -> Option<Vec<String>> {
    if let Some(aggregate) = &pipeline.aggregate {
        return Some(aggregate.group_by.clone());
    }
    if let Some(dedup) = &pipeline.deduplicate {
        return Some(dedup.columns.clone());
    }
    pipeline.stateful.as_ref().map(|f| f.key.clone())
}

impl ShardQuery {
    /// The query of `shard` in replicated `pipeline`; `None` when the shard
    /// is no partition of the query's (a topic it does not read).
    pub(super) fn new(
        shard: &Shard,
        pipeline: &Pipeline,
        cluster: &ClusterConfig,
    ) -> Option<ShardQuery> {
        let (kafka, topics) = source_topics(pipeline)?;
        let event_time = pipeline.inputs[0]
            .watermark
            .as_ref()
            .map(|w| w.column.clone());
        if shard.partition < 0 {
            return None;
        }
        let groups = KeyGroups::try_new(
            pipeline
                .parallelism
                .key_groups
                .unwrap_or(DEFAULT_KEY_GROUPS),
        )
        .ok()?;
        let routing = Routing::new(groups, cluster.repartition_partitions);
        let key = operator_key(pipeline);
        let mut query = pipeline.clone();
        let folder = shard.folder();
        query.checkpoint = pipeline.checkpoint.join(&format!("shards/{folder}"));
        // Each shard's files go to a folder of their own, with their own
        // exactly-once log (shards number their batches independently).
        let own = format!("shard={folder}");
        match &mut query.sink.target {
            SinkTarget::Files(files) => files.path = files.path.join(&own),
            SinkTarget::ForeachBatch(foreach) => {
                for output in foreach.outputs.values_mut() {
                    if let OutputConfig::Files { path, .. } = output {
                        *path = path.join(&own);
                    }
                }
            }
            SinkTarget::Console { .. } | SinkTarget::Kafka(_) | SinkTarget::Delta { .. } => {}
        }
        let role = match key {
            None if topics.contains(&shard.topic) => Role::Whole,
            None => return None,
            Some(key) if topics.contains(&shard.topic) => {
                query.aggregate = None;
                query.then_aggregate = None;
                query.deduplicate = None;
                query.stateful = None;
                // Never opened: the repartition topic is its sink.
                query.sink = SinkConfig {
                    output_mode: OutputMode::Append,
                    target: SinkTarget::Console { json: true },
                };
                Role::Source {
                    routing,
                    key,
                    event_time,
                }
            }
            Some(_) if shard.topic == cluster.repartition_topic => {
                let owned = usize::try_from(shard.partition).ok()?;
                if owned >= routing.partitions() {
                    return None;
                }
                // The transforms ran on the source shards.
                query.transforms.clear();
                query.static_join = None;
                query.parallelism.key_groups = Some(groups.count());
                query.key_group_range = Some(routing.groups_of(owned));
                Role::State {
                    sources: topics.clone(),
                }
            }
            Some(_) => return None,
        };
        if let (Role::Whole | Role::Source { .. }, [input]) = (&role, query.inputs.as_mut_slice())
            && let SourceConfig::Kafka(kafka) = &mut input.source
        {
            kafka.partitions = Some(BTreeSet::from([(shard.topic.clone(), shard.partition)]));
        }
        Some(ShardQuery {
            shard: shard.clone(),
            pipeline: query,
            servers: kafka.bootstrap_servers.clone(),
            repartition_topic: cluster.repartition_topic.clone(),
            role,
        })
    }

    /// What the shard runs (`query`, `source` or `state`), and a state
    /// shard's key groups (first and last).
    pub(super) fn describe(&self) -> (&'static str, Option<[u16; 2]>) {
        match &self.role {
            Role::Whole => ("query", None),
            Role::Source { .. } => ("source", None),
            Role::State { .. } => (
                "state",
                self.pipeline
                    .key_group_range
                    .as_ref()
                    .filter(|r| !r.is_empty())
                    .map(|r| [r.start, r.end - 1]),
            ),
        }
    }

    /// The shard's query, ready to run.
    pub(super) fn query(&self, engine: &PluginEngine) -> Result<Query> {
        let query = Query::new(self.pipeline.clone(), engine.clone());
        Ok(match &self.role {
            Role::Whole => query,
            Role::Source {
                routing,
                key,
                event_time,
            } => query.with_sink(Box::new(RepartitionSink::open(
                &self.servers,
                &self.repartition_topic,
                routing.clone(),
                key.clone(),
                event_time.clone(),
                self.shard.to_string(),
            )?)),
            Role::State { sources } => query.with_source(Box::new(RepartitionSource::open(
                &self.servers,
                &self.repartition_topic,
                self.shard.partition,
                sources.clone(),
            )?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_stays_inside_its_parent() {
        let shard = |topic: &str| Shard {
            topic: topic.into(),
            partition: 3,
        };
        assert_eq!(shard("orders.v1").folder(), "orders.v1-3");
        assert_eq!(shard("../etc").folder(), ".._etc-3");
        assert_eq!(shard("..").folder(), "..-3");
        assert_eq!(shard("a/b\\c").folder(), "a_b_c-3");
    }
}
