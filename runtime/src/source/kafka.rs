//! Kafka source: each batch reads fixed offset ranges `[start, end)` per
//! partition, logged in `sources/0/N` before the batch runs, so a replay
//! reads exactly the same records. Offsets live in the checkpoint, never in
//! consumer-group commits. Partitions (and, with `topic_pattern`, topics)
//! that appear later are picked up from their earliest offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Decoded, Source, parse_plan};
use crate::config::{KafkaSourceConfig, TopicSelection};
use crate::error::{Result, WeirError};
use crate::retry::Retries;

/// How long a broker request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading one batch's ranges may take before it is an error.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

type TopicPartition = (String, i32);

/// One partition's part of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Range {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
}

/// `sources/0/N` for the Kafka source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KafkaPlan {
    ranges: Vec<Range>,
}

/// The Kafka source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    /// Reads records (assigned the batch's ranges while reading).
    consumer: Arc<BaseConsumer>,
    /// Asks for metadata and offsets, on connections of its own: behind the
    /// reader's idle long-poll fetches such requests would wait up to
    /// `fetch.wait.max.ms` on brokers that serve a connection in order.
    planner: Arc<BaseConsumer>,
    schema: SchemaRef,
    /// Next offset to read per partition, after the batches run so far.
    next: BTreeMap<TopicPartition, i64>,
    /// With a draining trigger: the end offsets seen at start.
    end: Option<BTreeMap<TopicPartition, i64>>,
    /// Where partitions never read start (resolved once per run).
    initial: BTreeMap<TopicPartition, i64>,
    /// Broker outages are retried, and recorded here.
    retries: Retries,
}

