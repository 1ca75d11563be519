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
//! starting_offsets = "earliest"       # earliest | latest (where a new query starts),
//!                                     # or per partition (-2 earliest, -1 latest):
//!                                     # { events = { "0" = 1200, "1" = -2 } }
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

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartingOffsets {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// After the newest record when the query starts.
    Latest,
    /// Per topic and partition, as Spark's JSON form: an offset, or
    /// [`EARLIEST`] / [`LATEST`]. Partitions not listed (and partitions
    /// that appear later) start at the earliest offset.
    PerPartition(BTreeMap<String, BTreeMap<i32, i64>>),
}

impl StartingOffsets {
    /// Where partition `(topic, partition)` starts, given its low and high
    /// watermarks.
    pub fn resolve(&self, (topic, partition): &(String, i32), low: i64, high: i64) -> i64 {
        match self {
            StartingOffsets::Earliest => low,
            StartingOffsets::Latest => high,
            StartingOffsets::PerPartition(offsets) => {
                match offsets.get(topic).and_then(|p| p.get(partition)) {
                    None | Some(&EARLIEST) => low,
                    Some(&LATEST) => high,
                    Some(offset) => *offset,
                }
            }
        }
    }
}

/// In per-partition starting offsets: the oldest retained record.
pub const EARLIEST: i64 = -2;
/// In per-partition starting offsets: after the newest record.
pub const LATEST: i64 = -1;

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
