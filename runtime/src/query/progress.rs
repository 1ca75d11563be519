use std::fmt;
use std::time::Duration;

/// Time spent in each phase of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseDurations {
    /// Listing and planning input, writing `offsets/N`.
    pub plan: Duration,
    /// Reading and decoding input files.
    pub read: Duration,
    /// Plugin stages (and a static join).
    pub transform: Duration,
    /// Stateful operators (windows, dedup, stateful functions, joins).
    pub operator: Duration,
    /// Writing to the sink.
    pub sink: Duration,
    /// Writing `commits/N`.
    pub commit: Duration,
    /// The whole batch.
    pub total: Duration,
}

/// What one plugin stage did in a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageProgress {
    /// Stage name.
    pub name: String,
    /// `sha256:<hex>` of the plugin version that ran the batch.
    pub digest: String,
    /// Plugin calls (one per non-empty input batch).
    pub calls: u64,
    /// Tasks that made calls (each with an instance of its own).
    pub tasks: usize,
    /// Time in the stage, conversions included.
    pub duration: Duration,
    /// The plugin's counters (`counter-add`), totals since the query started.
    pub counters: std::collections::BTreeMap<String, i64>,
    /// Linear memory the plugin instance holds after the batch, in bytes.
    pub memory_bytes: u64,
    /// Rows the stage set aside in the batch (`on_error = "quarantine"`).
    pub quarantined_rows: u64,
}

/// How a stateful query's state is spread over tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePartitioning {
    /// Tasks each stateful operator runs as.
    pub tasks: usize,
    /// Key groups its state is partitioned into.
    pub key_groups: u16,
}

/// What one micro-batch did, reported when it commits.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    /// Batch id.
    pub batch_id: u64,
    /// When the batch started (ms since the epoch; Spark's `timestamp`).
    pub started_at_ms: i64,
    /// Whether this batch was a replay of one in flight at a crash.
    pub replay: bool,
    /// Input files read.
    pub input_files: usize,
    /// Rows read from the source (without bad records).
    pub input_rows: u64,
    /// Rows set aside as bad records.
    pub bad_records: u64,
    /// Rows the transform stages set aside (`on_error = "quarantine"`).
    pub quarantined_rows: u64,
    /// Rows handed to the sink.
    pub output_rows: u64,
    /// Whether the sink found the batch already committed (replay).
    pub sink_skipped: bool,
    /// Input rows per second of wall time since the previous batch started
    /// (Spark's `inputRowsPerSecond`).
    pub input_rows_per_second: f64,
    /// Input rows per second of this batch's processing time
    /// (Spark's `processedRowsPerSecond`).
    pub processed_rows_per_second: f64,
    /// Per-phase durations.
    pub durations: PhaseDurations,
    /// Per-stage calls, time and counters.
    pub stages: Vec<StageProgress>,
    /// The event-time watermark this batch used (ms), if any.
    pub watermark_ms: Option<i64>,
    /// Input rows dropped as too late (Spark's `numRowsDroppedByWatermark`).
    pub rows_dropped_by_watermark: u64,
    /// State size after the batch, for a stateful query.
    pub state: Option<crate::state::StateMetrics>,
    /// How the state is spread, for a stateful query.
    pub partitioning: Option<StatePartitioning>,
    /// Outages retried since the previous batch (a broker restart, say).
    pub retries: crate::retry::RetryReport,
    /// Plugin swaps, rollbacks and replays with logged versions, since the
    /// previous batch.
    pub plugin_events: Vec<String>,
}

