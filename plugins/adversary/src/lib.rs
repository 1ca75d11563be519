//! A plugin that attacks its sandbox, one way per `mode`, on every batch:
//!
//! - `loop`: never returns (the stage's `timeout` must stop it);
//! - `memory_bomb`: allocates until it cannot (`memory_limit`);
//! - `huge_output`: returns 64 MiB per batch (`output_limit`);
//! - `rows_without_columns`: returns a batch of no columns and 50,000,000
//!   rows (`output_limit` counts rows too);
//! - `panic`: panics (a trap);
//! - `read_file`: reads `path` and returns its text as a column;
//! - `connect`: opens a TCP connection to `address`;
//! - `read_env`: reads environment variable `variable`;
//! - `busy`: computes for `millis` per batch, then passes it through (a
//!   tenant's CPU share);
//! - `chatty`: prints 5,000 lines to stdout and to stderr, then passes the
//!   batch through (output must neither trap it nor flood the host log);
//! - `host_flood`: the same through the host's `log` import, with 10 KB
//!   records and 100 fields, then counters that overflow `i64`, a thousand
//!   of them and a 1,000-byte name; passes the batch through.
//!
//! What it gets from the host it returns as rows, so a test can tell a
//! capability that was granted from one that was denied; a denial is
//! returned as an input error carrying the sandbox's answer. (Broken batch
//! layouts come from `testkit`, which writes the raw layout itself.)

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::Deserialize;
use weir_sdk::{Config, Error, Transform};

/// Configuration: the attack, and what it aims at.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversaryConfig {
    /// Which attack (see the crate docs).
    pub mode: String,
    /// `read_file`: the file.
    #[serde(default)]
    pub path: String,
    /// `connect`: `host:port`.
    #[serde(default)]
    pub address: String,
    /// `read_env`: the variable.
    #[serde(default)]
    pub variable: String,
    /// `busy`: milliseconds of computing per batch.
    #[serde(default)]
    pub millis: u64,
}

/// The adversary transform.
pub struct Adversary {
    config: AdversaryConfig,
}

/// One row with one text column: what an attack got hold of.
pub fn one_text(name: &str, value: String) -> Result<Vec<RecordBatch>, Error> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    let column: ArrayRef = Arc::new(StringArray::from(vec![value]));
    RecordBatch::try_new(schema, vec![column])
        .map(|b| vec![b])
        .map_err(|e| Error::internal(e.to_string()))
}

impl Transform for Adversary {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(Adversary {
            config: config.parse()?,
        })
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error> {
        match self.config.mode.as_str() {
            "busy" => {
                // A core's worth of work per batch, then the batch unchanged.
                let started = std::time::Instant::now();
                while started.elapsed().as_millis() < u128::from(self.config.millis) {
                    std::hint::black_box(());
                }
                Ok(vec![batch])
            }
            "chatty" => {
                for line in 0..5_000 {
                    println!("adversary stdout line {line} of a chatty plugin");
                    eprintln!("adversary stderr line {line} of a chatty plugin");
                }
                Ok(vec![batch])
            }
            "host_flood" => {
                // The host imports, abused: oversized records with too
                // many fields, far over the log rate; counters that
                // overflow, too many of them, and overlong names.
                let field = "v".repeat(1_000);
                let fields: Vec<(String, &str)> = (0..100)
                    .map(|j| (format!("k{j}"), field.as_str()))
                    .collect();
                let fields: Vec<(&str, &str)> =
                    fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let padding = "!".repeat(10_000);
                for record in 0..5_000 {
                    let message =
                        format!("host log record {record} of a flooding plugin {padding}");
                    let fields = if record < 3 { &fields[..] } else { &[] };
                    weir_sdk::host::log(weir_sdk::host::Level::Info, &message, fields);
                }
                weir_sdk::host::counter_add("total", i64::MAX);
                weir_sdk::host::counter_add("total", i64::MAX);
                for counter in 0..1_000 {
                    weir_sdk::host::counter_add(&format!("c{counter:04}"), 1);
                }
                weir_sdk::host::counter_add(&"n".repeat(1_000), 1);
                Ok(vec![batch])
            }
            "rows_without_columns" => {
                // No buffers at all, yet fifty million rows to write.
                let options =
                    arrow_array::RecordBatchOptions::new().with_row_count(Some(50_000_000));
                RecordBatch::try_new_with_options(Arc::new(Schema::empty()), vec![], &options)
                    .map(|b| vec![b])
                    .map_err(|e| Error::internal(e.to_string()))
            }
            "loop" => loop {
                std::hint::black_box(());
            },
            "memory_bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge_output" => {
                let values = Int64Array::from_iter_values(0..(8 << 20));
                let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
                RecordBatch::try_new(schema, vec![Arc::new(values) as ArrayRef])
                    .map(|b| vec![b])
                    .map_err(|e| Error::internal(e.to_string()))
            }
            "panic" => panic!("adversary: panicking on purpose"),
            "read_file" => match std::fs::read_to_string(&self.config.path) {
                Ok(text) => one_text("stolen", text),
                Err(e) => Err(Error::input(format!(
                    "read_file {}: denied: {e}",
                    self.config.path
                ))),
            },
            "connect" => match std::net::TcpStream::connect(&self.config.address) {
                Ok(_) => one_text("stolen", format!("connected to {}", self.config.address)),
                Err(e) => Err(Error::input(format!(
                    "connect {}: denied: {e}",
                    self.config.address
                ))),
            },
            "read_env" => match std::env::var(&self.config.variable) {
                Ok(value) => one_text("stolen", value),
                Err(e) => Err(Error::input(format!(
                    "read_env {}: denied: {e}",
                    self.config.variable
                ))),
            },
            other => Err(Error::config(format!("unknown mode {other:?}"))),
        }
    }
}

weir_sdk::export_transform!(Adversary);
