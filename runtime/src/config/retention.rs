//! `[retention]`: how much checkpoint history a query keeps.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, InputConfig, RawPipeline, Resolver};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) min_batches_to_retain: Option<Spanned<i64>>,
    pub(super) compact_interval: Option<Spanned<i64>>,
}

impl Resolver<'_> {
    pub(super) fn retention(
        &self,
        raw: Option<&Spanned<RawRetention>>,
    ) -> Result<Retention, ConfigError> {
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

    /// A source leaving a batch's inputs in place cleans them up from the
    /// batch's entry in the source log, which must still be there.
    pub(super) fn check_replay_windows(
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
}
