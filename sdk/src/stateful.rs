//! Stateful functions: Spark's flatMapGroupsWithState as a Rust trait.
//!
//! The host groups every batch by the stage's key columns and calls
//! [`StatefulFunction::process_group`] once per key with the key's rows and
//! its [`GroupState`]; it calls it again, with no rows, when a timeout the
//! function set fires. The host keeps the state bytes, checkpoints them with
//! every batch and restores them on restart.

use std::time::Duration;

use arrow_array::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Config, Error};

/// A stateful function over keyed groups. Export it with
/// [`export_stateful!`](crate::export_stateful).
pub trait StatefulFunction: Sized + 'static {
    /// Builds the function from its configuration.
    fn new(config: Config) -> Result<Self, Error>;

    /// Handles one key: `key` is a one-row batch of the key columns, `rows`
    /// the key's rows of this batch (none when `state.has_timed_out()`).
    /// Returns the rows to emit; all output batches must share one schema.
    fn process_group(
        &mut self,
        key: &RecordBatch,
        rows: RecordBatch,
        state: &mut GroupState<'_>,
    ) -> Result<Vec<RecordBatch>, Error>;
}

/// A key's state and timeout, valid during one call.
///
/// Typed state is encoded as JSON (`get` / `update`); raw bytes are
/// available too (`get_bytes` / `update_bytes`). Timeouts are reset by
/// every call: set one again on each call that should time out later.
pub struct GroupState<'a> {
    backing: Backing<'a>,
}

enum Backing<'a> {
    Host(&'a crate::stateful_bindings::weir::plugin::keyed_state::GroupState),
    Local(&'a mut LocalGroupState),
}

/// A group state held by the plugin itself, to unit-test a
/// [`StatefulFunction`] natively without a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalGroupState {
    /// The state bytes.
    pub value: Option<Vec<u8>>,
    /// The timeout set by the last call (µs), if any.
    pub timeout_us: Option<i64>,
    /// Whether the next call is a timeout.
    pub timed_out: bool,
    /// The watermark (µs).
    pub watermark_us: Option<i64>,
    /// The batch time (µs).
    pub batch_time_us: i64,
}

impl<'a> GroupState<'a> {
    /// A state backed by `local`, for tests. The timeout is cleared first,
    /// as the host does before each call.
    pub fn local(local: &'a mut LocalGroupState) -> GroupState<'a> {
        local.timeout_us = None;
        GroupState {
            backing: Backing::Local(local),
        }
    }

    #[doc(hidden)]
    pub fn host(
        handle: &'a crate::stateful_bindings::weir::plugin::keyed_state::GroupState,
    ) -> GroupState<'a> {
        GroupState {
            backing: Backing::Host(handle),
        }
    }

    /// The state's bytes, if the key has state.
    pub fn get_bytes(&self) -> Option<Vec<u8>> {
        match &self.backing {
            Backing::Host(h) => h.get(),
            Backing::Local(l) => l.value.clone(),
        }
    }

    /// Replaces the state's bytes.
    pub fn update_bytes(&mut self, value: &[u8]) {
        match &mut self.backing {
            Backing::Host(h) => h.update(value),
            Backing::Local(l) => l.value = Some(value.to_vec()),
        }
    }

    /// Whether the key has state.
    pub fn exists(&self) -> bool {
        self.get_bytes().is_some()
    }

    /// The state decoded from JSON. Bytes that do not decode as `T` are an
    /// error naming the problem (the host adds the key).
    pub fn get<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        self.get_bytes()
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!(
                        "cannot decode the key's state as {}: {e}",
                        std::any::type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// Replaces the state with `value` encoded as JSON.
    pub fn update<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot encode the key's state: {e}")))?;
        self.update_bytes(&bytes);
        Ok(())
    }

    /// Removes the state and any timeout.
    pub fn remove(&mut self) {
        match &mut self.backing {
            Backing::Host(h) => h.remove(),
            Backing::Local(l) => {
                l.value = None;
                l.timeout_us = None;
            }
        }
    }

    /// Event-time timeout: the host calls again for this key, with no rows,
    /// once the watermark passes `at_us` (µs since the epoch). Refused
    /// unless the stage has `state_timeout = "event_time"`, and for times
    /// before the current watermark.
    pub fn set_timeout_timestamp(&mut self, at_us: i64) -> Result<(), Error> {
        match &mut self.backing {
            Backing::Host(h) => h.set_timeout_timestamp(at_us).map_err(Error::internal),
            Backing::Local(l) => {
                l.timeout_us = Some(at_us);
                Ok(())
            }
        }
    }

    /// Processing-time timeout: the host calls again for this key in the
    /// first batch starting after this batch's time + `after`. Refused
    /// unless the stage has `state_timeout = "processing_time"`.
    pub fn set_timeout_duration(&mut self, after: Duration) -> Result<(), Error> {
        let micros = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
        match &mut self.backing {
            Backing::Host(h) => h.set_timeout_duration(micros).map_err(Error::internal),
            Backing::Local(l) => {
                l.timeout_us = Some(l.batch_time_us.saturating_add(micros as i64));
                Ok(())
            }
        }
    }

    /// Whether this call is a timeout (and so has no rows).
    pub fn has_timed_out(&self) -> bool {
        match &self.backing {
            Backing::Host(h) => h.has_timed_out(),
            Backing::Local(l) => l.timed_out,
        }
    }

    /// The batch's event-time watermark (µs), if the query declares one.
    pub fn watermark(&self) -> Option<i64> {
        match &self.backing {
            Backing::Host(h) => h.watermark(),
            Backing::Local(l) => l.watermark_us,
        }
    }

    /// The processing time the batch started at (µs).
    pub fn batch_time(&self) -> i64 {
        match &self.backing {
            Backing::Host(h) => h.batch_time(),
            Backing::Local(l) => l.batch_time_us,
        }
    }
}

/// Glue used by [`export_stateful!`](crate::export_stateful); not part of
/// the public API.
#[doc(hidden)]
pub mod glue {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{GroupState, StatefulFunction};
    use crate::bindings::weir::plugin::types::{Batch, PluginError};
    use crate::stateful_bindings::weir::plugin::keyed_state::GroupState as Handle;
    use crate::{Config, Error, convert};

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: StatefulFunction>(config: String) -> Result<(), PluginError> {
        let function = T::new(Config::from_json(config)).map_err(PluginError::from)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(function)));
        Ok(())
    }

    pub fn process_group<T: StatefulFunction>(
        key: Batch,
        rows: Batch,
        state: &Handle,
    ) -> Result<Vec<Batch>, PluginError> {
        let lift =
            |b| convert::batch_from_wit(b).map_err(|e| PluginError::from(Error::internal(e)));
        let (key, rows) = (lift(key)?, lift(rows)?);
        let mut state = GroupState::host(state);
        let outputs = INSTANCE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let function = slot
                .as_mut()
                .and_then(|f| f.downcast_mut::<T>())
                .ok_or_else(|| Error::internal("process-group called before init"))?;
            function.process_group(&key, rows, &mut state)
        })?;
        outputs
            .into_iter()
            .map(|b| convert::batch_to_wit(b).map_err(|e| PluginError::from(Error::internal(e))))
            .collect()
    }
}
