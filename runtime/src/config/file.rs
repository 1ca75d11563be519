//! File sources: a directory of JSON-lines, CSV or Parquet files read as a stream.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use serde::Deserialize;
use toml::Spanned;

use super::source::RawSource;
use super::{ConfigError, Resolver};
use crate::storage::Location;

/// Spark's default `maxFileAge`.
pub const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the file source does with a file once the batch that read it is
/// committed (Spark's `cleanSource`).
#[derive(Debug, Clone, PartialEq)]
pub enum CleanSource {
    /// Leave it.
    Off,
    /// Delete it.
    Delete,
    /// Move it below this directory, keeping its path inside the source.
    Archive(Location),
}

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Newline-delimited JSON.
    Json,
    /// CSV.
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// The order new files are taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOrder {
    /// Oldest modification time first, then path (Spark's order).
    #[default]
    Modified,
    /// Path order, for files named by time (`2026-11-25T12.json`, `part-0001`).
    Name,
}

/// What to do with a row that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Fail the batch, naming file, line and reason.
    #[default]
    Fail,
    /// Write the raw row and its reason to the dead-letter location and go on.
    DeadLetter,
}

/// A directory of files read as a stream.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// Directory watched for new files.
    pub path: Location,
    /// File format.
    pub format: FileFormat,
    /// Declared schema of the rows.
    pub schema: SchemaRef,
    /// The order new files are taken in.
    pub order: FileOrder,
    /// At most this many files per batch.
    pub max_files_per_trigger: Option<usize>,
    /// At most this many bytes per batch (at least one file is always taken).
    pub max_bytes_per_trigger: Option<u64>,
    /// Bad row handling.
    pub on_bad_record: BadRecordPolicy,
    /// Where bad rows go with `dead_letter`.
    pub dead_letter: Option<Location>,
    /// CSV: whether the first line is a header.
    pub csv_header: bool,
    /// CSV: field delimiter.
    pub csv_delimiter: u8,
    /// Files older than this (by modification time, relative to the newest
    /// file seen) are ignored and forgotten (Spark's `maxFileAge`, 7 days
    /// by default).
    pub max_file_age: Option<Duration>,
    /// What happens to a file once its batch is committed.
    pub clean_source: CleanSource,
    /// With `clean_source`: the inputs of the last this many committed
    /// batches are left where they are (cleaned up this many batches
    /// late), so `weir replay` can read them again. 0: cleaned at once.
    pub replay_window: u64,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawCleanSource {
    Off,
    Delete,
    Archive,
}

