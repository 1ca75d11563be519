//! Conversions between Arrow record batches and the WIT `batch` record,
//! generated for whichever bindings a side uses.
//!
//! Host (`wasmtime::component::bindgen!`) and guest (`wit_bindgen::generate!`)
//! generate distinct Rust types from the same WIT, with the same shapes. The
//! macros here give both sides one conversion, so they cannot drift. Each
//! takes `$wit`, the name of a module alias in scope at the call site for
//! the generated `weir:plugin/types` module, and the generated type names.

/// Defines `batch_from_wit($wit::$batch) -> Result<RecordBatch, String>`.
///
/// `validate = full` checks every buffer: the batch may come from untrusted
/// code (the host lifting plugin output). `validate = trusted` skips that,
/// for a side that only ever receives arrays the other side validated (the
/// guest lifting the host's input).
#[macro_export]
macro_rules! wit_batch_lift {
    ($wit:ident, batch = $batch:ident, data_type = $dt:ident, validate = full) => {
        $crate::wit_batch_lift!(@define $wit, $batch, $dt, |data_type, parts| {
            $crate::import_array(data_type, parts)
        });
    };
    ($wit:ident, batch = $batch:ident, data_type = $dt:ident, validate = trusted) => {
        // SAFETY: the host validates every array before it sends it.
        $crate::wit_batch_lift!(@define $wit, $batch, $dt, |data_type, parts| unsafe {
            $crate::import_array_trusted(data_type, parts)
        });
    };
    (@define $wit:ident, $batch:ident, $dt:ident, $import:expr) => {
        pub(crate) fn batch_from_wit(
            batch: $wit::$batch,
        ) -> ::std::result::Result<$crate::reexports::arrow_array::RecordBatch, ::std::string::String>
        {
            use $crate::reexports::arrow_array::{RecordBatch, RecordBatchOptions};
            use $crate::reexports::arrow_schema::{Field, Schema};
            if batch.fields.len() != batch.columns.len() {
                return Err(format!(
                    "{} fields but {} columns",
                    batch.fields.len(),
                    batch.columns.len()
                ));
            }
            let fields: ::std::vec::Vec<Field> = batch
                .fields
                .iter()
                .map(|f| Field::new(f.name.clone(), data_type_from_wit(&f.data_type), f.nullable))
                .collect();
            let mut columns = ::std::vec::Vec::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(batch.columns) {
                if column.len != batch.num_rows {
                    return Err(format!(
                        "column `{}` has {} rows, the batch {}",
                        field.name(),
                        column.len,
                        batch.num_rows
                    ));
                }
                let parts = $crate::ColumnParts {
                    len: column.len as usize,
                    null_count: column.null_count as usize,
                    validity: column.validity,
                    buffers: column.buffers,
                };
                let import: fn(
                    $crate::reexports::arrow_schema::DataType,
                    $crate::ColumnParts,
                ) -> ::std::result::Result<
                    $crate::reexports::arrow_array::ArrayRef,
                    $crate::LayoutError,
                > = $import;
                columns.push(
                    import(field.data_type().clone(), parts)
                        .map_err(|e| format!("column `{}`: {e}", field.name()))?,
                );
            }
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows as usize));
            RecordBatch::try_new_with_options(
                ::std::sync::Arc::new(Schema::new(fields)),
                columns,
                &options,
            )
            .map_err(|e| e.to_string())
        }

        fn data_type_from_wit(t: &$wit::$dt) -> $crate::reexports::arrow_schema::DataType {
            use $crate::reexports::arrow_schema::DataType as A;
            use $crate::reexports::arrow_schema::TimeUnit as U;
            use $wit::$dt as W;
            match t {
                W::Null => A::Null,
                W::Boolean => A::Boolean,
                W::Int8 => A::Int8,
                W::Int16 => A::Int16,
                W::Int32 => A::Int32,
                W::Int64 => A::Int64,
                W::Uint8 => A::UInt8,
                W::Uint16 => A::UInt16,
                W::Uint32 => A::UInt32,
                W::Uint64 => A::UInt64,
                W::Float32 => A::Float32,
                W::Float64 => A::Float64,
                W::Utf8 => A::Utf8,
                W::LargeUtf8 => A::LargeUtf8,
                W::Binary => A::Binary,
                W::LargeBinary => A::LargeBinary,
                W::Date32 => A::Date32,
                W::Date64 => A::Date64,
                W::Timestamp(ts) => {
                    let unit = match ts.unit {
                        $wit::TimeUnit::Second => U::Second,
                        $wit::TimeUnit::Millisecond => U::Millisecond,
                        $wit::TimeUnit::Microsecond => U::Microsecond,
                        $wit::TimeUnit::Nanosecond => U::Nanosecond,
                    };
                    A::Timestamp(unit, ts.timezone.as_deref().map(::std::sync::Arc::from))
                }
                W::Decimal128(d) => A::Decimal128(d.precision, d.scale),
            }
        }
    };
}

