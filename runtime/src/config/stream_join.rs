//! Several named inputs (`[[sources]]`, each with its own watermark) and
//! `[join]`: a stream-stream join of two of them.
//!
//! ```toml
//! multiple_watermark_policy = "min"     # Spark's default; or "max"
//!
//! [[sources]]
//! name = "impressions"
//! kind = "file"
//! path = "impressions"
//! format = "json"
//! schema = [ ... ]
//! watermark = { column = "impression_time", delay = "10 minutes" }
//!
//! [[sources]]
//! name = "clicks"
//! # ...
//! watermark = { column = "click_time", delay = "10 minutes" }
//!
//! [join]
//! left = "impressions"
//! right = "clicks"
//! type = "left_outer"                   # inner | left_outer | right_outer | left_semi
//! on = ["ad_id"]                        # or left_on = [...], right_on = [...]
//! # click_time BETWEEN impression_time + lower AND impression_time + upper
//! time = { left = "impression_time", right = "click_time", lower = "0s", upper = "1 hour" }
//! ```
//!
//! Without `[join]`, several sources are a union: their rows go through the
//! pipeline together.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, OutputMode, RawPipeline, Resolver, SourceConfig, WatermarkConfig};

/// One named input of a query.
#[derive(Debug, Clone)]
pub struct InputConfig {
    /// The source's name (`source` for a single `[source]`).
    pub name: String,
    /// Where its rows come from.
    pub source: SourceConfig,
    /// Its event-time watermark, if declared.
    pub watermark: Option<WatermarkConfig>,
}

/// How the query's watermark follows several inputs' watermarks (Spark's
/// `spark.sql.streaming.multipleWatermarkPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkPolicy {
    /// The slowest input's: no input's rows are dropped as late because
    /// another input ran ahead (Spark's default).
    #[default]
    Min,
    /// The fastest input's: state is freed sooner; the slower inputs' rows
    /// may be dropped as late.
    Max,
}

/// Which rows a stream-stream join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamJoinKind {
    /// Matched pairs.
    #[default]
    Inner,
    /// Matched pairs, and each left row without a match (right columns
    /// null) once the watermark shows no match can come.
    LeftOuter,
    /// The mirror of `left_outer`.
    RightOuter,
    /// Each left row with at least one match, once, left columns only.
    LeftSemi,
}

/// The join's event-time condition: `right_time BETWEEN left_time + lower
/// AND left_time + upper` (milliseconds, inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTimeRange {
    /// Left event-time column.
    pub left: String,
    /// Right event-time column.
    pub right: String,
    /// Smallest `right_time - left_time` that matches (may be negative).
    pub lower_ms: i64,
    /// Largest `right_time - left_time` that matches.
    pub upper_ms: i64,
}

/// A checked `[join]`.
#[derive(Debug, Clone)]
pub struct StreamJoinConfig {
    /// The left input's position in [`super::Pipeline::inputs`].
    pub left: usize,
    /// The right input's position.
    pub right: usize,
    /// Which rows are emitted.
    pub kind: StreamJoinKind,
    /// Left key columns.
    pub left_on: Vec<String>,
    /// Right key columns, pairwise equal to `left_on`.
    pub right_on: Vec<String>,
    /// The time bound; without one (inner and semi joins only) join state
    /// is never evicted.
    pub time: Option<JoinTimeRange>,
}

