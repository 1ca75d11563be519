//! `weir serve` and the commands that talk to it (`submit`, `status`,
//! `swap`, `stop`, `start`).

use std::path::Path;

use weir::serve::{Host, HostConfig};
use weir::{PluginEngine, WeirError};

/// Runs the host until Ctrl-C / SIGTERM, then stops every query after its
/// current batch (they resume when the host starts again).
pub async fn serve(addr: std::net::SocketAddr, config: HostConfig) -> Result<(), WeirError> {
    let host = Host::new(config, PluginEngine::new()?)?;
    let listener = weir::metrics::bind(addr).await?;
    let resumed = host.resume()?;
    eprintln!("weir serve: admin API on http://{addr} ({resumed} queries resumed)");
    let app = weir::serve::api::router(host.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(super::shutdown_signal());
    server
        .await
        .map_err(|e| WeirError::Internal(format!("admin server: {e}")))?;
    eprintln!("weir serve: stopping every query after its current batch");
    host.shutdown().await;
    Ok(())
}

/// A client of the admin API at `server`.
pub struct Client {
    server: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> Client {
        Client {
            server: server.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request; prints the JSON answer; an error status is an error.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, WeirError> {
        let unreachable = |e: reqwest::Error| WeirError::Unavailable {
            service: format!("weir serve at {}", self.server),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
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

    pub async fn submit(&self, pipeline: &Path, tenant: &str) -> Result<(), WeirError> {
        let text = std::fs::read_to_string(pipeline).map_err(|source| WeirError::Io {
            path: pipeline.to_path_buf(),
            source,
        })?;
        let answer = self
            .call(
                self.http
                    .post(format!("{}/queries?tenant={tenant}", self.server))
                    .body(text),
            )
            .await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        Ok(())
    }

    pub async fn status(&self, id: Option<&str>) -> Result<(), WeirError> {
        let url = match id {
            Some(id) => format!("{}/queries/{id}", self.server),
            None => format!("{}/queries", self.server),
        };
        let answer = self.call(self.http.get(url)).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        Ok(())
    }

    pub async fn swap(
        &self,
        id: &str,
        stage: &str,
        plugin: &Path,
        config: Option<&str>,
    ) -> Result<(), WeirError> {
        let plugin = std::path::absolute(plugin).map_err(|source| WeirError::Io {
            path: plugin.to_path_buf(),
            source,
        })?;
        let mut body = serde_json::json!({ "stage": stage, "plugin": plugin });
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
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        Ok(())
    }

    pub async fn post(&self, id: &str, action: &str) -> Result<(), WeirError> {
        let answer = self
            .call(
                self.http
                    .post(format!("{}/queries/{id}/{action}", self.server)),
            )
            .await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        Ok(())
    }
}
