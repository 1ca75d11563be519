//! # Weir plugin SDK for Rust
//!
//! Write a Weir transform as a plain Rust type over Arrow
//! [`RecordBatch`]es; [`export_transform!`] turns it into the
//! `weir:plugin/transform-plugin` WebAssembly component world. Plugin code
//! never sees WIT bindings or the batch wire layout.
//!
//! ```
//! use std::sync::Arc;
//! use weir_sdk::arrow_array::{Array, Float64Array, RecordBatch};
//! use weir_sdk::arrow_schema::{DataType, Field, Schema};
//! use weir_sdk::{Config, Error, Transform};
//!
//! /// Adds `doubled = 2 * amount`.
//! struct Doubler;
//!
//! impl Transform for Doubler {
//!     fn new(_config: Config) -> Result<Self, Error> {
//!         Ok(Doubler)
//!     }
//!
//!     fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error> {
//!         let amount = batch
//!             .column_by_name("amount")
//!             .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
//!             .ok_or_else(|| Error::input("expected a float64 column `amount`"))?;
//!         let doubled: Float64Array = amount.iter().map(|v| v.map(|v| v * 2.0)).collect();
//!         let mut fields = batch.schema().fields().to_vec();
//!         fields.push(Arc::new(Field::new("doubled", DataType::Float64, true)));
//!         let mut columns = batch.columns().to_vec();
//!         columns.push(Arc::new(doubled));
//!         Ok(vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?])
//!     }
//! }
//!
//! // In a plugin crate (crate-type = ["cdylib"]) this one line exports it:
//! weir_sdk::export_transform!(Doubler);
//! # fn main() {
//! #     let schema = Arc::new(Schema::new(vec![Field::new("amount", DataType::Float64, false)]));
//! #     let input = RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![1.5]))]).unwrap();
//! #     let out = Doubler::new(Config::from_json("{}")).unwrap().process(input).unwrap();
//! #     assert_eq!(out[0].num_columns(), 2);
//! # }
//! ```
//!
//! Build the crate with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` file is a component the host loads directly. The
//! plugin-author guide (`docs/plugin-guide.md`) covers testing and limits.

pub use arrow_array;
pub use arrow_array::RecordBatch;
pub use arrow_schema;

pub mod batch_sink;
mod convert;
mod error;
pub mod host;
mod stateful;

pub use batch_sink::BatchSink;
pub use error::{Error, ErrorKind};
pub use stateful::{GroupState, LocalGroupState, StatefulFunction};

/// Generated WIT bindings; plugin code does not need them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
        default_bindings_module: "weir_sdk::bindings",
    });
}

/// Generated WIT bindings of the `stateful-plugin` world, sharing the
/// batch types and host imports with [`bindings`]; plugin code does not
/// need them.
#[doc(hidden)]
pub mod stateful_bindings {
    wit_bindgen::generate!({
        world: "stateful-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_stateful_world",
        default_bindings_module: "weir_sdk::stateful_bindings",
        with: {
            "weir:plugin/types@0.1.1": crate::bindings::weir::plugin::types,
            "weir:plugin/host@0.1.1": crate::bindings::weir::plugin::host,
        },
    });
}

/// A stage's configuration: the `config` table from the pipeline file.
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
}

impl Config {
    /// Wraps configuration given as JSON text (as the host passes it).
    pub fn from_json(json: impl Into<String>) -> Self {
        Config { json: json.into() }
    }

    /// The configuration as JSON text.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// Deserialises the configuration into `T`; a mismatch is a
    /// [`ErrorKind::Config`] error that names the problem.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.json).map_err(|e| Error::config(format!("invalid config: {e}")))
    }
}

/// A stateless transform: map, filter or flatMap over whole batches.
///
/// The host creates one instance per plugin instance with [`Transform::new`]
/// and then calls [`Transform::process`] once per input batch, in order.
pub trait Transform: Sized + 'static {
    /// Builds the transform from its configuration.
    fn new(config: Config) -> Result<Self, Error>;

    /// Turns one input batch into zero or more output batches. Every output
    /// batch of a stage must have the same schema.
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error>;
}

/// Exports a [`Transform`] implementation as this component's
/// `weir:plugin/transform` interface. Use it once per plugin crate.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        // Exports exist only in the Wasm build: natively (tests, benchmarks)
        // the crate is a plain library and the type is called directly.
        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        struct __WeirTransformExport;

        #[cfg(target_family = "wasm")]
        impl $crate::bindings::exports::weir::plugin::transform::Guest for __WeirTransformExport {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), $crate::bindings::weir::plugin::types::PluginError> {
                $crate::__private::init::<$ty>(config)
            }

            fn process(
                input: $crate::bindings::weir::plugin::types::Batch,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::weir::plugin::types::Batch>,
                $crate::bindings::weir::plugin::types::PluginError,
            > {
                $crate::__private::process::<$ty>(input)
            }
        }

        #[cfg(target_family = "wasm")]
        $crate::bindings::__export_transform_world!(
            __WeirTransformExport with_types_in $crate::bindings
        );
    };
}

