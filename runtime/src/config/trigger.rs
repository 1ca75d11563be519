//! `[trigger]`: when micro-batches run, and what the continuous trigger allows.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, RawPipeline, Resolver, SinkConfig, SinkTarget};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    pub(super) processing_time: Option<Spanned<String>>,
    pub(super) continuous: Option<Spanned<String>>,
    pub(super) available_now: Option<bool>,
    pub(super) once: Option<bool>,
}

impl Resolver<'_> {
    pub(super) fn trigger(
        &self,
        raw: Option<&Spanned<RawTrigger>>,
    ) -> Result<Trigger, ConfigError> {
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

    /// Spark's rule for continuous processing: only map-like stages (here
    /// Wasm transforms) between a file or Kafka source and a file, console
    /// or at-least-once Kafka sink.
    pub(super) fn check_continuous(
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
        let refused = match &sink.target {
            SinkTarget::ForeachBatch(_) => Some("a foreach_batch sink works per micro-batch"),
            SinkTarget::Delta { .. } => Some("a delta sink commits once per micro-batch"),
            SinkTarget::Kafka(kafka) if kafka.exactly_once => Some(
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
}
