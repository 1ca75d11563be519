//! Retrying what an outage interrupts: a broker restart or a network
//! blip must not stop a query. Connectors report such failures as
//! [`WeirError::Unavailable`]; [`Retries::run`] retries them with
//! exponential backoff for up to [`RETRY_FOR`], and every retry is recorded
//! so the next batch's progress reports it. Only operations that are safe
//! to repeat are retried: planning (before `offsets/N`), reading a logged
//! offset range, and a sink write the sink itself makes idempotent.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Result, WeirError};

/// How long an operation keeps being retried before the query fails.
pub const RETRY_FOR: Duration = Duration::from_secs(300);
/// The first wait; each following one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Retries recorded since the last batch's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Failed attempts that were retried.
    pub count: u64,
    /// The last failure retried.
    pub last_error: Option<String>,
}

/// A shared record of retries, cloned into every connector of a query.
#[derive(Debug, Clone, Default)]
pub struct Retries {
    report: Arc<Mutex<RetryReport>>,
}

impl Retries {
    /// Runs `operation`, retrying it while it fails with
    /// [`WeirError::Unavailable`] and [`RETRY_FOR`] has not passed.
    pub async fn run<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = self.backoff(what);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => backoff.wait(error).await?,
            }
        }
    }

    /// The retry schedule of one operation, for callers that must do more
    /// between attempts than [`Retries::run`] allows (reconnect, say).
    pub fn backoff(&self, what: &str) -> Backoff {
        Backoff {
            retries: self.clone(),
            what: what.to_string(),
            started: Instant::now(),
            next: FIRST_BACKOFF,
        }
    }

    /// Records one retried failure.
    pub fn record(&self, error: &str) {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.count += 1;
        report.last_error = Some(error.to_string());
    }

    /// The retries since the last call, resetting the record.
    pub fn take(&self) -> RetryReport {
        std::mem::take(&mut *self.report.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One operation's retries: exponential waits, recorded, for up to
/// [`RETRY_FOR`].
pub struct Backoff {
    retries: Retries,
    what: String,
    started: Instant,
    next: Duration,
}

impl Backoff {
    /// After a failed attempt: if `error` is an outage and time is left,
    /// records it, waits and returns `Ok` (try again); else returns it.
    pub async fn wait(&mut self, error: WeirError) -> Result<()> {
        match error {
            WeirError::Unavailable { service, reason } if self.started.elapsed() < RETRY_FOR => {
                tracing::warn!(
                    service,
                    reason,
                    retry_in = ?self.next,
                    "{} failed; retrying",
                    self.what
                );
                self.retries
                    .record(&format!("{}: {service}: {reason}", self.what));
                tokio::time::sleep(self.next).await;
                self.next = (self.next * 2).min(MAX_BACKOFF);
                Ok(())
            }
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_and_reported_other_errors_are_not() {
        let retries = Retries::default();
        let mut calls = 0;
        let value = retries
            .run("reading", || {
                calls += 1;
                let failing = calls < 3;
                async move {
                    if failing {
                        Err(WeirError::Unavailable {
                            service: "kafka".into(),
                            reason: "broker down".into(),
                        })
                    } else {
                        Ok(7)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!((value, calls), (7, 3));
        let report = retries.take();
        assert_eq!(report.count, 2);
        assert_eq!(
            report.last_error.as_deref(),
            Some("reading: kafka: broker down")
        );
        assert_eq!(retries.take(), RetryReport::default());

        let mut calls = 0;
        let failed = retries
            .run("reading", || {
                calls += 1;
                async { Err::<(), _>(WeirError::Internal("bug".into())) }
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_retry_period() {
        let retries = Retries::default();
        let failed = retries
            .run("planning", || async {
                Err::<(), _>(WeirError::Unavailable {
                    service: "kafka".into(),
                    reason: "broker down".into(),
                })
            })
            .await;
        assert!(matches!(failed, Err(WeirError::Unavailable { .. })));
        assert!(retries.take().count > 10);
    }
}
