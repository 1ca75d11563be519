//! Prometheus metrics from per-batch progress, served over HTTP at
//! `/metrics` (`weir run --metrics-addr 127.0.0.1:9464`).
//!
//! Every series is labelled with the query name, so one registry can serve
//! many queries in one process.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Result, WeirError};
use crate::query::BatchProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    query: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    query: String,
    stage: String,
}

type Seconds = Counter<f64, std::sync::atomic::AtomicU64>;

/// The metrics of the queries of one process.
pub struct QueryMetrics {
    batches: Family<QueryLabels, Counter>,
    input_rows: Family<QueryLabels, Counter>,
    output_rows: Family<QueryLabels, Counter>,
    bad_records: Family<QueryLabels, Counter>,
    quarantined_rows: Family<QueryLabels, Counter>,
    dropped_by_watermark: Family<QueryLabels, Counter>,
    batch_seconds: Family<QueryLabels, Histogram>,
    watermark_ms: Family<QueryLabels, Gauge>,
    state_rows: Family<QueryLabels, Gauge>,
    state_bytes: Family<QueryLabels, Gauge>,
    plugin_calls: Family<StageLabels, Counter>,
    plugin_seconds: Family<StageLabels, Seconds>,
}

impl QueryMetrics {
    /// Metrics registered in `registry` under the `weir_` prefix.
    pub fn new(registry: &mut Registry) -> QueryMetrics {
        let registry = registry.sub_registry_with_prefix("weir");
        let metrics = QueryMetrics {
            batches: Family::default(),
            input_rows: Family::default(),
            output_rows: Family::default(),
            bad_records: Family::default(),
            quarantined_rows: Family::default(),
            dropped_by_watermark: Family::default(),
            // 1 ms to ~33 s.
            batch_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            watermark_ms: Family::default(),
            state_rows: Family::default(),
            state_bytes: Family::default(),
            plugin_calls: Family::default(),
            plugin_seconds: Family::default(),
        };
        let m = &metrics;
        registry.register("batches", "Micro-batches committed", m.batches.clone());
        registry.register(
            "input_rows",
            "Rows read from the source",
            m.input_rows.clone(),
        );
        registry.register(
            "output_rows",
            "Rows handed to the sink",
            m.output_rows.clone(),
        );
        registry.register(
            "bad_records",
            "Rows set aside as bad records",
            m.bad_records.clone(),
        );
        registry.register(
            "quarantined_rows",
            "Rows transform stages set aside (on_error = \"quarantine\")",
            m.quarantined_rows.clone(),
        );
        registry.register(
            "rows_dropped_by_watermark",
            "Input rows dropped as too late",
            m.dropped_by_watermark.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Wall time of a micro-batch",
            m.batch_seconds.clone(),
        );
        registry.register(
            "watermark_milliseconds",
            "Event-time watermark the latest batch used (ms since the epoch)",
            m.watermark_ms.clone(),
        );
        registry.register("state_rows", "Keys in operator state", m.state_rows.clone());
        registry.register(
            "state_bytes",
            "Bytes of operator state",
            m.state_bytes.clone(),
        );
        registry.register(
            "plugin_calls",
            "Calls into a plugin stage",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_seconds",
            "Time spent in a plugin stage, conversions included",
            m.plugin_seconds.clone(),
        );
        metrics
    }

    /// Records one committed batch of query `query`.
    pub fn observe(&self, query: &str, p: &BatchProgress) {
        let labels = QueryLabels {
            query: query.to_string(),
        };
        self.batches.get_or_create(&labels).inc();
        self.input_rows.get_or_create(&labels).inc_by(p.input_rows);
        self.output_rows
            .get_or_create(&labels)
            .inc_by(p.output_rows);
        self.bad_records
            .get_or_create(&labels)
            .inc_by(p.bad_records);
        self.quarantined_rows
            .get_or_create(&labels)
            .inc_by(p.quarantined_rows);
        self.dropped_by_watermark
            .get_or_create(&labels)
            .inc_by(p.rows_dropped_by_watermark);
        self.batch_seconds
            .get_or_create(&labels)
            .observe(p.durations.total.as_secs_f64());
        if let Some(wm) = p.watermark_ms {
            self.watermark_ms.get_or_create(&labels).set(wm);
        }
        if let Some(state) = p.state {
            self.state_rows
                .get_or_create(&labels)
                .set(state.rows as i64);
            self.state_bytes
                .get_or_create(&labels)
                .set(state.bytes as i64);
        }
        for stage in &p.stages {
            let labels = StageLabels {
                query: query.to_string(),
                stage: stage.name.clone(),
            };
            self.plugin_calls.get_or_create(&labels).inc_by(stage.calls);
            self.plugin_seconds
                .get_or_create(&labels)
                .inc_by(stage.duration.as_secs_f64());
        }
    }
}

/// Serves `registry` as Prometheus text at `http://<listener>/metrics`
/// until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) -> Result<()> {
    axum::serve(listener, router(registry))
        .await
        .map_err(|e| WeirError::Internal(format!("metrics server: {e}")))
}

/// The `/metrics` route alone, to serve or merge into another router.
pub fn router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot encode metrics: {e}"),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// Binds the metrics listener (so a taken port fails at start).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WeirError::Io {
            path: format!("metrics address {addr}").into(),
            source,
        })
}