impl StreamJoinConfig {
    /// The watermark of the joined rows, for an operator after the join,
    /// given the watermark the join ran with: no older than either side's
    /// state watermark (the event time below which that side's buffered
    /// rows can no longer match), as Spark's `produceOutputWatermark`.
    /// For `right_time BETWEEN left_time + lower AND left_time + upper`
    /// those are `input - upper - 1` and `input + lower - 1`: Spark takes one
    /// millisecond off a bound that includes its end.
    pub fn output_watermark(&self, input_ms: i64) -> i64 {
        match &self.time {
            Some(t) => input_ms
                .min(input_ms.saturating_sub(t.upper_ms).saturating_sub(1))
                .min(input_ms.saturating_add(t.lower_ms).saturating_sub(1)),
            None => input_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStreamJoin {
    left: Spanned<String>,
    right: Spanned<String>,
    #[serde(rename = "type")]
    kind: Option<Spanned<StreamJoinKind>>,
    on: Option<Spanned<Vec<String>>>,
    left_on: Option<Spanned<Vec<String>>>,
    right_on: Option<Spanned<Vec<String>>>,
    time: Option<Spanned<RawJoinTime>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinTime {
    left: String,
    right: String,
    lower: Option<Spanned<String>>,
    upper: Spanned<String>,
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Resolver<'_> {
    /// The query's inputs: one `[source]` (with the top-level
    /// `[watermark]`) or several `[[sources]]`.
    pub(super) fn inputs(
        &self,
        raw: &RawPipeline,
        watermark: Option<&WatermarkConfig>,
    ) -> Result<Vec<InputConfig>, ConfigError> {
        match (&raw.source, &raw.sources) {
            (Some(single), None) => {
                let s = single.get_ref();
                if let Some(w) = &s.watermark {
                    return Err(self
                        .err(w, "a single [source] takes the top-level [watermark]")
                        .hint("move it to a [watermark] table"));
                }
                Ok(vec![InputConfig {
                    name: s
                        .name
                        .as_ref()
                        .map_or("source".into(), |n| n.get_ref().clone()),
                    source: self.source(single)?,
                    watermark: watermark.cloned(),
                }])
            }
            (None, Some(list)) => {
                if let Some(w) = &raw.watermark {
                    return Err(self
                        .err(
                            w,
                            "with [[sources]], each source declares its own `watermark`",
                        )
                        .hint(
                            "watermark = { column = \"ts\", delay = \"10 minutes\" } in the source",
                        ));
                }
                if list.get_ref().is_empty() {
                    return Err(self.err(list, "[[sources]] is empty"));
                }
                let mut inputs: Vec<InputConfig> = Vec::new();
                for spanned in list.get_ref() {
                    let s = spanned.get_ref();
                    let Some(name) = &s.name else {
                        return Err(self
                            .err(spanned, "each of [[sources]] needs a `name`")
                            .hint("the join and the progress refer to inputs by name"));
                    };
                    if inputs.iter().any(|i| i.name == *name.get_ref()) {
                        return Err(
                            self.err(name, format!("duplicate source name `{}`", name.get_ref()))
                        );
                    }
                    inputs.push(InputConfig {
                        name: name.get_ref().clone(),
                        source: self.source(spanned)?,
                        watermark: s
                            .watermark
                            .as_ref()
                            .map(|w| self.watermark(w.get_ref()))
                            .transpose()?,
                    });
                }
                Ok(inputs)
            }
            (Some(_), Some(list)) => Err(self.err(
                list,
                "declare one [source] or several [[sources]], not both",
            )),
            (None, None) => Err(ConfigError::at(
                self.file,
                self.text,
                None,
                "no input: add a [source] table (or [[sources]] for several)",
            )),
        }
    }

    /// Checks `[join]` against the inputs.
    pub(super) fn stream_join(
        &self,
        spanned: &Spanned<RawStreamJoin>,
        inputs: &[InputConfig],
        mode: OutputMode,
    ) -> Result<StreamJoinConfig, ConfigError> {
        let raw = spanned.get_ref();
        let position = |name: &Spanned<String>| {
            inputs
                .iter()
                .position(|i| i.name == *name.get_ref())
                .ok_or_else(|| {
                    self.err(name, format!("no source named `{}`", name.get_ref()))
                        .hint("[join] `left` and `right` name two of the [[sources]]")
                })
        };
        let (left, right) = (position(&raw.left)?, position(&raw.right)?);
        if left == right {
            return Err(self.err(&raw.right, "a join needs two different sources"));
        }
        if inputs.len() != 2 {
            return Err(self
                .err(
                    spanned,
                    "a query with a [join] has exactly the two joined [[sources]]",
                )
                .hint("union more inputs in another query"));
        }
        let kind = raw
            .kind
            .as_ref()
            .map_or(StreamJoinKind::Inner, |k| *k.get_ref());
        // Spark 4: an inner join also runs in update mode (its rows are
        // final either way, so an aggregation after it may update).
        if !(mode == OutputMode::Append
            || mode == OutputMode::Update && kind == StreamJoinKind::Inner)
        {
            return Err(self
                .err(
                    spanned,
                    "a stream-stream join emits in append mode only (an inner join also in \
                     update mode), as in Spark",
                )
                .hint("remove `output_mode` from [sink] or set it to \"append\""));
        }
        let (left_on, right_on) = match (&raw.on, &raw.left_on, &raw.right_on) {
            (Some(on), None, None) => (on.get_ref().clone(), on.get_ref().clone()),
            (None, Some(l), Some(r)) => {
                if l.get_ref().len() != r.get_ref().len() {
                    return Err(self.err(r, "`left_on` and `right_on` need as many columns"));
                }
                (l.get_ref().clone(), r.get_ref().clone())
            }
            _ => {
                return Err(self
                    .err(
                        spanned,
                        "a join needs its keys: `on`, or `left_on` with `right_on`",
                    )
                    .hint("on = [\"ad_id\"]"));
            }
        };
        if left_on.is_empty() {
            return Err(self.err(spanned, "a join needs at least one key column"));
        }
        let time = match &raw.time {
            Some(t) => {
                let r = t.get_ref();
                let signed = |text: &Spanned<String>| -> Result<i64, ConfigError> {
                    let value = text.get_ref().trim();
                    let (negative, magnitude) = match value.strip_prefix('-') {
                        Some(rest) => (true, rest.trim()),
                        None => (false, value),
                    };
                    // Zero is a bound here (unlike an interval), so not `duration`.
                    let ms = humantime::parse_duration(magnitude)
                        .map(millis)
                        .map_err(|_| {
                            self.err(text, format!("invalid time offset {value:?}"))
                                .hint("a duration such as \"0s\", \"1 hour\" or \"-5 minutes\"")
                        })?;
                    Ok(if negative { -ms } else { ms })
                };
                let lower_ms = r.lower.as_ref().map(&signed).transpose()?.unwrap_or(0);
                let upper_ms = signed(&r.upper)?;
                if upper_ms < lower_ms {
                    return Err(self.err(&r.upper, "`upper` is before `lower`"));
                }
                Some(JoinTimeRange {
                    left: r.left.clone(),
                    right: r.right.clone(),
                    lower_ms,
                    upper_ms,
                })
            }
            None => None,
        };
        let outer = matches!(kind, StreamJoinKind::LeftOuter | StreamJoinKind::RightOuter);
        if outer {
            if time.is_none() {
                return Err(self
                    .err(spanned, "an outer join needs a time bound (`time`), as in Spark")
                    .hint("time = { left = \"ts\", right = \"ts\", lower = \"0s\", upper = \"1 hour\" }"));
            }
            if let Some(missing) = [left, right]
                .iter()
                .find(|i| inputs[**i].watermark.is_none())
            {
                return Err(self
                    .err(
                        spanned,
                        format!(
                            "an outer join needs a watermark on both inputs; `{}` has none",
                            inputs[*missing].name
                        ),
                    )
                    .hint(
                        "watermark = { column = \"ts\", delay = \"10 minutes\" } in the source",
                    ));
            }
        }
        Ok(StreamJoinConfig {
            left,
            right,
            kind,
            left_on,
            right_on,
            time,
        })
    }
}
