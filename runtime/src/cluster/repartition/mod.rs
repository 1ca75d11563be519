//! The repartition topic: how rows travel from the replicas reading the
//! source to the replicas owning their key groups, with no coordinator.
//!
//! The topic has one partition per *state shard*; partition `r` carries
//! the rows of key groups `KeyGroups::range_of_task(r, R)`. A source
//! shard's batch N becomes one record per partition: the rows of that
//! partition's key groups as an Arrow IPC stream (an empty value when
//! none), with headers naming the source shard, the batch and the latest
//! event time among the batch's rows — the watermark travels with the data,
//! down every partition, as Flink sends watermarks down every channel.
//!
//! Every attempt at a source shard's batch writes the same records (a
//! replay reads the same offsets with the same plugin versions, clock and
//! seed), so a state shard keeps the first record of each (shard, batch)
//! and ignores any other: an attempt that crashed after writing, a replica
//! that was replaced but woke up, a transaction a broker delivered although
//! it aborted. The output is exactly-once without trusting the broker's
//! transactions, which the test broker does not fully implement.

mod sink;
mod source;

use std::io::Cursor;
use std::ops::Range;
use std::time::Duration;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

pub(super) use sink::RepartitionSink;
pub(super) use source::RepartitionSource;

use crate::error::{Result, WeirError};
use crate::state::KeyGroups;

/// Header: the source shard that wrote a record (`<topic>-<partition>`).
const SHARD_HEADER: &str = "weir-shard";
/// Header: the source shard's batch the record carries.
const BATCH_HEADER: &str = "weir-batch";
/// Header: the latest event time (ms) among the batch's rows, if any.
const EVENT_TIME_HEADER: &str = "weir-event-time";

/// The largest record: a batch whose rows for one state shard are more
/// fails, asking for a smaller `max_offsets_per_trigger`.
const MAX_RECORD_BYTES: usize = 8 << 20;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which partition of the repartition topic each key group's rows go to.
#[derive(Debug, Clone)]
pub(super) struct Routing {
    groups: KeyGroups,
    partitions: usize,
    /// The partition of each key group.
    table: Vec<u16>,
}

impl Routing {
    /// `groups` spread over `partitions` (at most one per key group).
    pub(super) fn new(groups: KeyGroups, partitions: u16) -> Routing {
        let partitions = usize::from(partitions.clamp(1, groups.count()));
        let mut table = vec![0; usize::from(groups.count())];
        for partition in 0..partitions {
            for group in groups.range_of_task(partition, partitions) {
                table[usize::from(group)] = partition as u16;
            }
        }
        Routing {
            groups,
            partitions,
            table,
        }
    }

    /// The query's key groups.
    pub(super) fn groups(&self) -> KeyGroups {
        self.groups
    }

    /// The number of partitions (state shards).
    pub(super) fn partitions(&self) -> usize {
        self.partitions
    }

    /// The key groups partition `partition` carries.
    pub(super) fn groups_of(&self, partition: usize) -> Range<u16> {
        self.groups.range_of_task(partition, self.partitions)
    }

    /// The partition carrying key group `group`'s rows.
    pub(super) fn partition_of(&self, group: u16) -> usize {
        usize::from(self.table[usize::from(group)])
    }
}

/// `batches` as one Arrow IPC stream; nothing for no rows.
fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    let mut writer = StreamWriter::try_new(Vec::new(), &first.schema())
        .map_err(|e| WeirError::format("repartition record", e))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer
            .write(batch)
            .map_err(|e| WeirError::format("repartition record", e))?;
    }
    writer
        .into_inner()
        .map_err(|e| WeirError::format("repartition record", e))
}

/// The rows of a record [`encode`] wrote.
fn decode(bytes: &[u8], what: &str) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader =
        StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| WeirError::format(what, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| WeirError::format(what, e))
}

/// Creates the repartition `topic` with `partitions` partitions, or checks
/// that the one there has that many (the key groups' routing depends on
/// it: another count would send rows to shards that do not own them).
pub(super) async fn ensure_topic(servers: &str, topic: &str, partitions: u16) -> Result<()> {
    let unavailable = |what: &str, e: rdkafka::error::KafkaError| WeirError::Unavailable {
        service: format!("kafka {servers}"),
        reason: format!("{what}: {e}"),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .map_err(|e| unavailable("cannot create an admin client", e))?;
    let max_bytes = (MAX_RECORD_BYTES + (1 << 20)).to_string();
    let new = NewTopic::new(topic, i32::from(partitions), TopicReplication::Fixed(-1))
        .set("max.message.bytes", &max_bytes);
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let created = admin
        .create_topics(&[new], &options)
        .await
        .map_err(|e| unavailable("cannot create the repartition topic", e))?;
    for result in created {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created the repartition topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(WeirError::Unavailable {
                    service: format!("kafka {servers}"),
                    reason: format!("cannot create the repartition topic {topic}: {code}"),
                });
            }
        }
    }
    let found = partition_count(servers, topic)?;
    if found != usize::from(partitions) {
        return Err(WeirError::Source {
            input: format!("repartition topic {topic}"),
            reason: format!(
                "the repartition topic has {found} partitions where the query has \
                 {partitions} state shards (repartition_partitions); they are fixed once the \
                 topic exists: set repartition_partitions = {found}, or use a new group_id"
            ),
        });
    }
    Ok(())
}

/// How many partitions `topic` has (0 when it does not exist).
pub(super) fn partition_count(servers: &str, topic: &str) -> Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .map_err(|e| WeirError::Unavailable {
            service: format!("kafka {servers}"),
            reason: format!("cannot create a metadata client: {e}"),
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| WeirError::Unavailable {
            service: format!("kafka {servers}"),
            reason: format!("cannot read the metadata of {topic}: {e}"),
        })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn routing_sends_each_key_group_to_the_partition_owning_it() {
        for count in [1u16, 7, 128, 200] {
            let groups = KeyGroups::try_new(count).unwrap();
            for partitions in [1u16, 2, 3, 12, 128] {
                let routing = Routing::new(groups, partitions);
                for partition in 0..routing.partitions() {
                    for group in routing.groups_of(partition) {
                        assert_eq!(routing.partition_of(group), partition);
                    }
                }
                let covered: usize = (0..routing.partitions())
                    .map(|p| routing.groups_of(p).len())
                    .sum();
                assert_eq!(covered, usize::from(count));
            }
        }
    }

    #[test]
    fn records_carry_their_rows_and_nothing_for_none() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = |values: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap()
        };
        let rows = vec![batch(vec![1, 2]), batch(vec![]), batch(vec![3])];
        let decoded = decode(&encode(&rows).unwrap(), "test").unwrap();
        let values: Vec<i64> = decoded
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, [1, 2, 3]);
        assert!(encode(&[batch(vec![])]).unwrap().is_empty());
        assert!(decode(&[], "test").unwrap().is_empty());
        assert!(decode(b"not arrow", "test").is_err());
    }
}
