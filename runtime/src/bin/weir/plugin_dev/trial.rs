//! `weir plugin test`: a transform component over a local file, with the
//! limits a query would give it.

use std::error::Error;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use weir::PluginEngine;
use weir::config::PluginLimits;

/// The options of one `weir plugin test`.
pub struct Trial<'a> {
    pub input: &'a Path,
    pub config: &'a str,
    pub batch_size: usize,
    pub timeout: &'a str,
    pub memory_limit: &'a str,
    pub quarantine: bool,
}

impl Trial<'_> {
    /// Runs `component` over the input; output rows go to stdout as JSON
    /// lines, everything else to stderr.
    pub fn run(&self, component: &Path) -> Result<(), Box<dyn Error>> {
        let limits = self.limits()?;
        let config: serde_json::Value =
            serde_json::from_str(self.config).map_err(|e| format!("--config must be JSON: {e}"))?;
        if !config.is_object() {
            return Err("--config must be a JSON object (the stage's `config` table)".into());
        }
        let inputs = read_input(self.input, self.batch_size.max(1))?;
        let rows: usize = inputs.iter().map(RecordBatch::num_rows).sum();
        let engine = PluginEngine::new()?;
        let loaded = Arc::new(engine.load_transform("test", component)?);
        let started = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let run = weir::query::trial_run(
            "test",
            loaded,
            &config.to_string(),
            limits,
            &inputs,
            self.quarantine,
            now_ms,
        )
        .map_err(|e| match &e {
            weir::WeirError::Plugin { failure, .. }
                if !self.quarantine && failure.blames_rows() =>
            {
                format!("{e}\nhint: --quarantine sets aside the rows it fails on and runs the rest")
                    .into()
            }
            _ => Box::<dyn Error>::from(e),
        })?;
        let elapsed = started.elapsed();
        let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
        for batch in &run.outputs {
            writer.write(batch)?;
        }
        writer.finish()?;
        for record in &run.dead_letters {
            eprintln!("quarantined: {record}");
        }
        let out: usize = run.outputs.iter().map(RecordBatch::num_rows).sum();
        eprintln!(
            "{rows} rows in, {out} rows out, {} quarantined; {} calls in {:.1} ms; {} KiB of plugin memory{}",
            run.dead_letters.len(),
            run.calls,
            elapsed.as_secs_f64() * 1e3,
            run.memory_bytes / 1024,
            if run.counters.is_empty() {
                String::new()
            } else {
                format!("; counters {:?}", run.counters)
            }
        );
        Ok(())
    }

    fn limits(&self) -> Result<PluginLimits, Box<dyn Error>> {
        let timeout: Duration = humantime::parse_duration(self.timeout)
            .map_err(|e| format!("--timeout {:?}: {e}", self.timeout))?;
        let memory = self
            .memory_limit
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("--memory-limit {:?}: {e}", self.memory_limit))?;
        Ok(PluginLimits {
            timeout,
            memory_bytes: memory.as_u64(),
            ..PluginLimits::default()
        })
    }
}

/// The rows of `path` in batches of `batch_size`, by its extension.
fn read_input(path: &Path, batch_size: usize) -> Result<Vec<RecordBatch>, Box<dyn Error>> {
    let open = || File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let batches: Result<Vec<RecordBatch>, arrow::error::ArrowError> = match extension {
        "json" | "jsonl" | "ndjson" => {
            let mut reader = BufReader::new(open()?);
            let (schema, _) = arrow::json::reader::infer_json_schema(&mut reader, Some(1000))?;
            reader.rewind()?;
            arrow::json::ReaderBuilder::new(Arc::new(schema))
                .with_batch_size(batch_size)
                .build(reader)?
                .collect()
        }
        "csv" => {
            let mut file = open()?;
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = format.infer_schema(&mut file, Some(1000))?;
            file.rewind()?;
            arrow::csv::ReaderBuilder::new(Arc::new(schema))
                .with_format(format)
                .with_batch_size(batch_size)
                .build(file)?
                .collect()
        }
        "parquet" => {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open()?)?
                .with_batch_size(batch_size)
                .build()?
                .collect()
        }
        _ => {
            return Err(format!(
                "{}: expected a .json/.jsonl, .csv or .parquet file",
                path.display()
            )
            .into());
        }
    };
    batches.map_err(|e| format!("cannot decode {}: {e}", path.display()).into())
}
