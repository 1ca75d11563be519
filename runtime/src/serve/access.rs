//! Who may do what on a `weir serve` host: bearer tokens (stored as
//! SHA-256 digests, never in the clear), tenants' quotas and ceilings, and
//! the connections the operator grants each tenant.
//!
//! The operator writes an access file (`weir serve --access access.toml`):
//!
//! ```toml
//! [[token]]                       # `weir token hash` prints such a line
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenant = "acme"                 # or: admin = true
//!
//! [defaults]                      # every tenant without its own table
//! max_queries = 8
//! connections = []
//!
//! [tenants.acme]
//! max_queries = 4
//! max_cores = 1                   # batches of its queries running at once
//! max_memory = "4GiB"             # sum of its running plugins' memory limits
//! max_plugin_memory = "512MiB"    # ceilings on a stage's limits
//! max_plugin_timeout = "30s"
//! max_plugin_output = "64MiB"
//! connections = ["landing", "events"]
//!
//! [connections.landing]
//! kind = "directory"
//! path = "/srv/landing/acme"
//!
//! [connections.events]
//! kind = "kafka"
//! bootstrap_servers = "10.0.0.5:9092"
//! ```
//!
//! An admin can also issue tenant tokens over the API; their digests are
//! kept in `<state>/access/tokens.json`. When no admin token is configured,
//! the host makes one at `<state>/access/admin.token` (mode 0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::config::{Ceilings, ConfigError, Connection};
use crate::error::{Result, WeirError};
use crate::storage::{S3Location, S3Options, write_file_durably};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Manages tenants and sees every query.
    Admin,
    /// Acts on its own queries only.
    Tenant(String),
}

/// A tenant's quotas, ceilings and connections.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    /// Running queries at most.
    pub max_queries: usize,
    /// The sum of its running plugins' memory limits at most.
    pub max_memory: Option<u64>,
    /// Ceilings on each stage's limits.
    pub ceilings: Ceilings,
    /// What its pipelines may reach, by name.
    pub connections: BTreeMap<String, Connection>,
    /// Uploaded plugins at most.
    pub max_plugins: usize,
    /// One uploaded plugin's size at most.
    pub max_plugin_bytes: u64,
    /// Batches of its queries running at once at most: its share of the
    /// machine's cores.
    pub max_cores: usize,
}

/// Defaults for tenants the access file does not name.
#[derive(Debug, Clone)]
pub struct PolicyDefaults {
    /// Running queries per tenant.
    pub max_queries: usize,
    /// Plugin memory per tenant.
    pub max_memory: Option<u64>,
}

