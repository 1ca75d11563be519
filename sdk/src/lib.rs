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

mod convert;
mod error;
pub mod host;

pub use error::{Error, ErrorKind};

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
