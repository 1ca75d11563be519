//! Pipeline definitions: the TOML file a user writes, checked and resolved
//! into a [`Pipeline`].
//!
//! ```toml
//! name = "orders"
//! checkpoint = "checkpoints/orders"   # relative paths: to this file's folder
//!
//! [trigger]                            # default: back-to-back micro-batches
//! available_now = true                 # or processing_time = "30s", or once = true
//!
//! [source]
//! kind = "file"
//! path = "data/orders"
//! format = "json"                      # json (lines) | csv | parquet
//! schema = [ { name = "id", type = "long", nullable = false }, { name = "amount", type = "double" } ]
//! max_files_per_trigger = 2
//!
//! [[transform]]
//! name = "to_eur"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
//! config = { input = "amount", output = "amount_eur", multiply = 0.92 }
//!
//! [sink]
//! kind = "parquet"                     # parquet | json | console
//! path = "out/orders"
//! ```

mod confine;
mod delta;
mod error;
mod foreach_batch;
mod kafka;
mod parallel;
mod schema;
mod stateful;
mod stateful_fn;
mod static_join;
mod stream_join;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::Deserialize;
use toml::Spanned;

pub use confine::{Ceilings, Confinement, Connection, plugin_digest};
pub use delta::{DeltaOptimize, DeltaOutputConfig, DeltaOutputMode, DeltaSinkConfig, DeltaVacuum};
pub use error::ConfigError;
pub use foreach_batch::{
    DeleteMarker, ForeachBatchConfig, OutputConfig, PostgresMode, PostgresOutputConfig,
};
pub use kafka::{
    EARLIEST, KafkaSinkConfig, KafkaSourceConfig, LATEST, StartingOffsets, TopicSelection,
};
pub use parallel::{MAX_PARALLELISM, Parallelism};
pub use schema::parse_data_type;
pub use stateful::{OutputMode, WatermarkConfig};
pub use stateful_fn::{StateTimeout, StatefulFunctionConfig};
pub use static_join::{JoinHow, StaticJoinConfig};
pub use stream_join::{
    InputConfig, JoinTimeRange, StreamJoinConfig, StreamJoinKind, WatermarkPolicy,
};

use crate::operator::{DeduplicateConfig, WindowAggregateConfig};
use crate::state::BackendKind;
use crate::storage::{Location, S3Options};

/// A checked pipeline, with paths resolved.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Query name.
    pub name: String,
    /// Checkpoint location.
    pub checkpoint: Location,
    /// When batches run.
    pub trigger: Trigger,
    /// The inputs: one `[source]`, or several named `[[sources]]` (a
    /// union, or the two sides of `[join]`).
    pub inputs: Vec<InputConfig>,
    /// How the query's watermark follows several inputs' watermarks.
    pub multiple_watermark_policy: WatermarkPolicy,
    /// Spark's `spark.sql.streaming.statefulOperator.allowMultiple` (on by
    /// default): stateful operators judge late rows by the previous batch's
    /// watermark. Off, they judge them by the current batch's, as Spark
    /// before 3.4 did.
    pub stateful_operator_allow_multiple: bool,
    /// A stream-stream join of the two inputs, before the transforms.
    pub stream_join: Option<StreamJoinConfig>,
    /// Plugin stages, in order.
    pub transforms: Vec<TransformConfig>,
    /// Event-time watermark of a single `[source]`, if declared (with
    /// `[[sources]]`, each input has its own: [`InputConfig::watermark`]).
    pub watermark: Option<WatermarkConfig>,
    /// Windowed aggregation after the plugin stages (and the
    /// deduplication, if both are declared), if declared.
    pub aggregate: Option<WindowAggregateConfig>,
    /// `[aggregate.then]`: a window aggregation over the windows
    /// [`Pipeline::aggregate`] emits, by their `window_time`, if declared.
    pub then_aggregate: Option<WindowAggregateConfig>,
    /// Deduplication after the plugin stages, if declared: the first
    /// stateful operator.
    pub deduplicate: Option<DeduplicateConfig>,
    /// A Wasm stateful function after the plugin stages, if declared.
    pub stateful: Option<StatefulFunctionConfig>,
    /// A join of every batch with a table read from files, after the
    /// transforms and before any stateful operator.
    pub static_join: Option<StaticJoinConfig>,
    /// Where operator state is kept while running.
    pub state_store: BackendKind,
    /// Tasks per stateful operator and the query's key groups.
    pub parallelism: Parallelism,
    /// How much checkpoint history is kept, and how often logs are compacted.
    pub retention: Retention,
    /// The output.
    pub sink: SinkConfig,
}

/// `[retention]`: how long a query's logs stay bounded (Spark's
/// `minBatchesToRetain` and the metadata logs' `compactInterval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The checkpoint keeps the last this many batches' entries and the
    /// state files that restore any of them; older ones are deleted.
    pub min_batches_to_retain: u64,
    /// Every this many batches the file source's seen-files log and the
    /// file sinks' logs are summarised in an `N.compact` entry (and old
    /// entries deleted).
    pub compact_interval: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            min_batches_to_retain: 100,
            compact_interval: 10,
        }
    }
}

impl Retention {
    /// Whether batch `batch` ends a compaction interval.
    pub fn compacts_at(&self, batch: u64) -> bool {
        (batch + 1).is_multiple_of(self.compact_interval)
    }
}

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

/// When micro-batches run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Next batch as soon as the previous one finishes (Spark's default).
    BackToBack,
    /// A batch every interval; when a batch overruns, the next starts at once.
    ProcessingTime(Duration),
    /// Process everything present at start, in capped batches, then stop.
    AvailableNow,
    /// Process everything present at start in one batch, then stop
    /// (deprecated in Spark in favour of `available_now`).
    Once,
    /// Rows flow through as they arrive, in small batches with no
    /// per-batch checkpoint; progress is checkpointed every interval (an
    /// epoch). At-least-once: after a crash, rows since the last epoch are
    /// processed again. Stateless pipelines only, as in Spark.
    Continuous(Duration),
}

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

/// Sandbox limits of one plugin stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Longest a single call may run before it is interrupted.
    pub timeout: Duration,
    /// Most linear memory an instance may grow to, in bytes.
    pub memory_bytes: u64,
    /// Most output one call may return, in bytes of Arrow memory.
    pub output_bytes: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            output_bytes: 256 << 20,
        }
    }
}

/// A plugin stage.
#[derive(Debug, Clone)]
pub struct TransformConfig {
    /// Stage name, used in errors and progress.
    pub name: String,
    /// The component file.
    pub plugin: PathBuf,
    /// The stage's `config` table as JSON, handed to the plugin's `init`.
    pub config_json: String,
    /// Time and memory limits.
    pub limits: PluginLimits,
    /// What happens when a version swapped in fails its first batch.
    pub on_swap_failure: SwapFailure,
    /// What happens when a call fails on some rows (`on_error`).
    pub on_error: OnError,
}

/// What a transform stage does when its plugin traps (or runs out of time
/// or memory) or returns an `input` error on a batch (`on_error`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnError {
    /// Fail the query; the batch is replayed on restart.
    #[default]
    Fail,
    /// Find the rows the call fails on by bisecting the batch, write them
    /// to the dead-letter location and run the rest.
    Quarantine(Quarantine),
}

