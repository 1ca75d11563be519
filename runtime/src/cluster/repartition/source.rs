//! A state shard's input: its partition of the repartition topic. Each
//! source shard's batch is taken once (the first record of it), and the
//! input's event time is the least of the source shards' latest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{BATCH_HEADER, EVENT_TIME_HEADER, REQUEST_TIMEOUT, SHARD_HEADER, decode};
use crate::error::{Result, WeirError};
use crate::retry::Retries;
use crate::source::{Decoded, EventTimeProgress, Source, parse_plan};

/// Records a batch takes at most: a few source batches from each writer.
const MAX_RECORDS_PER_BATCH: i64 = 2_000;
/// How long reading a planned range may take before it is an outage.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a state shard knows of one writer (a source shard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Writer {
    /// The last of its batches taken.
    batch: u64,
    /// The latest event time among the rows of its batches, if any.
    event_ms: Option<i64>,
}

/// Where a state shard is in its partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The next offset to read.
    next: i64,
    /// Every writer seen so far.
    writers: BTreeMap<String, Writer>,
    /// How far every writer has got in event time, as of the last batch.
    event_ms: Option<i64>,
}

/// One batch of a state shard: logged before it runs, so a replay takes
/// exactly the same records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    start: i64,
    end: i64,
    /// The last batch taken of each writer with records in the range, before it.
    before: BTreeMap<String, Option<u64>>,
    /// Those writers after it.
    after: BTreeMap<String, Writer>,
    /// The least latest event time over every writer the query has.
    event_ms: Option<i64>,
}

/// A record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    writer: String,
    batch: u64,
    event_ms: Option<i64>,
    value: Vec<u8>,
}

/// Reads one partition of the repartition topic.
pub(in crate::cluster) struct RepartitionSource {
    consumer: Arc<BaseConsumer>,
    servers: String,
    topic: String,
    partition: i32,
    /// The source topics: each of their partitions is a writer.
    sources: Vec<String>,
    position: Position,
    /// The plan made last and its rows, read while planning it.
    planned: Option<(Plan, Vec<RecordBatch>)>,
    retries: Retries,
}

impl RepartitionSource {
    /// Partition `partition` of `topic`, written by the shards of the
    /// partitions of `sources`.
    pub(in crate::cluster) fn open(
        servers: &str,
        topic: &str,
        partition: i32,
        sources: Vec<String>,
    ) -> Result<RepartitionSource> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("fetch.wait.max.ms", "10")
            .set("group.id", "weir-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .create()
            .map_err(|e| WeirError::Unavailable {
                service: format!("kafka {servers}"),
                reason: format!("cannot create the repartition consumer: {e}"),
            })?;
        Ok(RepartitionSource {
            consumer: Arc::new(consumer),
            servers: servers.to_string(),
            topic: topic.to_string(),
            partition,
            sources,
            position: Position::default(),
            planned: None,
            retries: Retries::default(),
        })
    }

    /// The partition's end, and every writer there is (the partitions of
    /// the source topics, named as their shards).
    async fn end_and_writers(&self) -> Result<(i64, Vec<String>)> {
        let consumer = self.consumer.clone();
        let (servers, topic, partition) =
            (self.servers.clone(), self.topic.clone(), self.partition);
        let sources = self.sources.clone();
        blocking(move || {
            let unavailable = |what: &str, e: rdkafka::error::KafkaError| WeirError::Unavailable {
                service: format!("kafka {servers}"),
                reason: format!("{what}: {e}"),
            };
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                .map_err(|e| unavailable("cannot read the repartition topic's offsets", e))?;
            let mut writers = Vec::new();
            for source in &sources {
                let metadata = consumer
                    .fetch_metadata(Some(source), REQUEST_TIMEOUT)
                    .map_err(|e| unavailable("cannot read the source topic's metadata", e))?;
                for found in metadata.topics().iter().filter(|t| t.name() == source) {
                    for p in found.partitions() {
                        writers.push(format!("{source}-{}", p.id()));
                    }
                }
            }
            Ok((high, writers))
        })
        .await
    }

    /// The records at offsets `start..end`.
    async fn fetch(&self, start: i64, end: i64) -> Result<Vec<Envelope>> {
        let consumer = self.consumer.clone();
        let (servers, topic, partition) =
            (self.servers.clone(), self.topic.clone(), self.partition);
        blocking(move || read_range(&consumer, &servers, &topic, partition, start, end)).await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| WeirError::Internal(format!("repartition read task: {e}")))?
}

