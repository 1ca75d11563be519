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

mod cluster;
mod confine;
mod delta;
mod error;
mod file;
mod foreach_batch;
mod kafka;
mod locations;
mod parallel;
mod retention;
mod schema;
mod sink;
mod source;
mod stateful;
mod stateful_fn;
mod static_join;
mod stream_join;
mod transform;
mod trigger;

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::Schema;
use serde::Deserialize;
use toml::Spanned;

pub use cluster::ClusterConfig;
pub(crate) use cluster::is_kafka_name;
pub use confine::{Ceilings, Confinement, Connection, plugin_digest};
pub use delta::{DeltaOptimize, DeltaOutputConfig, DeltaOutputMode, DeltaSinkConfig, DeltaVacuum};
pub use error::ConfigError;
pub use file::{
    BadRecordPolicy, CleanSource, DEFAULT_MAX_FILE_AGE, FileFormat, FileOrder, FileSourceConfig,
};
pub use foreach_batch::{
    DeleteMarker, ForeachBatchConfig, OutputConfig, PostgresMode, PostgresOutputConfig,
};
pub use kafka::{
    EARLIEST, KafkaSinkConfig, KafkaSourceConfig, LATEST, StartingOffsets, TopicSelection,
};
pub use locations::{EnvError, expand_env};
pub use parallel::{MAX_PARALLELISM, PARALLELISM_ENV, Parallelism};
pub use retention::Retention;
pub use schema::parse_data_type;
pub use sink::{FileSinkConfig, SinkConfig, SinkKind, SinkTarget};
pub use source::SourceConfig;
pub use stateful::{OutputMode, WatermarkConfig};
pub use stateful_fn::{StateTimeout, StatefulFunctionConfig};
pub use static_join::{JoinHow, StaticJoinConfig};
pub use stream_join::{
    InputConfig, JoinTimeRange, StreamJoinConfig, StreamJoinKind, WatermarkPolicy,
};
pub use transform::{
    DEFAULT_MAX_QUARANTINED_ROWS, OnError, PluginLimits, Quarantine, SwapFailure, TransformConfig,
};
pub use trigger::Trigger;

use crate::operator::{DeduplicateConfig, WindowAggregateConfig};
use crate::state::BackendKind;
use crate::storage::{Location, S3Options};
use locations::RawS3;
use retention::RawRetention;
use sink::RawSink;
use source::RawSource;
use static_join::RawStaticJoin;
use transform::RawTransform;
use trigger::RawTrigger;

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
    /// `[cluster]`: the query runs on several replicas, if declared.
    pub cluster: Option<ClusterConfig>,
    /// The key groups this query's stateful operators own: all of them
    /// when unset; a replica's state shard owns one range (see `cluster`).
    pub key_group_range: Option<std::ops::Range<u16>>,
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
    cluster: Option<Spanned<cluster::RawCluster>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteCount {
    Bytes(i64),
    Text(String),
}

fn field_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
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
            sink.kind(),
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
        if let Some(f) = sink.foreach_batch()
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
        let mut pipeline = Pipeline {
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
            cluster: None,
            key_group_range: None,
        };
        if let Some(cluster) = &raw.cluster {
            if self.confine.is_some() {
                return Err(self
                    .err(
                        cluster,
                        "a [cluster] query runs as replicas, not in weir serve",
                    )
                    .hint("start it with `weir run PIPELINE.toml --replica ID` on each host"));
            }
            pipeline.cluster = Some(self.cluster(cluster, &pipeline)?);
        }
        Ok(pipeline)
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        let stage = p.sink.foreach_batch().unwrap().stage.clone();
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
        let SinkTarget::Files(files) = &p.sink.target else {
            panic!("a json sink writes files: {:?}", p.sink.target)
        };
        assert_eq!(files.target_file_size, Some(64 << 20));
        let p = parse(&sink(
            "kind = \"delta\"\npath = \"t\"\noptimize_every = 50\ntarget_file_size = \"1MiB\"\n\
             vacuum_every = 100\nvacuum_retention = \"0s\"",
        ))
        .unwrap();
        let SinkTarget::Delta { options: delta, .. } = p.sink.target else {
            panic!("a delta sink: {:?}", p.sink.target)
        };
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
