//! Kafka sink: each output row becomes one record of one topic.
//!
//! With `exactly_once = true` every batch is one Kafka transaction under a
//! stable `transactional.id` derived from the query id. In the same
//! transaction the sink commits a consumer-group offset for the sink's group
//! (`weir-<query id>`) on partition 0 of the output topic: offset `N + 1`,
//! metadata `batch=N attempt=A`. Kafka makes that offset visible only if the
//! transaction commits, so after a crash anywhere the restarted sink learns
//! which batch Kafka last committed — after `init_transactions`, which
//! fences the dead producer and aborts its open transaction — and a replay
//! of a batch Kafka already has writes nothing. `read_committed` consumers
//! then see each row once.
//!
//! Every record carries headers `weir.query`, `weir.batch` and
//! `weir.attempt`, so records of an aborted attempt can be told apart on a
//! broker that (wrongly) delivers them to `read_committed` consumers, as
//! the test broker does.
//!
//! Without `exactly_once` the producer is idempotent (no duplicates from
//! its own retries) and a replayed batch is sent again: at-least-once.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BinaryArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{CommitOutcome, Sink};
use crate::config::KafkaSinkConfig;
use crate::error::{Result, WeirError};
use crate::faults::crash_point;
use crate::retry::Retries;

/// One record: optional key, value.
type KeyValue = (Option<Vec<u8>>, Vec<u8>);

/// How long one broker request (init, commit, offset fetch) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kafka sink.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    query_id: String,
    client: Client,
    /// The last batch Kafka committed for this query, with its attempt.
    committed: Option<(u64, String)>,
    /// Names this process's attempts: `<run>-<n>`.
    run_id: String,
    attempts: u64,
    /// The checkpoint, where each attempt is named (`sinks/kafka/N`) just
    /// before its transaction commits.
    checkpoint: Arc<dyn ObjectStore>,
    retries: Retries,
}

/// A producer, and with `exactly_once` the consumer whose group carries
/// the batch marker. Replaced as a whole after an outage.
#[derive(Clone)]
struct Client {
    producer: Arc<ThreadedProducer<DeliveryTracker>>,
    marker: Option<Arc<BaseConsumer>>,
}

/// Counts records the producer failed to deliver (at-least-once mode; in a
/// transaction a failed delivery fails the commit instead).
#[derive(Default)]
struct DeliveryTracker {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    }
}

impl KafkaSink {
    /// Connects; with `exactly_once`, fences any earlier producer of this
    /// query (aborting its open transaction) and reads which batch Kafka
    /// committed last. `checkpoint` is the query's checkpoint store; broker
    /// outages are retried and recorded in `retries`.
    pub async fn open(
        config: &KafkaSinkConfig,
        query_id: &str,
        checkpoint: Arc<dyn ObjectStore>,
        retries: Retries,
    ) -> Result<KafkaSink> {
        let (client, committed) = Self::connect(config, query_id, &retries).await?;
        let mut sink = KafkaSink {
            config: config.clone(),
            query_id: query_id.to_string(),
            client,
            committed: None,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            attempts: 0,
            checkpoint,
            retries,
        };
        sink.set_committed(committed).await?;
        Ok(sink)
    }

    /// Records what Kafka committed last; on brokers that drop offset
    /// metadata, the attempt is the one named last before a commit.
    async fn set_committed(&mut self, committed: Option<(u64, String)>) -> Result<()> {
        self.committed = match committed {
            Some((batch, attempt)) if attempt.is_empty() => {
                Some((batch, self.read_attempt(batch).await?.unwrap_or_default()))
            }
            other => other,
        };
        if let Some((batch, attempt)) = &self.committed {
            tracing::info!(
                batch,
                attempt,
                topic = self.config.topic,
                "kafka sink: last committed batch"
            );
        }
        Ok(())
    }

    /// A new client (retried through outages) and the committed marker.
    async fn connect(
        config: &KafkaSinkConfig,
        query_id: &str,
        retries: &Retries,
    ) -> Result<(Client, Option<(u64, String)>)> {
        retries
            .run("connecting the Kafka sink", || {
                let (config, query_id) = (config.clone(), query_id.to_string());
                async move {
                    tokio::task::spawn_blocking(move || Self::connect_once(&config, &query_id))
                        .await
                        .map_err(|e| WeirError::Internal(format!("kafka sink task failed: {e}")))?
                }
            })
            .await
    }