impl BatchProgress {
    /// The progress as a JSON object with Spark's `StreamingQueryProgress`
    /// field names (`batchId`, `numInputRows`, `durationMs`, `eventTime`,
    /// `stateOperators`, ...), plus Weir's per-plugin `plugins` list.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_millis() as u64;
        let d = &self.durations;
        let mut json = serde_json::json!({
            "batchId": self.batch_id,
            "timestamp": chrono::DateTime::from_timestamp_millis(self.started_at_ms)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
            "replay": self.replay,
            "numInputRows": self.input_rows,
            "numInputFiles": self.input_files,
            "numBadRecords": self.bad_records,
            "numQuarantinedRows": self.quarantined_rows,
            "inputRowsPerSecond": self.input_rows_per_second,
            "processedRowsPerSecond": self.processed_rows_per_second,
            "durationMs": {
                "planBatch": ms(d.plan),
                "getBatch": ms(d.read),
                "transform": ms(d.transform),
                "operator": ms(d.operator),
                "addBatch": ms(d.sink),
                "walCommit": ms(d.commit),
                "triggerExecution": ms(d.total),
            },
            "numRowsDroppedByWatermark": self.rows_dropped_by_watermark,
            "sink": { "numOutputRows": self.output_rows, "alreadyCommitted": self.sink_skipped },
            "plugins": self.stages.iter().map(|s| serde_json::json!({
                "name": s.name,
                "digest": s.digest,
                "calls": s.calls,
                "tasks": s.tasks,
                "durationMs": ms(s.duration),
                "memoryBytes": s.memory_bytes,
                "numQuarantinedRows": s.quarantined_rows,
                "counters": s.counters,
            })).collect::<Vec<_>>(),
        });
        if let Some(wm) = self
            .watermark_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
        {
            json["eventTime"] =
                serde_json::json!({ "watermark": wm.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string() });
        }
        if !self.plugin_events.is_empty() {
            json["pluginEvents"] = serde_json::json!(self.plugin_events);
        }
        if self.retries.count > 0 {
            json["retries"] = serde_json::json!({
                "count": self.retries.count,
                "lastError": self.retries.last_error,
            });
        }
        if let Some(state) = self.state {
            json["stateOperators"] =
                serde_json::json!([{ "numRowsTotal": state.rows, "memoryUsedBytes": state.bytes }]);
            // Spark's names: a state store per shuffle partition (key group).
            if let Some(p) = self.partitioning {
                let operator = &mut json["stateOperators"][0];
                operator["numShufflePartitions"] = p.key_groups.into();
                operator["numStateStoreInstances"] = p.key_groups.into();
                operator["numTasks"] = p.tasks.into();
            }
        }
        json
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for BatchProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.durations;
        write!(
            f,
            "batch {}{}: {} rows in ({} files{}), {} rows out{}, {:.0} rows/s | plan {} read {} transform {} sink {} commit {} total {}",
            self.batch_id,
            if self.replay { " (replay)" } else { "" },
            self.input_rows,
            self.input_files,
            match (self.bad_records, self.quarantined_rows) {
                (0, 0) => String::new(),
                (bad, 0) => format!(", {bad} bad records"),
                (0, q) => format!(", {q} rows quarantined"),
                (bad, q) => format!(", {bad} bad records, {q} rows quarantined"),
            },
            self.output_rows,
            if self.sink_skipped {
                " (already in sink)"
            } else {
                ""
            },
            self.processed_rows_per_second,
            ms(d.plan),
            ms(d.read),
            ms(d.transform),
            ms(d.sink),
            ms(d.commit),
            ms(d.total),
        )?;
        if let Some(wm) = self.watermark_ms {
            match chrono::DateTime::from_timestamp_millis(wm) {
                Some(t) => write!(f, " | watermark {}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))?,
                None => write!(f, " | watermark {wm}ms")?,
            }
            if self.rows_dropped_by_watermark > 0 {
                write!(f, " dropped {}", self.rows_dropped_by_watermark)?;
            }
        }
        if let Some(state) = self.state {
            write!(f, " | state {} rows {} bytes", state.rows, state.bytes)?;
        }
        for event in &self.plugin_events {
            write!(f, " | {event}")?;
        }
        if self.retries.count > 0 {
            write!(
                f,
                " | {} retries, last: {}",
                self.retries.count,
                self.retries.last_error.as_deref().unwrap_or("")
            )?;
        }
        for stage in &self.stages {
            write!(f, " | {} {}", stage.name, ms(stage.duration))?;
            for (name, value) in &stage.counters {
                write!(f, " {name}={value}")?;
            }
        }
        Ok(())
    }
}