impl KafkaSource {
    /// A source for `config` (no broker request is made yet); broker
    /// outages are retried and recorded in `retries`.
    pub fn open(config: KafkaSourceConfig, retries: Retries) -> Result<KafkaSource> {
        let client = || {
            ClientConfig::new()
                .set("bootstrap.servers", &config.bootstrap_servers)
                // A batch's read ends at a known offset, so there is nothing
                // to wait for at a partition's end; and the next batch's
                // fetch queues behind a waiting one (brokers serve a
                // connection's requests in order).
                .set("fetch.wait.max.ms", "10")
                .set("group.id", "weir-unused")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error")
                .create::<BaseConsumer>()
                .map_err(|e| kafka_error("cannot create the Kafka consumer", e))
        };
        let (consumer, planner) = (client()?, client()?);
        let mut fields: Vec<Field> = match &config.value_schema {
            Some(schema) => schema.fields().iter().map(|f| f.as_ref().clone()).collect(),
            None => vec![
                Field::new("key", DataType::Binary, true),
                Field::new("value", DataType::Binary, true),
            ],
        };
        fields.extend([
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
                true,
            ),
        ]);
        Ok(KafkaSource {
            config,
            consumer: Arc::new(consumer),
            planner: Arc::new(planner),
            schema: Arc::new(Schema::new(fields)),
            next: BTreeMap::new(),
            end: None,
            initial: BTreeMap::new(),
            retries,
        })
    }

    /// Partitions with their (low, high) watermarks, retried through
    /// broker outages.
    async fn watermarks(&self) -> Result<BTreeMap<TopicPartition, (i64, i64)>> {
        self.retries
            .run("reading Kafka offsets", || self.watermarks_once())
            .await
    }

    async fn watermarks_once(&self) -> Result<BTreeMap<TopicPartition, (i64, i64)>> {
        let consumer = self.planner.clone();
        let topics = self.config.topics.clone();
        let only = self.config.partitions.clone();
        let servers = self.config.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            let metadata_error = |e| unavailable(&servers, "cannot read topic metadata", e);
            // Named topics are asked for by name: a request for every topic
            // costs a full metadata refresh (hundreds of ms on some brokers).
            let mut partitions: Vec<(String, Vec<i32>)> = Vec::new();
            let mut add = |metadata: &rdkafka::metadata::Metadata,
                           wanted: &dyn Fn(&str) -> bool| {
                for topic in metadata.topics() {
                    if topic.error().is_none() && wanted(topic.name()) {
                        let ids = topic.partitions().iter().map(|p| p.id()).collect();
                        partitions.push((topic.name().to_string(), ids));
                    }
                }
            };
            match &topics {
                TopicSelection::Topics(names) => {
                    for name in names {
                        let metadata = consumer
                            .fetch_metadata(Some(name), REQUEST_TIMEOUT)
                            .map_err(metadata_error)?;
                        add(&metadata, &|topic| topic == name);
                    }
                }
                TopicSelection::Pattern(p) => {
                    let pattern = regex::Regex::new(p).map_err(|e| {
                        WeirError::Internal(format!("topic pattern checked at load: {e}"))
                    })?;
                    let metadata = consumer
                        .fetch_metadata(None, REQUEST_TIMEOUT)
                        .map_err(metadata_error)?;
                    add(&metadata, &|topic| pattern.is_match(topic));
                }
            }
            let mut marks = BTreeMap::new();
            for (topic, ids) in partitions {
                for partition in ids {
                    if let Some(only) = &only
                        && !only.contains(&(topic.clone(), partition))
                    {
                        continue;
                    }
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                        .map_err(|e| unavailable(&servers, "cannot read partition offsets", e))?;
                    marks.insert((topic.clone(), partition), (low, high));
                }
            }
            Ok(marks)
        })
        .await
        .map_err(|e| WeirError::Internal(format!("kafka task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn fix_end(&mut self) -> Result<()> {
        let marks = self.watermarks().await?;
        self.end = Some(
            marks
                .into_iter()
                .map(|(tp, (_, high))| (tp, high))
                .collect(),
        );
        Ok(())
    }

    async fn plan(&mut self, capped: bool) -> Result<Option<Value>> {
        let marks = self.watermarks().await?;
        let mut ranges = Vec::new();
        for ((topic, partition), (low, high)) in marks {
            let tp = (topic.clone(), partition);
            let high = match &self.end {
                Some(end) => match end.get(&tp) {
                    Some(fixed) => high.min(*fixed),
                    None => continue, // appeared after a draining run started
                },
                None => high,
            };
            // A new query starts where `starting_offsets` says, and its
            // first batch logs every partition (empty ranges too), so a
            // restart knows them all; a partition that appears later
            // starts at its earliest offset, as in Spark.
            let new_query = self.next.is_empty();
            let mut start = match self.next.get(&tp) {
                Some(next) => *next,
                None if new_query => *self
                    .initial
                    .entry(tp.clone())
                    .or_insert_with(|| self.config.starting_offsets.resolve(&tp, low, high)),
                None => low,
            };
            if self.next.contains_key(&tp) && high < start {
                // Offsets went back: the topic was deleted and created
                // again (or truncated). What it held past `high` is gone.
                if self.config.fail_on_data_loss {
                    return Err(WeirError::Source {
                        input: format!("kafka {topic} partition {partition}"),
                        reason: format!(
                            "the partition ends at offset {high}, before offset {start} this \
                             query already read up to: the topic was deleted and created again, \
                             or truncated, and records may be lost; set fail_on_data_loss = false \
                             to read it again from its earliest offset"
                        ),
                    });
                }
                tracing::warn!(
                    topic,
                    partition,
                    from = start,
                    to = high,
                    "offsets went back (topic recreated?): reading from the earliest offset"
                );
                start = low;
            }
            if start < low {
                if self.config.fail_on_data_loss {
                    return Err(WeirError::Source {
                        input: format!("kafka {topic} partition {partition}"),
                        reason: format!(
                            "offsets {start}..{low} were deleted (retention) before they were read; \
                             set fail_on_data_loss = false to skip them"
                        ),
                    });
                }
                tracing::warn!(
                    topic,
                    partition,
                    lost = low - start,
                    "offsets deleted before they were read: skipped"
                );
                start = low;
            }
            if high > start || new_query {
                ranges.push(Range {
                    topic,
                    partition,
                    start,
                    end: high.max(start),
                });
            }
        }
        if let (true, Some(max)) = (capped, self.config.max_offsets_per_trigger) {
            cap(&mut ranges, max);
        }
        if ranges.iter().all(|r| r.end == r.start) {
            return Ok(None);
        }
        Ok(Some(
            serde_json::to_value(KafkaPlan { ranges }).expect("serialisable"),
        ))
    }

    fn empty_plan(&self) -> Value {
        serde_json::to_value(KafkaPlan { ranges: Vec::new() }).expect("serialisable")
    }

    fn position(&self) -> Value {
        // The same shape as a plan: ranges ending at each partition's next offset.
        let ranges = self
            .next
            .iter()
            .map(|((topic, partition), next)| Range {
                topic: topic.clone(),
                partition: *partition,
                start: *next,
                end: *next,
            })
            .collect();
        serde_json::to_value(KafkaPlan { ranges }).expect("serialisable")
    }

    fn restore_position(&mut self, position: &Value) -> Result<()> {
        self.next.clear();
        self.advance(position)
    }

    fn advance(&mut self, plan: &Value) -> Result<()> {
        let plan: KafkaPlan = parse_plan(plan)?;
        for r in plan.ranges {
            self.next.insert((r.topic, r.partition), r.end);
        }
        Ok(())
    }

    async fn read(&mut self, plan: &Value) -> Result<Decoded> {
        let plan: KafkaPlan = parse_plan(plan)?;
        if plan.ranges.is_empty() {
            return Ok(Decoded::default());
        }
        // Reading a logged range is repeatable: an outage mid-read reads it again.
        let ranges = Arc::new(plan.ranges);
        self.retries
            .run("reading Kafka records", || {
                let consumer = self.consumer.clone();
                let schema = self.schema.clone();
                let value_schema = self.config.value_schema.clone();
                let servers = self.config.bootstrap_servers.clone();
                let ranges = ranges.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        read_ranges(&consumer, &servers, &ranges, schema, value_schema)
                    })
                    .await
                    .map_err(|e| WeirError::Internal(format!("kafka task failed: {e}")))?
                }
            })
            .await
    }

    fn plan_units(&self, plan: &Value) -> usize {
        parse_plan::<KafkaPlan>(plan)
            .map_or(0, |p| p.ranges.iter().filter(|r| r.end > r.start).count())
    }
}

