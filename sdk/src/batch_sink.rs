//! foreachBatch sinks: Spark's `foreachBatch` as a Rust trait.
//!
//! The host calls [`BatchSink::write_batch`] once per micro-batch with its
//! rows. The plugin writes through the outputs the pipeline declares
//! (`[sink.outputs.<name>]`) with [`write()`]; the host commits them all
//! exactly once after the call returns.

use arrow_array::RecordBatch;

use crate::{Config, Error};

/// A foreachBatch sink. Export it with
/// [`export_batch_sink!`](crate::export_batch_sink).
pub trait BatchSink: Sized + 'static {
    /// Builds the sink from its configuration.
    fn new(config: Config) -> Result<Self, Error>;

    /// Handles micro-batch `epoch`. A replay of the epoch passes the same
    /// rows; the host makes sure it changes nothing already written.
    fn write_batch(&mut self, epoch: u64, rows: RecordBatch) -> Result<(), Error>;
}

/// Queues `rows` for the output `name`. The host refuses unknown outputs
/// and rows an output cannot take (for an upsert, missing or null key
/// columns); a refused write fails the epoch even if the error is ignored.
pub fn write(name: &str, rows: &RecordBatch) -> Result<(), Error> {
    #[cfg(target_family = "wasm")]
    {
        let batch = crate::convert::batch_to_wit(rows.clone()).map_err(Error::internal)?;
        crate::batch_sink_bindings::weir::plugin::outputs::write(name, &batch).map_err(Error::input)
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = (name, rows);
        Err(Error::internal(
            "outputs exist only inside the host; test a sink's logic on its own functions",
        ))
    }
}

/// Glue used by [`export_batch_sink!`](crate::export_batch_sink); not part
/// of the public API.
#[doc(hidden)]
pub mod glue {
    use std::any::Any;
    use std::cell::RefCell;

    use super::BatchSink;
    use crate::bindings::weir::plugin::types::{Batch, PluginError};
    use crate::{Config, Error, convert};

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: BatchSink>(config: String) -> Result<(), PluginError> {
        let sink = T::new(Config::from_json(config)).map_err(PluginError::from)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(sink)));
        Ok(())
    }

    pub fn write_batch<T: BatchSink>(epoch: u64, rows: Batch) -> Result<(), PluginError> {
        let rows =
            convert::batch_from_wit(rows).map_err(|e| PluginError::from(Error::internal(e)))?;
        INSTANCE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let sink = slot
                .as_mut()
                .and_then(|s| s.downcast_mut::<T>())
                .ok_or_else(|| Error::internal("write-batch called before init"))?;
            sink.write_batch(epoch, rows)
        })?;
        Ok(())
    }
}
