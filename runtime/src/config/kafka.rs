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
