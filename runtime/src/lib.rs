//! # Weir runtime
//!
//! The host of a Weir streaming query: it owns scheduling (triggers),
//! checkpoints and sinks, and runs user code — transforms compiled to
//! WebAssembly components — over Apache Arrow record batches.
//!
//! Where things live:
//! - [`config`]: the pipeline file (TOML) and its checks;
//! - [`source`]: where rows come from (one module per source kind);
//! - [`plugin`]: loading and calling Wasm components;
//! - [`operator`]: stateful steps (windowed aggregation) over [`state`];
//! - [`sink`]: where rows go, exactly once (one module per sink kind);
//! - [`checkpoint`]: the offset/commit logs that make restarts exact;
//! - [`query`]: the micro-batch loop tying them together;
//! - [`cluster`]: a query across replicas, sharded by a Kafka consumer group.

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod error;
pub mod faults;
pub mod metrics;
pub mod operator;
pub mod plugin;
pub mod quarantine;
pub mod query;
pub mod retry;
pub mod serve;
pub mod sink;
pub mod source;
pub mod state;
pub mod storage;

pub use config::Pipeline;
pub use error::{ErrorDomain, PluginFailure, Result, WeirError};
pub use plugin::PluginEngine;
pub use query::{BatchProgress, Query, QueryOutcome};
