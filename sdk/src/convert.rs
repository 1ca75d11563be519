//! Arrow record batches to and from the WIT batch record (guest side). The
//! conversion is shared with the host through `weir-columnar`.

use crate::bindings::weir::plugin::types as wit;

weir_columnar::wit_batch_lift!(wit, batch = Batch, data_type = DataType, validate = trusted);
weir_columnar::wit_batch_lower_owned!(wit);