/// The access rules of a host.
pub struct Access {
    tokens: Vec<(Caller, [u8; 32])>,
    issued: Mutex<Vec<IssuedToken>>,
    issued_path: PathBuf,
    defaults: RawPolicy,
    tenants: BTreeMap<String, RawPolicy>,
    connections: BTreeMap<String, Connection>,
    fallback: PolicyDefaults,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IssuedToken {
    tenant: String,
    sha256: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    token: Vec<Spanned<RawToken>>,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    tenants: BTreeMap<String, Spanned<RawPolicy>>,
    #[serde(default)]
    connections: BTreeMap<String, Spanned<RawConnection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    sha256: String,
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    max_queries: Option<usize>,
    max_cores: Option<usize>,
    max_memory: Option<String>,
    max_plugin_memory: Option<String>,
    max_plugin_timeout: Option<String>,
    max_plugin_output: Option<String>,
    max_plugins: Option<usize>,
    max_plugin_size: Option<String>,
    connections: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawConnection {
    Directory {
        path: PathBuf,
    },
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        allow_http: Option<bool>,
    },
    Kafka {
        bootstrap_servers: String,
    },
    Postgres {
        url: String,
    },
}

/// SHA-256 of a token.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The hex text of a token's digest, as the access file stores it.
pub fn token_digest_hex(token: &str) -> String {
    hex(&digest(token))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Compares digests without an early exit, so timing tells nothing.
pub(crate) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token (256 bits from the OS's generator).
pub fn new_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("weir_{}{}", hex(a.as_bytes()), hex(b.as_bytes()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeirError + '_ {
    move |source| WeirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Access {
    /// Reads the operator's `file` (if any) and the tokens issued earlier
    /// under `state_dir`; makes an admin token when none is configured.
    pub fn load(file: Option<&Path>, state_dir: &Path, fallback: PolicyDefaults) -> Result<Access> {
        let parsed = match file {
            Some(path) => parse_file(path)?,
            None => AccessFile::default(),
        };
        let dir = state_dir.join("access");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut connections = BTreeMap::new();
        for (name, raw) in parsed.connections {
            connections.insert(name, connection(raw.into_inner()));
        }
        let file_name = file.map(|f| f.display().to_string()).unwrap_or_default();
        let mut tenants = BTreeMap::new();
        for (tenant, policy) in parsed.tenants {
            let policy = policy.into_inner();
            check_grants(&file_name, &tenant, &policy, &connections)?;
            tenants.insert(tenant, policy);
        }
        check_grants(&file_name, "defaults", &parsed.defaults, &connections)?;
        let mut tokens = Vec::new();
        for token in parsed.token {
            let token = token.into_inner();
            let caller = match (token.admin, token.tenant) {
                (true, None) => Caller::Admin,
                (false, Some(tenant)) => Caller::Tenant(tenant),
                _ => {
                    return Err(access_error(
                        &file_name,
                        "each [[token]] has either `admin = true` or `tenant = \"...\"`",
                    ));
                }
            };
            let sha = unhex(&token.sha256).ok_or_else(|| {
                access_error(
                    &file_name,
                    "a token's sha256 is 64 hex digits (`weir token hash` prints it)",
                )
            })?;
            tokens.push((caller, sha));
        }
        if !tokens.iter().any(|(c, _)| *c == Caller::Admin) {
            tokens.push((Caller::Admin, digest(&admin_token(&dir)?)));
        }
        let issued_path = dir.join("tokens.json");
        let issued = match std::fs::read(&issued_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                WeirError::Internal(format!("{} is corrupt: {e}", issued_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&issued_path)(e)),
        };
        Ok(Access {
            tokens,
            issued: Mutex::new(issued),
            issued_path,
            defaults: parsed.defaults,
            tenants,
            connections,
            fallback,
        })
    }

    /// Who presents `token`, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        let mut found = None;
        // Every entry is compared, so timing does not tell which matched.
        for (caller, sha) in &self.tokens {
            if same(sha, &presented) {
                found = Some(caller.clone());
            }
        }
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        for token in issued.iter() {
            if unhex(&token.sha256).is_some_and(|sha| same(&sha, &presented)) {
                found = Some(Caller::Tenant(token.tenant.clone()));
            }
        }
        found
    }

    /// Issues a new token for `tenant` (kept as its digest); returns it.
    pub fn issue(&self, tenant: &str) -> Result<String> {
        let token = new_token();
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.push(IssuedToken {
            tenant: tenant.to_string(),
            sha256: token_digest_hex(&token),
        });
        self.store(&issued)?;
        Ok(token)
    }

    /// Revokes every issued token of `tenant`; returns how many.
    pub fn revoke(&self, tenant: &str) -> Result<usize> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let before = issued.len();
        issued.retain(|t| t.tenant != tenant);
        self.store(&issued)?;
        Ok(before - issued.len())
    }

    fn store(&self, issued: &[IssuedToken]) -> Result<()> {
        let json = serde_json::to_vec_pretty(issued)
            .map_err(|e| WeirError::Internal(format!("tokens: {e}")))?;
        write_file_durably(&self.issued_path, &json).map_err(io(&self.issued_path))
    }

    /// `tenant`'s quotas, ceilings and connections.
    pub fn policy(&self, tenant: &str) -> TenantPolicy {
        let own = self.tenants.get(tenant);
        let pick =
            |f: fn(&RawPolicy) -> Option<String>| own.and_then(f).or_else(|| f(&self.defaults));
        let bytes = |f: fn(&RawPolicy) -> Option<String>| {
            pick(f).and_then(|t| t.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()))
        };
        let mut ceilings = Ceilings::default();
        if let Some(b) = bytes(|p| p.max_plugin_memory.clone()) {
            ceilings.memory_bytes = b;
        }
        if let Some(b) = bytes(|p| p.max_plugin_output.clone()) {
            ceilings.output_bytes = b;
        }
        if let Some(d) =
            pick(|p| p.max_plugin_timeout.clone()).and_then(|t| humantime::parse_duration(&t).ok())
        {
            ceilings.timeout = d;
        }
        let granted = own
            .and_then(|p| p.connections.clone())
            .or_else(|| self.defaults.connections.clone())
            .unwrap_or_default();
        TenantPolicy {
            max_queries: own
                .and_then(|p| p.max_queries)
                .or(self.defaults.max_queries)
                .unwrap_or(self.fallback.max_queries),
            max_memory: bytes(|p| p.max_memory.clone()).or(self.fallback.max_memory),
            ceilings,
            connections: granted
                .into_iter()
                .filter_map(|name| Some((name.clone(), self.connections.get(&name)?.clone())))
                .collect(),
            max_plugins: own
                .and_then(|p| p.max_plugins)
                .or(self.defaults.max_plugins)
                .unwrap_or(100),
            max_plugin_bytes: bytes(|p| p.max_plugin_size.clone()).unwrap_or(64 << 20),
            max_cores: own
                .and_then(|p| p.max_cores)
                .or(self.defaults.max_cores)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
        }
    }
}

fn access_error(file: &str, message: impl Into<String>) -> WeirError {
    WeirError::Config(ConfigError {
        file: file.to_string(),
        line: None,
        column: None,
        message: message.into(),
        hint: None,
    })
}

fn parse_file(path: &Path) -> Result<AccessFile> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let file = path.display().to_string();
    let parsed: AccessFile = toml::from_str(&text)
        .map_err(|e| WeirError::Config(ConfigError::at(&file, &text, e.span(), e.message())))?;
    // Sizes and durations are checked now, not when a tenant first calls.
    let policies = parsed
        .tenants
        .values()
        .map(|p| (Some(p.span()), p.get_ref()))
        .chain(std::iter::once((None, &parsed.defaults)));
    for (span, policy) in policies {
        let sizes = [
            &policy.max_memory,
            &policy.max_plugin_memory,
            &policy.max_plugin_output,
            &policy.max_plugin_size,
        ];
        let bad_size = sizes
            .into_iter()
            .flatten()
            .find(|s| s.parse::<bytesize::ByteSize>().is_err());
        let bad_duration = policy
            .max_plugin_timeout
            .iter()
            .find(|t| humantime::parse_duration(t).is_err());
        if let Some(bad) = bad_size.or(bad_duration) {
            return Err(WeirError::Config(ConfigError::at(
                &file,
                &text,
                span,
                format!("invalid size or duration {bad:?}"),
            )));
        }
    }
    Ok(parsed)
}

fn check_grants(
    file: &str,
    who: &str,
    policy: &RawPolicy,
    connections: &BTreeMap<String, Connection>,
) -> Result<()> {
    for name in policy.connections.iter().flatten() {
        if !connections.contains_key(name) {
            return Err(access_error(
                file,
                format!("{who} is granted connection {name:?}, which is not defined"),
            ));
        }
    }
    Ok(())
}

fn connection(raw: RawConnection) -> Connection {
    match raw {
        RawConnection::Directory { path } => Connection::Directory(path),
        RawConnection::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            allow_http,
        } => Connection::S3(S3Location {
            bucket,
            prefix: prefix.trim_matches('/').to_string(),
            options: S3Options {
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            },
        }),
        RawConnection::Kafka { bootstrap_servers } => Connection::Kafka { bootstrap_servers },
        RawConnection::Postgres { url } => Connection::Postgres { url },
    }
}