    fn connect_once(
        config: &KafkaSinkConfig,
        query_id: &str,
    ) -> Result<(Client, Option<(u64, String)>)> {
        let id = format!("weir-{query_id}");
        let mut settings = ClientConfig::new();
        settings
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        if config.exactly_once {
            settings
                .set("transactional.id", &id)
                .set("transaction.timeout.ms", "60000");
        }
        let producer: ThreadedProducer<DeliveryTracker> = settings
            .create_with_context(DeliveryTracker::default())
            .map_err(|e| kafka_error(config, "cannot create the producer", e))?;
        if !config.exactly_once {
            let client = Client {
                producer: Arc::new(producer),
                marker: None,
            };
            return Ok((client, None));
        }
        producer
            .init_transactions(REQUEST_TIMEOUT)
            .map_err(|e| classify(config, "cannot start transactions (init_transactions)", e))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| kafka_error(config, "cannot create the marker consumer", e))?;
        let committed = committed_marker(&consumer, &config.topic)
            .map_err(|e| classify(config, "cannot read the committed batch marker", e))?;
        let client = Client {
            producer: Arc::new(producer),
            marker: Some(Arc::new(consumer)),
        };
        Ok((client, committed))
    }

    /// One attempt at writing `records` as batch `batch_id`.
    async fn write(&mut self, batch_id: u64, records: Arc<Vec<KeyValue>>) -> Result<()> {
        self.attempts += 1;
        let attempt = format!("{}-{}", self.run_id, self.attempts);
        let job = Arc::new(Attempt {
            config: self.config.clone(),
            query_id: self.query_id.clone(),
            client: self.client.clone(),
            batch_id,
            attempt: attempt.clone(),
        });
        let blocking = |job: Arc<Attempt>, step: fn(&Attempt) -> Result<()>| async move {
            tokio::task::spawn_blocking(move || step(&job))
                .await
                .map_err(|e| WeirError::Internal(format!("kafka sink task failed: {e}")))?
        };
        let prepare = job.clone();
        tokio::task::spawn_blocking(move || prepare.prepare(&records))
            .await
            .map_err(|e| WeirError::Internal(format!("kafka sink task failed: {e}")))??;
        if !self.config.exactly_once {
            return Ok(());
        }
        if let Err(e) = self.write_attempt(batch_id, &attempt).await {
            blocking(job, Attempt::abort).await?;
            return Err(e);
        }
        blocking(job, Attempt::commit).await?;
        self.committed = Some((batch_id, attempt));
        Ok(())
    }

    fn attempt_path(batch_id: u64) -> ObjectPath {
        ObjectPath::from(format!("sinks/kafka/{batch_id}"))
    }

    /// Names `attempt` as the one about to commit batch `batch_id`.
    async fn write_attempt(&self, batch_id: u64, attempt: &str) -> Result<()> {
        let path = Self::attempt_path(batch_id);
        self.checkpoint
            .put(&path, PutPayload::from(attempt.as_bytes().to_vec()))
            .await
            .map_err(|e| WeirError::storage(path.to_string(), e))?;
        Ok(())
    }

    async fn read_attempt(&self, batch_id: u64) -> Result<Option<String>> {
        let path = Self::attempt_path(batch_id);
        let bytes = crate::storage::get_if_exists(self.checkpoint.as_ref(), &path)
            .await
            .map_err(|e| WeirError::storage(path.to_string(), e))?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The records of one batch: (key, value) bytes per row.
    fn records(&self, batches: &[RecordBatch]) -> Result<Vec<KeyValue>> {
        let mut records = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let keys = match &self.config.key_column {
                Some(name) => Some(self.bytes_column(batch, name, "key_column")?),
                None => None,
            };
            let values = match &self.config.value_column {
                Some(name) => self.bytes_column(batch, name, "value_column")?,
                None => {
                    let lines = super::json_lines(
                        std::slice::from_ref(batch),
                        &format!("encoding rows for kafka topic {}", self.config.topic),
                    )?;
                    lines
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| Some(l.to_vec()))
                        .collect()
                }
            };
            for (row, value) in values.into_iter().enumerate() {
                let key = keys.as_ref().and_then(|k| k[row].clone());
                records.push((key, value.unwrap_or_default()));
            }
        }
        Ok(records)
    }

    /// A column as bytes per row: binary as is, anything else as its text.
    fn bytes_column(
        &self,
        batch: &RecordBatch,
        name: &str,
        setting: &str,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let column = batch.column_by_name(name).ok_or_else(|| WeirError::Sink {
            sink: format!("kafka topic {}", self.config.topic),
            reason: format!(
                "{setting} = {name:?} is not an output column (columns: {})",
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        if let Some(binary) = column.as_any().downcast_ref::<BinaryArray>() {
            return Ok(binary.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
        }
        let text: ArrayRef = cast(column, &DataType::Utf8).map_err(|e| WeirError::Sink {
            sink: format!("kafka topic {}", self.config.topic),
            reason: format!("{setting} = {name:?} cannot be sent as text: {e}"),
        })?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8 gives a StringArray");
        Ok(text
            .iter()
            .map(|v| v.map(|s| s.as_bytes().to_vec()))
            .collect())
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn commit(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<CommitOutcome> {
        if let Some((last, _)) = &self.committed
            && batch_id <= *last
        {
            return Ok(CommitOutcome::AlreadyCommitted);
        }
        let records = Arc::new(self.records(batches)?);
        let mut backoff = self.retries.backoff(&format!("writing batch {batch_id}"));
        loop {
            let Err(error) = self.write(batch_id, records.clone()).await else {
                return Ok(CommitOutcome::Written);
            };
            backoff.wait(error).await?;
            // A new producer fences the old one: its transaction is
            // aborted, or it committed, as the marker then says.
            let (client, committed) =
                Self::connect(&self.config, &self.query_id, &self.retries).await?;
            self.client = client;
            self.set_committed(committed).await?;
            if let Some((last, _)) = &self.committed
                && batch_id <= *last
            {
                return Ok(CommitOutcome::Written);
            }
        }
    }

    fn commit_token(&self, batch_id: u64) -> Option<String> {
        match &self.committed {
            Some((batch, attempt)) if *batch == batch_id => Some(attempt.clone()),
            _ => None,
        }
    }
}

/// One attempt to write a batch, run on a blocking thread.
struct Attempt {
    config: KafkaSinkConfig,
    query_id: String,
    client: Client,
    batch_id: u64,
    attempt: String,
}

impl Attempt {
    /// Sends the batch: at-least-once, delivered and done; exactly-once,
    /// inside a new transaction with the batch marker, not yet committed.
    fn prepare(&self, records: &[KeyValue]) -> Result<()> {
        let error = |what: &str, e: KafkaError| classify(&self.config, what, e);
        let batch = self.batch_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "weir.query",
                value: Some(&self.query_id),
            })
            .insert(Header {
                key: "weir.batch",
                value: Some(&batch),
            })
            .insert(Header {
                key: "weir.attempt",
                value: Some(&self.attempt),
            });
        let Some(marker) = &self.client.marker else {
            self.send_all(records, &headers)?;
            let context = self.client.producer.context();
            let failed_before = context.failed.load(Ordering::Relaxed);
            self.wait_for_delivery()?;
            if context.failed.load(Ordering::Relaxed) > failed_before {
                let last = context.last_error.lock().unwrap_or_else(|p| p.into_inner());
                return Err(WeirError::Unavailable {
                    service: format!("kafka {}", self.config.bootstrap_servers),
                    reason: format!(
                        "records of batch {} were not delivered: {}",
                        self.batch_id,
                        last.as_deref().unwrap_or("unknown error")
                    ),
                });
            }
            return Ok(());
        };
        self.client
            .producer
            .begin_transaction()
            .map_err(|e| error("cannot begin a transaction", e))?;
        crash_point("kafka-after-begin", self.batch_id);
        let result = (|| {
            self.send_all(records, &headers)?;
            // Delivered before the commit, which would otherwise flush in
            // rdkafka's 100 ms polling steps (see `wait_for_delivery`).
            self.wait_for_delivery()?;
            crash_point("kafka-after-produce", self.batch_id);
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(
                    &self.config.topic,
                    0,
                    Offset::Offset(self.batch_id as i64 + 1),
                )
                .map_err(|e| error("cannot build the batch marker", e))?;
            if let Some(mut element) = offsets.find_partition(&self.config.topic, 0) {
                element.set_metadata(format!("batch={} attempt={}", self.batch_id, self.attempt));
            }
            let group = marker.group_metadata().ok_or_else(|| {
                WeirError::Internal("the marker consumer has no group metadata".into())
            })?;
            self.client
                .producer
                .send_offsets_to_transaction(&offsets, &group, REQUEST_TIMEOUT)
                .map_err(|e| error("cannot add the batch marker to the transaction", e))?;
            crash_point("kafka-after-marker", self.batch_id);
            Ok(())
        })();
        if result.is_err() {
            self.abort()?;
        }
        result
    }

    /// Commits the prepared transaction (aborting it if that fails).
    fn commit(&self) -> Result<()> {
        crash_point("kafka-before-commit", self.batch_id);
        if let Err(e) = self.client.producer.commit_transaction(REQUEST_TIMEOUT) {
            self.abort()?;
            return Err(kafka_error(
                &self.config,
                "cannot commit the transaction",
                e,
            ));
        }
        crash_point("kafka-after-commit", self.batch_id);
        Ok(())
    }

    /// Aborts the open transaction so the producer can start another.
    fn abort(&self) -> Result<()> {
        if let Err(e) = self.client.producer.abort_transaction(REQUEST_TIMEOUT) {
            tracing::warn!(error = %e, "kafka sink: aborting the failed transaction failed");
        }
        Ok(())
    }

    /// Waits until every queued record is delivered or failed. (rdkafka's
    /// `flush` polls in steps of 100 ms, which would cost each batch 100 ms;
    /// the producer's own thread serves delivery reports as they come.)
    fn wait_for_delivery(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while self.client.producer.in_flight_count() > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(WeirError::Unavailable {
                    service: format!("kafka {}", self.config.bootstrap_servers),
                    reason: format!(
                        "records of batch {} were not delivered within {REQUEST_TIMEOUT:?}",
                        self.batch_id
                    ),
                });
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }

    /// Queues every record, waiting for room when the local queue is full.
    fn send_all(&self, records: &[KeyValue], headers: &OwnedHeaders) -> Result<()> {
        for (key, value) in records {
            let mut record = BaseRecord::to(&self.config.topic)
                .payload(value.as_slice())
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            loop {
                match self.client.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        return Err(kafka_error(&self.config, "cannot queue a record", e));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The batch marker Kafka holds for this query: `(batch, attempt)`.
fn committed_marker(
    consumer: &BaseConsumer,
    topic: &str,
) -> std::result::Result<Option<(u64, String)>, KafkaError> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    let committed = consumer.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let Some(element) = committed.find_partition(topic, 0) else {
        return Ok(None);
    };
    let Offset::Offset(next) = element.offset() else {
        return Ok(None);
    };
    let attempt = element
        .metadata()
        .split_whitespace()
        .find_map(|part| part.strip_prefix("attempt="))
        .unwrap_or("")
        .to_string();
    Ok((next > 0).then(|| (next as u64 - 1, attempt)))
}

/// An outage (worth a retry with a new producer) or a lasting error. A
/// fenced producer is lasting: another instance of this query took over.
fn classify(config: &KafkaSinkConfig, what: &str, e: KafkaError) -> WeirError {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    );
    let lasting = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTransactionTimeout
        )
    );
    if fenced || lasting {
        return kafka_error(config, what, e);
    }
    WeirError::Unavailable {
        service: format!("kafka {}", config.bootstrap_servers),
        reason: format!("{what}: {e}"),
    }
}

fn kafka_error(config: &KafkaSinkConfig, what: &str, e: KafkaError) -> WeirError {
    WeirError::Sink {
        sink: format!("kafka topic {}", config.topic),
        reason: format!("{what}: {e}"),
    }
}
