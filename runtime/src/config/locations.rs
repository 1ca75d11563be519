//! Locations, endpoints and plugin files named in a pipeline: resolved
//! against its folder and `[s3]`, or confined to what a tenant was granted.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::confine::{self, Confinement, Connection, plugin_digest};
use super::{ConfigError, Resolver};
use crate::storage::{Location, S3Options};

/// `[s3]`: settings for every `s3://` location of the pipeline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) access_key_id: Option<Spanned<String>>,
    pub(super) secret_access_key: Option<Spanned<String>>,
    pub(super) allow_http: Option<bool>,
}

impl Resolver<'_> {
    pub(super) fn s3_options(&self, raw: &RawS3) -> Result<S3Options, ConfigError> {
        if self.confine.is_some() {
            return Err(ConfigError {
                file: self.file.to_string(),
                line: None,
                column: None,
                message: "a hosted pipeline cannot set `[s3]`: S3 is reached through a connection \
                          the operator grants (`path = \"connection:<name>/...\"`)"
                    .into(),
                hint: None,
            });
        }
        let expand = |v: &Option<Spanned<String>>| v.as_ref().map(|v| self.expand(v)).transpose();
        Ok(S3Options {
            endpoint: expand(&raw.endpoint)?,
            region: expand(&raw.region)?,
            access_key_id: expand(&raw.access_key_id)?,
            secret_access_key: expand(&raw.secret_access_key)?,
            allow_http: raw.allow_http,
        })
    }

    pub(super) fn location(&self, raw: &Spanned<String>) -> Result<Location, ConfigError> {
        if let Some(confine) = self.confine {
            return self.confined_location(raw, confine);
        }
        let expanded = self.expand(raw)?;
        Location::parse_with(&expanded, self.base, Some(&self.s3)).map_err(|why| self.err(raw, why))
    }

    /// A location in a hosted pipeline: inside the query directory, or
    /// under a granted directory or S3 connection.
    pub(super) fn confined_location(
        &self,
        raw: &Spanned<String>,
        confine: &Confinement,
    ) -> Result<Location, ConfigError> {
        let text = self.expand(raw)?;
        if let Some((name, rest)) = confine::connection_reference(&text) {
            let relative = confine::plain_relative(rest).map_err(|why| self.err(raw, why))?;
            return match self.connection(raw, name, confine)? {
                Connection::Directory(root) => {
                    confine::refuse_symlinks(root, &relative).map_err(|why| self.err(raw, why))?;
                    Ok(Location::Local(root.join(relative)))
                }
                Connection::S3(bucket) => {
                    let mut location = bucket.clone();
                    let below = relative.to_string_lossy();
                    if !below.is_empty() {
                        location.prefix = [location.prefix.as_str(), &below]
                            .iter()
                            .filter(|p| !p.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join("/");
                    }
                    Ok(Location::S3(location))
                }
                other => Err(self.err(
                    raw,
                    format!(
                        "connection {name:?} is a {} connection, not a directory or a bucket",
                        other.kind()
                    ),
                )),
            };
        }
        if text.contains("://") {
            return Err(self.err(
                raw,
                "a hosted pipeline names paths inside its query directory, or \
                 `connection:<name>/...` for what the operator granted; URLs are refused",
            ));
        }
        let relative = confine::plain_relative(&text).map_err(|why| self.err(raw, why))?;
        confine::refuse_symlinks(self.base, &relative).map_err(|why| self.err(raw, why))?;
        Ok(Location::Local(self.base.join(relative)))
    }

    /// A granted connection by name; the error lists the granted names
    /// (never their settings).
    pub(super) fn connection<'c>(
        &self,
        raw: &Spanned<String>,
        name: &str,
        confine: &'c Confinement,
    ) -> Result<&'c Connection, ConfigError> {
        confine.connections.get(name).ok_or_else(|| {
            let granted: Vec<&str> = confine.connections.keys().map(String::as_str).collect();
            self.err(
                raw,
                format!("no connection {name:?} is granted to this tenant (granted: {granted:?})"),
            )
        })
    }

    /// An endpoint of an external system (`kafka`, `postgres`): written out
    /// in `weir run`, a granted connection in a hosted pipeline.
    pub(super) fn endpoint(
        &self,
        raw: &Spanned<String>,
        kind: &str,
    ) -> Result<String, ConfigError> {
        let Some(confine) = self.confine else {
            return self.expand(raw);
        };
        let Some((name, "")) = confine::connection_reference(raw.get_ref()) else {
            return Err(self.err(
                raw,
                format!(
                    "a hosted pipeline reaches {kind} only through a connection the operator \
                         grants: write \"connection:<name>\""
                ),
            ));
        };
        match (self.connection(raw, name, confine)?, kind) {
            (Connection::Kafka { bootstrap_servers }, "kafka") => Ok(bootstrap_servers.clone()),
            (Connection::Postgres { url }, "postgres") => Ok(url.clone()),
            (other, _) => Err(self.err(
                raw,
                format!(
                    "connection {name:?} is a {} connection, not {kind}",
                    other.kind()
                ),
            )),
        }
    }

    /// The file of a stage's plugin: a path in `weir run`, the digest of
    /// an uploaded component in a hosted pipeline.
    pub(super) fn plugin_file(&self, plugin: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        let Some(confine) = self.confine else {
            return Ok(self.base.join(self.expand(plugin)?));
        };
        let hex = plugin_digest(plugin.get_ref()).ok_or_else(|| {
            self.err(
                plugin,
                "a hosted pipeline names a plugin by the digest of an upload: \
                 plugin = \"sha256:<64 hex digits>\" (`weir upload <file.wasm>` prints it)",
            )
        })?;
        Ok(confine.plugins.join(format!("{hex}.wasm")))
    }

    /// Refuses a limit over the tenant's ceiling.
    pub(super) fn within_ceiling<T, V: PartialOrd + fmt::Debug>(
        &self,
        spanned: &Spanned<T>,
        key: &str,
        value: V,
        ceiling: V,
    ) -> Result<V, ConfigError> {
        if value > ceiling {
            return Err(self.err(
                spanned,
                format!("{key} {value:?} is over this tenant's ceiling of {ceiling:?}"),
            ));
        }
        Ok(value)
    }

    /// Expands `${VAR}` from the environment (not in a hosted pipeline:
    /// the host's environment is not the tenant's).
    pub(super) fn expand(&self, raw: &Spanned<String>) -> Result<String, ConfigError> {
        if self.confine.is_some() {
            if raw.get_ref().contains("${") {
                return Err(self.err(
                    raw,
                    "`${...}` is not expanded in a hosted pipeline (the host's environment is \
                     not the tenant's); write the value out or use a connection",
                ));
            }
            return Ok(raw.get_ref().clone());
        }
        expand_env(raw.get_ref()).map_err(|e| match e {
            EnvError::Unclosed => self.err(raw, "unclosed `${` in path"),
            EnvError::Unset(var) => self
                .err(raw, format!("environment variable {var} is not set"))
                .hint(format!(
                    "export {var}=... before running, or write the path out"
                )),
        })
    }
}

/// Why `${VAR}` could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// A `${` without its `}`.
    Unclosed,
    /// This variable is not set.
    Unset(String),
}

/// Expands every `${VAR}` in `raw` from this process's environment (the
/// CLI expands a pipeline's local plugin paths with it; `weir run` its paths).
pub fn expand_env(raw: &str) -> Result<String, EnvError> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(EnvError::Unclosed)?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| EnvError::Unset(var.to_string()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