/// The host's own admin token at `<dir>/admin.token`, made on first use.
fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let token = new_token();
    write_file_durably(&path, token.as_bytes()).map_err(io(&path))?;
    restrict(&path)?;
    Ok(token)
}

/// Only the host's user may read a token file.
fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_recognised_by_their_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("access.toml");
        let token = "weir_tenant_token";
        std::fs::write(
            &file,
            format!(
                "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
                token_digest_hex(token)
            ),
        )
        .unwrap();
        let fallback = PolicyDefaults {
            max_queries: 4,
            max_memory: None,
        };
        let access = Access::load(Some(&file), dir.path(), fallback).unwrap();
        assert_eq!(
            access.authenticate(token),
            Some(Caller::Tenant("acme".into()))
        );
        assert_eq!(access.authenticate("weir_tenant_tokem"), None);
        let admin = std::fs::read_to_string(dir.path().join("access/admin.token")).unwrap();
        assert_eq!(access.authenticate(&admin), Some(Caller::Admin));
        let issued = access.issue("bob").unwrap();
        assert_eq!(
            access.authenticate(&issued),
            Some(Caller::Tenant("bob".into()))
        );
        let stored = std::fs::read_to_string(dir.path().join("access/tokens.json")).unwrap();
        assert!(!stored.contains(&issued), "a token is stored in the clear");
        assert_eq!(access.revoke("bob").unwrap(), 1);
        assert_eq!(access.authenticate(&issued), None);
    }

    #[test]
    fn a_bad_access_file_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("access.toml");
        std::fs::write(&file, "[tenants.acme]\nmax_queries = \"many\"\n").unwrap();
        let fallback = PolicyDefaults {
            max_queries: 4,
            max_memory: None,
        };
        let err = Access::load(Some(&file), dir.path(), fallback)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