/// Defines `data_type_to_wit(&DataType) -> Result<$wit::$dt, String>`, for
/// owned (`DataType`) or borrowing (`DataTypeParam<'_>`) bindings alike.
#[macro_export]
macro_rules! wit_data_type_lower {
    ($wit:ident, data_type = $dt:ident $(<$lt:lifetime>)?, timestamp_type = $ts:ident, decimal_type = $dec:ident) => {
        fn data_type_to_wit(
            t: &$crate::reexports::arrow_schema::DataType,
        ) -> ::std::result::Result<$wit::$dt $(<$lt>)?, ::std::string::String> {
            use $crate::reexports::arrow_schema::DataType as A;
            use $crate::reexports::arrow_schema::TimeUnit as U;
            use $wit::$dt as W;
            Ok(match t {
                A::Null => W::Null,
                A::Boolean => W::Boolean,
                A::Int8 => W::Int8,
                A::Int16 => W::Int16,
                A::Int32 => W::Int32,
                A::Int64 => W::Int64,
                A::UInt8 => W::Uint8,
                A::UInt16 => W::Uint16,
                A::UInt32 => W::Uint32,
                A::UInt64 => W::Uint64,
                A::Float32 => W::Float32,
                A::Float64 => W::Float64,
                A::Utf8 => W::Utf8,
                A::LargeUtf8 => W::LargeUtf8,
                A::Binary => W::Binary,
                A::LargeBinary => W::LargeBinary,
                A::Date32 => W::Date32,
                A::Date64 => W::Date64,
                A::Timestamp(unit, tz) => W::Timestamp($wit::$ts {
                    unit: match unit {
                        U::Second => $wit::TimeUnit::Second,
                        U::Millisecond => $wit::TimeUnit::Millisecond,
                        U::Microsecond => $wit::TimeUnit::Microsecond,
                        U::Nanosecond => $wit::TimeUnit::Nanosecond,
                    },
                    timezone: tz.as_deref().map(::std::convert::Into::into),
                }),
                A::Decimal128(precision, scale) => {
                    W::Decimal128($wit::$dec { precision: *precision, scale: *scale })
                }
                other => return Err(format!("type {other} cannot cross the plugin boundary")),
            })
        }
    };
}

/// Defines `batch_to_wit(RecordBatch) -> Result<$wit::Batch, String>` for
/// bindings with owned types (the guest side). Buffers the batch owns alone
/// move into the WIT record without a copy.
#[macro_export]
macro_rules! wit_batch_lower_owned {
    ($wit:ident) => {
        $crate::wit_data_type_lower!(
            $wit,
            data_type = DataType,
            timestamp_type = TimestampType,
            decimal_type = DecimalType
        );

        pub(crate) fn batch_to_wit(
            batch: $crate::reexports::arrow_array::RecordBatch,
        ) -> ::std::result::Result<$wit::Batch, ::std::string::String> {
            let num_rows = batch.num_rows() as u64;
            let (schema, arrays, _) = batch.into_parts();
            let fields = schema
                .fields()
                .iter()
                .map(|f| {
                    Ok($wit::Field {
                        name: f.name().clone(),
                        data_type: data_type_to_wit(f.data_type())?,
                        nullable: f.is_nullable(),
                    })
                })
                .collect::<::std::result::Result<::std::vec::Vec<_>, ::std::string::String>>()?;
            let columns = arrays
                .into_iter()
                .map(|array| {
                    let parts = $crate::export_array_owned(array).map_err(|e| e.to_string())?;
                    Ok($wit::Column {
                        len: parts.len as u64,
                        null_count: parts.null_count as u64,
                        validity: parts.validity,
                        buffers: parts.buffers,
                    })
                })
                .collect::<::std::result::Result<::std::vec::Vec<_>, ::std::string::String>>()?;
            Ok($wit::Batch {
                fields,
                num_rows,
                columns,
            })
        }
    };
}