/// Where a quarantining stage sets rows aside, and how many it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The dead-letter location (`dead_letter_path`; the checkpoint's
    /// `dead_letter/` by default).
    pub dead_letter: Option<Location>,
    /// More quarantined rows than this in one batch fail the query: the
    /// plugin is failing everything (`max_quarantined_rows_per_batch`).
    pub max_rows_per_batch: usize,
}

/// Default of `max_quarantined_rows_per_batch`.
pub const DEFAULT_MAX_QUARANTINED_ROWS: usize = 100;

/// What a stage does when a plugin version swapped into it while running
/// fails its first batch (`on_swap_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapFailure {
    /// Go back to the version before and run the batch with it.
    #[default]
    Rollback,
    /// Fail the query.
    Fail,
}

/// Output kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Exactly-once Parquet files.
    Parquet,
    /// Exactly-once newline-delimited JSON files.
    Json,
    /// Rows printed to standard output (at-least-once).
    Console,
    /// A Wasm plugin writing each batch through host outputs (foreachBatch).
    #[serde(rename = "foreach_batch")]
    ForeachBatch,
    /// Records in a Kafka topic (exactly-once with `exactly_once = true`).
    Kafka,
    /// A Delta Lake table (exactly-once: one commit per batch, with the
    /// batch id as its application transaction).
    Delta,
}

impl SinkKind {
    /// Whether the sink writes files with a `_weir_log` (Parquet, JSON).
    pub fn is_file(self) -> bool {
        matches!(self, SinkKind::Parquet | SinkKind::Json)
    }
}

/// The output.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Kind of sink.
    pub kind: SinkKind,
    /// Output directory for file sinks.
    pub path: Option<Location>,
    /// What each batch emits.
    pub output_mode: OutputMode,
    /// Console sink: print JSON lines instead of a table.
    pub console_json: bool,
    /// The plugin and outputs of a `foreach_batch` sink.
    pub foreach_batch: Option<ForeachBatchConfig>,
    /// The settings of a `kafka` sink.
    pub kafka: Option<KafkaSinkConfig>,
    /// The settings of a `delta` sink (its table is at `path`).
    pub delta: Option<DeltaSinkConfig>,
    /// Parquet and JSON sinks: the rows of consecutive batches are rolled
    /// into files of about this size at each compaction.
    pub target_file_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    checkpoint: Spanned<String>,
    #[serde(default)]
    trigger: Option<Spanned<RawTrigger>>,
    source: Option<Spanned<RawSource>>,
    sources: Option<Spanned<Vec<Spanned<RawSource>>>>,
    multiple_watermark_policy: Option<WatermarkPolicy>,
    stateful_operator_allow_multiple: Option<Spanned<bool>>,
    join: Option<Spanned<stream_join::RawStreamJoin>>,
    #[serde(default)]
    transform: Vec<Spanned<RawTransform>>,
    watermark: Option<Spanned<stateful::RawWatermark>>,
    aggregate: Option<Spanned<stateful::RawAggregate>>,
    drop_duplicates_within_watermark: Option<Spanned<Vec<String>>>,
    drop_duplicates: Option<Spanned<Vec<String>>>,
    stateful: Option<Spanned<stateful_fn::RawStateful>>,
    static_join: Option<Spanned<RawStaticJoin>>,
    s3: Option<Spanned<RawS3>>,
    state_store: Option<BackendKind>,
    parallelism: Option<Spanned<i64>>,
    key_groups: Option<Spanned<i64>>,
    retention: Option<Spanned<RawRetention>>,
    sink: Spanned<RawSink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    min_batches_to_retain: Option<Spanned<i64>>,
    compact_interval: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawCleanSource {
    Off,
    Delete,
    Archive,
}

/// `[s3]`: settings for every `s3://` location of the pipeline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    access_key_id: Option<Spanned<String>>,
    secret_access_key: Option<Spanned<String>>,
    allow_http: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    processing_time: Option<Spanned<String>>,
    continuous: Option<Spanned<String>>,
    available_now: Option<bool>,
    once: Option<bool>,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    File,
    Kafka,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Spanned<SourceKind>,
    // [[sources]] only:
    name: Option<Spanned<String>>,
    watermark: Option<Spanned<stateful::RawWatermark>>,
    path: Option<Spanned<String>>,
    format: Option<Spanned<FileFormat>>,
    schema: Option<Spanned<Vec<Spanned<RawField>>>>,
    // kafka only:
    bootstrap_servers: Option<Spanned<String>>,
    topics: Option<Spanned<Vec<String>>>,
    topic_pattern: Option<Spanned<String>>,
    starting_offsets: Option<Spanned<RawStartingOffsets>>,
    max_offsets_per_trigger: Option<Spanned<i64>>,
    fail_on_data_loss: Option<bool>,
    #[serde(default)]
    order: FileOrder,
    max_files_per_trigger: Option<Spanned<i64>>,
    max_bytes_per_trigger: Option<Spanned<ByteCount>>,
    #[serde(default)]
    on_bad_record: BadRecordPolicy,
    dead_letter_path: Option<Spanned<String>>,
    header: Option<bool>,
    delimiter: Option<Spanned<String>>,
    max_file_age: Option<Spanned<String>>,
    clean_source: Option<Spanned<RawCleanSource>>,
    source_archive_dir: Option<Spanned<String>>,
    replay_window: Option<Spanned<i64>>,
}

