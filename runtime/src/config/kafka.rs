//! Kafka settings.
//!
//! `[source] kind = "kafka"`: topics read as a stream, offsets recorded per
//! batch in the checkpoint (never in consumer-group commits).
//!
//! ```toml
//! [source]
//! kind = "kafka"
//! bootstrap_servers = "127.0.0.1:9092"
//! topics = ["events"]                 # or topic_pattern = "^events-.*"
//! starting_offsets = "earliest"       # earliest | latest (where a new query starts)
//! max_offsets_per_trigger = 10000     # split across partitions by backlog
//! fail_on_data_loss = true
//! format = "json"                     # parse `value` with `schema`; without it:
//! schema = [ { name = "id", type = "long" } ]   # key and value as binary columns
//! ```
//!
//! `[sink] kind = "kafka"`: each row becomes one record.
//!
//! ```toml
//! [sink]
//! kind = "kafka"
//! bootstrap_servers = "127.0.0.1:9092"
//! topic = "enriched"
//! key_column = "user"        # optional: the record key (string, binary or a number)
//! value_column = "payload"   # optional: a string/binary column as the value;
//!                            # without it the value is the whole row as JSON
//! exactly_once = true        # one transaction per batch; default false
//!                            # (idempotent producer, at-least-once)
//! ```

use arrow::datatypes::SchemaRef;
use serde::Deserialize;

/// Which topics a Kafka source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSelection {
    /// These topics.
    Topics(Vec<String>),
    /// Every topic whose name matches this regular expression, including
    /// topics created later.
    Pattern(String),
}

/// Where a query with no checkpoint yet starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartingOffsets {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// After the newest record when the query starts.
    Latest,
}

/// A checked Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// Topics to read.
    pub topics: TopicSelection,
    /// Where a new query starts.
    pub starting_offsets: StartingOffsets,
    /// At most this many records per batch, split across partitions in
    /// proportion to their backlog.
    pub max_offsets_per_trigger: Option<u64>,
    /// Whether offsets deleted by retention before they were read stop the
    /// query (true) or are skipped with a warning (false).
    pub fail_on_data_loss: bool,
    /// With `format = "json"`: the columns parsed from each record's value.
    pub value_schema: Option<SchemaRef>,
}

/// A checked Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// The topic every record goes to.
    pub topic: String,
    /// The column whose value is each record's key (records with equal
    /// keys land in one partition, in order).
    pub key_column: Option<String>,
    /// A string or binary column sent as each record's value; without it
    /// the value is the whole row as a JSON object.
    pub value_column: Option<String>,
    /// One Kafka transaction per batch, committed with the batch (true),
    /// or an idempotent producer with at-least-once delivery (false).
    pub exactly_once: bool,
}
