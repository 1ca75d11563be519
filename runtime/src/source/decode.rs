//! Decoding source files against the declared schema.
//!
//! The whole file is decoded in one pass. Only when that fails is it
//! decoded again line by line, to find every bad row with its line number
//! and reason (then failed on, or sent to the dead-letter location).

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::config::{BadRecordPolicy, FileFormat, FileSourceConfig};
use crate::error::{Result, WeirError};

const BATCH_ROWS: usize = 8192;

/// JSON nested deeper than this is a bad record, found by a scan before
/// decoding: arrow-json's decoder recurses once per level, so one line of
/// 20,000 `[` would overflow the stack and abort the whole process (every
/// query of `weir serve` with it).
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether the JSON text nests arrays and objects deeper than
/// [`MAX_JSON_DEPTH`] (brackets inside strings do not count). Linear, no
/// allocation; unbalanced text is left for the decoder to reject.
pub fn json_too_deep(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What a value over [`MAX_JSON_DEPTH`] is told.
pub fn too_deep_reason() -> String {
    format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")
}

/// A row that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// Source file.
    pub file: String,
    /// 1-based line in the file.
    pub line: usize,
    /// The parser's reason.
    pub reason: String,
    /// The raw line.
    pub raw: String,
}

/// Decoded rows of one or more files.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Rows, in file order.
    pub batches: Vec<RecordBatch>,
    /// Rows set aside (with `on_bad_record = "dead_letter"`).
    pub bad_records: Vec<BadRecord>,
    /// How far the input has got in event time, for its watermark.
    pub event_time: EventTimeProgress,
}

/// How far a batch's input has got in event time, for its watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventTimeProgress {
    /// As far as its rows' latest event time (Spark's rule).
    #[default]
    Rows,
    /// As far as the source vouches, whatever the rows: a repartition
    /// topic's partition has got as far as the least of its writers' latest
    /// event times (`None` while a writer has not reported any).
    Vouched(Option<i64>),
}

pub(crate) fn decode(config: &FileSourceConfig, file: &str, bytes: Bytes) -> Result<Decoded> {
    let schema = &config.schema;
    match config.format {
        FileFormat::Parquet => Ok(Decoded {
            batches: decode_parquet(schema, file, bytes)?,
            bad_records: vec![],
            event_time: EventTimeProgress::Rows,
        }),
        FileFormat::Json | FileFormat::Csv => {
            if let Ok(batches) = decode_text(config, &bytes, config.csv_header) {
                return Ok(Decoded {
                    batches,
                    bad_records: vec![],
                    event_time: EventTimeProgress::Rows,
                });
            }
            decode_lines(config, file, &bytes)
        }
    }
}

fn decode_text(
    config: &FileSourceConfig,
    bytes: &[u8],
    header: bool,
) -> Result<Vec<RecordBatch>, String> {
    let schema = config.schema.clone();
    match config.format {
        FileFormat::Json if json_too_deep(bytes) => Err(too_deep_reason()),
        FileFormat::Json => {
            let mut decoder = arrow::json::ReaderBuilder::new(schema)
                .with_batch_size(BATCH_ROWS)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            let mut batches = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let consumed = decoder.decode(rest).map_err(|e| e.to_string())?;
                rest = &rest[consumed..];
                if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
                    batches.push(batch);
                }
            }
            if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
                batches.push(batch);
            }
            Ok(batches)
        }
        FileFormat::Csv => arrow::csv::ReaderBuilder::new(schema)
            .with_header(header)
            .with_delimiter(config.csv_delimiter)
            .with_batch_size(BATCH_ROWS)
            .build(Cursor::new(bytes))
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string()),
        FileFormat::Parquet => unreachable!("parquet is not line-based"),
    }
}

/// Slow path: decode each line alone to find the bad ones.
fn decode_lines(config: &FileSourceConfig, file: &str, bytes: &[u8]) -> Result<Decoded> {
    let text = String::from_utf8_lossy(bytes);
    let skip_header = config.format == FileFormat::Csv && config.csv_header;
    let mut good = String::new();
    let mut bad_records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if (skip_header && index == 0) || line.trim().is_empty() {
            continue;
        }
        match decode_text(config, line.as_bytes(), false) {
            Ok(_) => {
                good.push_str(line);
                good.push('\n');
            }
            Err(reason) => {
                let bad = BadRecord {
                    file: file.to_string(),
                    line: index + 1,
                    reason,
                    raw: line.to_string(),
                };
                if config.on_bad_record == BadRecordPolicy::Fail {
                    return Err(WeirError::BadRecord {
                        file: bad.file,
                        line: bad.line,
                        reason: bad.reason,
                    });
                }
                bad_records.push(bad);
            }
        }
    }
    if bad_records.is_empty() {
        // Every line parses alone, yet the file did not: a record spans
        // lines (e.g. a quoted CSV newline) or the file is cut short.
        let reason = decode_text(config, bytes, config.csv_header)
            .err()
            .unwrap_or_default();
        return Err(WeirError::format(format!("decoding {file}"), reason));
    }
    let batches = decode_text(config, good.as_bytes(), false)
        .map_err(|reason| WeirError::format(format!("decoding {file}"), reason))?;
    Ok(Decoded {
        batches,
        bad_records,
        event_time: EventTimeProgress::Rows,
    })
}

/// Reads a Parquet file and conforms it to the declared schema: columns by
/// name, cast when the file's type differs, null when absent and nullable.
fn decode_parquet(schema: &SchemaRef, file: &str, bytes: Bytes) -> Result<Vec<RecordBatch>> {
    let context = || format!("reading Parquet file {file}");
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| WeirError::format(context(), e))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| WeirError::format(context(), e))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| WeirError::format(context(), e))?;
        let columns = schema
            .fields()
            .iter()
            .map(|field| match batch.column_by_name(field.name()) {
                Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
                Some(column) => cast(column, field.data_type()).map_err(|e| WeirError::Schema {
                    context: file.to_string(),
                    reason: format!("column `{}`: {e}", field.name()),
                }),
                None if field.is_nullable() => {
                    Ok(new_null_array(field.data_type(), batch.num_rows()))
                }
                None => Err(WeirError::Schema {
                    context: file.to_string(),
                    reason: format!("required column `{}` is missing", field.name()),
                }),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        batches.push(
            RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| WeirError::Schema {
                context: file.to_string(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_too_deep(nested(MAX_JSON_DEPTH).as_bytes()));
        assert!(json_too_deep(nested(MAX_JSON_DEPTH + 1).as_bytes()));
        assert!(json_too_deep(
            format!("{{\"a\": {}}}", nested(MAX_JSON_DEPTH)).as_bytes()
        ));
        // Brackets in strings, escaped quotes included, are text.
        let in_string = format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(10_000));
        assert!(!json_too_deep(in_string.as_bytes()));
        // Depth is per value: many shallow records in a row are fine.
        assert!(!json_too_deep("{\"a\": [1]}\n".repeat(10_000).as_bytes()));
        // Stray closers do not bank depth for later openers.
        assert!(!json_too_deep(
            format!("{}{}", "]".repeat(100), nested(MAX_JSON_DEPTH)).as_bytes()
        ));
    }
}