/// Shrinks `ranges` to at most `max` records in all, split in proportion
/// to each partition's backlog (every partition with a backlog gets at
/// least one record while the budget lasts, so none starves).
fn cap(ranges: &mut [Range], max: u64) {
    let total: u64 = ranges.iter().map(|r| (r.end - r.start) as u64).sum();
    if total <= max {
        return;
    }
    let mut budget = max;
    let mut shares = Vec::with_capacity(ranges.len());
    for r in ranges.iter() {
        let backlog = (r.end - r.start) as u64;
        let share = ((backlog as u128 * max as u128) / total as u128) as u64;
        let share = share.max(1).min(budget).min(backlog);
        budget -= share;
        shares.push(share);
    }
    // What rounding down left over goes to the first partitions with more.
    for (r, share) in ranges.iter().zip(shares.iter_mut()) {
        let extra = budget.min((r.end - r.start) as u64 - *share);
        *share += extra;
        budget -= extra;
    }
    // Ranges left empty stay: they still record where their partition is.
    for (r, share) in ranges.iter_mut().zip(shares) {
        r.end = r.start + share as i64;
    }
}

/// One record as read.
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
}

/// Reads every range, partition by partition in plan order.
fn read_ranges(
    consumer: &BaseConsumer,
    servers: &str,
    ranges: &[Range],
    schema: SchemaRef,
    value_schema: Option<SchemaRef>,
) -> Result<Decoded> {
    let ranges: Vec<&Range> = ranges.iter().filter(|r| r.end > r.start).collect();
    let mut assignment = TopicPartitionList::new();
    for r in &ranges {
        assignment
            .add_partition_offset(&r.topic, r.partition, Offset::Offset(r.start))
            .map_err(|e| kafka_error("cannot assign partitions", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_error("cannot assign partitions", e))?;
    let ends: BTreeMap<TopicPartition, i64> = ranges
        .iter()
        .map(|r| ((r.topic.clone(), r.partition), r.end))
        .collect();
    let mut records: BTreeMap<TopicPartition, Vec<Record>> = BTreeMap::new();
    let mut pending: Vec<TopicPartition> = ends.keys().cloned().collect();
    let started = Instant::now();
    while !pending.is_empty() {
        if started.elapsed() > READ_TIMEOUT {
            let _ = consumer.unassign();
            return Err(WeirError::Unavailable {
                service: format!("kafka {servers}"),
                reason: format!(
                    "could not read the planned offsets of {pending:?} within {READ_TIMEOUT:?}"
                ),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let tp = (m.topic().to_string(), m.partition());
                let Some(end) = ends.get(&tp) else { continue };
                if m.offset() < *end {
                    records.entry(tp.clone()).or_default().push(Record {
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        topic: tp.0.clone(),
                        partition: tp.1,
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                    });
                }
                if m.offset() >= end - 1 {
                    pending.retain(|p| *p != tp);
                }
            }
            Some(Err(e)) => {
                let _ = consumer.unassign();
                return Err(match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::OffsetOutOfRange) => {
                        kafka_error("cannot read records", e)
                    }
                    _ => unavailable(servers, "cannot read records", e),
                });
            }
            None => {
                // Nothing more arrives: transaction markers take offsets too,
                // so a partition is done when its position reached the end
                // even if no record carried offset end-1. (Asked only when
                // idle: asking per record costs more than reading it.)
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        let tp = (element.topic().to_string(), element.partition());
                        if let (Offset::Offset(at), Some(end)) = (element.offset(), ends.get(&tp))
                            && at >= *end
                        {
                            pending.retain(|p| *p != tp);
                        }
                    }
                }
            }
        }
    }
    let _ = consumer.unassign();
    let all: Vec<Record> = ranges
        .iter()
        .flat_map(|r| {
            records
                .remove(&(r.topic.clone(), r.partition))
                .unwrap_or_default()
        })
        .collect();
    let batch = to_batch(&all, schema, value_schema)?;
    Ok(Decoded {
        batches: vec![batch],
        bad_records: Vec::new(),
        event_time: super::EventTimeProgress::Rows,
    })
}

