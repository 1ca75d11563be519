//! The admin API of `weir serve` (JSON over HTTP). Every request carries
//! `Authorization: Bearer <token>`; the token says who calls (an admin or
//! one tenant, see [`super::access`]), never the request.
//!
//! | request | who | does |
//! |---|---|---|
//! | `GET /queries` | any | the caller's queries (an admin: all) |
//! | `POST /queries` (`application/toml`: pipeline) | tenant | checks, stores and starts a query |
//! | `PUT /plugins` (`application/wasm`: component) | tenant | stores a plugin; answers its `sha256:` digest |
//! | `GET /queries/{tenant}/{name}` | owner, admin | one query and its recent progress events |
//! | `POST /queries/{tenant}/{name}/stop` | owner, admin | stops it after its current batch |
//! | `POST /queries/{tenant}/{name}/start` | owner, admin | starts it again from its checkpoint |
//! | `POST /queries/{tenant}/{name}/swap` (`{"stage", "plugin": "sha256:…", "config"?, "shadow"?: N}`) | owner, admin | hot-swaps a transform plugin; with `shadow`, runs it beside the live one for N batches instead (report in the query's `shadow`) |
//! | `POST /tenants/{tenant}/tokens` | admin | issues a token for a tenant (shown once) |
//! | `DELETE /tenants/{tenant}/tokens` | admin | revokes the tenant's issued tokens |
//! | `GET /queries/{tenant}/{name}/plan` | owner, admin | its physical plan (as `weir explain` prints it) |
//! | `GET /events` (`?query=tenant/name`) | any | server-sent events: `progress` per committed batch, `status` per change of state, of the caller's queries (or that one); `resync` when the listener fell behind |
//! | `GET /metrics` | admin | Prometheus metrics of every query |
//! | `GET /console/` | anyone | the web console (a static page; it asks for a token and calls the API with it) |
//!
//! Before any of that, a request must name an allowed `Host` (no DNS
//! rebinding) and, if it has an `Origin`, the same one (no cross-site
//! calls from a browser). Errors are `{"error": "..."}` with 400, 401
//! (no or unknown token), 403 (not allowed), 404 (no such query, or one
//! of another tenant), 409 (running already), 413 (too large), 415 (wrong
//! content type) or 429 (tenant quota).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use super::access::Caller;
use super::events::{HostEvent, MAX_STREAMS_PER_CALLER};
use super::{Host, HostError};

/// The largest pipeline text accepted.
const MAX_PIPELINE_BYTES: usize = 1 << 20;

/// Who may reach the API, besides holding a token.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `Host` header values accepted (`127.0.0.1:7070`, `localhost:7070`, ...).
    pub hosts: Vec<String>,
}

impl Gate {
    /// The names a client on this machine uses for `addr`, plus `extra`
    /// (names the operator serves the API under).
    pub fn for_address(addr: std::net::SocketAddr, extra: &[String]) -> Gate {
        let port = addr.port();
        let mut hosts = vec![
            addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        hosts.extend(extra.iter().cloned());
        Gate { hosts }
    }
}

/// The admin router over `host`.
pub fn router(host: Arc<Host>, gate: Gate) -> axum::Router {
    let metrics = crate::metrics::router(host.registry());
    let state = (host.clone(), Arc::new(gate));
    axum::Router::new()
        .route("/queries", get(list).post(submit))
        .route(
            "/plugins",
            put(upload).layer(DefaultBodyLimit::max(super::MAX_PLUGIN_UPLOAD)),
        )
        .route("/queries/{tenant}/{name}", get(detail))
        .route("/queries/{tenant}/{name}/plan", get(plan))
        .route("/events", get(events))
        .route("/queries/{tenant}/{name}/stop", post(stop))
        .route("/queries/{tenant}/{name}/start", post(start))
        .route("/queries/{tenant}/{name}/swap", post(swap))
        .route(
            "/tenants/{tenant}/tokens",
            post(issue_token).delete(revoke_tokens),
        )
        .with_state(host)
        .merge(metrics)
        .layer(DefaultBodyLimit::max(MAX_PIPELINE_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .merge(
            super::console::router().layer(axum::middleware::from_fn_with_state(state, gate_only)),
        )
}

/// A refusal unless `Host` is one the host answers to and `Origin`, if
/// any, is the same.
pub(crate) fn gate_refusal(gate: &Gate, headers: &HeaderMap) -> Option<Response> {
    let host_header = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !gate.hosts.iter().any(|h| h == host_header) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "this host does not answer to that Host header (start it with --public-name)",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let same = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host_header));
        if !same {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused",
            ));
        }
    }
    None
}

