//! `weir serve` and the commands that talk to it (`submit`, `status`,
//! `swap`, `stop`, `start`).

use std::path::{Path, PathBuf};

use weir::serve::{Host, HostConfig};
use weir::{PluginEngine, WeirError};

/// Runs the host until Ctrl-C / SIGTERM, then stops every query after its
/// current batch (they resume when the host starts again).
pub async fn serve(
    addr: std::net::SocketAddr,
    public_names: &[String],
    config: HostConfig,
) -> Result<(), WeirError> {
    // The API speaks plain HTTP: tokens would cross the network in the
    // clear. Off this machine it goes through a TLS-terminating proxy.
    if !addr.ip().is_loopback() {
        return Err(WeirError::Internal(format!(
            "weir serve binds loopback addresses only ({addr} is not): the admin API has no TLS \
             of its own, and tokens must not cross a network in the clear; bind 127.0.0.1 and \
             put a TLS-terminating proxy in front (with --public-name for its Host name)"
        )));
    }
    let host = Host::new(config.clone(), PluginEngine::new()?)?;
    let listener = weir::metrics::bind(addr).await?;
    let resumed = host.resume()?;
    eprintln!(
        "weir serve: admin API on http://{addr} (console: http://{addr}/console/; {resumed} queries resumed); admin token in {}",
        config.state_dir.join("access/admin.token").display()
    );
    let gate = weir::serve::api::Gate::for_address(addr, public_names);
    let app = weir::serve::api::router(host.clone(), gate);
    let closing = host.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        super::shutdown_signal().await;
        // Open console streams end now, or the server would wait on them.
        closing.events().close();
    });
    server
        .await
        .map_err(|e| WeirError::Internal(format!("admin server: {e}")))?;
    eprintln!("weir serve: stopping every query after its current batch");
    host.shutdown().await;
    Ok(())
}

/// Serves the console of the query `weir run` runs (`--ui ADDR`).
pub async fn serve_console(
    addr: std::net::SocketAddr,
    pipeline: &weir::Pipeline,
    control: weir::query::QueryControl,
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
) -> Result<std::sync::Arc<weir::serve::local::LocalConsole>, WeirError> {
    if !addr.ip().is_loopback() {
        return Err(WeirError::Internal(format!(
            "--ui binds loopback addresses only ({addr} is not): the console has no TLS of its own"
        )));
    }
    let token_file = std::env::temp_dir().join(format!(
        "weir-ui-{}-{}.token",
        pipeline.name,
        std::process::id()
    ));
    let console = weir::serve::local::LocalConsole::new(pipeline, control, stop, &token_file)?;
    let listener = weir::metrics::bind(addr).await?;
    let gate = weir::serve::api::Gate::for_address(addr, &[]);
    let app = console.clone().router(gate);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("console server: {e}");
        }
    });
    eprintln!(
        "weir run: console on http://{addr}/console/ (sign in with the token in {})",
        token_file.display()
    );
    Ok(console)
}

/// Where a client command finds the host, and its token.
#[derive(clap::Args)]
pub struct Remote {
    /// The host's admin API.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    server: String,
    /// A file holding the bearer token (default: the WEIR_TOKEN variable).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Remote {
    /// A client with the token from `--token-file` or `WEIR_TOKEN`.
    pub fn client(&self) -> Result<Client, WeirError> {
        let token = match &self.token_file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|source| WeirError::Io {
                    path: file.clone(),
                    source,
                })?
                .trim()
                .to_string(),
            None => std::env::var("WEIR_TOKEN").map_err(|_| {
                WeirError::Internal(
                    "no token: set WEIR_TOKEN or pass --token-file (an admin's is in \
                     <state-dir>/access/admin.token; `weir token issue TENANT` makes a tenant's)"
                        .into(),
                )
            })?,
        };
        Ok(Client {
            server: self.server.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        })
    }
}