/// Exports a [`StatefulFunction`] implementation as this component's
/// `weir:plugin/stateful` interface. Use it once per plugin crate.
///
/// ```
/// use weir_sdk::{Config, Error, GroupState, RecordBatch, StatefulFunction};
///
/// /// Counts each key's rows across batches and emits nothing.
/// struct Counter;
///
/// impl StatefulFunction for Counter {
///     fn new(_config: Config) -> Result<Self, Error> {
///         Ok(Counter)
///     }
///
///     fn process_group(
///         &mut self,
///         _key: &RecordBatch,
///         rows: RecordBatch,
///         state: &mut GroupState<'_>,
///     ) -> Result<Vec<RecordBatch>, Error> {
///         let seen: u64 = state.get()?.unwrap_or(0);
///         state.update(&(seen + rows.num_rows() as u64))?;
///         Ok(Vec::new())
///     }
/// }
///
/// weir_sdk::export_stateful!(Counter);
/// ```
#[macro_export]
macro_rules! export_stateful {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        struct __WeirStatefulExport;

        #[cfg(target_family = "wasm")]
        impl $crate::stateful_bindings::exports::weir::plugin::stateful::Guest
            for __WeirStatefulExport
        {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), $crate::bindings::weir::plugin::types::PluginError> {
                $crate::__stateful_glue::init::<$ty>(config)
            }

            fn process_group(
                key: $crate::bindings::weir::plugin::types::Batch,
                rows: $crate::bindings::weir::plugin::types::Batch,
                state: &$crate::stateful_bindings::weir::plugin::keyed_state::GroupState,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::weir::plugin::types::Batch>,
                $crate::bindings::weir::plugin::types::PluginError,
            > {
                $crate::__stateful_glue::process_group::<$ty>(key, rows, state)
            }
        }

        #[cfg(target_family = "wasm")]
        $crate::stateful_bindings::__export_stateful_world!(
            __WeirStatefulExport with_types_in $crate::stateful_bindings
        );
    };
}

#[doc(hidden)]
pub use stateful::glue as __stateful_glue;

/// Generated WIT bindings of the `batch-sink-plugin` world; plugin code
/// does not need them.
#[doc(hidden)]
pub mod batch_sink_bindings {
    wit_bindgen::generate!({
        world: "batch-sink-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_batch_sink_world",
        default_bindings_module: "weir_sdk::batch_sink_bindings",
        with: {
            "weir:plugin/types@0.1.1": crate::bindings::weir::plugin::types,
            "weir:plugin/host@0.1.1": crate::bindings::weir::plugin::host,
        },
    });
}

#[doc(hidden)]
pub use batch_sink::glue as __batch_sink_glue;

/// Exports a [`BatchSink`] implementation as this component's
/// `weir:plugin/batch-sink` interface (foreachBatch). Use it once per
/// plugin crate.
///
/// ```
/// use weir_sdk::{BatchSink, Config, Error, RecordBatch};
///
/// /// Sends every batch to the output named `out`.
/// struct Forward;
///
/// impl BatchSink for Forward {
///     fn new(_config: Config) -> Result<Self, Error> {
///         Ok(Forward)
///     }
///
///     fn write_batch(&mut self, _epoch: u64, rows: RecordBatch) -> Result<(), Error> {
///         weir_sdk::batch_sink::write("out", &rows)
///     }
/// }
///
/// weir_sdk::export_batch_sink!(Forward);
/// ```
#[macro_export]
macro_rules! export_batch_sink {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        struct __WeirBatchSinkExport;

        #[cfg(target_family = "wasm")]
        impl $crate::batch_sink_bindings::exports::weir::plugin::batch_sink::Guest
            for __WeirBatchSinkExport
        {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), $crate::bindings::weir::plugin::types::PluginError> {
                $crate::__batch_sink_glue::init::<$ty>(config)
            }

            fn write_batch(
                epoch: u64,
                rows: $crate::bindings::weir::plugin::types::Batch,
            ) -> ::std::result::Result<(), $crate::bindings::weir::plugin::types::PluginError> {
                $crate::__batch_sink_glue::write_batch::<$ty>(epoch, rows)
            }
        }

        #[cfg(target_family = "wasm")]
        $crate::batch_sink_bindings::__export_batch_sink_world!(
            __WeirBatchSinkExport with_types_in $crate::batch_sink_bindings
        );
    };
}

/// Glue used by [`export_transform!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::bindings::weir::plugin::types::{Batch, PluginError};
    use crate::{Config, Error, Transform, convert};

    thread_local! {
        // A component instance is single-threaded and holds one transform.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: Transform>(config: String) -> Result<(), PluginError> {
        let transform = T::new(Config::from_json(config)).map_err(PluginError::from)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(transform)));
        Ok(())
    }

    pub fn process<T: Transform>(input: Batch) -> Result<Vec<Batch>, PluginError> {
        let batch =
            convert::batch_from_wit(input).map_err(|e| PluginError::from(Error::internal(e)))?;
        let outputs = INSTANCE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let transform = slot
                .as_mut()
                .and_then(|t| t.downcast_mut::<T>())
                .ok_or_else(|| Error::internal("process called before init"))?;
            transform.process(batch)
        })?;
        outputs
            .into_iter()
            .map(|b| convert::batch_to_wit(b).map_err(|e| PluginError::from(Error::internal(e))))
            .collect()
    }
}
