//! The event-time and state parts of a pipeline file: `[watermark]`,
//! `[aggregate]`, the sink's `output_mode`, and their checks (with Spark's
//! reasons for the combinations it refuses).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Resolver, SinkKind};
use crate::operator::{
    AggregateFn, AggregateSpec, DeduplicateConfig, WINDOW_TIME, WindowAggregateConfig, WindowKind,
};

/// What each batch emits (Spark's `outputMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Rows that will never change: a window once the watermark passes its end.
    #[default]
    Append,
    /// Rows whose aggregate changed in this batch.
    Update,
    /// The whole result table, every batch.
    Complete,
}

/// `[watermark]`: how late event time may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// Event-time column.
    pub column: String,
    /// Allowed lateness: watermark = max event time seen − delay.
    pub delay: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatermark {
    column: String,
    delay: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    #[serde(default)]
    group_by: Vec<String>,
    window: Spanned<RawWindow>,
    aggregates: Spanned<Vec<RawAggregateSpec>>,
    /// `[aggregate.then]`: a window aggregation over this one's windows.
    then: Option<Box<Spanned<RawAggregate>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    column: String,
    tumbling: Option<Spanned<String>>,
    sliding: Option<RawSliding>,
    session: Option<RawSession>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    gap: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSliding {
    size: Spanned<String>,
    slide: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregateSpec {
    #[serde(rename = "fn")]
    function: AggregateFn,
    column: Option<String>,
    #[serde(rename = "as")]
    name: Option<String>,
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Resolver<'_> {
    pub(super) fn watermark(&self, raw: &RawWatermark) -> Result<WatermarkConfig, ConfigError> {
        Ok(WatermarkConfig {
            column: raw.column.clone(),
            delay: self.duration(&raw.delay)?,
        })
    }

    pub(super) fn aggregate(
        &self,
        raw: &Spanned<RawAggregate>,
        mode: OutputMode,
    ) -> Result<WindowAggregateConfig, ConfigError> {
        let a = raw.get_ref();
        let w = a.window.get_ref();
        let window = match (&w.tumbling, &w.sliding, &w.session) {
            (Some(size), None, None) => WindowKind::Tumbling {
                size_ms: millis(self.duration(size)?),
            },
            (None, None, Some(session)) => WindowKind::Session {
                gap_ms: millis(self.duration(&session.gap)?),
            },
            (None, Some(s), None) => {
                let (size_ms, slide_ms) = (
                    millis(self.duration(&s.size)?),
                    millis(self.duration(&s.slide)?),
                );
                if slide_ms > size_ms {
                    return Err(self
                        .err(&s.slide, "the slide is longer than the window")
                        .hint("slide <= size, e.g. size = \"10m\", slide = \"5m\""));
                }
                WindowKind::Sliding { size_ms, slide_ms }
            }
            _ => {
                return Err(self
                    .err(
                        &a.window,
                        "a window needs exactly one of `tumbling`, `sliding` or `session`",
                    )
                    .hint("window = { column = \"ts\", tumbling = \"5m\" }"));
            }
        };
        if a.aggregates.get_ref().is_empty() {
            return Err(self
                .err(&a.aggregates, "no aggregates")
                .hint("aggregates = [ { fn = \"count\" } ]"));
        }
        let mut aggregates = Vec::new();
        for spec in a.aggregates.get_ref() {
            if spec.column.is_none() && spec.function != AggregateFn::Count {
                return Err(self.err(
                    &a.aggregates,
                    format!("{:?} needs a `column`", spec.function),
                ));
            }
            let name = spec.name.clone().unwrap_or_else(|| match &spec.column {
                Some(c) => format!("{}_{c}", format!("{:?}", spec.function).to_lowercase()),
                None => "count".to_string(),
            });
            aggregates.push(AggregateSpec {
                function: spec.function,
                column: spec.column.clone(),
                name,
            });
        }
        Ok(WindowAggregateConfig {
            group_by: a.group_by.clone(),
            time_column: w.column.clone(),
            window,
            aggregates,
            output_mode: mode,
        })
    }

    /// `[aggregate.then]`, the aggregation over `first`'s windows (`raw`:
    /// the `[aggregate]` it is in), with Spark's rules for two aggregations.
    pub(super) fn then_aggregate(
        &self,
        raw: &Spanned<RawAggregate>,
        first: &WindowAggregateConfig,
        mode: &Spanned<OutputMode>,
    ) -> Result<Option<WindowAggregateConfig>, ConfigError> {
        let Some(then) = &raw.get_ref().then else {
            return Ok(None);
        };
        if let Some(nested) = &then.get_ref().then {
            return Err(self
                .err(
                    nested.as_ref(),
                    "two aggregations at most in a query for now",
                )
                .hint("aggregate the second one's output in another query"));
        }
        if *mode.get_ref() != OutputMode::Append {
            // Spark's words: its windows' rows are older than the watermark.
            return Err(self
                .err(
                    mode,
                    "Detected pattern of possible 'correctness' issue due to global watermark: \
                     an aggregation in update or complete mode emits rows older than the \
                     watermark, which the aggregation after it would drop as late",
                )
                .hint("two aggregations run in output_mode = \"append\" (as in Spark)"));
        }
        let column = &then.get_ref().window.get_ref().column;
        if column != WINDOW_TIME {
            return Err(self
                .err(
                    &then.get_ref().window,
                    format!(
                        "the second aggregation's window is over `{WINDOW_TIME}`, not `{column}`"
                    ),
                )
                .hint(
                    "window = { column = \"window_time\", tumbling = \"1h\" }: each window of the \
                     first aggregation at its last instant (Spark's window_time)",
                ));
        }
        if let Some(missing) = then.get_ref().group_by.iter().find(|c| {
            !first.group_by.contains(c)
                && !first.aggregates.iter().any(|a| &a.name == *c)
                && !["window_start", "window_end"].contains(&c.as_str())
        }) {
            return Err(self
                .err(
                    then.as_ref(),
                    format!("`{missing}` is not a column of the first aggregation's rows"),
                )
                .hint("group by its group_by columns, aggregates or window_start/window_end"));
        }
        self.aggregate(then, *mode.get_ref()).map(Some)
    }

    pub(super) fn deduplicate(
        &self,
        within: Option<&Spanned<Vec<String>>>,
        plain: Option<&Spanned<Vec<String>>>,
        watermarks: &[&WatermarkConfig],
    ) -> Result<Option<DeduplicateConfig>, ConfigError> {
        // With several inputs, the first's event time (a union's rows have
        // its columns, as Spark's union takes its first input's).
        let watermark = watermarks.first().copied();
        match (within, plain) {
            (None, None) => Ok(None),
            (Some(w), Some(_)) => Err(self.err(
                w,
                "choose one of drop_duplicates_within_watermark and drop_duplicates",
            )),
            (Some(columns), None) => {
                let Some(watermark) = watermark else {
                    return Err(self
                        .err(columns, "dropDuplicatesWithinWatermark needs a watermark")
                        .hint("add [watermark] column = \"event_time\", delay = \"30m\""));
                };
                self.key_columns(columns)?;
                Ok(Some(DeduplicateConfig {
                    columns: columns.get_ref().clone(),
                    expire_after: Some((watermark.column.clone(), millis(watermark.delay))),
                }))
            }
            (None, Some(columns)) => {
                self.key_columns(columns)?;
                // Spark: with the watermark's column among the keys, a key
                // is kept until the watermark reaches its event time.
                let expire_after = watermarks
                    .iter()
                    .find(|w| columns.get_ref().contains(&w.column))
                    .map(|w| (w.column.clone(), 0));
                if expire_after.is_none() {
                    tracing::warn!(
                        "drop_duplicates keeps every key forever: state grows without bound; \
                         add the watermark's column to the keys or prefer \
                         drop_duplicates_within_watermark"
                    );
                }
                Ok(Some(DeduplicateConfig {
                    columns: columns.get_ref().clone(),
                    expire_after,
                }))
            }
        }
    }

    fn key_columns(&self, columns: &Spanned<Vec<String>>) -> Result<(), ConfigError> {
        if columns.get_ref().is_empty() {
            return Err(self
                .err(columns, "no key columns")
                .hint("e.g. [\"event_id\"]"));
        }
        Ok(())
    }

    /// Spark's refusals, checked before anything runs.
    pub(super) fn check_output_mode(
        &self,
        mode: &Spanned<OutputMode>,
        sink: SinkKind,
        aggregate: Option<(&Spanned<RawAggregate>, &WindowAggregateConfig)>,
        watermarked: &[String],
    ) -> Result<(), ConfigError> {
        let value = *mode.get_ref();
        let supported = match sink {
            SinkKind::Console | SinkKind::ForeachBatch => true,
            // As Spark's Delta sink: appends, or replaces the table (complete).
            SinkKind::Delta => value != OutputMode::Update,
            _ => value == OutputMode::Append,
        };
        if !supported {
            let hint = if sink == SinkKind::Delta {
                "a delta sink appends or, with output_mode = \"complete\", replaces the table; \
                 to apply changed rows by key use a foreach_batch sink with a delta output in \
                 mode = \"merge\""
            } else {
                "file sinks only append: use output_mode = \"append\" (with a watermark), the console sink, or a foreach_batch sink"
            };
            return Err(self
                .err(
                    mode,
                    format!(
                        "Data source {} does not support {value:?} output mode",
                        format!("{sink:?}").to_lowercase()
                    ),
                )
                .hint(hint));
        }
        match aggregate {
            None if value == OutputMode::Complete => Err(self
                .err(mode, "Complete output mode not supported when there are no streaming aggregations")
                .hint("add an [aggregate] section, or use output_mode = \"append\"")),
            Some((raw, agg)) if value == OutputMode::Append && !watermarked.contains(&agg.time_column) => Err(self
                .err(raw, "Append output mode not supported when there are streaming aggregations without watermark")
                .hint(format!(
                    "add [watermark] column = \"{}\", delay = \"10m\" so windows can close, or use output_mode = \"update\" or \"complete\"",
                    agg.time_column
                ))),
            _ => Ok(()),
        }
    }
}
