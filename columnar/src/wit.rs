//! Conversions between Arrow record batches and the WIT `batch` record,
//! generated for whichever bindings a side uses.

/// Defines `batch_to_wit(&RecordBatch) -> Result<Batch, String>` and
/// `batch_from_wit(Batch) -> Result<RecordBatch, String>` in the calling
/// module, for the WIT `weir:plugin/types` bindings at the absolute path
/// `$types` (starting with `crate::`).
///
/// Host (`wasmtime::component::bindgen!`) and guest (`wit_bindgen::generate!`)
/// generate distinct Rust types from the same WIT, with the same names and
/// shapes; this macro gives both one conversion, so they cannot drift.
/// `batch_from_wit` validates everything, as the batch may come from
/// untrusted code.
#[macro_export]
macro_rules! wit_batch_conversions {
    ($types:path) => {
        mod __weir_wit_types {
            pub use $types::*;
        }

        #[allow(dead_code)]
        pub(crate) fn batch_to_wit(
            batch: &$crate::reexports::arrow_array::RecordBatch,
        ) -> ::std::result::Result<__weir_wit_types::Batch, ::std::string::String> {
            use __weir_wit_types as w;
            let fields = batch
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    Ok(w::Field {
                        name: f.name().clone(),
                        data_type: data_type_to_wit(f.data_type())?,
                        nullable: f.is_nullable(),
                    })
                })
                .collect::<::std::result::Result<::std::vec::Vec<_>, ::std::string::String>>()?;
            let columns = batch
                .columns()
                .iter()
                .map(|array| {
                    let parts = $crate::export_array(array).map_err(|e| e.to_string())?;
                    Ok(w::Column {
                        len: parts.len as u64,
                        null_count: parts.null_count as u64,
                        validity: parts.validity,
                        buffers: parts.buffers,
                    })
                })
                .collect::<::std::result::Result<::std::vec::Vec<_>, ::std::string::String>>()?;
            Ok(w::Batch { fields, num_rows: batch.num_rows() as u64, columns })
        }

        #[allow(dead_code)]
        pub(crate) fn batch_from_wit(
            batch: __weir_wit_types::Batch,
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
                columns.push(
                    $crate::import_array(field.data_type().clone(), parts)
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

        fn data_type_from_wit(
            t: &__weir_wit_types::DataType,
        ) -> $crate::reexports::arrow_schema::DataType {
            use $crate::reexports::arrow_schema::DataType as A;
            use __weir_wit_types::DataType as W;
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
                W::Timestamp(ts) => A::Timestamp(
                    time_unit_from_wit(ts.unit),
                    ts.timezone.as_deref().map(::std::sync::Arc::from),
                ),
                W::Decimal128(d) => A::Decimal128(d.precision, d.scale),
            }
        }

        fn data_type_to_wit(
            t: &$crate::reexports::arrow_schema::DataType,
        ) -> ::std::result::Result<__weir_wit_types::DataType, ::std::string::String> {
            use $crate::reexports::arrow_schema::DataType as A;
            use __weir_wit_types::DataType as W;
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
                A::Timestamp(unit, tz) => W::Timestamp(__weir_wit_types::TimestampType {
                    unit: time_unit_to_wit(*unit),
                    timezone: tz.as_deref().map(str::to_string),
                }),
                A::Decimal128(precision, scale) => {
                    W::Decimal128(__weir_wit_types::DecimalType { precision: *precision, scale: *scale })
                }
                other => return Err(format!("type {other} cannot cross the plugin boundary")),
            })
        }

        fn time_unit_from_wit(
            unit: __weir_wit_types::TimeUnit,
        ) -> $crate::reexports::arrow_schema::TimeUnit {
            use $crate::reexports::arrow_schema::TimeUnit as A;
            use __weir_wit_types::TimeUnit as W;
            match unit {
                W::Second => A::Second,
                W::Millisecond => A::Millisecond,
                W::Microsecond => A::Microsecond,
                W::Nanosecond => A::Nanosecond,
            }
        }

        fn time_unit_to_wit(
            unit: $crate::reexports::arrow_schema::TimeUnit,
        ) -> __weir_wit_types::TimeUnit {
            use $crate::reexports::arrow_schema::TimeUnit as A;
            use __weir_wit_types::TimeUnit as W;
            match unit {
                A::Second => W::Second,
                A::Millisecond => W::Millisecond,
                A::Microsecond => W::Microsecond,
                A::Nanosecond => W::Nanosecond,
            }
        }
    };
}
