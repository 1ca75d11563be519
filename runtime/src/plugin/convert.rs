//! Arrow record batches to and from the WIT batch record (host side). The
//! conversion is shared with the guest SDK through `weir-columnar`.

weir_columnar::wit_batch_conversions!(crate::plugin::bindings::weir::plugin::types);
