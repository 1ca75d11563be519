//! Confinement: how a pipeline submitted to `weir serve` by a tenant is
//! held inside what the operator granted.
//!
//! A hosted pipeline is untrusted text. Resolved with a [`Confinement`]:
//!
//! - local paths are relative, inside the query directory, with no `..`
//!   and no symbolic link on the way (absolute paths and `file://` are refused);
//! - external systems are reached only through named connections the
//!   operator grants the tenant: `path = "connection:landing/orders"` (a
//!   directory or an S3 bucket), `bootstrap_servers = "connection:events"`
//!   (Kafka), `url = "connection:crm"` (PostgreSQL). Their endpoints and
//!   credentials never appear in the pipeline, and are never shown back;
//! - `${VAR}` is not expanded (the host's environment is not the tenant's);
//! - plugins are named by the digest of bytes the tenant uploaded
//!   (`plugin = "sha256:<64 hex digits>"`), never by a host path;
//! - plugin limits are capped by the tenant's ceilings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::storage::S3Location;

/// What a tenant's pipeline may reach.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The tenant's uploaded plugins: `sha256:<hex>` names `<plugins>/<hex>.wasm`.
    pub plugins: PathBuf,
    /// The connections granted to the tenant, by name.
    pub connections: BTreeMap<String, Connection>,
    /// The highest limits a plugin stage may ask for (and the defaults
    /// when those are higher).
    pub ceilings: Ceilings,
}

/// The highest plugin limits a tenant may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// Longest call.
    pub timeout: Duration,
    /// Most linear memory per plugin instance.
    pub memory_bytes: u64,
    /// Most output per call.
    pub output_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        let defaults = super::PluginLimits::default();
        Ceilings {
            timeout: defaults.timeout,
            memory_bytes: defaults.memory_bytes,
            output_bytes: defaults.output_bytes,
        }
    }
}

/// An external system an operator grants by name.
#[derive(Clone, PartialEq, Eq)]
pub enum Connection {
    /// A host directory (read by file sources, written by sinks).
    Directory(PathBuf),
    /// An S3 bucket (and prefix), with its endpoint and credentials.
    S3(S3Location),
    /// A Kafka cluster.
    Kafka {
        /// `host:port,...`
        bootstrap_servers: String,
    },
    /// A PostgreSQL database.
    Postgres {
        /// Connection string, with credentials.
        url: String,
    },
}

impl Connection {
    /// The kind's name, as written in the operator's file.
    pub fn kind(&self) -> &'static str {
        match self {
            Connection::Directory(_) => "directory",
            Connection::S3(_) => "s3",
            Connection::Kafka { .. } => "kafka",
            Connection::Postgres { .. } => "postgres",
        }
    }
}

impl fmt::Debug for Connection {
    // Endpoints and credentials are the operator's: only the kind shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({})", self.kind())
    }
}

/// The prefix of a connection reference.
pub const CONNECTION_PREFIX: &str = "connection:";

/// Splits `connection:<name>/<rest>` into name and rest.
pub fn connection_reference(raw: &str) -> Option<(&str, &str)> {
    let rest = raw.strip_prefix(CONNECTION_PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// Checks that `raw` is a plain relative path: no root, no `..`, no `.`
/// tricks, no NUL; returns it as a path.
pub fn plain_relative(raw: &str) -> Result<PathBuf, String> {
    if raw.contains('\0') {
        return Err("a path may not contain NUL".into());
    }
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("{raw:?} leaves its directory (`..`)"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{raw:?} is an absolute path; a hosted pipeline names paths inside its query \
                     directory, or `connection:<name>/...`"
                ));
            }
        }
    }
    Ok(out)
}

/// Refuses `relative` under `root` when any existing part of it is a
/// symbolic link (a link could lead anywhere on the host).
pub fn refuse_symlinks(root: &Path, relative: &Path) -> Result<(), String> {
    let mut path = root.to_path_buf();
    for part in relative.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; hosted pipelines may not follow links",
                    relative.display()
                ));
            }
            Ok(_) => {}
            // Not there (yet): nothing below it can be a link either.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Parses a plugin digest reference `sha256:<64 lowercase hex>`.
pub fn plugin_digest(raw: &str) -> Option<&str> {
    let hex = raw.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_refuses_escapes() {
        assert_eq!(plain_relative("a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(plain_relative("../x").is_err());
        assert!(plain_relative("a/../../x").is_err());
        assert!(plain_relative("/etc/passwd").is_err());
        assert!(plain_relative("a\0b").is_err());
    }

    #[test]
    fn digests_are_exact() {
        let hex = "a".repeat(64);
        assert_eq!(plugin_digest(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(plugin_digest(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(plugin_digest("sha256:../../x"), None);
        assert_eq!(plugin_digest("/tmp/p.wasm"), None);
    }

    #[test]
    fn connection_references_split_name_and_rest() {
        assert_eq!(
            connection_reference("connection:landing/a/b"),
            Some(("landing", "a/b"))
        );
        assert_eq!(
            connection_reference("connection:events"),
            Some(("events", ""))
        );
        assert_eq!(connection_reference("landing/a"), None);
    }
}
