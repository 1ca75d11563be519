//! Where pipeline data lives: every path (source, sinks, checkpoint, state
//! snapshots) is an object-store location — a local directory or an S3
//! prefix — so callers never care which.
//!
//! S3 settings come from the environment (`AWS_ENDPOINT`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, as
//! object_store reads them), overridden by the pipeline's `[s3]` table.
//! Entries that must be written once (offsets, commits, sink logs) use
//! conditional create (`If-None-Match: *`), so two writers can never both
//! commit batch N. Local writes are durable when they return
//! ([`DurableLocal`]): the file and its directory entries are fsynced.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Result, WeirError};

mod durable;
pub use durable::{DurableLocal, write_file_durably};

/// The bytes of object `path` in `store`, or `None` if there is none.
pub async fn get_if_exists(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
) -> object_store::Result<Option<bytes::Bytes>> {
    match store.get(path).await {
        Ok(found) => found.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A directory-like location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (absolute).
    Local(PathBuf),
    /// A prefix in an S3 bucket.
    S3(S3Location),
}

/// `s3://bucket/prefix` with its connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    /// Settings that override the environment.
    pub options: S3Options,
}

/// S3 connection settings from the pipeline's `[s3]` table; unset fields
/// come from the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL, for S3-compatible stores (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
}

impl fmt::Debug for S3Options {
    // The secret never reaches logs or error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl Location {
    /// Parses a local path or `file://` URL, resolving relative paths
    /// against `base`; `s3://` is refused (see [`Location::parse_with`]).
    pub fn parse(raw: &str, base: &Path) -> Result<Location, String> {
        Location::parse_with(raw, base, None)
    }

    /// Parses a local path, `file://` URL or, given `s3` settings,
    /// `s3://bucket/prefix`.
    pub fn parse_with(raw: &str, base: &Path, s3: Option<&S3Options>) -> Result<Location, String> {
        if let Some(rest) = raw.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let Some(options) = s3 else {
                return Err("`s3://` locations need S3 settings".into());
            };
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(format!("invalid bucket name {bucket:?} in {raw}"));
            }
            return Ok(Location::S3(S3Location {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                options: options.clone(),
            }));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(format!(
                "`{scheme}://` locations are not supported; use a local path, file:// or s3://"
            ));
        }
        let path = Path::new(raw);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(Location::Local(absolute))
    }

    /// Opens the location as an object store rooted at it, creating a local
    /// directory when missing.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>> {
        match self {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| WeirError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let fs =
                    DurableLocal::new(dir).map_err(|e| WeirError::storage(dir.display(), e))?;
                Ok(Arc::new(fs))
            }
            Location::S3(s3) => {
                let o = &s3.options;
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_conditional_put(S3ConditionalPut::ETagMatch);
                if let Some(endpoint) = &o.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &o.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &o.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &o.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                if let Some(allow) = o.allow_http {
                    builder = builder.with_allow_http(allow);
                }
                let store = builder.build().map_err(|e| WeirError::storage(self, e))?;
                Ok(if s3.prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, s3.prefix.as_str()))
                })
            }
        }
    }

    /// A sub-location.
    pub fn join(&self, child: &str) -> Location {
        match self {
            Location::Local(dir) => Location::Local(dir.join(child)),
            Location::S3(s3) => Location::S3(S3Location {
                prefix: if s3.prefix.is_empty() {
                    child.trim_matches('/').to_string()
                } else {
                    format!("{}/{}", s3.prefix, child.trim_matches('/'))
                },
                ..s3.clone()
            }),
        }
    }

    /// The local directory, for things that only exist locally (file locks).
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Location::Local(dir) => Some(dir),
            Location::S3(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(dir) => write!(f, "{}", dir.display()),
            Location::S3(s3) if s3.prefix.is_empty() => write!(f, "s3://{}", s3.bucket),
            Location::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.prefix),
        }
    }
}
