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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use serde::Deserialize;
use toml::Spanned;

use super::sink::RawSink;
use super::source::RawSource;
use super::{ConfigError, FileFormat, Resolver, SinkKind};

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
    /// Only these partitions (a replica's shard, see `cluster`); every
    /// partition of the topics when unset.
    pub partitions: Option<BTreeSet<(String, i32)>>,
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

/// `"earliest"`, `"latest"`, or `{ topic = { "partition" = offset } }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawStartingOffsets {
    Named(String),
    PerPartition(BTreeMap<String, BTreeMap<String, i64>>),
}

impl Resolver<'_> {
    pub(super) fn kafka_source(
        &self,
        spanned: &Spanned<RawSource>,
    ) -> Result<KafkaSourceConfig, ConfigError> {
        let s = spanned.get_ref();
        let file_only = [
            ("path", s.path.as_ref().map(|v| v.span())),
            (
                "max_files_per_trigger",
                s.max_files_per_trigger.as_ref().map(|v| v.span()),
            ),
            (
                "max_bytes_per_trigger",
                s.max_bytes_per_trigger.as_ref().map(|v| v.span()),
            ),
            ("delimiter", s.delimiter.as_ref().map(|v| v.span())),
            ("max_file_age", s.max_file_age.as_ref().map(|v| v.span())),
            ("clean_source", s.clean_source.as_ref().map(|v| v.span())),
            (
                "source_archive_dir",
                s.source_archive_dir.as_ref().map(|v| v.span()),
            ),
            ("replay_window", s.replay_window.as_ref().map(|v| v.span())),
        ];
        if let Some((key, Some(span))) = file_only.iter().find(|(_, sp)| sp.is_some()) {
            return Err(self.err_at(
                span.clone(),
                format!("`{key}` applies to file sources only"),
            ));
        }
        let Some(servers) = &s.bootstrap_servers else {
            return Err(self
                .err(spanned, "a kafka source needs `bootstrap_servers`")
                .hint("bootstrap_servers = \"127.0.0.1:9092\""));
        };
        let topics = match (&s.topics, &s.topic_pattern) {
            (Some(t), None) if !t.get_ref().is_empty() => {
                TopicSelection::Topics(t.get_ref().clone())
            }
            (None, Some(p)) => {
                regex::Regex::new(p.get_ref())
                    .map_err(|e| self.err(p, format!("invalid topic_pattern: {e}")))?;
                TopicSelection::Pattern(p.get_ref().clone())
            }
            _ => {
                return Err(self
                    .err(
                        spanned,
                        "a kafka source needs one of `topics` or `topic_pattern`",
                    )
                    .hint("topics = [\"events\"]"));
            }
        };
        let max_offsets = match &s.max_offsets_per_trigger {
            Some(n) if *n.get_ref() < 1 => {
                return Err(self.err(n, "max_offsets_per_trigger must be at least 1"));
            }
            Some(n) => Some(*n.get_ref() as u64),
            None => None,
        };
        let value_schema = match (&s.format, &s.schema) {
            (None, None) => None,
            (Some(f), Some(schema)) if *f.get_ref() == FileFormat::Json => {
                Some(Arc::new(Schema::new(self.fields(schema)?)))
            }
            (Some(f), _) if *f.get_ref() != FileFormat::Json => {
                return Err(self
                    .err(f, "a kafka source parses values as `json` only")
                    .hint("format = \"json\" with a schema, or neither for binary key/value"));
            }
            _ => {
                return Err(self
                    .err(spanned, "`format = \"json\"` and `schema` go together")
                    .hint("declare both to parse values, or neither for binary key/value"));
            }
        };
        let starting_offsets = match &s.starting_offsets {
            Some(raw) => self.starting_offsets(raw, &topics)?,
            None => StartingOffsets::default(),
        };
        Ok(KafkaSourceConfig {
            bootstrap_servers: self.endpoint(servers, "kafka")?,
            topics,
            starting_offsets,
            max_offsets_per_trigger: max_offsets,
            fail_on_data_loss: s.fail_on_data_loss.unwrap_or(true),
            value_schema,
            partitions: None,
        })
    }

    pub(super) fn starting_offsets(
        &self,
        raw: &Spanned<RawStartingOffsets>,
        topics: &TopicSelection,
    ) -> Result<StartingOffsets, ConfigError> {
        let per_topic = match raw.get_ref() {
            RawStartingOffsets::Named(name) if name == "earliest" => {
                return Ok(StartingOffsets::Earliest);
            }
            RawStartingOffsets::Named(name) if name == "latest" => {
                return Ok(StartingOffsets::Latest);
            }
            RawStartingOffsets::Named(name) => {
                return Err(self
                    .err(raw, format!("unknown starting_offsets {name:?}"))
                    .hint("\"earliest\", \"latest\", or { topic = { \"0\" = 42 } }"));
            }
            RawStartingOffsets::PerPartition(per_topic) => per_topic,
        };
        let mut offsets = BTreeMap::new();
        for (topic, partitions) in per_topic {
            if let TopicSelection::Topics(names) = topics
                && !names.contains(topic)
            {
                return Err(self.err(
                    raw,
                    format!("starting_offsets names topic {topic:?}, which `topics` does not list"),
                ));
            }
            let mut parsed = BTreeMap::new();
            for (partition, offset) in partitions {
                let partition: i32 = partition.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
                    self.err(
                        raw,
                        format!("starting_offsets: {partition:?} in {topic:?} is not a partition number"),
                    )
                })?;
                if *offset < EARLIEST {
                    return Err(self
                        .err(
                            raw,
                            format!("starting_offsets: offset {offset} for {topic:?} partition {partition}"),
                        )
                        .hint("an offset, or -2 for earliest, -1 for latest"));
                }
                parsed.insert(partition, *offset);
            }
            offsets.insert(topic.clone(), parsed);
        }
        Ok(StartingOffsets::PerPartition(offsets))
    }

    pub(super) fn kafka_sink(
        &self,
        s: &Spanned<RawSink>,
    ) -> Result<Option<KafkaSinkConfig>, ConfigError> {
        let raw = s.get_ref();
        if *raw.kind.get_ref() != SinkKind::Kafka {
            let kafka_only = [
                (
                    "bootstrap_servers",
                    raw.bootstrap_servers.as_ref().map(|v| v.span()),
                ),
                ("topic", raw.topic.as_ref().map(|v| v.span())),
                ("key_column", raw.key_column.as_ref().map(|v| v.span())),
                ("value_column", raw.value_column.as_ref().map(|v| v.span())),
                ("exactly_once", raw.exactly_once.as_ref().map(|v| v.span())),
            ];
            if let Some((key, Some(span))) = kafka_only.iter().find(|(_, sp)| sp.is_some()) {
                return Err(self.err_at(
                    span.clone(),
                    format!("`{key}` applies to kind = \"kafka\" sinks only"),
                ));
            }
            return Ok(None);
        }
        let Some(servers) = &raw.bootstrap_servers else {
            return Err(self
                .err(s, "a kafka sink needs `bootstrap_servers`")
                .hint("bootstrap_servers = \"127.0.0.1:9092\""));
        };
        let Some(topic) = &raw.topic else {
            return Err(self
                .err(s, "a kafka sink needs a `topic`")
                .hint("topic = \"events\""));
        };
        if topic.get_ref().is_empty() {
            return Err(self.err(topic, "the topic name is empty"));
        }
        Ok(Some(KafkaSinkConfig {
            bootstrap_servers: self.endpoint(servers, "kafka")?,
            topic: topic.get_ref().clone(),
            key_column: raw.key_column.as_ref().map(|c| c.get_ref().clone()),
            value_column: raw.value_column.as_ref().map(|c| c.get_ref().clone()),
            exactly_once: raw.exactly_once.as_ref().is_some_and(|e| *e.get_ref()),
        }))
    }
}