fn to_batch(
    records: &[Record],
    schema: SchemaRef,
    value_schema: Option<SchemaRef>,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = match &value_schema {
        Some(value_schema) => parse_values(records, value_schema)?,
        None => {
            let mut keys = BinaryBuilder::new();
            let mut values = BinaryBuilder::new();
            for r in records {
                keys.append_option(r.key.as_deref());
                values.append_option(r.value.as_deref());
            }
            vec![Arc::new(keys.finish()), Arc::new(values.finish())]
        }
    };
    let mut topics = StringBuilder::new();
    let mut partitions = Int32Builder::new();
    let mut offsets = Int64Builder::new();
    let mut timestamps = TimestampMillisecondBuilder::new().with_timezone("+00:00");
    for r in records {
        topics.append_value(&r.topic);
        partitions.append_value(r.partition);
        offsets.append_value(r.offset);
        timestamps.append_option(r.timestamp);
    }
    columns.push(Arc::new(topics.finish()));
    columns.push(Arc::new(partitions.finish()));
    columns.push(Arc::new(offsets.finish()));
    columns.push(Arc::new(timestamps.finish()));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| WeirError::Internal(format!("kafka batch: {e}")))
}

/// Parses every record's value as one JSON object with `schema`. A value
/// that is missing or does not parse is an error naming its offset.
fn parse_values(records: &[Record], schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
    // One batch for all records, with room for one stray extra object (a
    // full decoder stops consuming input, which would read as a bad value).
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len() + 1)
        .build_decoder()
        .map_err(|e| WeirError::Internal(format!("json decoder: {e}")))?;
    for r in records {
        let bad = |reason: String| WeirError::BadRecord {
            file: format!("kafka {} partition {}", r.topic, r.partition),
            line: r.offset as usize,
            reason,
        };
        let value = r
            .value
            .as_deref()
            .ok_or_else(|| bad("the record has no value".into()))?;
        if super::decode::json_too_deep(value) {
            return Err(bad(super::decode::too_deep_reason()));
        }
        let before = decoder.len();
        let consumed = decoder
            .decode(value)
            .and_then(|consumed| Ok(consumed + decoder.decode(b"\n")?))
            .map_err(|e| bad(format!("value is not valid JSON for the schema: {e}")))?;
        if decoder.len() != before + 1 || consumed != value.len() + 1 {
            return Err(bad("the value must be exactly one JSON object".into()));
        }
    }
    let batch = decoder
        .flush()
        .map_err(|e| WeirError::Internal(format!("json decoder: {e}")))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    Ok(batch.columns().to_vec())
}

/// A failure worth retrying: the broker is down or slow.
fn unavailable(servers: &str, what: &str, e: rdkafka::error::KafkaError) -> WeirError {
    WeirError::Unavailable {
        service: format!("kafka {servers}"),
        reason: format!("{what}: {e}"),
    }
}

fn kafka_error(what: &str, e: rdkafka::error::KafkaError) -> WeirError {
    WeirError::Source {
        input: "kafka".into(),
        reason: format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, start: i64, end: i64) -> Range {
        Range {
            topic: "t".into(),
            partition,
            start,
            end,
        }
    }

    fn record(offset: i64, value: &str) -> Record {
        Record {
            key: None,
            value: Some(value.as_bytes().to_vec()),
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
        }
    }

    #[test]
    fn json_values_parse_beyond_one_decoder_batch_and_strays_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let records: Vec<Record> = (0..3000)
            .map(|n| record(n, &format!("{{\"id\": {n}}}")))
            .collect();
        let columns = parse_values(&records, &schema).unwrap();
        assert_eq!(columns[0].len(), 3000);
        let ids = columns[0]
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.value(2999), 2999);

        let two = vec![
            record(0, "{\"id\": 1}"),
            record(1, "{\"id\": 2} {\"id\": 3}"),
        ];
        let err = parse_values(&two, &schema).unwrap_err().to_string();
        assert!(err.contains("exactly one JSON object"), "{err}");
        assert!(err.contains("partition 0") && err.contains('1'), "{err}");
    }

    #[test]
    fn the_cap_splits_by_backlog_and_starves_no_partition() {
        let mut ranges = vec![range(0, 0, 900), range(1, 10, 110), range(2, 0, 1)];
        cap(&mut ranges, 100);
        let sizes: Vec<i64> = ranges.iter().map(|r| r.end - r.start).collect();
        assert_eq!(sizes, vec![90, 9, 1]);
        assert!(sizes.iter().sum::<i64>() <= 100);
    }
}