/// The console's static files carry no data: only the gate applies.
async fn gate_only(
    State((_, gate)): State<(Arc<Host>, Arc<Gate>)>,
    request: Request,
    next: Next,
) -> Response {
    match gate_refusal(&gate, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

pub(crate) fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Checks `Host`, `Origin` and the bearer token; hands the caller on.
async fn authenticate(
    State((host, gate)): State<(Arc<Host>, Arc<Gate>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(refused) = gate_refusal(&gate, headers) {
        return refused;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` (the CLI reads WEIR_TOKEN or --token-file)",
        );
    };
    let Some(caller) = host.access().authenticate(token.trim()) else {
        return refuse(StatusCode::UNAUTHORIZED, "unknown token");
    };
    if request.uri().path() == "/metrics" && caller != Caller::Admin {
        return refuse(StatusCode::FORBIDDEN, "metrics are for admins");
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl IntoResponse for HostError {
    fn into_response(self) -> Response {
        let status = match &self {
            HostError::Invalid(_) => StatusCode::BAD_REQUEST,
            HostError::NotFound(_) => StatusCode::NOT_FOUND,
            HostError::Conflict(_) => StatusCode::CONFLICT,
            HostError::Quota { .. } => StatusCode::TOO_MANY_REQUESTS,
            HostError::Forbidden(_) => StatusCode::FORBIDDEN,
            HostError::Weir(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The tenant a caller acts as, for requests that create things.
fn tenant_of(caller: &Caller) -> Result<&str, HostError> {
    match caller {
        Caller::Tenant(tenant) => Ok(tenant),
        Caller::Admin => Err(HostError::Forbidden(
            "admin tokens manage tenants; submit and upload with a tenant's token".into(),
        )),
    }
}

/// `tenant/name` if the caller may act on it. Another tenant's query is
/// "not found", so its existence is not disclosed.
fn owned_id(caller: &Caller, tenant: &str, name: &str) -> Result<String, HostError> {
    let id = format!("{tenant}/{name}");
    match caller {
        Caller::Admin => Ok(id),
        Caller::Tenant(own) if own == tenant => Ok(id),
        Caller::Tenant(_) => Err(HostError::NotFound(id)),
    }
}

/// A refusal unless the body's media type is one of `allowed` (a browser
/// cannot send these cross-origin without a preflight).
fn wrong_content_type(headers: &HeaderMap, allowed: &[&str]) -> Option<Response> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let essence = given.split(';').next().unwrap_or_default().trim();
    (!allowed.contains(&essence)).then(|| {
        refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("send Content-Type: {}", allowed.join(" or ")),
        )
    })
}

async fn list(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
) -> impl IntoResponse {
    let mut queries = host.list();
    if let Caller::Tenant(tenant) = &caller {
        queries.retain(|q| &q.tenant == tenant);
    }
    Json(queries)
}

async fn submit(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, HostError> {
    if let Some(refused) = wrong_content_type(&headers, &["application/toml"]) {
        return Ok(refused);
    }
    let tenant = tenant_of(&caller)?.to_string();
    // Loading plugins blocks: off the async workers.
    let info = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let _guard = handle.enter();
        host.submit(&tenant, &body)
    })
    .await
    .map_err(|e| HostError::Invalid(format!("submit task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn upload(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HostError> {
    if let Some(refused) = wrong_content_type(&headers, &["application/wasm"]) {
        return Ok(refused);
    }
    let tenant = tenant_of(&caller)?.to_string();
    let size = body.len();
    let digest = tokio::task::spawn_blocking(move || host.upload_plugin(&tenant, &body))
        .await
        .map_err(|e| HostError::Invalid(format!("upload task failed: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "plugin": digest, "bytes": size })),
    )
        .into_response())
}

async fn detail(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    let (info, progress) = host.get(&owned_id(&caller, &tenant, &name)?)?;
    Ok(Json(json!({ "query": info, "progress": progress })))
}

async fn stop(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    Ok(Json(host.stop(&owned_id(&caller, &tenant, &name)?).await?))
}

async fn start(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    let id = owned_id(&caller, &tenant, &name)?;
    let info = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let _guard = handle.enter();
        host.restart(&id)
    })
    .await
    .map_err(|e| HostError::Invalid(format!("start task failed: {e}")))??;
    Ok(Json(info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    stage: String,
    plugin: String,
    config: Option<serde_json::Value>,
    /// Run beside the live version for this many batches instead.
    shadow: Option<u64>,
}

async fn swap(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path((tenant, name)): Path<(String, String)>,
    Json(body): Json<SwapBody>,
) -> Result<impl IntoResponse, HostError> {
    let accepted = host
        .swap(
            &owned_id(&caller, &tenant, &name)?,
            &body.stage,
            &body.plugin,
            body.config.map(|c| c.to_string()),
            body.shadow,
        )
        .await?;
    Ok(Json(json!({
        "stage": accepted.stage,
        "digest": accepted.version.digest,
        "config": accepted.version.config_json,
        "shadow": body.shadow,
    })))
}

fn admin_only(caller: &Caller) -> Result<(), HostError> {
    if *caller == Caller::Admin {
        Ok(())
    } else {
        Err(HostError::Forbidden("only an admin manages tenants".into()))
    }
}

async fn issue_token(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> Result<impl IntoResponse, HostError> {
    admin_only(&caller)?;
    super::check_name("tenant", &tenant)?;
    let token = host.access().issue(&tenant)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "tenant": tenant, "token": token })),
    ))
}

async fn revoke_tokens(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> Result<impl IntoResponse, HostError> {
    admin_only(&caller)?;
    let revoked = host.access().revoke(&tenant)?;
    Ok(Json(json!({ "tenant": tenant, "revoked": revoked })))
}

async fn plan(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, HostError> {
    let plan = host.plan(&owned_id(&caller, &tenant, &name)?).await?;
    Ok(Json(plan.to_json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFilter {
    /// Only this query's events (`tenant/name`).
    query: Option<String>,
}

/// One caller's event stream and what it may see.
struct Listener {
    receiver: tokio::sync::broadcast::Receiver<HostEvent>,
    closing: tokio::sync::watch::Receiver<bool>,
    caller: Caller,
    query: Option<String>,
    /// Counts against the caller's open streams until the stream ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Listener {
    fn sees(&self, event: &HostEvent) -> bool {
        let owned = match &self.caller {
            Caller::Admin => true,
            Caller::Tenant(tenant) => *tenant == event.tenant,
        };
        owned && self.query.as_ref().is_none_or(|id| *id == event.id)
    }

    /// The next event for this caller; `None` when the host shuts down.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Listener)> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.receiver.recv() => received,
                _ = self.closing.changed() => return None,
            };
            let event = match received {
                Ok(event) if self.sees(&event) => Event::default()
                    .event(event.kind.name())
                    .json_data(&event.data)
                    .unwrap_or_else(|_| Event::default().comment("an event that is not JSON")),
                Ok(_) => continue,
                // Fell behind: the page fetches the state again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    Event::default().event("resync").data(missed.to_string())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), self));
        }
    }
}

async fn events(
    State(host): State<Arc<Host>>,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<EventsFilter>,
) -> Result<Response, HostError> {
    if let Some(id) = &filter.query {
        let (tenant, name) = id
            .split_once('/')
            .ok_or_else(|| HostError::NotFound(id.clone()))?;
        host.get(&owned_id(&caller, tenant, name)?)?;
    }
    event_stream(host.events(), caller, filter.query)
}

/// A server-sent event stream of `events` for `caller` (only `query`'s, if
/// given; the caller was checked to see it).
pub(crate) fn event_stream(
    events: &super::events::EventHub,
    caller: Caller,
    query: Option<String>,
) -> Result<Response, HostError> {
    let holder = match &caller {
        Caller::Admin => "admin".to_string(),
        Caller::Tenant(tenant) => format!("tenant {tenant}"),
    };
    let permit = events
        .stream_permit(&holder)
        .ok_or_else(|| HostError::Quota {
            tenant: holder.clone(),
            reason: format!("{MAX_STREAMS_PER_CALLER} event streams open"),
        })?;
    let listener = Listener {
        receiver: events.subscribe(),
        closing: events.closing(),
        caller,
        query,
        _permit: permit,
    };
    let stream = futures::stream::unfold(listener, Listener::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
