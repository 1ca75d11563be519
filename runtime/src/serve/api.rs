//! The admin API of `weir serve` (JSON over HTTP):
//!
//! | request | does |
//! |---|---|
//! | `GET /queries` | every query with its status |
//! | `POST /queries?tenant=T` (body: pipeline TOML) | checks, stores and starts a query |
//! | `GET /queries/{tenant}/{name}` | one query and its recent progress events |
//! | `POST /queries/{tenant}/{name}/stop` | stops it after its current batch |
//! | `POST /queries/{tenant}/{name}/start` | starts it again from its checkpoint |
//! | `POST /queries/{tenant}/{name}/swap` (`{"stage", "plugin", "config"?}`) | hot-swaps a transform plugin |
//! | `GET /metrics` | Prometheus metrics of every query |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 404 (no such
//! query), 409 (running already) or 429 (tenant quota).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{Host, HostError};

/// The admin router over `host`.
pub fn router(host: Arc<Host>) -> axum::Router {
    let metrics = crate::metrics::router(host.registry());
    axum::Router::new()
        .route("/queries", get(list).post(submit))
        .route("/queries/{tenant}/{name}", get(detail))
        .route("/queries/{tenant}/{name}/stop", post(stop))
        .route("/queries/{tenant}/{name}/start", post(start))
        .route("/queries/{tenant}/{name}/swap", post(swap))
        .with_state(host)
        .merge(metrics)
}

impl IntoResponse for HostError {
    fn into_response(self) -> Response {
        let status = match &self {
            HostError::Invalid(_) => StatusCode::BAD_REQUEST,
            HostError::NotFound(_) => StatusCode::NOT_FOUND,
            HostError::Conflict(_) => StatusCode::CONFLICT,
            HostError::Quota { .. } => StatusCode::TOO_MANY_REQUESTS,
            HostError::Weir(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

async fn list(State(host): State<Arc<Host>>) -> impl IntoResponse {
    Json(host.list())
}

async fn submit(
    State(host): State<Arc<Host>>,
    Query(params): Query<HashMap<String, String>>,
    body: String,
) -> Result<impl IntoResponse, HostError> {
    let tenant = params
        .get("tenant")
        .ok_or_else(|| HostError::Invalid("say whose query it is: ?tenant=<name>".into()))?;
    // Loading plugins blocks: off the async workers.
    let tenant = tenant.clone();
    let info = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let _guard = handle.enter();
        host.submit(&tenant, &body)
    })
    .await
    .map_err(|e| HostError::Invalid(format!("submit task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn detail(
    State(host): State<Arc<Host>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    let (info, progress) = host.get(&format!("{tenant}/{name}"))?;
    Ok(Json(json!({ "query": info, "progress": progress })))
}

async fn stop(
    State(host): State<Arc<Host>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    Ok(Json(host.stop(&format!("{tenant}/{name}")).await?))
}

async fn start(
    State(host): State<Arc<Host>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    Ok(Json(host.restart(&format!("{tenant}/{name}"))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    stage: String,
    plugin: PathBuf,
    config: Option<serde_json::Value>,
}

async fn swap(
    State(host): State<Arc<Host>>,
    Path((tenant, name)): Path<(String, String)>,
    Json(body): Json<SwapBody>,
) -> Result<impl IntoResponse, HostError> {
    let accepted = host
        .swap(
            &format!("{tenant}/{name}"),
            &body.stage,
            &body.plugin,
            body.config.map(|c| c.to_string()),
        )
        .await?;
    Ok(Json(json!({
        "stage": accepted.stage,
        "digest": accepted.version.digest,
        "config": accepted.version.config_json,
    })))
}