/// Which of `records` a batch takes, given each writer's last batch taken
/// before (`None`: none yet): the first record of each writer's batch
/// later than that. Returns their indexes and the writers' state after,
/// from `known` (what the shard knew of them).
fn take(
    records: &[Envelope],
    before: &BTreeMap<String, Option<u64>>,
    known: &BTreeMap<String, Writer>,
) -> (Vec<usize>, BTreeMap<String, Writer>) {
    let mut last: BTreeMap<&str, Option<u64>> =
        before.iter().map(|(w, b)| (w.as_str(), *b)).collect();
    let mut after: BTreeMap<String, Writer> = BTreeMap::new();
    let mut taken = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let seen = last.entry(record.writer.as_str()).or_insert(None);
        if seen.is_some_and(|batch| record.batch <= batch) {
            continue; // another attempt at a batch taken already
        }
        *seen = Some(record.batch);
        taken.push(index);
        let writer = after
            .entry(record.writer.clone())
            .or_insert_with(|| known.get(&record.writer).copied().unwrap_or_default());
        writer.batch = record.batch;
        writer.event_ms = writer.event_ms.max(record.event_ms);
    }
    (taken, after)
}

/// The least latest event time over `writers`, once every one has reported.
fn least_event_time(known: &BTreeMap<String, Writer>, writers: &[String]) -> Option<i64> {
    if writers.is_empty() {
        return None;
    }
    writers
        .iter()
        .map(|w| known.get(w).and_then(|w| w.event_ms))
        .collect::<Option<Vec<i64>>>()
        .and_then(|times| times.into_iter().min())
}

fn rows_of(records: &[Envelope], taken: &[usize], what: &str) -> Result<Vec<RecordBatch>> {
    let mut rows = Vec::new();
    for &index in taken {
        rows.extend(decode(&records[index].value, what)?);
    }
    Ok(rows)
}

#[async_trait::async_trait]
impl Source for RepartitionSource {
    async fn fix_end(&mut self) -> Result<()> {
        Ok(()) // replicas run until stopped: no draining trigger
    }

    async fn plan(&mut self, capped: bool) -> Result<Option<Value>> {
        let (high, writers) = self
            .retries
            .run("reading the repartition topic", || self.end_and_writers())
            .await?;
        let start = self.position.next;
        if high <= start {
            return Ok(None);
        }
        let end = if capped {
            high.min(start + MAX_RECORDS_PER_BATCH)
        } else {
            high
        };
        let records = self
            .retries
            .run("reading the repartition topic", || self.fetch(start, end))
            .await?;
        let before: BTreeMap<String, Option<u64>> = records
            .iter()
            .map(|r| {
                let last = self.position.writers.get(&r.writer).map(|w| w.batch);
                (r.writer.clone(), last)
            })
            .collect();
        let (taken, after) = take(&records, &before, &self.position.writers);
        let mut known = self.position.writers.clone();
        known.extend(after.clone());
        let plan = Plan {
            start,
            end,
            before,
            after,
            event_ms: least_event_time(&known, &writers).max(self.position.event_ms),
        };
        let rows = rows_of(&records, &taken, &self.describe())?;
        self.planned = Some((plan.clone(), rows));
        serde_json::to_value(&plan)
            .map(Some)
            .map_err(|e| WeirError::Internal(format!("repartition plan: {e}")))
    }

    fn empty_plan(&self) -> Value {
        serde_json::json!({
            "start": self.position.next,
            "end": self.position.next,
            "before": {},
            "after": {},
            "event_ms": self.position.event_ms,
        })
    }

    fn advance(&mut self, plan: &Value) -> Result<()> {
        let plan: Plan = parse_plan(plan)?;
        self.position.next = self.position.next.max(plan.end);
        self.position.writers.extend(plan.after);
        self.position.event_ms = self.position.event_ms.max(plan.event_ms);
        Ok(())
    }

    async fn read(&mut self, plan: &Value) -> Result<Decoded> {
        let plan: Plan = parse_plan(plan)?;
        let rows = match self.planned.take() {
            Some((planned, rows)) if planned == plan => rows,
            _ if plan.end <= plan.start => Vec::new(),
            // A replay after a restart: the same records, taken the same way.
            _ => {
                let records = self
                    .retries
                    .run("reading the repartition topic", || {
                        self.fetch(plan.start, plan.end)
                    })
                    .await?;
                let (taken, _) = take(&records, &plan.before, &BTreeMap::new());
                rows_of(&records, &taken, &self.describe())?
            }
        };
        Ok(Decoded {
            batches: rows,
            bad_records: Vec::new(),
            event_time: EventTimeProgress::Vouched(plan.event_ms),
        })
    }

    fn plan_units(&self, _plan: &Value) -> usize {
        1
    }

    fn position(&self) -> Value {
        serde_json::to_value(&self.position).unwrap_or(Value::Null)
    }

    fn restore_position(&mut self, position: &Value) -> Result<()> {
        self.position = parse_plan(position)?;
        Ok(())
    }
}

impl RepartitionSource {
    fn describe(&self) -> String {
        format!(
            "repartition topic {} partition {}",
            self.topic, self.partition
        )
    }
}