/// `"earliest"`, `"latest"`, or `{ topic = { "partition" = offset } }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawStartingOffsets {
    Named(String),
    PerPartition(std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticJoin {
    on: Spanned<Vec<String>>,
    #[serde(default)]
    how: JoinHow,
    refresh: Option<Spanned<String>>,
    table: Spanned<RawSource>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteCount {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    data_type: Spanned<String>,
    #[serde(default = "yes")]
    nullable: bool,
}

fn field_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes() -> bool {
    true
}

/// The first of the keys that go with quarantine that is set: where, and
/// its name.
fn first_quarantine_key(
    on_error: Option<&Spanned<String>>,
    max_rows: Option<&Spanned<i64>>,
    dead_letter_path: Option<&Spanned<String>>,
) -> Option<(std::ops::Range<usize>, &'static str)> {
    on_error
        .map(|k| (k.span(), "on_error"))
        .or(max_rows.map(|k| (k.span(), "max_quarantined_rows_per_batch")))
        .or(dead_letter_path.map(|k| (k.span(), "dead_letter_path")))
}

/// The keys of a plugin stage that say what a failing call does.
pub(super) struct QuarantineKeys<'a> {
    pub name: &'a Spanned<String>,
    pub on_error: Option<&'a Spanned<String>>,
    pub max_quarantined_rows_per_batch: Option<&'a Spanned<i64>>,
    pub dead_letter_path: Option<&'a Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    name: Spanned<String>,
    plugin: Spanned<String>,
    on_swap_failure: Option<SwapFailure>,
    on_error: Option<Spanned<String>>,
    max_quarantined_rows_per_batch: Option<Spanned<i64>>,
    dead_letter_path: Option<Spanned<String>>,
    #[serde(default)]
    config: toml::Table,
    timeout: Option<Spanned<String>>,
    memory_limit: Option<Spanned<ByteCount>>,
    output_limit: Option<Spanned<ByteCount>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: Spanned<SinkKind>,
    path: Option<Spanned<String>>,
    output_mode: Option<Spanned<OutputMode>>,
    format: Option<Spanned<String>>,
    // foreach_batch only:
    name: Option<Spanned<String>>,
    plugin: Option<Spanned<String>>,
    config: Option<toml::Table>,
    timeout: Option<Spanned<String>>,
    memory_limit: Option<Spanned<ByteCount>>,
    outputs: Option<Spanned<std::collections::BTreeMap<String, Spanned<foreach_batch::RawOutput>>>>,
    on_error: Option<Spanned<String>>,
    max_quarantined_rows_per_batch: Option<Spanned<i64>>,
    dead_letter_path: Option<Spanned<String>>,
    // kafka only:
    bootstrap_servers: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    key_column: Option<Spanned<String>>,
    value_column: Option<Spanned<String>>,
    exactly_once: Option<Spanned<bool>>,
    // delta only:
    merge_schema: Option<Spanned<bool>>,
    partition_by: Option<Spanned<Vec<String>>>,
    optimize_every: Option<Spanned<i64>>,
    target_file_size: Option<Spanned<ByteCount>>,
    vacuum_every: Option<Spanned<i64>>,
    vacuum_retention: Option<Spanned<String>>,
}

impl Pipeline {
    /// Reads and checks a pipeline file. Relative paths in it are resolved
    /// against the file's folder; `${VAR}` in paths expands environment variables.
    pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("cannot read the pipeline file: {e}"),
            hint: None,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Pipeline::parse(&text, &file, base)
    }

    /// Parses pipeline TOML `text` (named `file` in errors), resolving
    /// relative paths against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Pipeline, ConfigError> {
        Pipeline::parse_with(text, file, base, None)
    }

    /// Parses a tenant's pipeline `text` for `weir serve`: `base` is its
    /// query directory, and everything it names must stay inside what
    /// `confinement` grants (see [`Confinement`]).
    pub fn parse_confined(
        text: &str,
        file: &str,
        base: &Path,
        confinement: &Confinement,
    ) -> Result<Pipeline, ConfigError> {
        Pipeline::parse_with(text, file, base, Some(confinement))
    }

    fn parse_with(
        text: &str,
        file: &str,
        base: &Path,
        confine: Option<&Confinement>,
    ) -> Result<Pipeline, ConfigError> {
        let raw: RawPipeline = toml::from_str(text).map_err(|e| {
            ConfigError::at(file, text, e.span(), e.message()).hint(
                "see the pipeline reference in the README; unknown keys are refused so typos \
                 cannot pass silently",
            )
        })?;
        let mut resolver = Resolver {
            file,
            text,
            base,
            s3: S3Options::default(),
            confine,
        };
        if let Some(s3) = &raw.s3 {
            resolver.s3 = resolver.s3_options(s3.get_ref())?;
        }
        resolver.pipeline(raw)
    }
}

struct Resolver<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    /// `[s3]` settings for `s3://` locations (unset: the environment's).
    s3: S3Options,
    /// Set for a tenant's pipeline in `weir serve`.
    confine: Option<&'a Confinement>,
}

