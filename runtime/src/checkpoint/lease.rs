//! A lease on an object-storage checkpoint: the `.lease` object, created
//! with put-if-absent and renewed with put-if-match, so at most one host
//! runs a query on a checkpoint at a time. A local file lock cannot do
//! this for S3; a lease can, with nothing but conditional puts.
//!
//! A lease lasts [`ttl`] and is renewed every third of it. Another host
//! takes it over only when it has expired, or when the holder ran on the
//! same machine and its process is gone (a `kill -9` then costs no wait).
//! A holder that cannot renew in time, or finds its lease taken, reports
//! the loss before its next checkpoint write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, WeirError};
use crate::query::now_ms;

/// The lease object, inside the checkpoint.
const LEASE: &str = ".lease";

/// How long a lease lasts without renewal: `WEIR_CHECKPOINT_LEASE_TTL`
/// (e.g. `10s`), 30 seconds by default.
pub fn ttl() -> Duration {
    std::env::var("WEIR_CHECKPOINT_LEASE_TTL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(30))
}

/// The `.lease` object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseFile {
    host: String,
    pid: u32,
    /// Changes with every acquisition, so a renewal can tell its own lease.
    token: String,
    /// Milliseconds since the epoch.
    expires_ms: i64,
}

impl LeaseFile {
    fn describe(&self) -> String {
        let left = self.expires_ms - now_ms();
        format!(
            "held by process {} on host {}, lease valid for another {:.1} s",
            self.pid,
            self.host,
            left.max(0) as f64 / 1000.0
        )
    }

    /// Whether another process may take this lease now.
    fn can_be_taken(&self) -> bool {
        self.expires_ms < now_ms() || (self.host == host_name() && !process_alive(self.pid))
    }
}

/// A held lease; renewed in the background until released or dropped.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    location: String,
    state: Arc<Mutex<LeaseState>>,
    renewer: tokio::task::JoinHandle<()>,
}

struct LeaseState {
    version: UpdateVersion,
    /// When the current lease runs out, as this process measures it.
    valid_until: Instant,
    /// Why the lease is gone, once it is.
    lost: Option<String>,
}

impl Lease {
    /// Takes the lease on the checkpoint in `store`, lasting `ttl` between
    /// renewals, or reports who holds it.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        location: String,
        ttl: Duration,
    ) -> Result<Lease> {
        let path = ObjectPath::from(LEASE);
        let mine = LeaseFile {
            host: host_name(),
            pid: std::process::id(),
            token: uuid::Uuid::new_v4().to_string(),
            expires_ms: 0,
        };
        for _ in 0..5 {
            let started = Instant::now();
            let payload = lease_payload(&mine, ttl)?;
            let created = store
                .put_opts(&path, payload, PutOptions::from(PutMode::Create))
                .await;
            let result = match created {
                Ok(put) => Ok(put),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let (held, version) = match read_lease(&store, &path, &location).await? {
                        Some(found) => found,
                        None => continue, // released meanwhile
                    };
                    if !held.can_be_taken() {
                        return Err(WeirError::CheckpointLeased {
                            path: location,
                            holder: held.describe(),
                        });
                    }
                    tracing::warn!(
                        holder = held.describe(),
                        "taking over the checkpoint lease of a query that is gone"
                    );
                    store
                        .put_opts(
                            &path,
                            lease_payload(&mine, ttl)?,
                            PutOptions::from(PutMode::Update(version)),
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(put) => {
                    let state = Arc::new(Mutex::new(LeaseState {
                        version: version_of(put),
                        valid_until: started + ttl,
                        lost: None,
                    }));
                    let renewer =
                        tokio::spawn(renew(store.clone(), mine.clone(), ttl, state.clone()));
                    return Ok(Lease {
                        store,
                        location,
                        state,
                        renewer,
                    });
                }
                // Someone else changed the lease between our read and write: look again.
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(WeirError::storage(format!("{location}/{LEASE}"), e)),
            }
        }
        Err(WeirError::CheckpointLeased {
            path: location,
            holder: "another host keeps changing the lease".into(),
        })
    }

    /// Errors if the lease is lost or could not be renewed in time.
    pub fn check(&self) -> Result<()> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match &state.lost {
            Some(reason) => reason.clone(),
            None if Instant::now() >= state.valid_until => {
                "it expired before it could be renewed".to_string()
            }
            None => return Ok(()),
        };
        Err(WeirError::CheckpointLeaseLost {
            path: self.location.clone(),
            reason,
        })
    }

    /// Gives the lease up so another host can start at once.
    pub async fn release(self) {
        self.renewer.abort();
        let version = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.lost.is_some() {
                return;
            }
            state.version.clone()
        };
        // Expire it with a conditional put (a plain delete could remove a
        // lease another host took over meanwhile).
        let path = ObjectPath::from(LEASE);
        let gone = LeaseFile {
            host: host_name(),
            pid: std::process::id(),
            token: String::new(),
            expires_ms: 0,
        };
        let Ok(payload) = lease_payload(&gone, Duration::ZERO) else {
            return;
        };
        if let Err(e) = self
            .store
            .put_opts(&path, payload, PutOptions::from(PutMode::Update(version)))
            .await
        {
            tracing::warn!(error = %e, "could not release the checkpoint lease; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews the lease every third of its time until it is lost.
async fn renew(
    store: Arc<dyn ObjectStore>,
    mine: LeaseFile,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
) {
    let path = ObjectPath::from(LEASE);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let started = Instant::now();
        let version = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .version
            .clone();
        let Ok(payload) = lease_payload(&mine, ttl) else {
            return;
        };
        let result = store
            .put_opts(&path, payload, PutOptions::from(PutMode::Update(version)))
            .await;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(put) => {
                state.version = version_of(put);
                state.valid_until = started + ttl;
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                state.lost = Some("another host took it over".into());
                return;
            }
            Err(e) => {
                // Transient: keep trying while the lease lasts; `check` reports expiry.
                tracing::warn!(error = %e, "could not renew the checkpoint lease; retrying");
            }
        }
    }
}

fn lease_payload(lease: &LeaseFile, ttl: Duration) -> Result<PutPayload> {
    let file = LeaseFile {
        expires_ms: now_ms() + ttl.as_millis() as i64,
        ..lease.clone()
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| WeirError::Internal(e.to_string()))?;
    Ok(PutPayload::from(bytes))
}

async fn read_lease(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    location: &str,
) -> Result<Option<(LeaseFile, UpdateVersion)>> {
    let found = match store.get(path).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(WeirError::storage(format!("{location}/{LEASE}"), e)),
    };
    let version = UpdateVersion {
        e_tag: found.meta.e_tag.clone(),
        version: found.meta.version.clone(),
    };
    let bytes = found
        .bytes()
        .await
        .map_err(|e| WeirError::storage(format!("{location}/{LEASE}"), e))?;
    let file = serde_json::from_slice(&bytes).map_err(|e| WeirError::CheckpointCorrupt {
        path: format!("{location}/{LEASE}"),
        reason: format!("not a lease: {e}"),
    })?;
    Ok(Some((file, version)))
}

fn version_of(put: PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: put.e_tag,
        version: put.version,
    }
}

/// This machine's host name (a lease's holder; a replica's default id).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let result = unsafe { libc::kill(pid as libc::pid_t, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
