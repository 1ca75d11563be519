//! Arrow record batches to and from the WIT batch record (host side). The
//! type mappings are shared with the guest SDK through `weir-columnar`.
//!
//! Arguments are lowered from borrowed Arrow buffers (bindgen's `Borrowing`
//! ownership), so the canonical ABI's copy into guest memory is the only
//! copy a column makes on its way in.

use arrow::array::{ArrayData, RecordBatch};
use weir_columnar::{ColumnView, normalize};

use super::bindings::weir::plugin::types as wit;

weir_columnar::wit_batch_lift!(
    wit,
    batch = BatchResult,
    data_type = DataTypeResult,
    validate = full
);
weir_columnar::wit_data_type_lower!(
    wit,
    data_type = DataTypeParam<'_>,
    timestamp_type = TimestampTypeParam,
    decimal_type = DecimalType
);

/// Lends `batch` to `call` as a WIT argument, borrowing its buffers.
pub(crate) fn lend_batch<R>(
    batch: &RecordBatch,
    call: impl FnOnce(wit::BatchParam<'_>) -> R,
) -> Result<R, String> {
    let schema = batch.schema();
    let data: Vec<ArrayData> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| {
            normalize(array).map_err(|e| format!("column `{}`: {e}", field.name()))
        })
        .collect::<Result<_, _>>()?;
    let views: Vec<ColumnView<'_>> = data.iter().map(ColumnView::of).collect();
    let columns: Vec<wit::ColumnParam<'_>> = views
        .iter()
        .map(|v| wit::ColumnParam {
            len: v.len as u64,
            null_count: v.null_count as u64,
            validity: v.validity,
            buffers: &v.buffers,
        })
        .collect();
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(wit::FieldParam {
                name: f.name(),
                data_type: data_type_to_wit(f.data_type())
                    .map_err(|e| format!("column `{}`: {e}", f.name()))?,
                nullable: f.is_nullable(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(call(wit::BatchParam {
        fields: &fields,
        num_rows: batch.num_rows() as u64,
        columns: &columns,
    }))
}