impl Resolver<'_> {
    fn err<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.err_at(spanned.span(), message)
    }

    fn err_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.text, Some(span), message)
    }

    fn pipeline(&self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self
                .err(&raw.name, format!("invalid query name {name:?}"))
                .hint("use letters, digits, `_` and `-`"));
        }
        let mut names = std::collections::HashSet::new();
        let mut transforms = Vec::new();
        for t in &raw.transform {
            let t = t.get_ref();
            if !names.insert(t.name.get_ref().clone()) {
                return Err(self
                    .err(
                        &t.name,
                        format!("duplicate stage name `{}`", t.name.get_ref()),
                    )
                    .hint("each [[transform]] needs its own name"));
            }
            transforms.push(self.transform(t)?);
        }
        let sink = self.sink(&raw.sink)?;
        let watermark = raw
            .watermark
            .as_ref()
            .map(|w| self.watermark(w.get_ref()))
            .transpose()?;
        let aggregate = raw
            .aggregate
            .as_ref()
            .map(|a| self.aggregate(a, sink.output_mode))
            .transpose()?;
        let default_mode = Spanned::new(raw.sink.span(), OutputMode::Append);
        let mode = raw
            .sink
            .get_ref()
            .output_mode
            .as_ref()
            .unwrap_or(&default_mode);
        let inputs = self.inputs(&raw, watermark.as_ref())?;
        // The [watermark], or each of the [[sources]]' (a join's output and
        // a union carry all their columns).
        let input_watermarks: Vec<&WatermarkConfig> =
            inputs.iter().filter_map(|i| i.watermark.as_ref()).collect();
        let watermarked: Vec<String> = input_watermarks.iter().map(|w| w.column.clone()).collect();
        self.check_output_mode(
            mode,
            sink.kind,
            raw.aggregate.as_ref().zip(aggregate.as_ref()),
            &watermarked,
        )?;
        let then_aggregate = match raw.aggregate.as_ref().zip(aggregate.as_ref()) {
            Some((raw_aggregate, first)) => self.then_aggregate(raw_aggregate, first, mode)?,
            None => None,
        };
        let deduplicate = self.deduplicate(
            raw.drop_duplicates_within_watermark.as_ref(),
            raw.drop_duplicates.as_ref(),
            &input_watermarks,
        )?;
        let retention = self.retention(raw.retention.as_ref())?;
        self.check_replay_windows(&raw, &inputs, retention)?;
        let stream_join = raw
            .join
            .as_ref()
            .map(|j| self.stream_join(j, &inputs, *mode.get_ref()))
            .transpose()?;
        if inputs.len() > 1
            && let Some(table) = &raw.static_join
        {
            return Err(self
                .err(
                    table,
                    "a static join after several [[sources]] is not supported yet",
                )
                .hint("write the union or join to a sink and read it in a second query"));
        }
        if let Some(function) = &raw.stateful
            && (aggregate.is_some() || deduplicate.is_some())
        {
            return Err(self
                .err(
                    function,
                    "a [stateful] function runs as the query's only stateful operator for now",
                )
                .hint(
                    "nothing can follow it anyway (its rows follow no watermark, as Spark's \
                     flatMapGroupsWithState); deduplicate or aggregate in another query",
                ));
        }
        let chained = [
            raw.join.is_some(),
            deduplicate.is_some(),
            aggregate.is_some(),
            then_aggregate.is_some(),
            raw.stateful.is_some(),
        ]
        .into_iter()
        .filter(|present| *present)
        .count()
            > 1;
        if chained
            && let Some(off) = &raw.stateful_operator_allow_multiple
            && !off.get_ref()
        {
            return Err(self
                .err(
                    off,
                    "several stateful operators in a query need stateful_operator_allow_multiple",
                )
                .hint(
                    "without it every operator judges late rows by the query's watermark, and \
                     rows an operator emits late would be dropped by the next (Spark refuses \
                     such queries too)",
                ));
        }
        let stateful = raw
            .stateful
            .as_ref()
            .map(|s| self.stateful_function(s, input_watermarks.first().copied(), *mode.get_ref()))
            .transpose()?;
        if let Some(s) = &stateful
            && !names.insert(s.stage.name.clone())
        {
            return Err(self
                .err(
                    raw.stateful.as_ref().expect("resolved above"),
                    format!("duplicate stage name `{}`", s.stage.name),
                )
                .hint("the [stateful] stage needs a name no [[transform]] has"));
        }
        if let Some(f) = &sink.foreach_batch
            && !names.insert(f.stage.name.clone())
        {
            let name = raw
                .sink
                .get_ref()
                .name
                .as_ref()
                .expect("a foreach_batch sink has a name");
            return Err(self
                .err(name, format!("duplicate stage name `{}`", f.stage.name))
                .hint("the foreach_batch sink needs a name no other stage has"));
        }
        let trigger = self.trigger(raw.trigger.as_ref())?;
        if let (Trigger::Continuous(_), Some(spanned)) = (&trigger, &raw.trigger) {
            self.check_continuous(spanned, &raw, &sink, inputs.len())?;
        }
        Ok(Pipeline {
            name,
            checkpoint: self.location(&raw.checkpoint)?,
            trigger,
            inputs,
            multiple_watermark_policy: raw.multiple_watermark_policy.unwrap_or_default(),
            stateful_operator_allow_multiple: raw
                .stateful_operator_allow_multiple
                .as_ref()
                .is_none_or(|on| *on.get_ref()),
            stream_join,
            transforms,
            watermark,
            aggregate,
            then_aggregate,
            deduplicate,
            stateful,
            static_join: raw
                .static_join
                .as_ref()
                .map(|j| self.static_join(j))
                .transpose()?,
            state_store: raw.state_store.unwrap_or_default(),
            parallelism: self.parallelism(raw.parallelism.as_ref(), raw.key_groups.as_ref())?,
            retention,
            sink,
        })
    }

    /// A source leaving a batch's inputs in place cleans them up from the
    /// batch's entry in the source log, which must still be there.
    fn check_replay_windows(
        &self,
        raw: &RawPipeline,
        inputs: &[InputConfig],
        retention: Retention,
    ) -> Result<(), ConfigError> {
        let raw_sources = raw
            .source
            .iter()
            .chain(raw.sources.iter().flat_map(|list| list.get_ref()));
        for (input, raw_source) in inputs.iter().zip(raw_sources) {
            if let Some(w) = &raw_source.get_ref().replay_window
                && input.source.replay_window() >= retention.min_batches_to_retain
            {
                return Err(self
                    .err(
                        w,
                        format!(
                            "replay_window must be below min_batches_to_retain ({})",
                            retention.min_batches_to_retain
                        ),
                    )
                    .hint("the checkpoint must still list a batch's inputs to clean them up"));
            }
        }
        Ok(())
    }

    fn retention(&self, raw: Option<&Spanned<RawRetention>>) -> Result<Retention, ConfigError> {
        let mut retention = Retention::default();
        let Some(raw) = raw else {
            return Ok(retention);
        };
        let raw = raw.get_ref();
        let positive = |v: &Spanned<i64>, key: &str| {
            u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| self.err(v, format!("{key} must be at least 1")))
        };
        if let Some(v) = &raw.min_batches_to_retain {
            retention.min_batches_to_retain = positive(v, "min_batches_to_retain")?;
        }
        if let Some(v) = &raw.compact_interval {
            retention.compact_interval = positive(v, "compact_interval")?;
            if retention.compact_interval > retention.min_batches_to_retain {
                return Err(self
                    .err(v, "compact_interval cannot exceed min_batches_to_retain")
                    .hint(
                        "a compaction must cover every batch retention deletes; \
                         lower compact_interval or raise min_batches_to_retain",
                    ));
            }
        }
        Ok(retention)
    }

    fn static_join(
        &self,
        spanned: &Spanned<RawStaticJoin>,
    ) -> Result<StaticJoinConfig, ConfigError> {
        let raw = spanned.get_ref();
        if *raw.table.get_ref().kind.get_ref() != SourceKind::File {
            return Err(self
                .err(&raw.table, "a static join reads its table from files")
                .hint("kind = \"file\" with path, format and schema"));
        }
        let table = self.file_source(&raw.table)?;
        if raw.on.get_ref().is_empty() {
            return Err(self.err(&raw.on, "a static join needs at least one key in `on`"));
        }
        for key in raw.on.get_ref() {
            if table.schema.field_with_name(key).is_err() {
                return Err(self
                    .err(
                        &raw.on,
                        format!("join key `{key}` is not a column of the table"),
                    )
                    .hint(format!("table columns: {}", field_names(&table.schema))));
            }
        }
        Ok(StaticJoinConfig {
            table,
            on: raw.on.get_ref().clone(),
            how: raw.how,
            refresh: raw.refresh.as_ref().map(|r| self.duration(r)).transpose()?,
        })
    }

    /// Spark's rule for continuous processing: only map-like stages (here
    /// Wasm transforms) between a file or Kafka source and a file, console
    /// or at-least-once Kafka sink.
    fn check_continuous(
        &self,
        trigger: &Spanned<RawTrigger>,
        raw: &RawPipeline,
        sink: &SinkConfig,
        inputs: usize,
    ) -> Result<(), ConfigError> {
        let stateful = [
            ("[aggregate]", raw.aggregate.as_ref().map(|a| a.span())),
            ("[stateful]", raw.stateful.as_ref().map(|a| a.span())),
            ("[static_join]", raw.static_join.as_ref().map(|a| a.span())),
            ("[join]", raw.join.as_ref().map(|a| a.span())),
            (
                "drop_duplicates",
                raw.drop_duplicates.as_ref().map(|a| a.span()),
            ),
            (
                "drop_duplicates_within_watermark",
                raw.drop_duplicates_within_watermark
                    .as_ref()
                    .map(|a| a.span()),
            ),
        ];
        if let Some((what, span)) = stateful
            .into_iter()
            .find_map(|(what, span)| span.map(|s| (what, s)))
        {
            return Err(self
                .err_at(
                    span,
                    format!(
                        "the continuous trigger runs stateless pipelines only (as in Spark); \
                         {what} keeps state"
                    ),
                )
                .hint("use a processing_time trigger for this pipeline"));
        }
        if inputs > 1 {
            return Err(self.err(trigger, "the continuous trigger reads one [source]"));
        }
        let refused = match (&sink.kind, &sink.kafka) {
            (SinkKind::ForeachBatch, _) => Some("a foreach_batch sink works per micro-batch"),
            (SinkKind::Delta, _) => Some("a delta sink commits once per micro-batch"),
            (_, Some(kafka)) if kafka.exactly_once => Some(
                "a continuous query is at-least-once; a Kafka sink with exactly_once = true \
                 needs micro-batches",
            ),
            _ => None,
        };
        if let Some(reason) = refused {
            return Err(self
                .err(
                    &raw.sink,
                    format!("the continuous trigger cannot use this sink: {reason}"),
                )
                .hint("use a file, console or Kafka (exactly_once = false) sink"));
        }
        Ok(())
    }

    fn trigger(&self, raw: Option<&Spanned<RawTrigger>>) -> Result<Trigger, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(Trigger::BackToBack);
        };
        let t = spanned.get_ref();
        let mut chosen = Vec::new();
        if let Some(interval) = &t.processing_time {
            let d = humantime::parse_duration(interval.get_ref()).map_err(|e| {
                self.err(
                    interval,
                    format!("invalid duration {:?}: {e}", interval.get_ref()),
                )
                .hint("write e.g. \"500ms\", \"30s\", \"5m\" or \"1h\"")
            })?;
            chosen.push(Trigger::ProcessingTime(d));
        }
        if let Some(interval) = &t.continuous {
            chosen.push(Trigger::Continuous(self.duration(interval)?));
        }
        if t.available_now == Some(true) {
            chosen.push(Trigger::AvailableNow);
        }
        if t.once == Some(true) {
            chosen.push(Trigger::Once);
        }
        match chosen.len() {
            0 => Ok(Trigger::BackToBack),
            1 => Ok(chosen.remove(0)),
            _ => Err(self
                .err(spanned, "a query has one trigger, but several are set")
                .hint("keep one of processing_time, continuous, available_now, once")),
        }
    }

    fn source(&self, spanned: &Spanned<RawSource>) -> Result<SourceConfig, ConfigError> {
        let s = spanned.get_ref();
        match s.kind.get_ref() {
            SourceKind::File => self
                .file_source(spanned)
                .map(|f| SourceConfig::File(Box::new(f))),
            SourceKind::Kafka => self.kafka_source(spanned).map(SourceConfig::Kafka),
        }
    }

    fn kafka_source(&self, spanned: &Spanned<RawSource>) -> Result<KafkaSourceConfig, ConfigError> {
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
        })
    }

    fn starting_offsets(
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
        let mut offsets = std::collections::BTreeMap::new();
        for (topic, partitions) in per_topic {
            if let TopicSelection::Topics(names) = topics
                && !names.contains(topic)
            {
                return Err(self.err(
                    raw,
                    format!("starting_offsets names topic {topic:?}, which `topics` does not list"),
                ));
            }
            let mut parsed = std::collections::BTreeMap::new();
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

    fn fields(&self, schema: &Spanned<Vec<Spanned<RawField>>>) -> Result<Vec<Field>, ConfigError> {
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

    fn file_source(&self, spanned: &Spanned<RawSource>) -> Result<FileSourceConfig, ConfigError> {
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
    fn clean_source(
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

    fn duration(&self, raw: &Spanned<String>) -> Result<Duration, ConfigError> {
        humantime::parse_duration(raw.get_ref())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                self.err(raw, format!("invalid duration {:?}", raw.get_ref()))
                    .hint("a positive duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"")
            })
    }

    fn byte_count(&self, spanned: &Spanned<ByteCount>, key: &str) -> Result<u64, ConfigError> {
        let bytes = match spanned.get_ref() {
            ByteCount::Bytes(n) if *n >= 1 => Some(*n as u64),
            ByteCount::Bytes(_) => None,
            ByteCount::Text(t) => t.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
        };
        bytes.filter(|b| *b > 0).ok_or_else(|| {
            self.err(spanned, format!("invalid {key}"))
                .hint("a positive number of bytes, or a size such as \"64MiB\"")
        })
    }

    fn transform(&self, t: &RawTransform) -> Result<TransformConfig, ConfigError> {
        let mut stage = self.plugin_stage(
            &t.name,
            &t.plugin,
            &t.config,
            t.timeout.as_ref(),
            t.memory_limit.as_ref(),
        )?;
        stage.on_swap_failure = t.on_swap_failure.unwrap_or_default();
        stage.on_error = self.on_error(QuarantineKeys {
            name: &t.name,
            on_error: t.on_error.as_ref(),
            max_quarantined_rows_per_batch: t.max_quarantined_rows_per_batch.as_ref(),
            dead_letter_path: t.dead_letter_path.as_ref(),
        })?;
        if let Some(limit) = &t.output_limit {
            stage.limits.output_bytes = self.byte_count(limit, "output_limit")?;
            if let Some(confine) = self.confine {
                let ceiling = confine.ceilings.output_bytes;
                self.within_ceiling(limit, "output_limit", stage.limits.output_bytes, ceiling)?;
            }
        }
        Ok(stage)
    }

    /// The parts every plugin stage has: name, component, config, limits.
    fn plugin_stage(
        &self,
        name: &Spanned<String>,
        plugin: &Spanned<String>,
        config: &toml::Table,
        timeout: Option<&Spanned<String>>,
        memory_limit: Option<&Spanned<ByteCount>>,
    ) -> Result<TransformConfig, ConfigError> {
        let file = self.plugin_file(plugin)?;
        if !file.is_file() {
            if self.confine.is_some() {
                return Err(self
                    .err(
                        plugin,
                        "no plugin with this digest was uploaded by this tenant",
                    )
                    .hint("upload it first: `weir upload <file.wasm>`"));
            }
            return Err(self
                .err(plugin, format!("plugin file {} not found", file.display()))
                .hint("build the example plugins with `./dev plugins`, or point `plugin` at a .wasm component"));
        }
        let config_json = serde_json::to_string(config)
            .map_err(|e| self.err(name, format!("config cannot be passed as JSON: {e}")))?;
        let mut limits = PluginLimits::default();
        if let Some(ceilings) = self.confine.map(|c| c.ceilings) {
            limits.timeout = limits.timeout.min(ceilings.timeout);
            limits.memory_bytes = limits.memory_bytes.min(ceilings.memory_bytes);
            limits.output_bytes = limits.output_bytes.min(ceilings.output_bytes);
        }
        if let Some(timeout) = timeout {
            limits.timeout = self.duration(timeout)?;
            if let Some(confine) = self.confine {
                self.within_ceiling(timeout, "timeout", limits.timeout, confine.ceilings.timeout)?;
            }
        }
        if let Some(memory) = memory_limit {
            limits.memory_bytes = self.byte_count(memory, "memory_limit")?;
            if let Some(confine) = self.confine {
                let ceiling = confine.ceilings.memory_bytes;
                self.within_ceiling(memory, "memory_limit", limits.memory_bytes, ceiling)?;
            }
        }
        Ok(TransformConfig {
            name: name.get_ref().clone(),
            plugin: file,
            config_json,
            limits,
            on_swap_failure: SwapFailure::default(),
            on_error: OnError::Fail,
        })
    }

    /// A plugin stage's `on_error` and the keys that go with quarantine.
    pub(super) fn on_error(&self, t: QuarantineKeys<'_>) -> Result<OnError, ConfigError> {
        let quarantine = match &t.on_error {
            None => false,
            Some(v) if v.get_ref() == "fail" => false,
            Some(v) if v.get_ref() == "quarantine" => true,
            Some(v) => {
                return Err(self
                    .err(v, format!("invalid on_error {:?}", v.get_ref()))
                    .hint("on_error = \"fail\" (the default) or \"quarantine\""));
            }
        };
        if !quarantine {
            let stray =
                first_quarantine_key(None, t.max_quarantined_rows_per_batch, t.dead_letter_path);
            if let Some((span, key)) = stray {
                return Err(self
                    .err_at(
                        span,
                        format!("`{key}` applies with on_error = \"quarantine\" only"),
                    )
                    .hint("on_error = \"quarantine\""));
            }
            return Ok(OnError::Fail);
        }
        let name = t.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self
                .err(
                    t.name,
                    format!("invalid stage name {name:?} for a quarantining stage"),
                )
                .hint("its name names its dead-letter files: use letters, digits, `_` and `-`"));
        }
        let max_rows_per_batch = match t.max_quarantined_rows_per_batch {
            None => DEFAULT_MAX_QUARANTINED_ROWS,
            Some(n) if *n.get_ref() >= 1 => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(self.err(n, "max_quarantined_rows_per_batch must be at least 1"));
            }
        };
        let dead_letter = t.dead_letter_path.map(|p| self.location(p)).transpose()?;
        Ok(OnError::Quarantine(Quarantine {
            dead_letter,
            max_rows_per_batch,
        }))
    }

    fn sink(&self, s: &Spanned<RawSink>) -> Result<SinkConfig, ConfigError> {
        let raw = s.get_ref();
        let kind = *raw.kind.get_ref();
        let foreach_batch = if kind == SinkKind::ForeachBatch {
            Some(self.foreach_batch(
                s,
                foreach_batch::RawForeachBatch {
                    name: raw.name.as_ref(),
                    plugin: raw.plugin.as_ref(),
                    config: raw.config.as_ref(),
                    timeout: raw.timeout.as_ref(),
                    memory_limit: raw.memory_limit.as_ref(),
                    outputs: raw.outputs.as_ref(),
                    on_error: raw.on_error.as_ref(),
                    max_quarantined_rows_per_batch: raw.max_quarantined_rows_per_batch.as_ref(),
                    dead_letter_path: raw.dead_letter_path.as_ref(),
                },
            )?)
        } else {
            if let Some(plugin) = &raw.plugin {
                return Err(self
                    .err(
                        plugin,
                        "`plugin` applies to kind = \"foreach_batch\" sinks only",
                    )
                    .hint("a plugin that writes batches itself is a foreach_batch sink"));
            }
            if let Some(outputs) = &raw.outputs {
                return Err(self.err(
                    outputs,
                    "`outputs` apply to kind = \"foreach_batch\" sinks only",
                ));
            }
            let quarantine_key = first_quarantine_key(
                raw.on_error.as_ref(),
                raw.max_quarantined_rows_per_batch.as_ref(),
                raw.dead_letter_path.as_ref(),
            );
            if let Some((span, key)) = quarantine_key {
                return Err(self
                    .err_at(
                        span,
                        format!("`{key}` applies to kind = \"foreach_batch\" sinks only"),
                    )
                    .hint("a sink without a plugin has no rows a plugin fails on"));
            }
            None
        };
        let kafka = self.kafka_sink(s)?;
        let delta = self.delta_sink(s)?;
        let path = match (kind, &raw.path) {
            (SinkKind::Console | SinkKind::ForeachBatch | SinkKind::Kafka, None) => None,
            (SinkKind::Kafka, Some(p)) => {
                return Err(self
                    .err(p, "a kafka sink takes no path")
                    .hint("name the topic: topic = \"events\""));
            }
            (SinkKind::ForeachBatch, Some(p)) => {
                return Err(self
                    .err(p, "a foreach_batch sink takes no path")
                    .hint("declare where rows go as [sink.outputs.<name>] tables"));
            }
            (SinkKind::Console, Some(p)) => {
                return Err(self.err(p, "the console sink takes no path"));
            }
            (_, Some(p)) => Some(self.location(p)?),
            (_, None) => {
                return Err(self
                    .err(s, "this sink needs a `path`")
                    .hint("path = \"out/my-query\" (a directory)"));
            }
        };
        let console_json = match (&raw.format, kind) {
            (None, _) => false,
            (Some(f), SinkKind::Console) if f.get_ref() == "json" => true,
            (Some(f), SinkKind::Console) if f.get_ref() == "table" => false,
            (Some(f), _) => {
                return Err(self
                    .err(
                        f,
                        "`format` applies to the console sink only, as \"table\" or \"json\"",
                    )
                    .hint("file sinks take their format from `kind`"));
            }
        };
        Ok(SinkConfig {
            kind,
            path,
            output_mode: raw
                .output_mode
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or_default(),
            console_json,
            foreach_batch,
            kafka,
            delta,
            target_file_size: match (&raw.target_file_size, kind.is_file()) {
                (Some(size), true) => Some(self.byte_count(size, "target_file_size")?),
                _ => None,
            },
        })
    }

    fn delta_sink(&self, s: &Spanned<RawSink>) -> Result<Option<DeltaSinkConfig>, ConfigError> {
        let raw = s.get_ref();
        if *raw.kind.get_ref() != SinkKind::Delta {
            let delta_only = [
                ("merge_schema", raw.merge_schema.as_ref().map(|v| v.span())),
                ("partition_by", raw.partition_by.as_ref().map(|v| v.span())),
                (
                    "optimize_every",
                    raw.optimize_every.as_ref().map(|v| v.span()),
                ),
                (
                    "target_file_size",
                    raw.target_file_size
                        .as_ref()
                        .filter(|_| !raw.kind.get_ref().is_file())
                        .map(|v| v.span()),
                ),
                ("vacuum_every", raw.vacuum_every.as_ref().map(|v| v.span())),
                (
                    "vacuum_retention",
                    raw.vacuum_retention.as_ref().map(|v| v.span()),
                ),
            ];
            if let Some((key, Some(span))) = delta_only.into_iter().find(|(_, sp)| sp.is_some()) {
                return Err(self.err_at(
                    span,
                    format!("`{key}` applies to kind = \"delta\" sinks only"),
                ));
            }
            return Ok(None);
        }
        if !delta::DELTA_BUILT {
            return Err(self.err(
                &raw.kind,
                "this weir was built without Delta Lake support (the `delta` feature)",
            ));
        }
        let mut options =
            delta::table_options(raw.merge_schema.as_ref(), raw.partition_by.as_ref());
        let every = |v: &Spanned<i64>, key: &str| {
            u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| self.err(v, format!("{key} must be at least 1 (batches)")))
        };
        match (&raw.optimize_every, &raw.target_file_size) {
            (Some(n), size) => {
                options.optimize = Some(DeltaOptimize {
                    every: every(n, "optimize_every")?,
                    target_file_size: size
                        .as_ref()
                        .map(|s| self.byte_count(s, "target_file_size"))
                        .transpose()?,
                });
            }
            (None, Some(size)) => {
                return Err(self
                    .err(size, "`target_file_size` applies with `optimize_every`")
                    .hint("optimize_every = 100 runs OPTIMIZE after every 100th batch"));
            }
            (None, None) => {}
        }
        match (&raw.vacuum_every, &raw.vacuum_retention) {
            (Some(n), retention) => {
                let retention = match retention {
                    // Delta's default `deletedFileRetentionDuration`.
                    None => Duration::from_secs(7 * 24 * 3600),
                    Some(r) => humantime::parse_duration(r.get_ref()).map_err(|_| {
                        self.err(r, format!("invalid duration {:?}", r.get_ref()))
                            .hint("a duration such as \"7d\", \"168h\" or \"0s\"")
                    })?,
                };
                options.vacuum = Some(DeltaVacuum {
                    every: every(n, "vacuum_every")?,
                    retention,
                });
            }
            (None, Some(r)) => {
                return Err(self
                    .err(r, "`vacuum_retention` applies with `vacuum_every`")
                    .hint("vacuum_every = 100 runs VACUUM after every 100th batch"));
            }
            (None, None) => {}
        }
        Ok(Some(options))
    }

    fn kafka_sink(&self, s: &Spanned<RawSink>) -> Result<Option<KafkaSinkConfig>, ConfigError> {
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

    fn s3_options(&self, raw: &RawS3) -> Result<S3Options, ConfigError> {
        if self.confine.is_some() {
            return Err(ConfigError {
                file: self.file.to_string(),
                line: None,
                column: None,
                message: "a hosted pipeline cannot set `[s3]`: S3 is reached through a connection \
                          the operator grants (`path = \"connection:<name>/...\"`)"
                    .into(),
                hint: None,
            });
        }
        let expand = |v: &Option<Spanned<String>>| v.as_ref().map(|v| self.expand(v)).transpose();
        Ok(S3Options {
            endpoint: expand(&raw.endpoint)?,
            region: expand(&raw.region)?,
            access_key_id: expand(&raw.access_key_id)?,
            secret_access_key: expand(&raw.secret_access_key)?,
            allow_http: raw.allow_http,
        })
    }

    fn location(&self, raw: &Spanned<String>) -> Result<Location, ConfigError> {
        if let Some(confine) = self.confine {
            return self.confined_location(raw, confine);
        }
        let expanded = self.expand(raw)?;
        Location::parse_with(&expanded, self.base, Some(&self.s3)).map_err(|why| self.err(raw, why))
    }

    /// A location in a hosted pipeline: inside the query directory, or
    /// under a granted directory or S3 connection.
    fn confined_location(
        &self,
        raw: &Spanned<String>,
        confine: &Confinement,
    ) -> Result<Location, ConfigError> {
        let text = self.expand(raw)?;
        if let Some((name, rest)) = confine::connection_reference(&text) {
            let relative = confine::plain_relative(rest).map_err(|why| self.err(raw, why))?;
            return match self.connection(raw, name, confine)? {
                Connection::Directory(root) => {
                    confine::refuse_symlinks(root, &relative).map_err(|why| self.err(raw, why))?;
                    Ok(Location::Local(root.join(relative)))
                }
                Connection::S3(bucket) => {
                    let mut location = bucket.clone();
                    let below = relative.to_string_lossy();
                    if !below.is_empty() {
                        location.prefix = [location.prefix.as_str(), &below]
                            .iter()
                            .filter(|p| !p.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join("/");
                    }
                    Ok(Location::S3(location))
                }
                other => Err(self.err(
                    raw,
                    format!(
                        "connection {name:?} is a {} connection, not a directory or a bucket",
                        other.kind()
                    ),
                )),
            };
        }
        if text.contains("://") {
            return Err(self.err(
                raw,
                "a hosted pipeline names paths inside its query directory, or \
                 `connection:<name>/...` for what the operator granted; URLs are refused",
            ));
        }
        let relative = confine::plain_relative(&text).map_err(|why| self.err(raw, why))?;
        confine::refuse_symlinks(self.base, &relative).map_err(|why| self.err(raw, why))?;
        Ok(Location::Local(self.base.join(relative)))
    }

    /// A granted connection by name; the error lists the granted names
    /// (never their settings).
    fn connection<'c>(
        &self,
        raw: &Spanned<String>,
        name: &str,
        confine: &'c Confinement,
    ) -> Result<&'c Connection, ConfigError> {
        confine.connections.get(name).ok_or_else(|| {
            let granted: Vec<&str> = confine.connections.keys().map(String::as_str).collect();
            self.err(
                raw,
                format!("no connection {name:?} is granted to this tenant (granted: {granted:?})"),
            )
        })
    }

    /// An endpoint of an external system (`kafka`, `postgres`): written out
    /// in `weir run`, a granted connection in a hosted pipeline.
    fn endpoint(&self, raw: &Spanned<String>, kind: &str) -> Result<String, ConfigError> {
        let Some(confine) = self.confine else {
            return self.expand(raw);
        };
        let Some((name, "")) = confine::connection_reference(raw.get_ref()) else {
            return Err(self.err(
                raw,
                format!(
                    "a hosted pipeline reaches {kind} only through a connection the operator \
                         grants: write \"connection:<name>\""
                ),
            ));
        };
        match (self.connection(raw, name, confine)?, kind) {
            (Connection::Kafka { bootstrap_servers }, "kafka") => Ok(bootstrap_servers.clone()),
            (Connection::Postgres { url }, "postgres") => Ok(url.clone()),
            (other, _) => Err(self.err(
                raw,
                format!(
                    "connection {name:?} is a {} connection, not {kind}",
                    other.kind()
                ),
            )),
        }
    }

    /// The file of a stage's plugin: a path in `weir run`, the digest of
    /// an uploaded component in a hosted pipeline.
    fn plugin_file(&self, plugin: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        let Some(confine) = self.confine else {
            return Ok(self.base.join(self.expand(plugin)?));
        };
        let hex = plugin_digest(plugin.get_ref()).ok_or_else(|| {
            self.err(
                plugin,
                "a hosted pipeline names a plugin by the digest of an upload: \
                 plugin = \"sha256:<64 hex digits>\" (`weir upload <file.wasm>` prints it)",
            )
        })?;
        Ok(confine.plugins.join(format!("{hex}.wasm")))
    }

    /// Refuses a limit over the tenant's ceiling.
    fn within_ceiling<T, V: PartialOrd + fmt::Debug>(
        &self,
        spanned: &Spanned<T>,
        key: &str,
        value: V,
        ceiling: V,
    ) -> Result<V, ConfigError> {
        if value > ceiling {
            return Err(self.err(
                spanned,
                format!("{key} {value:?} is over this tenant's ceiling of {ceiling:?}"),
            ));
        }
        Ok(value)
    }

    /// Expands `${VAR}` from the environment (not in a hosted pipeline:
    /// the host's environment is not the tenant's).
    fn expand(&self, raw: &Spanned<String>) -> Result<String, ConfigError> {
        if self.confine.is_some() {
            if raw.get_ref().contains("${") {
                return Err(self.err(
                    raw,
                    "`${...}` is not expanded in a hosted pipeline (the host's environment is \
                     not the tenant's); write the value out or use a connection",
                ));
            }
            return Ok(raw.get_ref().clone());
        }
        expand_env(raw.get_ref()).map_err(|e| match e {
            EnvError::Unclosed => self.err(raw, "unclosed `${` in path"),
            EnvError::Unset(var) => self
                .err(raw, format!("environment variable {var} is not set"))
                .hint(format!(
                    "export {var}=... before running, or write the path out"
                )),
        })
    }
}

