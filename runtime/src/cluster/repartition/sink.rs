//! A source shard's output: each batch's rows, split by the partition
//! owning their key groups, written to the repartition topic.

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{BATCH_HEADER, EVENT_TIME_HEADER, MAX_RECORD_BYTES, Routing, SHARD_HEADER, encode};
use crate::error::{Result, WeirError};
use crate::retry::Retries;
use crate::sink::{CommitOutcome, Sink};
use crate::state::split_by_group;

/// How long a record may wait for the broker before the batch fails (and
/// is retried as an outage).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a source shard's batches to the repartition topic.
pub(in crate::cluster) struct RepartitionSink {
    producer: FutureProducer,
    servers: String,
    topic: String,
    routing: Routing,
    /// The stateful operator's key columns.
    key: Vec<String>,
    /// The event-time column, with a watermark.
    event_time: Option<String>,
    /// The source shard writing (`<topic>-<partition>`).
    shard: String,
    retries: Retries,
}

impl RepartitionSink {
    /// A sink for source shard `shard`, routing rows by `key` over `routing`.
    pub(in crate::cluster) fn open(
        servers: &str,
        topic: &str,
        routing: Routing,
        key: Vec<String>,
        event_time: Option<String>,
        shard: String,
    ) -> Result<RepartitionSink> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            // Retries keep a partition's records in order and once.
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set(
                "message.max.bytes",
                (MAX_RECORD_BYTES + (1 << 20)).to_string(),
            )
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(|e| WeirError::Unavailable {
                service: format!("kafka {servers}"),
                reason: format!("cannot create the repartition producer: {e}"),
            })?;
        Ok(RepartitionSink {
            producer,
            servers: servers.to_string(),
            topic: topic.to_string(),
            routing,
            key,
            event_time,
            shard,
            retries: Retries::default(),
        })
    }

    /// Batch `batch_id`'s records' partitions and values: each partition's
    /// rows, and an empty value for a partition without rows when the
    /// batch has an event time to report.
    fn records(
        &self,
        batch_id: u64,
        batches: &[RecordBatch],
        event_ms: Option<i64>,
    ) -> Result<Vec<(usize, Vec<u8>)>> {
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); self.routing.partitions()];
        for (group, rows) in split_by_group(self.routing.groups(), batches, &self.key)? {
            parts[self.routing.partition_of(group)].extend(rows);
        }
        let mut records = Vec::new();
        for (partition, rows) in parts.iter().enumerate() {
            // A partition with no rows still learns how far this shard got.
            if rows.is_empty() && event_ms.is_none() {
                continue;
            }
            let value = encode(rows)?;
            if value.len() > MAX_RECORD_BYTES {
                return Err(WeirError::Sink {
                    sink: format!("repartition topic {}", self.topic),
                    reason: format!(
                        "batch {batch_id} of shard {} holds {} bytes for partition {partition}, \
                         more than a record may ({MAX_RECORD_BYTES}); lower \
                         max_offsets_per_trigger",
                        self.shard,
                        value.len()
                    ),
                });
            }
            records.push((partition, value));
        }
        Ok(records)
    }

    async fn send(
        &self,
        batch_id: u64,
        event_ms: Option<i64>,
        records: &[(usize, Vec<u8>)],
    ) -> Result<()> {
        let batch = batch_id.to_string();
        let event = event_ms.map(|ms| ms.to_string());
        let mut deliveries = Vec::with_capacity(records.len());
        for (partition, value) in records {
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: SHARD_HEADER,
                    value: Some(self.shard.as_str()),
                })
                .insert(Header {
                    key: BATCH_HEADER,
                    value: Some(batch.as_str()),
                });
            if let Some(event) = &event {
                headers = headers.insert(Header {
                    key: EVENT_TIME_HEADER,
                    value: Some(event.as_str()),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .partition(*partition as i32)
                .key(self.shard.as_str())
                .payload(value.as_slice())
                .headers(headers);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| self.unavailable("cannot queue a record", e))?;
            deliveries.push(delivery);
        }
        for delivery in futures::future::join_all(deliveries).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(self.unavailable("a record was not delivered", e)),
                Err(_) => {
                    return Err(WeirError::Unavailable {
                        service: format!("kafka {}", self.servers),
                        reason: "the producer dropped a record".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn unavailable(&self, what: &str, e: rdkafka::error::KafkaError) -> WeirError {
        WeirError::Unavailable {
            service: format!("kafka {}", self.servers),
            reason: format!("repartition topic {}: {what}: {e}", self.topic),
        }
    }
}

#[async_trait::async_trait]
impl Sink for RepartitionSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        let rows: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let event_ms = match &self.event_time {
            Some(column) => crate::query::max_event_time(column, &rows)?,
            None => None,
        };
        let records = self.records(batch_id, &rows, event_ms)?;
        // A retry may write some records twice: state shards keep the
        // first of each (shard, batch).
        let this = &*self;
        self.retries
            .run("writing the repartition topic", || {
                this.send(batch_id, event_ms, &records)
            })
            .await?;
        Ok(CommitOutcome::Written)
    }
}