/// A client of the admin API at `server`.
pub struct Client {
    server: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Sends a request; prints the JSON answer; an error status is an error.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, WeirError> {
        let unreachable = |e: reqwest::Error| WeirError::Unavailable {
            service: format!("weir serve at {}", self.server),
            reason: e.to_string(),
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if !status.is_success() {
            let message = json["error"]
                .as_str()
                .map_or(json.to_string(), str::to_string);
            return Err(WeirError::Refused {
                server: self.server.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(json)
    }

    /// Submits `pipeline`. A `plugin` that names a local file (relative
    /// to the pipeline, `${VAR}` from this shell) is uploaded first and
    /// replaced by its digest: the host never reads the client's paths.
    pub async fn submit(&self, pipeline: &Path) -> Result<(), WeirError> {
        let text = std::fs::read_to_string(pipeline).map_err(|source| WeirError::Io {
            path: pipeline.to_path_buf(),
            source,
        })?;
        let base = pipeline.parent().unwrap_or(Path::new("."));
        let text = self.upload_local_plugins(&text, base).await?;
        let answer = self
            .call(
                self.http
                    .post(format!("{}/queries", self.server))
                    .header("content-type", "application/toml")
                    .body(text),
            )
            .await?;
        print_json(&answer);
        Ok(())
    }

    /// Uploads a component; returns its `sha256:` reference.
    pub async fn upload(&self, plugin: &Path) -> Result<String, WeirError> {
        let wasm = std::fs::read(plugin).map_err(|source| WeirError::Io {
            path: plugin.to_path_buf(),
            source,
        })?;
        let answer = self
            .call(
                self.http
                    .put(format!("{}/plugins", self.server))
                    .header("content-type", "application/wasm")
                    .body(wasm),
            )
            .await?;
        Ok(answer["plugin"].as_str().unwrap_or_default().to_string())
    }

    async fn upload_local_plugins(&self, text: &str, base: &Path) -> Result<String, WeirError> {
        let Ok(document) = toml::de::DeTable::parse(text) else {
            // The host reports the syntax error with its line and column.
            return Ok(text.to_string());
        };
        let mut found = Vec::new();
        plugin_values(document.get_ref(), &mut found);
        // Replaced from the end, so earlier spans stay valid.
        found.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
        let mut out = text.to_string();
        for (span, value) in found {
            if value.starts_with("sha256:") {
                continue;
            }
            let file = base.join(expand_client_env(&value)?);
            let reference = self.upload(&file).await?;
            out.replace_range(span, &format!("\"{reference}\""));
        }
        Ok(out)
    }

    /// Issues (or revokes) a tenant's tokens.
    pub async fn tokens(&self, tenant: &str, issue: bool) -> Result<(), WeirError> {
        let url = format!("{}/tenants/{tenant}/tokens", self.server);
        let request = if issue {
            self.http.post(url)
        } else {
            self.http.delete(url)
        };
        let answer = self.call(request).await?;
        match answer["token"].as_str() {
            Some(token) => println!("{token}"),
            None => print_json(&answer),
        }
        Ok(())
    }

    pub async fn status(&self, id: Option<&str>) -> Result<(), WeirError> {
        let url = match id {
            Some(id) => format!("{}/queries/{id}", self.server),
            None => format!("{}/queries", self.server),
        };
        let answer = self.call(self.http.get(url)).await?;
        print_json(&answer);
        Ok(())
    }

    pub async fn swap(
        &self,
        id: &str,
        stage: &str,
        plugin: &str,
        config: Option<&str>,
        shadow: Option<u64>,
    ) -> Result<(), WeirError> {
        let reference = if plugin.starts_with("sha256:") {
            plugin.to_string()
        } else {
            self.upload(Path::new(plugin)).await?
        };
        let mut body = serde_json::json!({ "stage": stage, "plugin": reference });
        if let Some(batches) = shadow {
            body["shadow"] = batches.into();
        }
        if let Some(config) = config {
            body["config"] = serde_json::from_str(config)
                .map_err(|e| WeirError::Internal(format!("--config must be a JSON object: {e}")))?;
        }
        let answer = self
            .call(
                self.http
                    .post(format!("{}/queries/{id}/swap", self.server))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await?;
        print_json(&answer);
        Ok(())
    }

    /// Waits for query `id`'s shadow run to end (or the query to stop),
    /// then prints its report.
    pub async fn wait_for_shadow(&self, id: &str) -> Result<(), WeirError> {
        loop {
            let answer = self
                .call(self.http.get(format!("{}/queries/{id}", self.server)))
                .await?;
            let query = &answer["query"];
            let report = &query["shadow"];
            let running = query["status"]["state"] == "running";
            if report["done"] == true || !running {
                print_shadow(report);
                if !running {
                    eprintln!("the query is no longer running: the shadow ended early");
                }
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    pub async fn post(&self, id: &str, action: &str) -> Result<(), WeirError> {
        let answer = self
            .call(
                self.http
                    .post(format!("{}/queries/{id}/{action}", self.server)),
            )
            .await?;
        print_json(&answer);
        Ok(())
    }
}

/// A shadow report, as a person reads it.
fn print_shadow(report: &serde_json::Value) {
    let number = |key: &str| report[key].as_u64().unwrap_or(0);
    let ms = |key: &str| report[key].as_f64().unwrap_or(0.0);
    println!(
        "shadow of stage `{}`: {} (live) vs {} (candidate), {} of {} batches",
        report["stage"].as_str().unwrap_or("?"),
        report["live"].as_str().unwrap_or("?"),
        report["candidate"].as_str().unwrap_or("?"),
        number("batches"),
        number("batches_wanted"),
    );
    println!(
        "candidate config: {}",
        report["candidate_config"].as_str().unwrap_or("?")
    );
    println!(
        "rows: {} the same, {} live rows the candidate did not produce (-), {} new (+); the candidate quarantined {}",
        number("rows_same"),
        number("rows_removed"),
        number("rows_added"),
        number("candidate_quarantined"),
    );
    let (live, candidate) = (ms("live_ms"), ms("candidate_ms"));
    println!(
        "time: live {live:.1} ms, candidate {candidate:.1} ms ({:.2}x)",
        if live > 0.0 { candidate / live } else { 0.0 }
    );
    if let Some(error) = report["error"].as_str() {
        println!("the candidate failed: {error}");
    }
    for line in report["samples"].as_array().into_iter().flatten() {
        println!("{}", line.as_str().unwrap_or_default());
    }
}

fn print_json(answer: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(answer).unwrap_or_default()
    );
}

/// Every `plugin = "..."` string value in a pipeline, with its span.
fn plugin_values(table: &toml::de::DeTable<'_>, found: &mut Vec<(std::ops::Range<usize>, String)>) {
    for (key, value) in table {
        if key.get_ref() == "plugin"
            && let toml::de::DeValue::String(text) = value.get_ref()
        {
            found.push((value.span(), text.to_string()));
        }
        walk_value(value.get_ref(), found);
    }
}

fn walk_value(value: &toml::de::DeValue<'_>, found: &mut Vec<(std::ops::Range<usize>, String)>) {
    match value {
        toml::de::DeValue::Table(table) => plugin_values(table, found),
        toml::de::DeValue::Array(items) => {
            for item in items {
                walk_value(item.get_ref(), found);
            }
        }
        _ => {}
    }
}

/// `${VAR}` from the client's environment (the host expands nothing).
fn expand_client_env(raw: &str) -> Result<String, WeirError> {
    weir::config::expand_env(raw).map_err(|e| {
        WeirError::Internal(match e {
            weir::config::EnvError::Unclosed => format!("unclosed `${{` in plugin {raw:?}"),
            weir::config::EnvError::Unset(var) => {
                format!("plugin {raw:?}: environment variable {var} is not set")
            }
        })
    })
}