impl Resolver<'_> {
    pub(super) fn file_source(
        &self,
        spanned: &Spanned<RawSource>,
    ) -> Result<FileSourceConfig, ConfigError> {
        let s = spanned.get_ref();
        let kafka_only = [
            (
                "bootstrap_servers",
                s.bootstrap_servers.as_ref().map(|v| v.span()),
            ),
            ("topics", s.topics.as_ref().map(|v| v.span())),
            ("topic_pattern", s.topic_pattern.as_ref().map(|v| v.span())),
            (
                "max_offsets_per_trigger",
                s.max_offsets_per_trigger.as_ref().map(|v| v.span()),
            ),
        ];
        if let Some((key, Some(span))) = kafka_only.iter().find(|(_, sp)| sp.is_some()) {
            return Err(self.err_at(
                span.clone(),
                format!("`{key}` applies to kafka sources only"),
            ));
        }
        let (Some(path), Some(format), Some(schema)) = (&s.path, &s.format, &s.schema) else {
            return Err(self
                .err(spanned, "a file source needs `path`, `format` and `schema`")
                .hint("path = \"data/in\", format = \"json\", schema = [ { name = \"id\", type = \"long\" } ]"));
        };
        let fields = self.fields(schema)?;
        let max_files = match &s.max_files_per_trigger {
            Some(n) if *n.get_ref() < 1 => {
                return Err(self.err(n, "max_files_per_trigger must be at least 1"));
            }
            Some(n) => Some(*n.get_ref() as usize),
            None => None,
        };
        let max_bytes = match &s.max_bytes_per_trigger {
            None => None,
            Some(spanned) => Some(self.byte_count(spanned, "max_bytes_per_trigger")?),
        };
        let csv_delimiter = match &s.delimiter {
            None => b',',
            Some(d) if d.get_ref().len() == 1 => d.get_ref().as_bytes()[0],
            Some(d) => return Err(self.err(d, "delimiter must be one ASCII character")),
        };
        let dead_letter = s
            .dead_letter_path
            .as_ref()
            .map(|p| self.location(p))
            .transpose()?;
        let location = self.location(path)?;
        let max_file_age = match &s.max_file_age {
            Some(d) => Some(self.duration(d)?),
            None => Some(DEFAULT_MAX_FILE_AGE),
        };
        let clean_source = self.clean_source(spanned, &location)?;
        let replay_window = match (&s.replay_window, &clean_source) {
            (None, _) => 0,
            (Some(w), CleanSource::Off) => {
                return Err(self
                    .err(w, "`replay_window` applies with `clean_source` only")
                    .hint("without clean_source, input files stay where they are anyway"));
            }
            (Some(w), _) if *w.get_ref() >= 1 => u64::try_from(*w.get_ref()).unwrap_or(u64::MAX),
            (Some(w), _) => return Err(self.err(w, "replay_window must be at least 1")),
        };
        Ok(FileSourceConfig {
            path: location,
            format: *format.get_ref(),
            schema: Arc::new(Schema::new(fields)),
            order: s.order,
            max_files_per_trigger: max_files,
            max_bytes_per_trigger: max_bytes,
            on_bad_record: s.on_bad_record,
            dead_letter,
            csv_header: s.header.unwrap_or(true),
            csv_delimiter,
            max_file_age,
            clean_source,
            replay_window,
        })
    }

    /// `clean_source` and `source_archive_dir`: the archive must be outside
    /// the source directory, or archived files would be read again.
    pub(super) fn clean_source(
        &self,
        spanned: &Spanned<RawSource>,
        source: &Location,
    ) -> Result<CleanSource, ConfigError> {
        let s = spanned.get_ref();
        let kind = s.clean_source.as_ref().map(|k| *k.get_ref());
        match (kind, &s.source_archive_dir) {
            (None | Some(RawCleanSource::Off), None) => Ok(CleanSource::Off),
            (Some(RawCleanSource::Delete), None) => Ok(CleanSource::Delete),
            (Some(RawCleanSource::Archive), Some(dir)) => {
                let archive = self.location(dir)?;
                let inside = match (source, &archive) {
                    (Location::Local(src), Location::Local(arc)) => {
                        arc.starts_with(src) || src.starts_with(arc)
                    }
                    (Location::S3(src), Location::S3(arc)) => {
                        let below = |a: &str, b: &str| {
                            b.is_empty() || a == b || a.starts_with(&format!("{b}/"))
                        };
                        src.bucket == arc.bucket
                            && (below(&arc.prefix, &src.prefix) || below(&src.prefix, &arc.prefix))
                    }
                    _ => false,
                };
                if inside {
                    return Err(self
                        .err(dir, "source_archive_dir overlaps the source directory")
                        .hint(
                            "archived files would be read again: choose a directory outside it",
                        ));
                }
                Ok(CleanSource::Archive(archive))
            }
            (Some(RawCleanSource::Archive), None) => Err(self
                .err(
                    spanned,
                    "clean_source = \"archive\" needs `source_archive_dir`",
                )
                .hint("source_archive_dir = \"archive/orders\"")),
            (_, Some(dir)) => Err(self.err(
                dir,
                "`source_archive_dir` applies with clean_source = \"archive\" only",
            )),
        }
    }
}