/// Reads offsets `start..end` of one partition: every record, with the
/// headers naming its writer and batch. A record without them is not one
/// Weir wrote: an error naming it (never guessed at).
fn read_range(
    consumer: &BaseConsumer,
    servers: &str,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
) -> Result<Vec<Envelope>> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .and_then(|()| consumer.assign(&assignment))
        .map_err(|e| WeirError::Unavailable {
            service: format!("kafka {servers}"),
            reason: format!("cannot assign {topic} partition {partition}: {e}"),
        })?;
    let started = Instant::now();
    let mut records = Vec::new();
    let result = loop {
        if started.elapsed() > READ_TIMEOUT {
            break Err(WeirError::Unavailable {
                service: format!("kafka {servers}"),
                reason: format!(
                    "could not read offsets {start}..{end} of {topic} partition {partition} \
                     within {READ_TIMEOUT:?}"
                ),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if message.offset() < end {
                    match envelope(&message) {
                        Ok(record) => records.push(record),
                        Err(reason) => {
                            break Err(WeirError::Source {
                                input: format!(
                                    "repartition topic {topic} partition {partition} offset {}",
                                    message.offset()
                                ),
                                reason,
                            });
                        }
                    }
                }
                if message.offset() >= end - 1 {
                    break Ok(records);
                }
            }
            Some(Err(e)) => {
                break Err(WeirError::Unavailable {
                    service: format!("kafka {servers}"),
                    reason: format!("cannot read {topic} partition {partition}: {e}"),
                });
            }
            None => {
                // Control records (transaction markers) take offsets too.
                let reached = consumer.position().ok().and_then(|p| {
                    p.elements().iter().find_map(|e| match e.offset() {
                        Offset::Offset(at) => Some(at),
                        _ => None,
                    })
                });
                if reached.is_some_and(|at| at >= end) {
                    break Ok(records);
                }
            }
        }
    };
    let _ = consumer.unassign();
    result
}

/// A record's writer, batch, event time and rows, from its headers.
fn envelope(message: &impl Message) -> std::result::Result<Envelope, String> {
    let mut writer = None;
    let mut batch = None;
    let mut event_ms = None;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let text = header
                .value
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            match header.key {
                SHARD_HEADER => writer = Some(text.into_owned()),
                BATCH_HEADER => batch = text.parse::<u64>().ok(),
                EVENT_TIME_HEADER => {
                    event_ms = Some(
                        text.parse::<i64>()
                            .map_err(|_| format!("bad {EVENT_TIME_HEADER} header {text:?}"))?,
                    )
                }
                _ => {}
            }
        }
    }
    let (Some(writer), Some(batch)) = (writer, batch) else {
        return Err(format!(
            "not a record Weir wrote (no {SHARD_HEADER} and {BATCH_HEADER} headers): is another \
             program writing the repartition topic?"
        ));
    };
    Ok(Envelope {
        writer,
        batch,
        event_ms,
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(writer: &str, batch: u64, event_ms: i64) -> Envelope {
        Envelope {
            writer: writer.into(),
            batch,
            event_ms: Some(event_ms),
            value: Vec::new(),
        }
    }

    #[test]
    fn each_writers_batch_is_taken_once_whatever_attempts_follow() {
        let records = [
            record("a-0", 0, 10),
            record("b-0", 0, 5),
            record("a-0", 0, 10), // a retry or a replay of a-0's batch 0
            record("a-0", 1, 30),
            record("b-0", 0, 5),  // a replaced replica's late attempt
            record("a-0", 0, 10), // ... at an older batch
        ];
        let before = BTreeMap::from([("a-0".to_string(), None), ("b-0".to_string(), None)]);
        let (taken, after) = take(&records, &before, &BTreeMap::new());
        assert_eq!(taken, [0, 1, 3]);
        assert_eq!(
            after["a-0"],
            Writer {
                batch: 1,
                event_ms: Some(30)
            }
        );
        assert_eq!(
            after["b-0"],
            Writer {
                batch: 0,
                event_ms: Some(5)
            }
        );
        // The next batch: what was taken stays taken.
        let before = BTreeMap::from([("a-0".to_string(), Some(1))]);
        let (taken, _) = take(
            &[record("a-0", 1, 30), record("a-0", 2, 40)],
            &before,
            &after,
        );
        assert_eq!(taken, [1]);
    }

    #[test]
    fn the_event_time_waits_for_every_writer() {
        let writers = ["a-0".to_string(), "a-1".to_string()];
        let mut known = BTreeMap::from([(
            "a-0".to_string(),
            Writer {
                batch: 3,
                event_ms: Some(50),
            },
        )]);
        assert_eq!(least_event_time(&known, &writers), None);
        known.insert(
            "a-1".into(),
            Writer {
                batch: 0,
                event_ms: Some(20),
            },
        );
        assert_eq!(least_event_time(&known, &writers), Some(20));
        assert_eq!(least_event_time(&known, &[]), None);
    }
}
