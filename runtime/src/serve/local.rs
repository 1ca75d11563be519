//! The console for one `weir run` query (`weir run --ui ADDR`): the same
//! page as `weir serve`'s, over the same API shapes, for the query this
//! process runs. It appears as tenant `local`.
//!
//! A token is made at start and written to a file only the user can read
//! (its path is printed, the token is not); the page asks for it, as it
//! does on a host. The address must be loopback, the `Host` and `Origin`
//! checks are the host's, and uploads for a swap are kept in a temporary
//! directory that goes with the process.

use std::collections::VecDeque;
use std::path::{Path as FilePath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query as UrlQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::access::{Caller, digest, same};
use super::api::{Gate, event_stream, gate_refusal, refuse};
use super::events::{EventHub, EventKind, HostEvent};
use super::{HostError, QueryInfo, Status};
use crate::config::Pipeline;
use crate::error::{Result, WeirError};
use crate::query::{BatchProgress, QueryControl, QueryOutcome};

/// The tenant a `weir run` query appears as.
pub const LOCAL_TENANT: &str = "local";

/// Progress events kept for the page.
const RECENT_PROGRESS: usize = 100;

/// One running query and what its console shows.
pub struct LocalConsole {
    name: String,
    pipeline: Arc<Pipeline>,
    control: QueryControl,
    stop: Arc<watch::Sender<bool>>,
    status: Mutex<Status>,
    progress: Mutex<VecDeque<Value>>,
    batches: Mutex<(u64, u64)>,
    events: EventHub,
    token_sha256: [u8; 32],
    token_file: PathBuf,
    uploads: tempfile::TempDir,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalConsole {
    /// A console for `pipeline`'s query, swapped through `control` and
    /// stopped through `stop`; its token is written to `token_file` (mode 0600).
    pub fn new(
        pipeline: &Pipeline,
        control: QueryControl,
        stop: Arc<watch::Sender<bool>>,
        token_file: &FilePath,
    ) -> Result<Arc<LocalConsole>> {
        let token = super::access::new_token();
        write_private(token_file, token.as_bytes()).map_err(|source| WeirError::Io {
            path: token_file.to_path_buf(),
            source,
        })?;
        let uploads = tempfile::tempdir().map_err(|source| WeirError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(Arc::new(LocalConsole {
            name: pipeline.name.clone(),
            pipeline: Arc::new(pipeline.clone()),
            control,
            stop,
            status: Mutex::new(Status::Running),
            progress: Mutex::new(VecDeque::new()),
            batches: Mutex::new((0, 0)),
            events: EventHub::default(),
            token_sha256: digest(&token),
            token_file: token_file.to_path_buf(),
            uploads,
        }))
    }

    fn id(&self) -> String {
        format!("{LOCAL_TENANT}/{}", self.name)
    }

    fn info(&self) -> QueryInfo {
        let (batches, quarantined_rows) = *lock(&self.batches);
        QueryInfo {
            id: self.id(),
            tenant: LOCAL_TENANT.to_string(),
            name: self.name.clone(),
            status: lock(&self.status).clone(),
            batches,
            stages: self.control.stage_names(),
            quarantined_rows,
            shadow: self.control.shadow_report(),
        }
    }

    fn publish(&self, kind: EventKind, data: Value) {
        self.events.publish(HostEvent {
            id: self.id(),
            tenant: LOCAL_TENANT.to_string(),
            kind,
            data,
        });
    }

    /// A batch committed.
    pub fn observe(&self, progress: &BatchProgress) {
        let (batches, quarantined) = {
            let mut counts = lock(&self.batches);
            counts.0 += 1;
            counts.1 += progress.quarantined_rows;
            *counts
        };
        let mut json = progress.to_json();
        json["id"] = self.id().into();
        json["hostBatches"] = batches.into();
        json["hostQuarantinedRows"] = quarantined.into();
        {
            let mut recent = lock(&self.progress);
            if recent.len() == RECENT_PROGRESS {
                recent.pop_front();
            }
            recent.push_back(json.clone());
        }
        self.publish(EventKind::Progress, json);
    }

    /// The query ended (the process is about to).
    pub fn finished(&self, outcome: &Result<QueryOutcome>) {
        *lock(&self.status) = match outcome {
            Ok(QueryOutcome::Drained { .. }) => Status::Finished,
            Ok(QueryOutcome::Stopped { .. }) => Status::Stopped,
            Err(e) => Status::Failed(e.to_string()),
        };
        self.publish(
            EventKind::Status,
            serde_json::to_value(self.info()).unwrap_or(Value::Null),
        );
    }

    /// Ends open event streams and removes the token file.
    pub fn close(&self) {
        self.events.close();
        let _ = std::fs::remove_file(&self.token_file);
    }

    /// The console's routes: the page and the API it calls.
    pub fn router(self: Arc<Self>, gate: Gate) -> axum::Router {
        let state = (self.clone(), Arc::new(gate));
        axum::Router::new()
            .route("/queries", get(list))
            .route(
                "/plugins",
                put(upload).layer(DefaultBodyLimit::max(super::MAX_PLUGIN_UPLOAD)),
            )
            .route("/queries/{tenant}/{name}", get(detail))
            .route("/queries/{tenant}/{name}/plan", get(plan))
            .route("/queries/{tenant}/{name}/stop", post(stop))
            .route("/queries/{tenant}/{name}/start", post(start))
            .route("/queries/{tenant}/{name}/swap", post(swap))
            .route("/events", get(events))
            .with_state(self)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                authenticate,
            ))
            .merge(
                super::console::router()
                    .layer(axum::middleware::from_fn_with_state(state, gate_only)),
            )
    }

    /// This query, if `tenant/name` names it ("not found" otherwise).
    fn this(&self, tenant: &str, name: &str) -> Result<(), HostError> {
        if tenant == LOCAL_TENANT && name == self.name {
            Ok(())
        } else {
            Err(HostError::NotFound(format!("{tenant}/{name}")))
        }
    }
}

/// Writes a file only this user can read, from its creation on.
fn write_private(path: &FilePath, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

type Shared = (Arc<LocalConsole>, Arc<Gate>);

async fn gate_only(State((_, gate)): State<Shared>, request: Request, next: Next) -> Response {
    match gate_refusal(&gate, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

async fn authenticate(
    State((console, gate)): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refused) = gate_refusal(&gate, request.headers()) {
        return refused;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|token| digest(token.trim()));
    match presented {
        Some(sha) if same(&sha, &console.token_sha256) => next.run(request).await,
        Some(_) => refuse(StatusCode::UNAUTHORIZED, "unknown token"),
        None => refuse(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` (the token file weir run printed)",
        ),
    }
}

async fn list(State(console): State<Arc<LocalConsole>>) -> impl IntoResponse {
    Json(vec![console.info()])
}

async fn detail(
    State(console): State<Arc<LocalConsole>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    console.this(&tenant, &name)?;
    let progress: Vec<Value> = lock(&console.progress).iter().cloned().collect();
    Ok(Json(
        json!({ "query": console.info(), "progress": progress }),
    ))
}

async fn plan(
    State(console): State<Arc<LocalConsole>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    console.this(&tenant, &name)?;
    Ok(Json(
        crate::query::Plan::of_checkpointed(&console.pipeline)
            .await?
            .to_json(),
    ))
}

async fn stop(
    State(console): State<Arc<LocalConsole>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    console.this(&tenant, &name)?;
    // The query stops after its current batch; then `weir run` exits.
    let _ = console.stop.send(true);
    Ok(Json(console.info()))
}

async fn start(
    State(console): State<Arc<LocalConsole>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Response, HostError> {
    console.this(&tenant, &name)?;
    Ok(refuse(
        StatusCode::CONFLICT,
        "weir run does not start a query again: run `weir run` again (it resumes from the checkpoint)",
    ))
}

async fn upload(
    State(console): State<Arc<LocalConsole>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HostError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if content_type.split(';').next().unwrap_or_default().trim() != "application/wasm" {
        return Ok(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/wasm",
        ));
    }
    let digest = crate::plugin::digest(&body);
    let file = console.upload_path(&digest)?;
    crate::storage::write_file_durably(&file, &body).map_err(|source| WeirError::Io {
        path: file.clone(),
        source,
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "plugin": digest, "bytes": body.len() })),
    )
        .into_response())
}

impl LocalConsole {
    /// Where upload `sha256:<hex>` is kept (an invalid name is refused).
    fn upload_path(&self, reference: &str) -> Result<PathBuf, HostError> {
        let hex = crate::config::plugin_digest(reference).ok_or_else(|| {
            HostError::Invalid(
                "name the plugin by the digest of an upload: \"sha256:<64 hex digits>\"".into(),
            )
        })?;
        Ok(self.uploads.path().join(format!("{hex}.wasm")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    stage: String,
    plugin: String,
    config: Option<Value>,
    shadow: Option<u64>,
}

async fn swap(
    State(console): State<Arc<LocalConsole>>,
    Path((tenant, name)): Path<(String, String)>,
    Json(body): Json<SwapBody>,
) -> Result<impl IntoResponse, HostError> {
    console.this(&tenant, &name)?;
    let file = console.upload_path(&body.plugin)?;
    if !file.is_file() {
        return Err(HostError::Invalid(format!(
            "no upload {} (PUT /plugins first)",
            body.plugin
        )));
    }
    let config = body.config.map(|c| c.to_string());
    let accepted = match body.shadow {
        Some(batches) => {
            console
                .control
                .shadow(&body.stage, &file, config, batches)
                .await
        }
        None => console.control.swap(&body.stage, &file, config).await,
    }
    .map_err(|e| HostError::Invalid(e.to_string()))?;
    Ok(Json(json!({
        "stage": accepted.stage,
        "digest": accepted.version.digest,
        "config": accepted.version.config_json,
        "shadow": body.shadow,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFilter {
    query: Option<String>,
}

async fn events(
    State(console): State<Arc<LocalConsole>>,
    UrlQuery(filter): UrlQuery<EventsFilter>,
) -> Result<Response, HostError> {
    if let Some(id) = &filter.query
        && *id != console.id()
    {
        return Err(HostError::NotFound(id.clone()));
    }
    event_stream(
        &console.events,
        Caller::Tenant(LOCAL_TENANT.to_string()),
        filter.query,
    )
}