/// Why `${VAR}` could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// A `${` without its `}`.
    Unclosed,
    /// This variable is not set.
    Unset(String),
}

/// Expands every `${VAR}` in `raw` from this process's environment (the
/// CLI expands a pipeline's local plugin paths with it; `weir run` its paths).
pub fn expand_env(raw: &str) -> Result<String, EnvError> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(EnvError::Unclosed)?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| EnvError::Unset(var.to_string()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "q"
checkpoint = "ck"
[source]
kind = "file"
path = "in"
format = "json"
schema = [ { name = "id", type = "long" } ]
[sink]
kind = "console"
"#;

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse(text, "p.toml", Path::new("/base"))
    }

    #[test]
    fn minimal_pipeline_resolves_paths_against_the_file() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(p.trigger, Trigger::BackToBack);
        assert_eq!(p.checkpoint, Location::Local(PathBuf::from("/base/ck")));
    }

    #[test]
    fn parallelism_and_key_groups_are_bounded_with_their_place_in_the_file() {
        let p = parse(MINIMAL).unwrap().parallelism;
        assert!(p.tasks >= 1 && p.key_groups.is_none(), "{p:?}");
        let text = format!("parallelism = 4\nkey_groups = 16\n{MINIMAL}");
        let p = parse(&text).unwrap().parallelism;
        assert_eq!((p.tasks, p.key_groups), (4, Some(16)));
        for (text, line, message) in [
            ("parallelism = 0\n", 1, "parallelism must be 1 to 64"),
            ("parallelism = 65\n", 1, "parallelism must be 1 to 64"),
            ("\nkey_groups = 0\n", 2, "key_groups must be 1 to 32768"),
            ("key_groups = 40000\n", 1, "key_groups must be 1 to 32768"),
        ] {
            let e = parse(&format!("{text}{MINIMAL}")).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn retention_defaults_to_sparks_and_checks_its_values() {
        assert_eq!(parse(MINIMAL).unwrap().retention, Retention::default());
        let text =
            format!("{MINIMAL}[retention]\nmin_batches_to_retain = 20\ncompact_interval = 5\n");
        let r = parse(&text).unwrap().retention;
        assert_eq!((r.min_batches_to_retain, r.compact_interval), (20, 5));
        assert!(r.compacts_at(4) && r.compacts_at(9) && !r.compacts_at(5));
        let text = format!("{MINIMAL}[retention]\nmin_batches_to_retain = 0\n");
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.column), (Some(12), Some(25)), "{e}");
        assert!(e.message.contains("at least 1"), "{e}");
        let text =
            format!("{MINIMAL}[retention]\nmin_batches_to_retain = 5\ncompact_interval = 10\n");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("cannot exceed"), "{e}");
    }

    #[test]
    fn a_foreach_batch_sink_quarantines_and_other_sinks_refuse_the_keys() {
        // Plugin files must exist.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("t.wasm"), b"").unwrap();
        let parse = |text: &str| Pipeline::parse(text, "p.toml", dir.path());
        let sink = |body: &str| MINIMAL.replace("kind = \"console\"", body);
        let foreach = "kind = \"foreach_batch\"\nname = \"w\"\nplugin = \"w.wasm\"\n\
                       on_error = \"quarantine\"\nmax_quarantined_rows_per_batch = 5\n\
                       [sink.outputs.o]\nkind = \"json\"\npath = \"o\"";
        let p = parse(&sink(foreach)).unwrap();
        let stage = p.sink.foreach_batch.unwrap().stage;
        assert!(
            matches!(&stage.on_error, OnError::Quarantine(q) if q.max_rows_per_batch == 5),
            "{:?}",
            stage.on_error
        );
        let e = parse(&sink("kind = \"console\"\non_error = \"quarantine\"")).unwrap_err();
        assert_eq!((e.line, e.column), (Some(11), Some(12)), "{e}");
        assert!(
            e.message
                .contains("applies to kind = \"foreach_batch\" sinks only"),
            "{e}"
        );
        let transform_w = "[[transform]]\nname = \"w\"\nplugin = \"t.wasm\"\n[sink]";
        let e = parse(&sink(foreach).replace("[sink]", transform_w)).unwrap_err();
        assert!(e.message.contains("duplicate stage name `w`"), "{e}");
    }

    #[test]
    fn compaction_settings_of_sinks_are_checked_where_they_apply() {
        let sink = |body: &str| MINIMAL.replace("kind = \"console\"", body);
        let p = parse(&sink(
            "kind = \"json\"\npath = \"out\"\ntarget_file_size = \"64MiB\"",
        ))
        .unwrap();
        assert_eq!(p.sink.target_file_size, Some(64 << 20));
        let p = parse(&sink(
            "kind = \"delta\"\npath = \"t\"\noptimize_every = 50\ntarget_file_size = \"1MiB\"\n\
             vacuum_every = 100\nvacuum_retention = \"0s\"",
        ))
        .unwrap();
        let delta = p.sink.delta.unwrap();
        assert_eq!(
            delta.optimize,
            Some(DeltaOptimize {
                every: 50,
                target_file_size: Some(1 << 20)
            })
        );
        assert_eq!(
            delta.vacuum,
            Some(DeltaVacuum {
                every: 100,
                retention: Duration::ZERO
            })
        );
        for (body, message) in [
            (
                "kind = \"console\"\ntarget_file_size = \"1MiB\"",
                "delta\" sinks only",
            ),
            (
                "kind = \"delta\"\npath = \"t\"\ntarget_file_size = \"1MiB\"",
                "with `optimize_every`",
            ),
            (
                "kind = \"delta\"\npath = \"t\"\nvacuum_retention = \"1d\"",
                "with `vacuum_every`",
            ),
            (
                "kind = \"delta\"\npath = \"t\"\noptimize_every = 0",
                "at least 1",
            ),
            (
                "kind = \"json\"\npath = \"o\"\noptimize_every = 5",
                "delta\" sinks only",
            ),
        ] {
            let e = parse(&sink(body)).unwrap_err();
            assert!(e.message.contains(message), "{body}: {e}");
            assert!(e.line.is_some(), "{body}: {e}");
        }
    }

    #[test]
    fn clean_source_archive_needs_a_directory_outside_the_source() {
        let with = |extra: &str| {
            MINIMAL.replace("format = \"json\"", &format!("format = \"json\"\n{extra}"))
        };
        let p = parse(&with(
            "clean_source = \"archive\"\nsource_archive_dir = \"done\"",
        ))
        .unwrap();
        let SourceConfig::File(f) = &p.inputs[0].source else {
            panic!("a file source")
        };
        assert_eq!(
            f.clean_source,
            CleanSource::Archive(Location::Local(PathBuf::from("/base/done")))
        );
        for (extra, message) in [
            (
                "clean_source = \"archive\"\nsource_archive_dir = \"in/done\"",
                "overlaps",
            ),
            (
                "clean_source = \"archive\"\nsource_archive_dir = \".\"",
                "overlaps",
            ),
            ("clean_source = \"archive\"", "needs `source_archive_dir`"),
            ("source_archive_dir = \"done\"", "applies with clean_source"),
            ("max_file_age = \"soon\"", "invalid duration"),
        ] {
            let e = parse(&with(extra)).unwrap_err();
            assert!(e.message.contains(message), "{extra}: {e}");
            assert!(e.line.is_some(), "{extra}: {e}");
        }
        // "in2" is not inside "in".
        assert!(
            parse(&with(
                "clean_source = \"archive\"\nsource_archive_dir = \"in2\""
            ))
            .is_ok()
        );
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let text = MINIMAL.replace("format = \"json\"", "format = \"json\"\nmax_file = 3");
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.column), (Some(8), Some(1)), "{e}");
        assert!(e.message.contains("unknown field `max_file`"), "{e}");
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let text = format!("{MINIMAL}[trigger]\nprocessing_time = \"30 parsecs\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.column), (Some(12), Some(19)), "{e}");
        assert!(e.hint.unwrap().contains("30s"));
    }

    #[test]
    fn unset_and_unclosed_variables_are_named() {
        let err =
            parse(&MINIMAL.replace("path = \"in\"", "path = \"${WEIR_SURELY_UNSET_VAR}/in\""))
                .unwrap_err();
        assert!(
            err.message
                .contains("environment variable WEIR_SURELY_UNSET_VAR is not set"),
            "{err}"
        );
        assert_eq!(err.line, Some(6));
        assert_eq!(expand_env("a/${b"), Err(EnvError::Unclosed));
        assert_eq!(expand_env("plain/path"), Ok("plain/path".to_string()));
    }

    #[test]
    fn two_triggers_are_refused() {
        let text = format!("{MINIMAL}[trigger]\nonce = true\navailable_now = true\n");
        assert!(parse(&text).unwrap_err().message.contains("one trigger"));
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let text = MINIMAL.replace("type = \"long\"", "type = \"lng\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert!(e.hint.unwrap().contains("timestamp"));
    }
}
