//! What a console watches: every committed batch's progress and every
//! change of a query's state, as they happen, to any number of listeners
//! (`GET /events`, server-sent events; see [`super::api`]).
//!
//! Listeners are bounded twice over: a slow one misses events instead of
//! holding memory (it is told to fetch the state again), and each caller
//! may hold only [`MAX_STREAMS_PER_CALLER`] streams, so a tenant cannot
//! tie up the host with idle connections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

/// Events kept for a listener that fell behind before it misses some.
const BACKLOG: usize = 1024;

/// Event streams one caller (a tenant, or the admins together) may hold open.
pub const MAX_STREAMS_PER_CALLER: usize = 16;

/// What happened to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A batch committed; the data is its progress event.
    Progress,
    /// The query started, stopped, finished or failed; the data is its
    /// [`super::QueryInfo`].
    Status,
}

impl EventKind {
    /// The SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Progress => "progress",
            EventKind::Status => "status",
        }
    }
}

/// One event of one query.
#[derive(Debug, Clone)]
pub struct HostEvent {
    /// `<tenant>/<name>`.
    pub id: String,
    /// The query's owner: who may see the event.
    pub tenant: String,
    /// What happened.
    pub kind: EventKind,
    /// The progress event or the query's info, as the API shows them.
    pub data: Value,
}

/// The host's events and their listeners.
pub struct EventHub {
    sender: broadcast::Sender<HostEvent>,
    closing: watch::Sender<bool>,
    streams: Mutex<BTreeMap<String, Arc<Semaphore>>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            sender: broadcast::channel(BACKLOG).0,
            closing: watch::channel(false).0,
            streams: Mutex::new(BTreeMap::new()),
        }
    }
}

impl EventHub {
    /// Tells every listener (none listening is fine).
    pub fn publish(&self, event: HostEvent) {
        let _ = self.sender.send(event);
    }

    /// A new listener: it sees events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.sender.subscribe()
    }

    /// Becomes true when the host shuts down: streams end, so that the
    /// server's graceful shutdown does not wait on them forever.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every stream (the host is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A place for one more stream of `caller` (`None` when it holds
    /// [`MAX_STREAMS_PER_CALLER`] already); the stream holds it while open.
    pub fn stream_permit(&self, caller: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(caller.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_STREAMS_PER_CALLER)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_the_streams_allowed() {
        let hub = EventHub::default();
        let held: Vec<_> = (0..MAX_STREAMS_PER_CALLER)
            .map(|_| hub.stream_permit("acme").expect("within the limit"))
            .collect();
        assert!(hub.stream_permit("acme").is_none());
        // Another caller has its own.
        assert!(hub.stream_permit("globex").is_some());
        drop(held);
        assert!(hub.stream_permit("acme").is_some());
    }

    #[tokio::test]
    async fn listeners_see_events_published_after_they_subscribe() {
        let hub = EventHub::default();
        hub.publish(event("acme/early"));
        let mut listener = hub.subscribe();
        hub.publish(event("acme/late"));
        assert_eq!(listener.recv().await.unwrap().id, "acme/late");
    }

    fn event(id: &str) -> HostEvent {
        HostEvent {
            id: id.into(),
            tenant: "acme".into(),
            kind: EventKind::Progress,
            data: Value::Null,
        }
    }
}
