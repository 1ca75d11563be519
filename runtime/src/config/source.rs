//! `[source]` and `[[sources]]`: the inputs, of every kind, and their schemas.

use arrow::datatypes::Field;
use serde::Deserialize;
use toml::Spanned;

use super::file::RawCleanSource;
use super::kafka::RawStartingOffsets;
use super::schema::{self, parse_data_type};
use super::stateful::RawWatermark;
use super::{
    BadRecordPolicy, ByteCount, ConfigError, FileFormat, FileOrder, FileSourceConfig,
    KafkaSourceConfig, Resolver,
};
use crate::storage::Location;

/// The input of a query.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory of files.
    File(Box<FileSourceConfig>),
    /// Kafka topics.
    Kafka(KafkaSourceConfig),
}

impl SourceConfig {
    /// How many committed batches' inputs the source leaves in place
    /// ([`FileSourceConfig::replay_window`]).
    pub fn replay_window(&self) -> u64 {
        match self {
            SourceConfig::File(f) => f.replay_window,
            SourceConfig::Kafka(_) => 0,
        }
    }

    /// Where bad records go, if the source sets it.
    pub fn dead_letter(&self) -> Option<&Location> {
        match self {
            SourceConfig::File(f) => f.dead_letter.as_ref(),
            SourceConfig::Kafka(_) => None,
        }
    }
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(super) enum SourceKind {
    File,
    Kafka,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) kind: Spanned<SourceKind>,
    // [[sources]] only:
    pub(super) name: Option<Spanned<String>>,
    pub(super) watermark: Option<Spanned<RawWatermark>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<FileFormat>>,
    pub(super) schema: Option<Spanned<Vec<Spanned<RawField>>>>,
    // kafka only:
    pub(super) bootstrap_servers: Option<Spanned<String>>,
    pub(super) topics: Option<Spanned<Vec<String>>>,
    pub(super) topic_pattern: Option<Spanned<String>>,
    pub(super) starting_offsets: Option<Spanned<RawStartingOffsets>>,
    pub(super) max_offsets_per_trigger: Option<Spanned<i64>>,
    pub(super) fail_on_data_loss: Option<bool>,
    #[serde(default)]
    pub(super) order: FileOrder,
    pub(super) max_files_per_trigger: Option<Spanned<i64>>,
    pub(super) max_bytes_per_trigger: Option<Spanned<ByteCount>>,
    #[serde(default)]
    pub(super) on_bad_record: BadRecordPolicy,
    pub(super) dead_letter_path: Option<Spanned<String>>,
    pub(super) header: Option<bool>,
    pub(super) delimiter: Option<Spanned<String>>,
    pub(super) max_file_age: Option<Spanned<String>>,
    pub(super) clean_source: Option<Spanned<RawCleanSource>>,
    pub(super) source_archive_dir: Option<Spanned<String>>,
    pub(super) replay_window: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) data_type: Spanned<String>,
    #[serde(default = "yes")]
    pub(super) nullable: bool,
}

impl Resolver<'_> {
    pub(super) fn source(&self, spanned: &Spanned<RawSource>) -> Result<SourceConfig, ConfigError> {
        let s = spanned.get_ref();
        match s.kind.get_ref() {
            SourceKind::File => self
                .file_source(spanned)
                .map(|f| SourceConfig::File(Box::new(f))),
            SourceKind::Kafka => self.kafka_source(spanned).map(SourceConfig::Kafka),
        }
    }

    pub(super) fn fields(
        &self,
        schema: &Spanned<Vec<Spanned<RawField>>>,
    ) -> Result<Vec<Field>, ConfigError> {
        let mut fields = Vec::new();
        for f in schema.get_ref() {
            let f = f.get_ref();
            let data_type = parse_data_type(f.data_type.get_ref()).ok_or_else(|| {
                self.err(
                    &f.data_type,
                    format!("unknown column type {:?}", f.data_type.get_ref()),
                )
                .hint(format!("known types: {}", schema::KNOWN_TYPES))
            })?;
            if !weir_columnar::is_supported(&data_type) {
                return Err(self
                    .err(&f.data_type, format!("column type {data_type} cannot be passed to plugins"))
                    .hint("use a flat type: numbers, strings, binary, booleans, dates, timestamps, decimals"));
            }
            fields.push(Field::new(&f.name, data_type, f.nullable));
        }
        if fields.is_empty() {
            return Err(self
                .err(schema, "the source schema has no columns")
                .hint("declare the columns: schema = [ { name = \"id\", type = \"long\" } ]"));
        }
        Ok(fields)
    }
}

fn yes() -> bool {
    true
}
