//! Arrow record batches to and from the WIT batch record (guest side). The
//! conversion is shared with the host through `weir-columnar`.

weir_columnar::wit_batch_conversions!(crate::bindings::weir::plugin::types);
